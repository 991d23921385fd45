"""What a training run cost, measured, beside what `med42-ray plan` estimated for the same run.

Two files in the run's output directory, one writer each:
    worker_memory.json  rank 0, at the end of the loop: every worker's peak memory, gathered
                        (device: torch's peak allocation on a GPU; host: the process's peak RSS)
    cost.json           the driver, when run_train returns: wall time from run_train's start to
                        its return (Ray Train start-up, training, retries after a dead worker and
                        the export: what the user waited for), accelerator-hours (GPU-hours; on
                        CPU, CPU-hours of the CPUs the workers held), the final checkpoint's size
                        in storage, each export's size on disk, and `plan`: make_plan for this
                        model, strategy, workers and the tokens the run trained.
A run resubmitted after its driver died counts the call that finished it, not the earlier ones.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from med42_ray.layout import TrainDir

if TYPE_CHECKING:  # annotations only
    from med42_ray.config import RunConfig
    from med42_ray.train.trainer import TrainJob


def peak_memory(device: torch.device) -> dict:
    """This process's peaks so far: torch's on the GPU (allocated, and reserved by its caching
    allocator: what nvidia-smi shows), and the host RSS (ru_maxrss is in KiB on Linux)."""
    on_gpu = device.type == "cuda"
    return {"device": str(device),
            "device_bytes": torch.cuda.max_memory_allocated(device) if on_gpu else None,
            "device_reserved_bytes": torch.cuda.max_memory_reserved(device) if on_gpu else None,
            "host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def gather_peak_memory(device: torch.device, world: int) -> list[dict]:
    """Every worker's peak_memory, by rank (a collective: every rank calls it at the same point)."""
    mine = peak_memory(device)
    if world == 1:
        return [mine]
    everyone: list[dict | None] = [None] * world
    dist.all_gather_object(everyone, mine)
    return everyone


def write_worker_memory(outputs: TrainDir, peaks: list[dict]) -> None:
    outputs.worker_memory.write_text(json.dumps({"workers": peaks}, indent=1) + "\n")


def tree_bytes(fs, path: str) -> int:
    """Bytes of every file under `path` on a pyarrow filesystem (local disk or object storage)."""
    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return info.size
    return sum(f.size for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
               if f.type == pafs.FileType.File)


def accelerators_per_worker(cfg: RunConfig, cpus_per_worker: float) -> tuple[str, float]:
    """What each worker held that an accelerator-hour counts: one GPU, or on CPU its CPUs."""
    return ("GPU", 1.0) if cfg.train.scaling.use_gpu else ("CPU", cpus_per_worker)


def planned(cfg: RunConfig, job: TrainJob, tokens: int, peak_flops: float | None, unit: tuple[str, float]) -> dict:
    """What `med42-ray plan` says of this run: its figures at plan's default MFU and the run's
    peak FLOP/s (none on CPU: then no time), for the ZeRO stage and offload the run used."""
    from med42_ray.train import plan as planner
    from med42_ray.train.strategies import model_dtype

    t = cfg.train
    world = t.scaling.num_workers
    p = planner.make_plan(cfg.model, t.strategy, gpus=world, tokens=tokens, mfu=planner.DEFAULT_MFU,
                          peak_tflops=(peak_flops or 0.0) / 1e12, seq_len=job.seq_len,
                          micro_batch_size=t.micro_batch_size, gpus_per_node=min(world, 8), lora=t.lora,
                          trust_remote_code=t.trust_remote_code, zero_stage=t.resolved_zero_stage(), peft=t.peft)
    offload = "optimizer+params" if t.offload_params else "optimizer" if t.offload_optimizer else "none"
    row = next(r for r in p.memory if r.zero_stage == t.resolved_zero_stage() and r.offload == offload)
    wall = p.wall_time_s if peak_flops else None
    dtype_bytes = model_dtype(t, t.scaling.use_gpu).itemsize
    return {"mfu": planner.DEFAULT_MFU, "peak_tflops": peak_flops / 1e12 if peak_flops else None, "tokens": tokens,
            "wall_time_s": wall, "accelerator_hours": wall * world * unit[1] / 3600 if wall else None,
            "device_bytes_per_worker": row.gpu_bytes + p.activation_bytes_per_gpu,
            "host_bytes_per_worker": row.cpu_bytes_per_node // min(world, p.gpus_per_node),
            "checkpoint_bytes": p.checkpoint["complete"],
            "export_bytes": planner.export_bytes(p.total_params, p.trainable_params, t.strategy, dtype_bytes,
                                                 t.export_merged)}


def write_cost(cfg: RunConfig, job: TrainJob, wall_s: float, cpus_per_worker: float, checkpoint,
               exported: dict[str, Path], metrics: list[dict]) -> dict:
    """cost.json for a finished run (see the module doc); returns what it wrote."""
    outputs = job.outputs
    info = json.loads(outputs.run_info.read_text()) if outputs.run_info.is_file() else {}
    unit = accelerators_per_worker(cfg, cpus_per_worker)
    world = cfg.train.scaling.num_workers
    tokens = (metrics[-1].get("tokens_seen") or 0) if metrics else 0  # non-padding tokens trained
    record = {
        "wall_time_s": wall_s, "workers": world, "accelerator": unit[0], "per_worker": unit[1],
        "accelerator_hours": wall_s * world * unit[1] / 3600,
        "checkpoint_bytes": tree_bytes(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None,
        "export_bytes": {name: tree_bytes(_local_fs(), str(path)) for name, path in exported.items()},
        "plan": planned(cfg, job, tokens, info.get("peak_flops_per_worker"), unit),
    }
    outputs.cost.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _local_fs():
    from pyarrow import fs as pafs

    return pafs.LocalFileSystem()
