"""Parts (b) and (c): `prepare` on the embedded sample, then full (ZeRO-3) and LoRA training through
our real trainer (`run_train`: Ray Train, one worker, DeepSpeed), with tokens/s, MFU and peak memory.

MFU = model FLOPs per token (train/metrics.py, the PaLM convention, as run_info.json records it) x
real tokens per second (steps after the warm-up; a step's time includes data loading and the
per-step report) / a FLOP/s ceiling: the datasheet's dense bf16 peak for the GPU (metrics.py's
table, as the trainer looked it up) and the bf16 matrix-product rate measured in the same run.
"""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIG = REPO / "med42_ray" / "configs" / "llama-2-7b.yaml"


def paper_attention() -> str:
    """The attention kernel the paper configs train with (one home: that config file)."""
    train = yaml.safe_load(PAPER_CONFIG.read_text()).get("train") or {}
    return train.get("attn_implementation", "sdpa")


def prepare_sample(run_dir: Path, seq_len: int, repeat: float) -> tuple[Path, dict]:
    """`prepare` on the embedded sample mixture (every source's weight x `repeat`, so that the run
    has enough packed rows of `seq_len` tokens for its steps within one epoch)."""
    from med42_ray.config import load_config
    from med42_ray.data.pipeline import run_prepare

    cfg = load_config(None, [f"run_dir={run_dir}", f"prepare.seq_len={seq_len}", "ray.dashboard=false"])
    for source in cfg.prepare.sources:
        source.weight = source.weight * repeat
    manifest = run_prepare(cfg)
    return run_dir / "prepared", manifest


class PeakMemory:
    """Ray Train step hook (run on the worker after every optimizer step): the worker's peak memory
    so far, appended to a JSON-lines file. On a GPU the caching allocator's peaks, on CPU the
    process's peak resident set."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __call__(self, step: int, rank: int) -> None:
        import torch

        row = {"step": step, "rank": rank}
        if torch.cuda.is_available():
            row.update(max_allocated=torch.cuda.max_memory_allocated(), max_reserved=torch.cuda.max_memory_reserved())
        else:
            row["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def train_overrides(run_dir: Path, model_dir: str, prepared: Path, strategy: str, steps: int, micro_batch: int,
                    gpu: bool, attn: str) -> list[str]:
    """One worker, no activation recomputation (a 1.1B model fits an H200 without it, and MFU
    counts no recomputation), no intermediate checkpoint, no export."""
    return [f"run_dir={run_dir}", f"model={model_dir}", f"train.data_dir={prepared}", f"train.strategy={strategy}",
            f"train.max_steps={steps}", f"train.micro_batch_size={micro_batch}", "train.grad_accum=1",
            "train.gradient_checkpointing=false", "train.checkpoint_every_steps=null", "train.export=false",
            "train.max_failures=0", "train.scaling.num_workers=1", f"train.scaling.use_gpu={str(gpu).lower()}",
            f"train.precision={'bf16' if gpu else 'fp32'}", f"train.attn_implementation={attn}",
            f"train.run_name=gpu_check_{strategy}", "ray.dashboard=false"]


def usable_steps(manifest: dict, steps: int, micro_batch: int) -> int:
    """At most the run's first epoch: an epoch end writes a full checkpoint (14 bytes/parameter)."""
    return max(1, min(steps, manifest["sequences"] // micro_batch))


def train(run_dir: Path, model_dir: str, prepared: Path, manifest: dict, strategy: str, steps: int,
          warmup: int, micro_batch: int, gpu: bool, attn: str, matmul_flops: float | None) -> dict:
    from med42_ray.config import load_config
    from med42_ray.layout import train_dir_for
    from med42_ray.train.trainer import run_train

    steps = usable_steps(manifest, steps, micro_batch)
    shutil.rmtree(run_dir, ignore_errors=True)  # Ray Train would resume an earlier run of the same name
    cfg = load_config(None, train_overrides(run_dir, model_dir, prepared, strategy, steps, micro_batch, gpu, attn))
    memory_log = run_dir / f"peak_memory_{strategy}.jsonl"
    result = run_train(cfg, step_hook=PeakMemory(memory_log))
    outputs = train_dir_for(cfg)
    info = json.loads(outputs.run_info.read_text())
    return summarise(result.metrics, info, warmup, matmul_flops, memory_log) | {
        "attn_implementation": attn, "micro_batch": micro_batch, "seq_len": manifest["seq_len"],
        "cost": cost_record(outputs)}


def cost_record(outputs) -> dict:
    """What the report's cost section reads of this run (train/cost.py): the worker's peaks as
    worker_memory.json has them (on a GPU, torch's device peak: the GPU path of that code) and
    the plan's estimates beside the measured wall time and memory."""
    cost = json.loads(outputs.cost.read_text())
    (worker,) = json.loads(outputs.worker_memory.read_text())["workers"]
    plan = cost["plan"]
    return {"wall_time_s": cost["wall_time_s"], "accelerator": cost["accelerator"],
            "accelerator_hours": cost["accelerator_hours"], "checkpoint_bytes": cost["checkpoint_bytes"],
            "device_bytes": worker["device_bytes"], "host_bytes": worker["host_bytes"],
            "plan_wall_time_s": plan["wall_time_s"], "plan_device_bytes": plan["device_bytes_per_worker"],
            "plan_checkpoint_bytes": plan["checkpoint_bytes"]}


def summarise(rows: list[dict], info: dict, warmup: int, matmul_flops: float | None, memory_log: Path) -> dict:
    timed = rows[warmup:] if len(rows) > warmup else rows[-1:]
    tokens = sum(r["tokens"] for r in timed)
    tokens_per_s = tokens / sum(r["step_time_s"] for r in timed)
    flops = info["flops_per_token"] * tokens_per_s
    peak = info.get("peak_flops_per_worker")
    memory = [json.loads(line) for line in memory_log.read_text().splitlines() if line.strip()]
    return {
        "steps": len(rows), "timed_steps": len(timed), "tokens_per_step": tokens / len(timed),
        "tokens_per_s": tokens_per_s, "model_flops_per_s": flops, "flops_per_token": info["flops_per_token"],
        "trainable_params": info["trainable_params"], "total_params": info["total_params"],
        "zero_stage": info["zero_stage"], "datasheet_peak_flops": peak,
        "mfu_datasheet": flops / peak if peak else None,
        "mfu_measured_matmul": flops / matmul_flops if matmul_flops else None,
        "peak_memory_bytes": max((m.get("max_allocated", m.get("max_rss", 0)) for m in memory), default=None),
        "peak_reserved_bytes": max((m.get("max_reserved", 0) for m in memory), default=None),
        "memory_kind": "cuda max_memory_allocated" if memory and "max_allocated" in memory[0] else "worker peak RSS",
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "step_time_s": [r["step_time_s"] for r in rows], "data_wait_s": [r.get("data_wait_s") for r in rows],
    }
