"""Experiment trackers against the real things (issue 15, item 1): a training run with
`train.report_to: [tensorboard, mlflow, wandb]` is read back with MLflow's client from a tracking
store on local disk, with TensorBoard's own event reader, and from W&B's offline run files; a
sweep logs each trial through Tune's MLflow callback.

HEAVY: about 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os

import pytest

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

mlflow = pytest.importorskip("mlflow")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the client reads the run dir's file store too
pytest.importorskip("wandb")
pytest.importorskip("tensorboard")

STEPS = 6


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel)


@pytest.fixture(scope="module")
def tracked_run(ray_cluster, sample_prepared, tmp_path_factory):
    from med42_ray.config import load_config
    from med42_ray.train.trainer import run_train

    prepared, _ = sample_prepared
    run_dir = tmp_path_factory.mktemp("tracked")
    cfg = load_config(None, [
        f"run_dir={run_dir}", f"train.data_dir={prepared}", "train.strategy=lora", f"train.max_steps={STEPS}",
        "train.scaling.num_workers=2", "train.export=false", "train.peak_tflops=0.1", "train.run_name=tracked_lora",
        "train.report_to=[tensorboard,mlflow,wandb]", "train.wandb_mode=offline"])
    result = run_train(cfg)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return run_dir, result.output_dir, rows


def test_mlflow_store_holds_every_step_and_the_config(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, _, rows = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("med42-ray")
    (run,) = client.search_runs([experiment.experiment_id])  # rank 0 only: one run
    assert run.info.run_name == "tracked_lora" and run.info.status == "FINISHED"
    for figure in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        history = sorted(client.get_metric_history(run.info.run_id, figure), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, STEPS + 1)), figure
        assert all(_close(m.value, r[figure]) for m, r in zip(history, rows)), figure
    params = run.data.params
    assert params["train.strategy"] == "lora" and params["train.max_steps"] == str(STEPS)
    assert params["model"] and params["prepare.seq_len"]


def test_tensorboard_reader_reads_every_step(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out_dir, rows = tracked_run
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    for figure in ("loss", "lr", "tokens_per_s"):
        scalars = events.Scalars(f"train/{figure}")
        assert [s.step for s in scalars] == list(range(1, STEPS + 1)), figure
        assert all(_close(s.value, r[figure], rel=1e-5) for s, r in zip(scalars, rows)), figure  # float32


def test_wandb_offline_run_files(tracked_run):
    """wandb (0.2x+) has no Python reader of its run file; its records keep each logged value as
    JSON text, so every step's loss must be found in it, with the config and the run's name."""
    _, out_dir, rows = tracked_run
    (run,) = list((out_dir / "wandb").glob("offline-run-*"))
    (record,) = list(run.glob("run-*.wandb"))  # what `wandb sync` uploads later
    data = record.read_bytes()
    for r in rows:
        assert json.dumps(r["loss"]).encode() in data, r["step"]
    for text in (b"train/loss", b"train/tokens_per_s", b"train.strategy", b"tracked_lora"):
        assert text in data, text


def test_sweep_logs_each_trial_through_tunes_mlflow_callback(ray_cluster, sample_prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    from med42_ray.cli import main

    prepared, _ = sample_prepared
    rc = main(["sweep", "--run-dir", str(tmp_path), "--data-dir", str(prepared), "--num-samples", "1",
               "--max-steps", "2", "--eval-every", "2", "--num-workers", "1",
               "-o", "train.peak_tflops=0.1", "-o", "train.report_to=[mlflow]"])
    assert rc == 0
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("med42-ray").experiment_id])
    assert len(runs) == 1  # the trial's own training loop logs nothing: no second run
    history = client.get_metric_history(runs[0].info.run_id, "val_accuracy")
    assert history and 0 <= history[-1].value <= 1
