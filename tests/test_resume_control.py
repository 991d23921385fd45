"""train.resume: auto | never | <checkpoint directory>, and a rerun with another configuration
refused (train/run_record.py).

HEAVY: two short real training runs on one CPU worker (~1 min on 2 cores); the refusals happen
before Ray Train starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from med42_ray.cli import main
from med42_ray.config import load_config
from med42_ray.errors import ConfigError
from med42_ray.train import checkpointing, run_record
from med42_ray.train.metrics import read_metrics
from med42_ray.train.trainer import run_train

pytestmark = pytest.mark.slow  # real Ray runs: `pytest -m 'not slow'` skips them

STEPS = 4
OVERRIDES = [f"train.max_steps={STEPS}", "train.strategy=full", "train.scaling.num_workers=1",
             "train.scaling.threads_per_worker=1", "train.zero_stage=null", "train.lr=1e-3",
             "train.export=false", "train.checkpoint_every_steps=2", "train.keep_checkpoints=null"]


def _overrides(run_dir: Path, prepared: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"train.data_dir={prepared}", *OVERRIDES, *extra]


def _storage(run_dir: Path, run_name: str = "train") -> Path:
    return run_dir / "ray_results" / run_name


@pytest.fixture(scope="module")
def first_run(sample_prepared, tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, dict[int, float]]:
    """One run of 4 steps (checkpoints at 2 and 4): (prepared data, its run dir, its loss per step)."""
    prepared = sample_prepared[0]
    run_dir = tmp_path_factory.mktemp("first")
    result = run_train(load_config(None, _overrides(run_dir, prepared)))
    return prepared, run_dir, {r["step"]: r["loss"] for r in result.metrics}


def _cli(capsys, run_dir: Path, prepared: Path, *extra: str) -> tuple[int, str]:
    args = ["train"]
    for override in _overrides(run_dir, prepared, *extra):
        args += ["-o", override]
    code = main(args)
    return code, capsys.readouterr().err


def test_the_run_records_what_its_checkpoints_were_computed_from(first_run):
    prepared, run_dir, _ = first_run
    record = json.loads((_storage(run_dir) / run_record.RECORD).read_text())["inputs"]
    assert record["train"]["lr"] == 1e-3 and record["train"]["max_steps"] == STEPS
    assert record["data"]["seq_len"] == json.loads((prepared / "manifest.json").read_text())["seq_len"]
    assert not {"scaling", "resume", "run_name", "data_dir"} & record["train"].keys()  # not what it computes


def test_a_rerun_with_another_configuration_is_refused_naming_what_differs(first_run, capsys):
    prepared, run_dir, _ = first_run
    code, err = _cli(capsys, run_dir, prepared, "train.lr=2e-3", "train.weight_decay=0.0")
    assert code == 2, err
    assert f"the checkpoints in {_storage(run_dir)} were written by a different configuration" in err
    assert "train.lr: 0.001 then, 0.002 now" in err and "train.weight_decay: 0.1 then, 0.0 now" in err
    assert "choose a new train.run_name or --run-dir" in err and "Traceback" not in err


def test_another_model_or_data_is_a_different_configuration_too(first_run, tmp_path):
    prepared, run_dir, _ = first_run
    cfg = load_config(None, _overrides(run_dir, prepared))
    manifest = json.loads((prepared / "manifest.json").read_text())
    storage = str(run_dir / "ray_results")
    with pytest.raises(ConfigError, match=r"model: '\S+' then, 'other' now"):
        run_record.check_and_record(storage, cfg.train, "other", manifest)
    with pytest.raises(ConfigError, match=r"data.sequences: \d+ then, 1 now"):
        run_record.check_and_record(storage, cfg.train, cfg.model, {**manifest, "sequences": 1})
    # How it runs is not what it computes: another cluster shape or log rhythm continues the run.
    run_record.check_and_record(storage, cfg.train.model_copy(update={"log_every_steps": 1, "max_failures": 0}),
                                cfg.model, manifest)


def test_a_run_checkpointed_before_records_existed_is_recorded_then_checked(first_run, tmp_path):
    prepared, run_dir, _ = first_run
    shutil.copytree(_storage(run_dir), _storage(tmp_path))
    (_storage(tmp_path) / run_record.RECORD).unlink()
    cfg = load_config(None, _overrides(tmp_path, prepared))
    manifest = json.loads((prepared / "manifest.json").read_text())
    run_record.check_and_record(str(tmp_path / "ray_results"), cfg.train, cfg.model, manifest)
    assert (_storage(tmp_path) / run_record.RECORD).is_file()
    with pytest.raises(ConfigError, match="different configuration"):
        run_record.check_and_record(str(tmp_path / "ray_results"), cfg.train.model_copy(update={"lr": 1.0}),
                                    cfg.model, manifest)


def test_resume_never_refuses_a_run_that_has_checkpoints(first_run, capsys):
    prepared, run_dir, _ = first_run
    code, err = _cli(capsys, run_dir, prepared, "train.resume=never")
    assert code == 2, err
    assert f"{_storage(run_dir)} already has checkpoints (step_00000002, step_00000004)" in err
    assert "train.resume is never: choose a new train.run_name or --run-dir" in err
    assert "set train.resume=auto to continue that one" in err and "Traceback" not in err


def test_resume_from_a_checkpoint_path_continues_its_trajectory_in_a_new_run(first_run, tmp_path):
    """A new run seeded from the first run's step 2 trains steps 3 and 4 exactly as the first did
    (weights, optimizer, data position and RNG come from the checkpoint)."""
    prepared, run_dir, losses = first_run
    step2 = _storage(run_dir) / checkpointing.checkpoint_dir_name(2)
    result = run_train(load_config(None, _overrides(tmp_path, prepared, f"train.resume={step2}",
                                                    "train.run_name=seeded")))
    rows = read_metrics(result.metrics_path)
    assert [r["step"] for r in rows] == [3, 4]
    for r in rows:
        assert abs(r["loss"] - losses[r["step"]]) < 1e-4, (r, losses)
    assert (_storage(tmp_path, "seeded") / checkpointing.checkpoint_dir_name(4)).is_dir()
    assert not (_storage(tmp_path, "seeded") / checkpointing.checkpoint_dir_name(2)).exists()


def test_a_resume_path_that_is_not_an_intact_checkpoint_is_refused_before_training(first_run, tmp_path, capsys):
    prepared, run_dir, _ = first_run
    code, err = _cli(capsys, tmp_path, prepared, f"train.resume={tmp_path / 'nowhere'}")
    assert code == 2 and f"train.resume: no checkpoint directory at {tmp_path / 'nowhere'}" in err, err

    broken = tmp_path / "step_00000002"
    shutil.copytree(_storage(run_dir) / "step_00000002", broken)
    (broken / "rank0.rng.safetensors").unlink()
    code, err = _cli(capsys, tmp_path, prepared, f"train.resume={broken}")
    assert code == 2 and f"train.resume: {broken} is not an intact checkpoint: rank0.rng.safetensors is missing" in err

    last = _storage(run_dir) / checkpointing.checkpoint_dir_name(STEPS)
    code, err = _cli(capsys, tmp_path, prepared, f"train.resume={last}")
    assert code == 2 and f"is at step {STEPS}, and this run trains {STEPS} steps in all" in err, err
    assert "Traceback" not in err and not (tmp_path / "train" / "full" / "metrics.jsonl").exists()  # nothing trained
