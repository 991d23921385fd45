"""The one training loop, run by every Ray Train worker, for both strategies.

Per optimizer step: take `grad_accum` packed micro-batches from this worker's Ray Data shard,
agree with the other workers on the number of answer tokens in the global batch, run forward and
backward through the DeepSpeed engine, step (clipping, AdamW, warmup + cosine schedule), write the
step's metrics to metrics.jsonl, and checkpoint every `checkpoint_every_steps` and at epoch ends.
Metrics reach Ray Train every `report_every_s` (and with every checkpoint): each `ray.train.report`
is a barrier of all workers through Ray's actors, which on short steps cost more than the step.

A step's time runs from the end of the previous step to the end of this one, so it includes
data loading, collectives, reports and checkpoints: tokens/s and MFU are what the run really gets.

Everything that makes a resumed run repeat an uninterrupted one lives in the checkpoint: model,
optimizer and scheduler (DeepSpeed), RNG and the position in the data (checkpointing.py). The
data order is reproducible because the shard split preserves order (trainer.py) and the local
shuffle is seeded per (epoch, rank); resuming mid-epoch skips the micro-batches already used.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from med42_ray.ray_metrics import TrainStepMetrics
from med42_ray.train import checkpointing, cost
from med42_ray.train.checkpointing import TrainState
from med42_ray.train.config import TrainConfig
from med42_ray.train.metrics import MetricsLog, flops_per_token, peak_flops
from med42_ray.train.packing import PackedBatch, attention_implementation, collate_packed, fixed_width, loss_sum
from med42_ray.train.progress import ProgressLog, quiet_library_noise, say
from med42_ray.train.trackers import Trackers

if TYPE_CHECKING:  # annotations only
    from med42_ray.train.strategies import BuiltModel
    from med42_ray.train.trainer import TrainJob


class PackedCollate(NumpyBatchCollateFn):
    """Ray Data hands each worker numpy batches of packed rows; we make a PackedBatch of them, every
    one `width` tokens wide if set (flex_attention: packing.fixed_width)."""

    def __init__(self, pad_id: int, vocab_size: int, width: int | None = None):
        self.pad_id, self.vocab_size, self.width = pad_id, vocab_size, width

    def __call__(self, batch) -> PackedBatch:
        return collate_packed(batch, pad_id=self.pad_id, vocab_size=self.vocab_size, width=self.width)


@dataclass
class Rank0Reporters:
    """Where rank 0 sends each step's row: metrics.jsonl, the dashboard's Prometheus gauges, the
    job log's progress line (and one line on the first step), train.report_to's trackers."""

    metrics_log: MetricsLog
    gauges: TrainStepMetrics
    progress: ProgressLog
    trackers: Trackers | None
    first_step_logged: bool = False

    @classmethod
    def for_run(cls, cfg: TrainConfig, job: TrainJob, start_step: int, config: dict[str, Any]) -> Rank0Reporters:
        return cls(MetricsLog(job.outputs.metrics, start_step), TrainStepMetrics(cfg.run_name),
                   ProgressLog(cfg.log_every_steps, job.total_steps, job.epochs, config["started_at"]),
                   Trackers(config["trackers"]) if cfg.report_to else None)

    def record(self, row: dict, world: int) -> None:
        self.metrics_log.write(row)
        self.gauges.record(row)
        if not self.first_step_logged:
            self.first_step_logged = True
            say(f"step {row['step']} done {row['wall_s']:.1f}s after the run started (data "
                f"{row['data_wait_s']:.1f}s, compute {row['compute_s']:.1f}s; {world} worker(s) x "
                f"{torch.get_num_threads()} torch threads); start-up in run_info.json")
        self.progress.step(row, time.time())
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


@dataclass
class _Worker:
    """One worker's part of the run: what every step of the loop below needs."""

    cfg: TrainConfig
    job: TrainJob
    rank: int
    world: int
    device: torch.device
    engine: Any                 # the DeepSpeed engine
    built: BuiltModel           # kept alive: transformers treats the model as ZeRO-3 only while it is
    step_hook: Callable[..., None] | None  # tests inject failures through this
    # Optional held-out scoring every N steps (med42-ray sweep: its val_accuracy drives ASHA, which
    # can also stop the run early, without export); see med42_ray/sweep/validation.py.
    validate: Any | None        # a med42_ray.sweep.validation.Validation
    reporters: Rank0Reporters | None  # rank 0 only: where each step's row goes
    model_flops: float          # per token
    peak: float | None          # FLOP/s of one worker; None: no MFU
    started_at: float           # time.time() when the driver started the run (wall_s counts from it)
    last_step_end: float = 0.0  # perf_counter at the end of the previous step (see the module doc)
    last_report: float = 0.0    # perf_counter when metrics last reached Ray Train
    unreported: list[dict] = field(default_factory=list)  # rows since then
    checkpoint_tag: str = ""    # set when resumed past broken checkpoints (checkpointing.checkpoint_dir_name)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Every worker: build the engine, resume, train epoch by epoch (see the module doc). Export
    runs after the run, from its final checkpoint, outside this group (trainer.run_train)."""
    import ray.train
    import ray.train.torch

    entered = time.time()
    quiet_library_noise()
    cfg = TrainConfig.model_validate(config["train"])
    job: TrainJob = config["job"]  # planned on the driver (trainer.plan_job)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Asking for the shard first starts Ray Data's split coordinator (an actor: a new process, ~2 s
    # on 2 CPUs) while this worker builds its engine, instead of when the first batch is wanted.
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    if cfg.scaling.threads_per_worker:
        torch.set_num_threads(cfg.scaling.threads_per_worker)
    engine, built = _setup_engine(cfg, job, rank, world)
    torch.manual_seed(job.seed * 1000 + rank + 1)  # each rank its own dropout stream
    state, fell_back = _resume(engine, cfg, rank, world)
    w = _Worker(cfg, job, rank, world, device, engine, built,
                step_hook=config.get("step_hook"), validate=config.get("validate"),
                reporters=Rank0Reporters.for_run(cfg, job, state.step, config) if rank == 0 else None,
                model_flops=_model_flops(engine, job.seq_len), peak=peak_flops(cfg.peak_tflops),
                started_at=config["started_at"],
                checkpoint_tag=f"resumed{int(config['started_at'])}" if fell_back else "")
    if rank == 0:
        # Where start-up went, in seconds after run_train started: Ray Train's controller and the
        # worker processes (imports included) until this function ran, then engine and resume.
        _write_run_info(w, startup_s={"worker_started": entered - w.started_at,
                                      "engine_ready": time.time() - w.started_at})
    collate = PackedCollate(job.pad_id, engine.module.config.vocab_size,
                            width=fixed_width(attention_implementation(engine), job.seq_len))
    engine.train()

    w.last_step_end = w.last_report = time.perf_counter()
    stopped = False  # the sweep's scheduler stopped this run early (validate.stop_requested)
    while not stopped and state.epoch < job.epochs and state.step < job.total_steps:
        stopped = _run_epoch(w, state, shard, collate)
    peaks = cost.gather_peak_memory(device, world)  # every rank left the loop at the same step
    if rank == 0:
        cost.write_worker_memory(job.outputs, peaks)
    if w.reporters is not None:
        w.reporters.close()


def _setup_engine(cfg: TrainConfig, job: TrainJob, rank: int, world: int) -> tuple[Any, BuiltModel]:
    """The DeepSpeed engine around the seeded model, its optimizer and warmup + cosine schedule."""
    import deepspeed
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from med42_ray.model import resolve_model
    from med42_ray.train import strategies

    use_gpu = cfg.scaling.use_gpu
    if not use_gpu:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel when it starts (over a
        # minute on 2 cores, and again whenever another process builds it with other flags, e.g. a job
        # after a local run). Only `inference_all_reduce` uses it; training never does. DeepSpeed
        # keeps this table in its module so that edits to it hold.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Ray Train already created the process group; DeepSpeed adopts it.
    t0 = time.perf_counter()
    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    t_dist = time.perf_counter()
    torch.manual_seed(job.seed)  # identical init (LoRA adapters) on every rank
    model_path = resolve_model(job.model)
    ds_config = strategies.deepspeed_config(cfg, world, use_gpu)
    built = strategies.build_model(cfg, model_path, ds_config, use_gpu)
    groups = strategies.optimizer_groups(built.model, cfg.weight_decay)
    optimizer = None if cfg.offload_optimizer else torch.optim.AdamW(
        groups, lr=cfg.resolved_lr(), betas=cfg.adam_betas, eps=cfg.adam_eps)
    schedule = partial(get_cosine_with_min_lr_schedule_with_warmup,
                       num_warmup_steps=round(cfg.warmup_ratio * job.total_steps),
                       num_training_steps=job.total_steps, min_lr_rate=cfg.min_lr_ratio)
    t1 = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=built.model, model_parameters=groups, optimizer=optimizer,
                                           lr_scheduler=schedule, config=ds_config)
    if rank == 0:
        say(f"DeepSpeed distributed init in {t_dist - t0:.1f}s, model built in {t1 - t_dist:.1f}s, "
            f"DeepSpeed engine in {time.perf_counter() - t1:.1f}s")
    return engine, built


def _resume(engine, cfg: TrainConfig, rank: int, world: int) -> tuple[TrainState, bool]:
    """Where training starts: the newest intact checkpoint's position (model, optimizer and RNG
    restored), else 0. Ray Train offers its latest; one that fails `checkpointing.problem` is
    never loaded (it would fail the same way on every retry Ray Train makes) but named in one line,
    and an older one of the run is used. None intact: an error naming each, for the user to decide
    (trainer.run_train refuses such a run before any worker starts, from the files' sizes).
    Also returns whether a broken checkpoint was passed over.

    A run with no checkpoint of its own yet starts from `train.resume`'s checkpoint when it names
    one (checked by the driver, trainer.resume_source; Ray Train V2's way to seed a run), and from
    that one only: the checkpoints beside it belong to another run."""
    import ray.train

    from med42_ray.train.run_record import AUTO, NEVER

    latest = ray.train.get_checkpoint()
    if latest is None and cfg.resume not in (AUTO, NEVER):
        tried = [ray.train.Checkpoint(cfg.resume)]
    elif latest is None:
        return TrainState(), False
    else:
        tried = checkpointing.candidates(latest)
    broken = []
    for ckpt in tried:
        with ckpt.as_directory() as ckpt_dir:
            found = _agreed_problem(checkpointing.problem(ckpt_dir, world, hash_ranks=[rank]), world)
            if found is None:
                state = checkpointing.restore(engine, ckpt_dir, rank, world, lora=cfg.strategy == "lora")
                if rank == 0:
                    say(checkpointing.resume_line(ckpt.path, state.step, state.epoch, broken))
                return state, bool(broken)
        broken.append((ckpt.path, found))
    raise checkpointing.CheckpointError(checkpointing.none_intact_message(broken))


def _agreed_problem(mine: str | None, world: int) -> str | None:
    """Every rank hashed its own files: the first problem any rank found, the same on all of them,
    so that all load the same checkpoint."""
    if world == 1:
        return mine
    found: list[str | None] = [None] * world
    dist.all_gather_object(found, mine)
    return next((f for f in found if f is not None), None)


def _model_flops(engine, seq_len: int) -> float:
    config = engine.module.config
    return flops_per_token(engine.module, config.num_hidden_layers, config.hidden_size, seq_len)


def _write_run_info(w: _Worker, startup_s: dict[str, float]) -> None:
    """What the report needs besides the per-step metrics."""
    from med42_ray.train import strategies

    cfg, job = w.cfg, w.job
    trainable, total = strategies.trainable_parameters(w.engine.module)
    path = job.outputs.run_info
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "strategy": cfg.strategy, "model": job.model, "trainable_params": trainable,
        "total_params": total, "world_size": w.world, "zero_stage": cfg.resolved_zero_stage(),
        "seq_len": job.seq_len, "flops_per_token": w.model_flops,
        "peak_flops_per_worker": w.peak, "total_steps": job.total_steps, "epochs": job.epochs,
        "lr": cfg.resolved_lr(), "adapters": cfg.adapter_settings(),
        "startup_s": startup_s},
        indent=1) + "\n")


def _run_epoch(w: _Worker, state: TrainState, shard, collate: PackedCollate) -> bool:
    """Train on the rest of the current epoch (up to the run's last step); True if the sweep stopped the run."""
    cfg, job = w.cfg, w.job
    batches = iter(shard.iter_torch_batches(
        batch_size=cfg.micro_batch_size, collate_fn=collate, drop_last=True,
        local_shuffle_buffer_size=cfg.shuffle_buffer_rows or None,
        local_shuffle_seed=(job.seed + 7919 * state.epoch + w.rank) if cfg.shuffle_buffer_rows else None))
    for _ in range(state.micro_in_epoch):  # resume: skip what this epoch already trained on
        next(batches)
    stopped = False
    while state.micro_in_epoch + cfg.grad_accum <= job.micro_per_epoch and state.step < job.total_steps:
        row = _optimizer_step(w, state, batches)
        epoch_done = state.micro_in_epoch + cfg.grad_accum > job.micro_per_epoch
        if epoch_done:
            state.epoch += 1
            state.micro_in_epoch = 0
        validated = w.validate is not None and w.validate.due(state.step, job.total_steps)
        _record(w, state, row, forced=epoch_done or validated or state.step == job.total_steps,
                with_checkpoint=epoch_done or _checkpoint_due(w, state))
        if w.step_hook is not None:
            w.step_hook(step=state.step, rank=w.rank)
        stopped = _stop_requested(w, state)
        if epoch_done or stopped:
            break
    if not stopped:
        for _ in batches:  # finish the epoch on every rank so the shared split advances together
            pass
    return stopped


def _optimizer_step(w: _Worker, state: TrainState, batches) -> dict:
    """Fetch `grad_accum` micro-batches, train on them, advance `state`; returns the step's metrics row."""
    fetch = time.perf_counter()
    micro = [next(batches).to(w.device) for _ in range(w.cfg.grad_accum)]
    compute = time.perf_counter()
    lr_used = w.engine.get_lr()[0]  # the scheduler moves on inside the step
    row = _train_step(w.engine, micro, w.world, w.cfg.grad_accum, w.device)
    done = time.perf_counter()
    state.step += 1
    state.micro_in_epoch += w.cfg.grad_accum
    state.tokens_seen += row["tokens"]
    elapsed, w.last_step_end = done - w.last_step_end, done
    row.update(step=state.step, epoch=state.epoch, lr=lr_used,
               tokens_per_s=row["tokens"] / elapsed, step_time_s=elapsed,
               data_wait_s=compute - fetch, compute_s=done - compute, tokens_seen=state.tokens_seen,
               wall_s=time.time() - w.started_at)
    row["mfu"] = w.model_flops * row["tokens_per_s"] / (w.peak * w.world) if w.peak else None
    if w.validate is not None and w.validate.due(state.step, w.job.total_steps):
        # On every rank (under ZeRO-3 forwards are collective); the metrics join this step's
        # row, so they reach metrics.jsonl and ray.train.report together.
        w.engine.eval()
        row.update(w.validate(w.engine.module, rank=w.rank, world=w.world, device=w.device,
                              params_partitioned=w.cfg.resolved_zero_stage() == 3))
        w.engine.train()
    return row


def _checkpoint_due(w: _Worker, state: TrainState) -> bool:
    """Checkpoint at the last step and every `checkpoint_every_steps` (epoch ends always checkpoint)."""
    every = w.cfg.checkpoint_every_steps
    return state.step == w.job.total_steps or bool(every and state.step % every == 0)


def _stop_requested(w: _Worker, state: TrainState) -> bool:
    """Has the sweep's scheduler stopped this run? Collective, so every rank leaves at the same
    step; never after the last step (a trial stopped there has finished and is still exported)."""
    return (w.validate is not None and state.step < w.job.total_steps
            and w.validate.stop_requested(rank=w.rank, device=w.device))


def _train_step(engine, micro: list, world: int, grad_accum: int, device) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns the step's global metrics."""
    counts = torch.tensor([sum(b.loss_tokens for b in micro), sum(b.real_tokens for b in micro),
                           sum(b.padded_tokens for b in micro)], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    loss_tokens = max(counts[0].item(), 1.0)
    # DeepSpeed divides by grad_accum and averages over workers; scale so the gradient is that of
    # the mean over every answer token in the global batch, however they are spread.
    scale = world * grad_accum / loss_tokens
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in micro:
        summed = loss_sum(engine, batch)
        engine.backward(summed * scale)
        engine.step()
        total += summed.detach().double()
    dist.all_reduce(total)
    grad_norm = engine.get_global_grad_norm()
    return {
        "loss": total.item() / loss_tokens,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "tokens": int(counts[1].item()),
        "loss_tokens": int(counts[0].item()),
        "non_padding_fraction": counts[1].item() / counts[2].item(),
    }


def _record(w: _Worker, state: TrainState, row: dict, forced: bool, with_checkpoint: bool) -> None:
    """Write the row to metrics.jsonl (rank 0); report to Ray Train when due (see `_report_due`)."""
    if w.reporters is not None:
        w.reporters.record(row, w.world)
    w.unreported.append(row)
    if with_checkpoint or _report_due(w, forced):
        _report(w, state, _report_row(w.unreported), with_checkpoint)
        w.unreported.clear()
        w.last_report = time.perf_counter()


def _report_due(w: _Worker, forced: bool) -> bool:
    """Every worker must call ray.train.report equally often, so rank 0's clock decides for all."""
    if forced:
        return True
    due = w.rank == 0 and time.perf_counter() - w.last_report >= w.cfg.report_every_s
    if w.world == 1:
        return due
    flag = torch.tensor([float(due)], device=w.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _report_row(rows: list[dict]) -> dict:
    """The last step's metrics, plus the token-weighted loss and the throughput over every step
    since the previous report (those steps' own rows are in metrics.jsonl)."""
    last, tokens = dict(rows[-1]), sum(r["tokens"] for r in rows)
    loss_tokens = sum(r["loss_tokens"] for r in rows)
    last.update(steps_in_report=len(rows),
                interval_loss=sum(r["loss"] * r["loss_tokens"] for r in rows) / max(loss_tokens, 1),
                interval_tokens_per_s=tokens / sum(r["step_time_s"] for r in rows))
    return last


def _report(w: _Worker, state: TrainState, row: dict, with_checkpoint: bool) -> None:
    """Report the row to Ray Train, with this rank's part of a checkpoint if asked."""
    import ray.train
    from ray.train import CheckpointUploadMode

    if not with_checkpoint:
        ray.train.report(row)
        return
    cfg = w.cfg
    local = checkpointing.save(w.engine, state, w.rank, w.world, lora=cfg.strategy == "lora",
                               with_optimizer=_optimizer_in_checkpoint(w, state),
                               local_root=cfg.checkpoint_local_dir)
    upload_async = cfg.checkpoint_upload == "async"
    try:
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                         checkpoint_dir_name=checkpointing.checkpoint_dir_name(state.step, w.checkpoint_tag),
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC if upload_async else CheckpointUploadMode.SYNC)
    finally:
        if not upload_async:  # async: Ray deletes the local copy once it is uploaded
            shutil.rmtree(local, ignore_errors=True)


def _optimizer_in_checkpoint(w: _Worker, state: TrainState) -> bool:
    """Everything at epoch ends (the epoch counter has just rolled over: no micro-batch of the new
    one is used yet) and at the last step; weights-only in between if so configured, under ZeRO-3
    (whose master-weights partitions that format is; below it checkpoints are small already)."""
    return (w.cfg.checkpoint_optimizer == "every" or w.cfg.resolved_zero_stage() != 3
            or state.micro_in_epoch == 0 or state.step == w.job.total_steps)
