"""The one training loop, run by every Ray Train worker, for both strategies.

Per optimizer step: take `grad_accum` packed micro-batches from this worker's Ray Data shard,
agree with the other workers on the number of answer tokens in the global batch, run forward and
backward through the DeepSpeed engine, step (clipping, AdamW, warmup + cosine schedule), then
report metrics to Ray Train, with a checkpoint every `checkpoint_every_steps` and at epoch ends.

Everything that makes a resumed run repeat an uninterrupted one lives in the checkpoint: model,
optimizer and scheduler (DeepSpeed), RNG and the position in the data (checkpointing.py). The
data order is reproducible because the shard split preserves order (trainer.py) and the local
shuffle is seeded per (epoch, rank); resuming mid-epoch skips the micro-batches already used.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from med42_ray.train import checkpointing
from med42_ray.train.checkpointing import TrainState
from med42_ray.train.config import TrainConfig
from med42_ray.train.metrics import MetricsLog, flops_per_token, peak_flops
from ray.data.collate_fn import NumpyBatchCollateFn

from med42_ray.train.packing import PackedBatch, collate_packed, loss_sum


class PackedCollate(NumpyBatchCollateFn):
    """Ray Data hands each worker numpy batches of packed rows; we make a PackedBatch of them."""

    def __init__(self, pad_id: int, vocab_size: int):
        self.pad_id, self.vocab_size = pad_id, vocab_size

    def __call__(self, batch) -> PackedBatch:
        return collate_packed(batch, pad_id=self.pad_id, vocab_size=self.vocab_size)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from med42_ray.model import resolve_model
    from med42_ray.train import export, strategies

    cfg = TrainConfig.model_validate(config["train"])
    job = config["job"]  # computed on the driver: steps, paths, seq_len (see trainer.py)
    step_hook = config.get("step_hook")  # tests inject failures through this
    # Optional held-out scoring every N steps (med42-ray sweep: its val_accuracy drives ASHA, which
    # can also stop the run early, without export); see med42_ray/sweep/validation.py.
    validate = config.get("validate")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.scaling.use_gpu
    device = ray.train.torch.get_device()

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
    torch.manual_seed(job["seed"])  # identical init (LoRA adapters) on every rank
    model_path = resolve_model(job["model"])
    ds_config = strategies.deepspeed_config(cfg, world, use_gpu)
    built = strategies.build_model(cfg, model_path, ds_config, use_gpu)
    model = built.model
    lr = cfg.resolved_lr()
    groups = strategies.optimizer_groups(model, cfg.weight_decay)
    optimizer = None if cfg.offload_optimizer else torch.optim.AdamW(
        groups, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    total_steps = job["total_steps"]
    schedule = partial(get_cosine_with_min_lr_schedule_with_warmup,
                       num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                       num_training_steps=total_steps, min_lr_rate=cfg.min_lr_ratio)
    t1 = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                           lr_scheduler=schedule, config=ds_config)
    if rank == 0:
        print(f"[med42-ray] DeepSpeed distributed init in {t_dist - t0:.1f}s, model built in {t1 - t_dist:.1f}s, "
              f"DeepSpeed engine in {time.perf_counter() - t1:.1f}s", flush=True)

    torch.manual_seed(job["seed"] * 1000 + rank + 1)  # each rank its own dropout stream
    state = TrainState()
    resumed = ray.train.get_checkpoint()
    if resumed is not None:  # restores the RNG too
        with resumed.as_directory() as ckpt_dir:
            state = checkpointing.restore(engine, ckpt_dir, rank, world, lora=cfg.strategy == "lora")
        if rank == 0:
            print(f"[med42-ray] resumed from checkpoint {resumed.path}: step {state.step}, "
                  f"epoch {state.epoch}", flush=True)

    metrics_log = MetricsLog(Path(job["metrics_path"]), state.step) if rank == 0 else None
    n_layers, d_model = engine.module.config.num_hidden_layers, engine.module.config.hidden_size
    model_flops = flops_per_token(engine.module, n_layers, d_model, job["seq_len"])
    peak = peak_flops(cfg.peak_tflops)
    if rank == 0:  # what the report needs besides per-step metrics
        trainable, total = strategies.trainable_parameters(engine.module)
        _write_json(Path(job["output_dir"]) / "run_info.json", {
            "strategy": cfg.strategy, "model": job["model"], "trainable_params": trainable,
            "total_params": total, "world_size": world, "zero_stage": cfg.resolved_zero_stage(),
            "seq_len": job["seq_len"], "flops_per_token": model_flops,
            "peak_flops_per_worker": peak, "total_steps": total_steps, "epochs": job["epochs"],
            "lr": lr, "lora": cfg.lora.model_dump() if cfg.strategy == "lora" else None})
    vocab = engine.module.config.vocab_size
    collate = PackedCollate(job["pad_id"], vocab)
    shard = ray.train.get_dataset_shard("train")
    engine.train()

    # A step's time runs from the end of the previous step's report to its own report, so it
    # includes data loading, collectives and checkpoints: tokens/s is what the run really gets.
    started = time.perf_counter()
    stopped = False  # the sweep's scheduler stopped this run early (validate.stop_requested)
    while not stopped and state.epoch < job["epochs"] and state.step < total_steps:
        batches = iter(shard.iter_torch_batches(
            batch_size=cfg.micro_batch_size, collate_fn=collate, drop_last=True,
            local_shuffle_buffer_size=cfg.shuffle_buffer_rows or None,
            local_shuffle_seed=(job["seed"] + 7919 * state.epoch + rank) if cfg.shuffle_buffer_rows else None))
        for _ in range(state.micro_in_epoch):  # resume: skip what this epoch already trained on
            next(batches)
        while state.micro_in_epoch + cfg.grad_accum <= job["micro_per_epoch"] and state.step < total_steps:
            fetch = time.perf_counter()
            micro = [next(batches).to(device) for _ in range(cfg.grad_accum)]
            compute = time.perf_counter()
            lr_used = engine.get_lr()[0]  # the scheduler moves on inside the step
            row = _train_step(engine, micro, world, cfg.grad_accum, device)
            done = time.perf_counter()
            state.step += 1
            state.micro_in_epoch += cfg.grad_accum
            state.tokens_seen += row["tokens"]
            elapsed = done - started
            row.update(step=state.step, epoch=state.epoch, lr=lr_used,
                       tokens_per_s=row["tokens"] / elapsed, step_time_s=elapsed,
                       data_wait_s=compute - fetch, compute_s=done - compute, tokens_seen=state.tokens_seen)
            row["mfu"] = model_flops * row["tokens_per_s"] / (peak * world) if peak else None
            if validate is not None and validate.due(state.step, total_steps):
                # On every rank (under ZeRO-3 forwards are collective); the metrics join this
                # step's row, so they reach metrics.jsonl and ray.train.report together.
                engine.eval()
                row.update(validate(engine.module, rank=rank, world=world, device=device,
                                    params_partitioned=cfg.resolved_zero_stage() == 3))
                engine.train()
            epoch_done = state.micro_in_epoch + cfg.grad_accum > job["micro_per_epoch"]
            if epoch_done:
                state.epoch += 1
                state.micro_in_epoch = 0
            want_ckpt = epoch_done or state.step == total_steps or (
                cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0)
            _report(engine, state, row, rank, world, cfg, want_ckpt, metrics_log)
            started = time.perf_counter()
            if step_hook is not None:
                step_hook(step=state.step, rank=rank)
            # Collective, so every rank leaves at the same step; never after the last step (a
            # trial stopped there has finished and is still exported).
            stopped = (validate is not None and state.step < total_steps
                       and validate.stop_requested(rank=rank, device=device))
            if epoch_done or stopped:
                break
        if not stopped:
            for _ in batches:  # finish the epoch on every rank so the shared split advances together
                pass

    if cfg.export and state.step > 0 and not stopped:
        export.export_model(engine, cfg, model_path, Path(job["output_dir"]), rank)
    if dist.is_initialized():
        dist.barrier()


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


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


def _report(engine, state: TrainState, row: dict, rank: int, world: int, cfg: TrainConfig,
            with_checkpoint: bool, log: MetricsLog | None) -> None:
    import ray.train

    if log is not None:
        log.write(row)
    if not with_checkpoint:
        ray.train.report(row)
        return
    local = checkpointing.save(engine, state, rank, world, lora=cfg.strategy == "lora")
    try:
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                         checkpoint_dir_name=f"step_{state.step:08d}")
    finally:
        shutil.rmtree(local, ignore_errors=True)
