"""Faults from outside the process, the way the world injects them: an evaluation actor's process
killed with SIGKILL while `evaluate` runs, and the disk filling up while `prepare` writes shards.
Each ends in a complete, correct result or in one clear error, never in partial output that a
rerun or `train` could take for finished."""

from __future__ import annotations

import errno
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
import pyarrow.dataset as pads
import pytest
import test_eval
from test_eval import _eval_config

from med42_ray.data.output import PARQUET_MAGIC

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

# test_eval's module fixtures, by name: a small benchmark root and a tiny Llama with its tokenizer
small_root, items, tiny_dir = test_eval.small_root, test_eval.items, test_eval.tiny_dir

MED42_RAY = str(Path(sys.executable).with_name("med42-ray"))


# --- an evaluation actor killed with SIGKILL ---------------------------------------------------

class ActorKiller(threading.Thread):
    """Watches this test's own Ray processes (descendants of this process: never another session's
    cluster on the machine) and SIGKILLs the first ScoringActor seen running a task (its process
    title is then `ray::ScoringActor.score`)."""

    def __init__(self, timeout: float = 120.0):
        super().__init__(daemon=True)
        self.stop, self.timeout, self.killed = threading.Event(), timeout, None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        me = psutil.Process()
        while not self.stop.is_set() and time.monotonic() < deadline:
            for p in me.children(recursive=True):
                try:
                    if any("ray::ScoringActor.score" in part for part in p.cmdline()):
                        os.kill(p.pid, signal.SIGKILL)
                        self.killed = p.pid
                        return
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(0.002)


def _samples(out: Path, model: str) -> dict[str, list[dict]]:
    return {f.stem: [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted((out / model / "samples").glob("*.jsonl"))}


def test_actor_killed_by_sigkill_still_yields_complete_identical_results(ray_cluster, tmp_path, small_root, tiny_dir):
    """SIGKILL to the scoring actor's process in the middle of a task: Ray restarts the actor, the
    task is scored again, and every sample equals an uninterrupted run's, nothing lost or doubled."""
    from med42_ray.eval.run import run_evaluate

    models = [{"name": "base", "path": str(tiny_dir)}]
    settings = {"num_actors": 1, "questions_per_task": 2}
    clean = run_evaluate(_eval_config(tmp_path / "clean", small_root, models, **settings))

    killer, events = ActorKiller(), []
    killer.start()
    try:
        killed = run_evaluate(_eval_config(tmp_path / "killed", small_root, models, **settings),
                              on_event=events.append)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no ScoringActor process was seen running a task"
    retried = [ev for ev in events if ev.retried]
    assert retried, "the SIGKILL hit no task in flight"

    got, want = _samples(tmp_path / "killed" / "eval", "base"), _samples(tmp_path / "clean" / "eval", "base")
    assert set(got) == set(want) == {"medqa_4options", "mmlu_anatomy", "pubmedqa", "headqa_en"}
    for bench, rows in want.items():
        assert len(got[bench]) == len({r["id"] for r in got[bench]}) == len(rows), bench
        assert sorted(got[bench], key=lambda r: r["id"]) == sorted(rows, key=lambda r: r["id"]), bench
    for bench, summary in clean["models"]["base"]["benchmarks"].items():
        assert killed["models"]["base"]["benchmarks"][bench] == summary, bench


# --- the disk filling up while prepare writes -------------------------------------------------

def _can_mount_private_tmpfs(mnt: Path) -> list[str] | None:
    """The `unshare` prefix that gives a private mount namespace where tmpfs can be mounted: as
    root, or as an unprivileged user in a user namespace. The mount vanishes with the namespace,
    so nothing is left mounted whatever happens to the test."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{mnt}'"],
                               check=False, capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix
    return None


def _dir_bytes(path: Path, page: int = 4096) -> int:
    """What the files take on a tmpfs (whole pages)."""
    return sum(-(-f.stat().st_size // page) * page for f in path.rglob("*") if f.is_file())


def _shards(prepared: Path) -> list[dict]:
    return pads.dataset(str(prepared / "shards"), format="parquet").to_table().to_pylist()


def test_disk_full_while_writing_shards_is_a_clear_error_and_the_rerun_completes(tmp_path, sample_prepared):
    """`med42-ray prepare` onto a filesystem with room for the ledger but not the shards: it fails
    naming the shard file and "no space left on device", leaves no manifest and no partial file;
    once there is room, the same command writes what a run on a roomy disk writes."""
    reference, ref_manifest = sample_prepared
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    unshare = _can_mount_private_tmpfs(mnt)
    if unshare is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or unprivileged user namespaces); "
                    "RLIMIT_FSIZE is no substitute: it would also cut Ray's own object store and logs")
    # room for the ledger and half the shards: the shard write is the one that fails
    small = _dir_bytes(reference / "ledger") + _dir_bytes(reference / "shards") // 2
    prepared = mnt / "prepared"
    cmd = f"'{MED42_RAY}' prepare --run-dir '{tmp_path / 'run'}' --num-cpus 2 -o ray.dashboard=false " \
          f"-o prepare.output_dir='{prepared}'"
    script = f"""
        mount -t tmpfs -o size={small} tmpfs '{mnt}' || exit 90
        {cmd} > '{tmp_path}/full.log' 2>&1; echo $? > '{tmp_path}/full.rc'
        find '{mnt}' -type f > '{tmp_path}/left_behind.txt'
        mount -o remount,size={8 * small} '{mnt}' || exit 91
        {cmd} > '{tmp_path}/rerun.log' 2>&1; echo $? > '{tmp_path}/rerun.rc'
        cp -r '{prepared}' '{tmp_path}/rerun'
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    env.update(RAY_AUTH_MODE="token", RAY_DISABLE_USAGE_STATS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([*unshare, "sh", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=480)
    assert done.returncode == 0, done.stderr

    full_log = (tmp_path / "full.log").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", full_log[-3000:]
    last = full_log.strip().splitlines()[-1]  # the CLI's one line, no traceback of ours
    assert last.startswith("med42-ray: ") and "no space left on device while writing " in last, last
    written = last.split("while writing ", 1)[1].split()[0].rstrip(".")
    assert written.startswith(f"{prepared}/shards/") and written.endswith(".parquet"), last
    assert "no manifest.json was written" in last, last
    assert (tmp_path / "left_behind.txt").read_text() == "", "a failed prepare left files behind"

    assert (tmp_path / "rerun.rc").read_text().strip() == "0", (tmp_path / "rerun.log").read_text()[-3000:]
    rerun = tmp_path / "rerun"
    manifest = json.loads((rerun / "manifest.json").read_text())
    for key in ("sources", "sequences", "tokens", "packing_efficiency"):
        assert manifest[key] == ref_manifest[key], key
    assert sorted(manifest["shards"]) == sorted(str(p.relative_to(rerun)) for p in rerun.glob("shards/*.parquet"))
    for shard in rerun.glob("shards/*.parquet"):
        assert shard.read_bytes()[-len(PARQUET_MAGIC):] == PARQUET_MAGIC, shard
    assert _shards(rerun) == _shards(reference)


def test_disk_full_while_writing_the_manifest_leaves_nothing_that_looks_finished(tmp_path):
    """The driver's own last write, the completion marker, on a full disk: one error naming
    manifest.json, and neither it (nor its temporary file) nor the shards it would have listed remain."""
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    unshare = _can_mount_private_tmpfs(mnt)
    if unshare is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or unprivileged user namespaces)")
    program = tmp_path / "write_manifest.py"
    program.write_text("""
import json, sys
from pathlib import Path
from med42_ray.data import output
from med42_ray.layout import PreparedDir
mnt = Path(sys.argv[1])
out = PreparedDir(mnt / "prepared")
out.shards.mkdir(parents=True)
(out.shards / "done.parquet").write_bytes(b"PAR1" + bytes(100) + b"PAR1")
try:
    with output.finishing(out):
        output.write_manifest(out.manifest, "x" * 200_000)
except output.OutputWriteError as e:
    print(json.dumps({"errno": e.errno, "message": str(e), "left": sorted(str(p) for p in mnt.rglob("*"))}))
""")
    script = f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && '{sys.executable}' '{program}' '{mnt}'"
    done = subprocess.run([*unshare, "sh", "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    result = json.loads(done.stdout)
    assert result["errno"] == errno.ENOSPC
    assert f"no space left on device while writing {mnt}/prepared/manifest.json." in result["message"]
    assert result["left"] == [f"{mnt}/prepared"], result["left"]
