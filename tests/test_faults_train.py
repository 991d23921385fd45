"""Training faults injected from outside, the way the world does them: a Ray Train worker SIGKILLed
mid-step and mid-checkpoint-write, the `med42-ray train` driver interrupted with SIGINT and the
command rerun, checkpoint files truncated, deleted or altered after they were written. Each ends in
a resume whose losses are those of an uninterrupted run (the loop is deterministic on CPU), or in an
error naming what is broken; a broken checkpoint is never loaded.

HEAVY: five short training runs on 2 CPU workers (one uninterrupted baseline, shared), three of them
through the `med42-ray` command, and one that stops before training; about 4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from med42_ray.config import load_config
from med42_ray.train import checkpointing
from med42_ray.train.metrics import read_metrics, superseded_path
from med42_ray.train.trainer import run_train

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

STEPS = 6
# Checkpoints at steps 2, 4 and 6, all kept, so that there is an older one to fall back to.
OVERRIDES = [f"train.max_steps={STEPS}", "train.strategy=full", "train.scaling.num_workers=2",
             "train.scaling.threads_per_worker=1", "train.zero_stage=null", "train.lr=1e-3",
             "train.micro_batch_size=1", "train.export=false", "train.checkpoint_every_steps=2",
             "train.keep_checkpoints=null"]
MED42_RAY = Path(sys.executable).parent / "med42-ray"


def _overrides(run_dir: Path, prepared: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"train.data_dir={prepared}", *OVERRIDES, *extra]


def _metrics_path(run_dir: Path) -> Path:
    return run_dir / "train" / "full" / "metrics.jsonl"


def _run_storage(run_dir: Path) -> Path:
    return run_dir / "ray_results" / "train"


@pytest.fixture(scope="module")
def prepared(sample_prepared) -> Path:
    return sample_prepared[0]


@pytest.fixture(scope="module")
def baseline(prepared, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """One uninterrupted run: its directory (checkpoints at 2, 4, 6) and its loss at each step."""
    run_dir = tmp_path_factory.mktemp("baseline")
    result = run_train(load_config(None, _overrides(run_dir, prepared)))
    losses = {r["step"]: r["loss"] for r in result.metrics}
    assert sorted(losses) == list(range(1, STEPS + 1))
    return run_dir, losses


def _assert_same_trajectory(run_dir: Path, baseline_losses: dict[int, float], steps=range(1, STEPS + 1)) -> None:
    """metrics.jsonl has `steps` with the uninterrupted run's losses, and so do the rows a resume
    superseded (the steps trained before the fault and again after it)."""
    path = _metrics_path(run_dir)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(steps)
    superseded = read_metrics(superseded_path(path)) if superseded_path(path).is_file() else []
    for r in rows + superseded:
        assert abs(r["loss"] - baseline_losses[r["step"]]) < 1e-4, (r["step"], r["loss"], baseline_losses)


def _copy_run(baseline_dir: Path, run_dir: Path) -> Path:
    """The baseline's checkpoints in a run directory of their own: the same run, on another disk."""
    shutil.copytree(_run_storage(baseline_dir), _run_storage(run_dir))
    return _run_storage(run_dir)


def _cli(ray_cluster, run_dir: Path, prepared: Path, *extra: str, **popen) -> subprocess.Popen:
    """`med42-ray train`, as a user runs it, joining the tests' Ray cluster (RAY_ADDRESS) rather than
    starting a second one on this machine."""
    args = [str(MED42_RAY), "train"]
    for override in _overrides(run_dir, prepared, *extra):
        args += ["-o", override]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["address"]}
    return subprocess.Popen(args, env=env, text=True, **popen)


def _train_workers() -> list[psutil.Process]:
    """This session's Ray Train worker processes: Ray starts them under the tests' raylet, a child of
    this process (so another session's workers on this machine are never touched)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def _registered(run_dir: Path) -> bool:
    """Ray Train has a checkpoint of the run on record (it registers one up to a health check after
    the workers report it): a restart now resumes rather than starting afresh."""
    from ray.train import Result

    try:
        return Result.from_path(str(_run_storage(run_dir))).checkpoint is not None
    except RuntimeError:  # no run directory or snapshot yet
        return False


def _wait_for(condition, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _steps_logged(run_dir: Path) -> int:
    path = _metrics_path(run_dir)
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _writer_of(local_root: Path, besides: set[int] = frozenset()) -> tuple[psutil.Process, str] | None:
    """A training worker (not one of `besides`) with a file open under `local_root`, where it writes
    its part of a checkpoint before the upload: one caught in the middle of writing it."""
    for p in _train_workers():
        if p.pid in besides:
            continue
        try:
            for f in p.open_files():
                if f.path.startswith(str(local_root)):
                    return p, f.path
        except psutil.Error:
            pass
    return None


def test_a_worker_sigkilled_mid_step_and_mid_checkpoint_write_resumes_exactly(
        prepared, baseline, ray_cluster, tmp_path):
    baseline_dir, losses = baseline
    local = tmp_path / "local"  # each worker's part of a checkpoint is written here, then uploaded
    cfg = load_config(None, _overrides(tmp_path, prepared, f"train.checkpoint_local_dir={local}"))
    kills: list[str] = []

    def inject() -> None:
        # Mid-step: once step 2's checkpoint is registered, while no checkpoint is being written.
        _wait_for(lambda: _registered(tmp_path), 300, "the first checkpoint registered", every=0.2)
        group = _wait_for(lambda: _writer_of(local) is None and _train_workers(), 30, "a worker between checkpoints")
        steps = _steps_logged(tmp_path)
        group[0].send_signal(signal.SIGKILL)
        kills.append(f"mid-step after {steps} steps logged")
        # Mid-checkpoint-write: the restarted group's first checkpoint, while a worker has one of its files open.
        first_group = {p.pid for p in group}
        victim, path = _wait_for(lambda: _writer_of(local, besides=first_group), 300, "a checkpoint being written",
                                 every=0.001)
        victim.send_signal(signal.SIGKILL)
        kills.append(f"writing {path}")

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    result = run_train(cfg)
    injector.join(timeout=5)
    assert len(kills) == 2, kills
    assert int(kills[0].split()[2]) < STEPS, kills  # the first kill did land mid-run
    # The killed writer left its part unfinished: no marker, never uploaded, never loaded.
    assert any(not list(Path(d).glob("rank*.complete.json")) for d in local.iterdir()), kills
    _assert_same_trajectory(tmp_path, losses)
    # Both restarts resumed from a checkpoint: some steps were trained again, never steps 1 and 2.
    redone = {r["step"] for r in read_metrics(superseded_path(_metrics_path(tmp_path)))}
    assert redone and min(redone) >= 3, redone
    # Whatever was half-uploaded to storage was rewritten whole: every checkpoint checks out.
    storage = _run_storage(tmp_path)
    assert Path(result.checkpoint_path).parent == storage
    for step in (2, 4, 6):
        assert checkpointing.problem(storage / checkpointing.checkpoint_dir_name(step), 2, hash_ranks=[0, 1]) is None


def test_driver_interrupted_with_sigint_then_rerun_resumes_exactly(prepared, baseline, ray_cluster, tmp_path):
    _, losses = baseline
    first = _cli(ray_cluster, tmp_path, prepared, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _registered(tmp_path), 300, "the first checkpoint registered", every=0.2)
        steps_at_interrupt = _steps_logged(tmp_path)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0 and steps_at_interrupt < STEPS, (first.returncode, steps_at_interrupt)

    rerun = _cli(ray_cluster, tmp_path, prepared, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    assert "[med42-ray] resumed from checkpoint" in out and "[med42-ray] checkpoint" not in out, out[-3000:]
    _assert_same_trajectory(tmp_path, losses)


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)


def _optimizer_shard(ckpt: Path, rank: int) -> Path:
    (shard,) = (ckpt / checkpointing.DS_TAG).glob(f"*zero_pp_rank_{rank}_*optim_states.pt")
    return shard


def test_truncated_and_deleted_checkpoint_files_are_passed_over_on_rerun(prepared, baseline, ray_cluster, tmp_path):
    """The issue's case: one optimizer shard of the latest checkpoint truncated; here the one before
    has also lost a file. The rerun names both, loads neither, and resumes from step 2."""
    baseline_dir, losses = baseline
    storage = _copy_run(baseline_dir, tmp_path)
    step6, step4, step2 = (storage / checkpointing.checkpoint_dir_name(s) for s in (6, 4, 2))
    shard = _optimizer_shard(step6, rank=1)
    _truncate(shard)
    (step4 / "rank1.rng.safetensors").unlink()

    # Two kept: Ray Train still lists the broken 4 and 6 and evicts them as the rerun checkpoints.
    rerun = _cli(ray_cluster, tmp_path, prepared, "train.keep_checkpoints=2",
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    # One line from one worker process (Ray forwards each of its lines twice): no retry met the broken ones.
    (line,) = {ln for ln in out.splitlines() if "[med42-ray] checkpoint" in ln}
    assert f"{step6} is broken: {shard.relative_to(step6)} has " in line, line
    assert f"{step4} is broken: rank1.rng.safetensors is missing" in line, line
    assert f"resumed from the newest intact one instead, {step2}: step 2" in line, line
    # Neither was loaded (torch's zip reader never saw the truncated shard) and no worker failed.
    assert "PytorchStreamReader" not in out
    assert not [ln for ln in out.splitlines() if "RayTrainWorker" in ln and "Traceback" in ln]
    _assert_same_trajectory(tmp_path, losses, steps=range(3, STEPS + 1))
    # The rerun's checkpoints are tagged, so evicting the broken ones of the same steps deleted
    # those, not the new ones; the run's latest is the rerun's step 6, intact.
    from ray.train import Result

    latest = Path(Result.from_path(str(storage)).checkpoint.path)
    assert latest.name.startswith(f"{step6.name}-resumed"), latest
    for step in (4, 6):
        (new,) = storage.glob(f"{checkpointing.checkpoint_dir_name(step)}-resumed*")
        assert checkpointing.problem(new, 2, hash_ranks=[0, 1]) is None
    assert not step6.exists() and not step4.exists()  # evicted, broken


def test_no_intact_checkpoint_is_a_clear_error_before_training(prepared, baseline, ray_cluster, tmp_path):
    baseline_dir, _ = baseline
    storage = _copy_run(baseline_dir, tmp_path)
    for step in (2, 4, 6):
        _truncate(_optimizer_shard(storage / checkpointing.checkpoint_dir_name(step), rank=0))

    rerun = _cli(ray_cluster, tmp_path, prepared, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 2, (out[-2000:], err[-2000:])
    assert f"no intact checkpoint to resume the run in {storage} from" in err, err
    for step in (6, 4, 2):
        assert f"step_{step:08d}: deepspeed/" in err and "optim_states.pt has " in err, err
    assert "delete that directory or choose another train.run_name" in err
    assert "Traceback" not in err and not _metrics_path(tmp_path).exists()  # refused before any worker started


def test_an_altered_file_of_the_same_size_is_caught_by_its_checksum(baseline, tmp_path):
    """Sizes catch truncation and deletion; a flipped byte only the SHA-256 of the rank that wrote it."""
    baseline_dir, _ = baseline
    ckpt = tmp_path / "step"
    shutil.copytree(_run_storage(baseline_dir) / checkpointing.checkpoint_dir_name(2), ckpt)
    marker = json.loads((ckpt / checkpointing.marker_name(1)).read_text())
    assert all(set(f) == {"bytes", "sha256"} for f in marker["files"].values())
    assert checkpointing.problem(ckpt, 2, hash_ranks=[0, 1]) is None
    shard = _optimizer_shard(ckpt, rank=1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert checkpointing.problem(ckpt, 2, hash_ranks=[0]) is None  # rank 0 hashes its own files only
    found = checkpointing.problem(ckpt, 2, hash_ranks=[1])
    assert found == f"{shard.relative_to(ckpt)} is altered: its SHA-256 is not the one recorded when it was written (rank 1's part)"
