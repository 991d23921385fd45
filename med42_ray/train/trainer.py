"""Assemble and run the Ray Train TorchTrainer for `med42-ray train`.

The driver only reads Parquet metadata (row counts) to size the schedule; rows stream to the
workers through Ray Data, each worker reading its own order-preserving shard.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow.parquet as pq

from med42_ray.errors import ConfigError
from med42_ray.layout import PreparedDir, TrainDir, storage_path_for, train_data_dir_for, train_dir_for
from med42_ray.train.config import TrainConfig
from med42_ray.train.metrics import read_metrics

if TYPE_CHECKING:  # annotations only: a stage never imports the config composition at run time
    from med42_ray.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    metrics_path: Path
    metrics: list[dict]
    checkpoint_path: str | None
    exported: dict[str, Path]


def read_manifest(prepared: PreparedDir) -> tuple[dict, list[str]]:
    data_dir, manifest_path = prepared.root, prepared.manifest
    if not manifest_path.is_file():
        raise ConfigError(f"no prepared data at {data_dir}: {manifest_path.name} not found "
                          "(run `med42-ray prepare` first, or set train.data_dir)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{manifest_path}: not valid JSON ({e})") from e
    if "seq_len" not in manifest:
        raise ConfigError(f"{manifest_path}: field 'seq_len' is missing")
    listed = manifest.get("shards")
    if isinstance(listed, list) and listed:
        shards = [str(data_dir / name) for name in listed]
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise ConfigError(f"{manifest_path}: lists shards that do not exist: {', '.join(missing[:3])}")
    else:
        shards = sorted(str(p) for p in prepared.shards.glob("*.parquet"))
    if not shards:
        raise ConfigError(f"{prepared.shards}: no .parquet shards")
    return manifest, shards


@dataclass(frozen=True)
class TrainJob:
    """What the driver decides once and hands every worker (`train_loop_config["job"]`): the
    schedule, identical on every worker, and what the loop needs besides TrainConfig. Plain
    values, so it pickles to the workers."""

    micro_per_epoch: int   # micro-batches each worker trains on per epoch
    steps_per_epoch: int   # optimizer steps per epoch
    epochs: int
    total_steps: int       # the whole run: epochs x steps_per_epoch, capped by train.max_steps
    model: str             # as configured (a name or a directory); each worker resolves it
    seed: int
    seq_len: int           # the packed row length prepare wrote (manifest)
    pad_id: int            # fills the rows of a micro-batch up to its longest (labels mask it)
    outputs: TrainDir      # metrics.jsonl, run_info.json and the exports


def count_rows(shards: list[str]) -> int:
    """Packed rows in the prepared shards, from the Parquet footers only."""
    return sum(pq.read_metadata(s).num_rows for s in shards)


def model_for_workers(model: str) -> str:
    """A local model directory as an absolute path (Ray Train runs each worker in a directory of
    its own, where a relative one is not found); a name or hub id unchanged."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def plan_job(cfg: RunConfig, manifest: dict, num_rows: int) -> TrainJob:
    """Steps per epoch and in total, identical on every worker (equal shards drop the remainder)."""
    tcfg, world = cfg.train, cfg.train.scaling.num_workers
    rows_per_worker = num_rows // world
    micro_per_epoch = rows_per_worker // tcfg.micro_batch_size
    steps_per_epoch = micro_per_epoch // tcfg.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"not enough data for one optimizer step: {num_rows} packed rows over {world} workers "
            f"with micro_batch_size {tcfg.micro_batch_size} x grad_accum {tcfg.grad_accum}")
    epochs = tcfg.resolved_epochs()
    total = epochs * steps_per_epoch
    if tcfg.max_steps is not None:
        total = min(total, tcfg.max_steps)
    return TrainJob(micro_per_epoch=micro_per_epoch, steps_per_epoch=steps_per_epoch, epochs=epochs,
                    total_steps=total, model=model_for_workers(cfg.model), seed=cfg.seed, seq_len=int(manifest["seq_len"]),
                    pad_id=0, outputs=train_dir_for(cfg))


def cpus_per_worker(tcfg: TrainConfig, cluster_cpus: float, reserved_cpus: float = 0.0) -> float:
    """Workers must leave CPU for Ray Data's read tasks, or the data never arrives and the
    workers wait forever: on a 2-core machine two 1-CPU workers would starve the reads. One CPU is
    left for the reads, `reserved_cpus` for whoever else holds some (the sweep's trial), and the
    rest is shared, floored to 0.01 so that the workers never ask for more than there is."""
    s = tcfg.scaling
    if s.cpus_per_worker is not None:
        return s.cpus_per_worker
    if s.use_gpu:
        return 1.0
    # The epsilon absorbs float error (1.13 CPUs - 1 is 12.99999999999999 hundredths), far below Ray's resolution.
    share = math.floor(100 * (cluster_cpus - 1 - reserved_cpus) / s.num_workers + 1e-9) / 100
    if share <= 0:
        others = f", data loading and {reserved_cpus:g} reserved" if reserved_cpus else " plus data loading"
        raise ConfigError(f"the Ray cluster has {cluster_cpus:g} CPUs: not enough for {s.num_workers} "
                          f"training workers{others}; lower train.scaling.num_workers")
    return min(1.0, share)


def training_dataset(shards: list[str], driver_read_max_mb: float, run_name: str):
    """The packed rows as a Ray Data dataset, in shard order, named `<run_name>.input` (the
    dashboard's Data page lists it under that name beside the Train run). Small data is read here
    and handed to Ray Data as tables: a distributed Parquet read starts read tasks, ~7 s before the
    first row on 2 CPUs and again every epoch, for what the driver reads in a blink. Larger data (a
    real mixture: gigabytes) streams from the files, so no one node holds it."""
    import ray

    from med42_ray.data.parquet_read import read_parquet
    from med42_ray.train.packing import COLUMNS

    if sum(Path(s).stat().st_size for s in shards) <= driver_read_max_mb * 2**20:
        ds = ray.data.from_arrow([pq.read_table(s, columns=list(COLUMNS)) for s in shards])
    else:
        ds = read_parquet(shards).select_columns(list(COLUMNS))  # no footer-reader actors
    ds.set_name(input_dataset_name(run_name))
    return ds


def input_dataset_name(run_name: str) -> str:
    """The name of a Train run's input stream on the dashboard: train_full -> train_full.input."""
    return f"{run_name}.input"


def run_train(cfg: RunConfig, step_hook: Callable[..., None] | None = None, callbacks: list | None = None,
              validate: Callable[..., dict] | None = None) -> TrainResult:
    """Train cfg.model on the prepared data with cfg.train; returns paths and the per-step metrics.

    `step_hook(step=, rank=)` runs on every worker after each optimizer step (tests use it to kill
    a worker); it must be picklable. `callbacks` are extra Ray Train callbacks (the sweep passes
    one that forwards reports to its Tune trial). `validate` scores held-out questions inside the
    loop every few steps and adds its metrics to that step's row (med42_ray/sweep/validation.py).
    With `train.export`, the model is exported from the final checkpoint once training is over
    (export.py), in a Ray task of its own.
    """
    import ray
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from med42_ray.cluster import connect
    from med42_ray.model import resolve_model
    from med42_ray.train import cost, export, run_record, trackers
    from med42_ray.train.loop import train_loop_per_worker

    started_at = time.time()  # the metrics' wall_s counts from here: the first step's is time-to-first-step
    tcfg = cfg.train
    data_dir = train_data_dir_for(cfg)
    manifest, shards = read_manifest(data_dir)
    job = plan_job(cfg, manifest, count_rows(shards))  # before Ray starts: a too-small dataset fails fast
    outputs = job.outputs
    outputs.root.mkdir(parents=True, exist_ok=True)
    resolve_model(cfg.model)  # fail fast here, and build the tiny model once for local workers
    cfg = cfg.model_copy(update={"train": tcfg.model_copy(update={"resume": resume_source(cfg, job)})})
    tcfg = cfg.train
    run_record.check_and_record(storage_path_for(cfg), tcfg, cfg.model, manifest)
    refuse_unresumable(cfg)
    connect(cfg.ray)

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # per-step metrics are the progress report
    dataset = training_dataset(shards, tcfg.driver_read_max_mb, tcfg.run_name)
    world = tcfg.scaling.num_workers
    log.info("training %s (%s) on %s: %s", cfg.model, tcfg.strategy, data_dir.root, job)

    resources = {"CPU": cpus_per_worker(tcfg, ray.cluster_resources().get("CPU", 0)),
                 **(tcfg.scaling.resources_per_worker or {})}
    if tcfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": tcfg.model_dump(), "job": job, "step_hook": step_hook, "validate": validate,
                           "started_at": started_at, "trackers": trackers.plan(cfg, outputs.root)},
        scaling_config=ScalingConfig(num_workers=world, use_gpu=tcfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=tcfg.run_name,  # the run's name on the dashboard's Train page, and its storage dir
            storage_path=storage_path_for(cfg),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tcfg.keep_checkpoints),
            callbacks=callbacks,
        ),
        datasets={"train": dataset},
        # Order-preserving split: each worker gets the same rows in the same order on every
        # (re)start, which is what lets a resumed run repeat the uninterrupted one exactly.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True),
                                  enable_shard_locality=False),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if tcfg.export:
        export.export_final_checkpoint(result.checkpoint, tcfg, job, manifest)
    metrics = read_metrics(outputs.metrics) if outputs.metrics.is_file() else []
    exported = outputs.exported(tcfg.strategy) if tcfg.export else {}
    cost.write_cost(cfg, job, time.time() - started_at, resources["CPU"], result.checkpoint, exported, metrics)
    return TrainResult(
        output_dir=outputs.root,
        metrics_path=outputs.metrics,
        metrics=metrics,
        checkpoint_path=result.checkpoint.path if result.checkpoint is not None else None,
        exported=exported,
    )


def resume_source(cfg: RunConfig, job: TrainJob) -> str:
    """train.resume as the workers get it: auto or never, or the checkpoint to start from, as an
    absolute path, checked here (presence and sizes, as `refuse_unresumable` checks a run's own)
    so that a wrong one fails before Ray starts rather than in every worker."""
    from med42_ray.data.filesystems import is_uri
    from med42_ray.paths import resolve_path
    from med42_ray.train import checkpointing, run_record

    resume = cfg.train.resume
    if resume in (run_record.AUTO, run_record.NEVER) or is_uri(resume):
        return resume  # a URI: the workers check it, as they check every checkpoint
    path = resolve_path(resume).resolve()
    if not path.is_dir():
        raise ConfigError(f"train.resume: no checkpoint directory at {path} (a step_* directory of a run's "
                          "storage, or auto or never)")
    try:
        found = checkpointing.problem(path, cfg.train.scaling.num_workers, hash_ranks=())
    except checkpointing.CheckpointError as e:  # written by another number of workers
        raise ConfigError(f"train.resume: {e}") from None
    if found is not None:
        raise ConfigError(f"train.resume: {path} is not an intact checkpoint: {found}")
    step = json.loads((path / checkpointing.marker_name(0)).read_text())["step"]
    if step >= job.total_steps:
        raise ConfigError(f"train.resume: {path} is at step {step}, and this run trains {job.total_steps} "
                          "steps in all: nothing would be left to train (raise train.max_steps or epochs)")
    return str(path)


def refuse_unresumable(cfg: RunConfig) -> None:
    """A rerun of a run whose checkpoints are all broken fails here, before any worker starts: in
    the workers (loop._resume) the same error would come back on every retry Ray Train makes.
    Local storage, presence and sizes only (no download, no hashing); the workers check the rest."""
    from ray.train import Result

    from med42_ray.train import checkpointing

    storage = storage_path_for(cfg)
    run = Path(storage) / cfg.train.run_name
    if "://" in storage or not run.is_dir():
        return
    try:
        latest = Result.from_path(str(run)).checkpoint
    except RuntimeError:  # no checkpoint snapshot: nothing was registered, training starts afresh
        return
    broken = []
    for ckpt in checkpointing.candidates(latest) if latest is not None else []:
        try:
            found = checkpointing.problem(ckpt.path, cfg.train.scaling.num_workers, hash_ranks=())
        except checkpointing.CheckpointError as e:  # written by another number of workers
            raise ConfigError(str(e)) from None
        if found is None:
            return
        broken.append((ckpt.path, found))
    if broken:
        raise ConfigError(checkpointing.none_intact_message(broken))


def export_finished_run(cfg: RunConfig) -> dict[str, Path]:
    """Export a run that trained to its last step with `train.export` off, from that step's
    checkpoint in storage (the sweep's trials train so, and only the best is exported)."""
    from ray.train import Result

    from med42_ray.train import export
    from med42_ray.train.checkpointing import checkpoint_step

    manifest, shards = read_manifest(train_data_dir_for(cfg))
    job = plan_job(cfg, manifest, count_rows(shards))
    run = f"{storage_path_for(cfg)}/{cfg.train.run_name}"
    # Ray Train's latest registered checkpoint, not a name built from the step: a run resumed past
    # broken checkpoints tags its later ones (checkpointing.checkpoint_dir_name).
    final = Result.from_path(run).checkpoint
    if final is None or checkpoint_step(final.path) != job.total_steps:
        raise ConfigError(f"{run}: the run did not checkpoint its last step ({job.total_steps}); "
                          f"latest: {final.path if final else 'none'}")
    export.export_final_checkpoint(final, cfg.train, job, manifest)
    return job.outputs.exported(cfg.train.strategy)
