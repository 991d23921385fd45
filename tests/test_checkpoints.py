"""Weights-only intermediate checkpoints (train.checkpoint_optimizer: epoch_end) written to a local
directory first: what a 70B ZeRO-3 run uses to keep checkpoints affordable.

HEAVY: one real ZeRO-3 training run on 2 CPU workers with a killed worker (~1.5 min on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from med42_ray.config import load_config
from med42_ray.train.faults import KillWorkerOnce
from med42_ray.train.metrics import read_metrics, superseded_path
from med42_ray.train.trainer import run_train

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

STEPS = 5


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_weights_only_checkpoint_resumes_the_same_weights(sample_prepared, tiny_model_dir, tmp_path):
    local = tmp_path / "nvme"
    cfg = load_config(None, [
        f"run_dir={tmp_path}", f"train.data_dir={sample_prepared[0]}", "train.strategy=full",
        f"train.max_steps={STEPS}", "train.scaling.num_workers=2", "train.scaling.threads_per_worker=1", "train.zero_stage=null",
        "train.lr=1e-3", "train.export=false",
        "train.checkpoint_every_steps=2", "train.keep_checkpoints=null", "train.checkpoint_optimizer=epoch_end",
        f"train.checkpoint_local_dir={local}"])  # sync upload: the kill cannot beat it (async: test_train_ray)
    marker = tmp_path / "killed.txt"
    # Rank 1 dies after step 3; the group restarts from the weights-only step-2 checkpoint.
    result = run_train(cfg, step_hook=KillWorkerOnce(step=3, rank=1, marker=str(marker)))
    assert marker.read_text().startswith("killed rank 1 after step 3")
    rows = result.metrics
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))

    # Step 3's loss and gradient come from the weights and the data alone, before its update: the
    # resumed attempt sees exactly the weights the first one had.
    first_attempt = {r["step"]: r for r in read_metrics(superseded_path(result.metrics_path))}
    assert sorted(first_attempt) == [3]
    assert abs(first_attempt[3]["loss"] - rows[2]["loss"]) < 1e-4
    assert abs(first_attempt[3]["grad_norm"] - rows[2]["grad_norm"]) < 1e-3
    assert rows[2]["lr"] == first_attempt[3]["lr"]  # the schedule resumed at its position

    runs = Path(result.checkpoint_path).parent
    weights_only, last = runs / "step_00000002", runs / "step_00000005"
    for rank in (0, 1):
        assert json.loads((weights_only / f"rank{rank}.complete.json").read_text())["optimizer"] is False
        assert (weights_only / f"rank{rank}.master_weights.safetensors").is_file()
        assert json.loads((last / f"rank{rank}.complete.json").read_text())["optimizer"] is True
    assert not (weights_only / "deepspeed").exists() and (last / "deepspeed").is_dir()
    # What README and `med42-ray plan` say: 4 bytes per parameter against 12 (fp32 weights + Adam's
    # two moments), give or take ZeRO's partition padding and DeepSpeed's bookkeeping.
    params = sum(t.numel() for t in load_file(str(Path(tiny_model_dir) / "model.safetensors")).values())
    master = sum(p.stat().st_size for p in weights_only.glob("rank*.master_weights.safetensors"))
    assert 4 * params <= master < 4.2 * params, (master, params)
    assert 12 * params <= _size(last / "deepspeed") < 12.6 * params, (_size(last / "deepspeed"), params)
    assert not list(local.iterdir())  # every local copy was deleted once in storage
