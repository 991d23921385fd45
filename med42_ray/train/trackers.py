"""Experiment trackers for a training run: `train.report_to: [tensorboard, mlflow, wandb]`.

Rank 0 logs each optimizer step's loss, lr, grad norm, tokens/s and MFU, and the run's whole
config once as parameters, through each tracker's own library: Ray's `setup_mlflow` and
`setup_wandb` (made for a Ray Train worker), tensorboardX's SummaryWriter (a Ray Tune dependency,
so always there). None is a hard dependency: `pip install 'med42-ray[trackers]'` brings MLflow
and W&B. A sweep logs through Tune's own logger callbacks instead (`tune_callbacks`), one run per
trial; its trials' training loops then log to none (sweep/run.py), so nothing is logged twice.

Where each writes, unless the environment says otherwise:
  tensorboard  <train dir>/tensorboard/ (read it with `tensorboard --logdir`)
  mlflow       train.mlflow_tracking_uri, else MLFLOW_TRACKING_URI, else <run_dir>/mlruns
               (experiment train.tracking_experiment, run named after train.run_name)
  wandb        project train.tracking_experiment, run files under <train dir>/wandb/;
               train.wandb_mode offline writes them without an account (`wandb sync` uploads later)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from med42_ray.ray_metrics import TRAIN_FIGURES

STEP_FIGURES = tuple(k for k in TRAIN_FIGURES if k != "step")  # the step is each tracker's x-axis


@dataclass
class TrackerPlan:
    """Decided on the driver (paths resolved there), handed to rank 0."""

    report_to: list[str]
    run_name: str
    experiment: str
    params: dict[str, Any]          # the resolved run config
    out_dir: str                    # the training run's output directory
    mlflow_tracking_uri: str | None
    wandb_mode: str | None


def mlflow_uri(cfg) -> str:
    """train.mlflow_tracking_uri, else MLFLOW_TRACKING_URI, else the run directory's mlruns/ (as
    a file: URI, which every MLflow client reads). `cfg`: the RunConfig."""
    return (cfg.train.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or (Path(cfg.run_dir).resolve() / "mlruns").as_uri())


def _allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (it is in maintenance
    mode; its SQL store needs the full `mlflow` package, not the `mlflow-skinny` client our extra
    installs). A file store is what a run directory holds by default, so allow it for that."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def plan(cfg, out_dir: Path) -> TrackerPlan:
    t = cfg.train
    return TrackerPlan(list(t.report_to), t.run_name, t.tracking_experiment, cfg.model_dump(mode="json"),
                       str(out_dir), mlflow_uri(cfg) if "mlflow" in t.report_to else None, t.wandb_mode)


def flat_params(params: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1e-5}} -> {'train.lr': '1e-05'}: trackers take flat string parameters."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _set_wandb_mode(mode: str | None) -> None:
    """train.wandb_mode as WANDB_MODE, which wandb reads, and which Ray's W&B integration checks
    before it asks for an API key (offline and disabled need none)."""
    if mode:
        os.environ["WANDB_MODE"] = mode


class Trackers:
    """The open trackers of one run, on rank 0."""

    def __init__(self, p: TrackerPlan):
        self.writers: dict[str, Any] = {}
        params = flat_params(p.params)
        if "tensorboard" in p.report_to:
            from tensorboardX import SummaryWriter

            tb = SummaryWriter(logdir=str(Path(p.out_dir) / "tensorboard"))
            tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())), 0)
            self.writers["tensorboard"] = tb
        if "mlflow" in p.report_to:
            from ray.air.integrations.mlflow import setup_mlflow

            _allow_file_store(p.mlflow_tracking_uri)
            self.writers["mlflow"] = setup_mlflow(
                params, tracking_uri=p.mlflow_tracking_uri, experiment_name=p.experiment, run_name=p.run_name,
                create_experiment_if_not_exists=True, tags={"med42_ray.run_name": p.run_name})
        if "wandb" in p.report_to:
            from ray.air.integrations.wandb import setup_wandb

            _set_wandb_mode(p.wandb_mode)
            self.writers["wandb"] = setup_wandb(params, project=p.experiment, name=p.run_name, group=p.run_name,
                                                dir=p.out_dir)

    def log(self, row: dict) -> None:
        figures = {k: float(row[k]) for k in STEP_FIGURES if row.get(k) is not None}
        step = row["step"]
        if "tensorboard" in self.writers:
            for key, value in figures.items():
                self.writers["tensorboard"].add_scalar(f"train/{key}", value, step)
        if "mlflow" in self.writers:
            self.writers["mlflow"].log_metrics(figures, step=step)
        if "wandb" in self.writers:
            self.writers["wandb"].log({f"train/{k}": v for k, v in figures.items()}, step=step)

    def close(self) -> None:
        if "tensorboard" in self.writers:
            self.writers["tensorboard"].close()
        if "mlflow" in self.writers:
            self.writers["mlflow"].end_run()
        if "wandb" in self.writers:
            self.writers["wandb"].finish()


def tune_callbacks(cfg, experiment_dir: Path) -> list:
    """Tune's own logger callbacks for a sweep's trials (TensorBoard files come from Tune's default
    loggers, under the sweep's tune/ folder)."""
    t = cfg.train
    callbacks = []
    if "mlflow" in t.report_to:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow_uri(cfg)
        _allow_file_store(uri)
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=t.tracking_experiment,
                                              save_artifact=False))
    if "wandb" in t.report_to:
        from ray.air.integrations.wandb import WandbLoggerCallback

        _set_wandb_mode(t.wandb_mode)
        callbacks.append(WandbLoggerCallback(project=t.tracking_experiment, dir=str(experiment_dir)))
    return callbacks
