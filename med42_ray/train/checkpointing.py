"""Ray Train checkpoints that hold every rank's DeepSpeed shard plus the loop's own state.

Every rank writes its part (DeepSpeed's `save_checkpoint` layout: model states from rank 0,
one ZeRO optimizer partition per rank) into its own local directory and reports it; Ray Train
merges the parts into one checkpoint directory in storage, and only registers it once all ranks
have reported. Each rank also writes `rank<i>.complete.json` as its last file, naming the world
size and the training position; a checkpoint is only restored if every rank's marker is there,
so a checkpoint that was only partly written is refused rather than half-loaded.

The loop's state (position in the data, RNG) is JSON + safetensors: nothing we write is pickled.
DeepSpeed's own shard files are its torch.save format, read back only by `engine.load_checkpoint`.

A complete ZeRO-3 checkpoint is ~12 bytes per parameter (fp32 master weights and Adam's two
moments; ~0.9 TB at 70B). `train.checkpoint_optimizer: epoch_end` makes the every-N-steps ones
*weights-only*: each rank writes its fp32 master partition (4 bytes/param, safetensors) and the
schedule's position; restoring one puts the weights back exactly and restarts Adam's moments.
Epoch ends and the last step always write everything (the export reads the last one).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DS_TAG = "deepspeed"


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainState:
    step: int = 0              # optimizer steps done
    epoch: int = 0             # epoch in progress
    micro_in_epoch: int = 0    # micro-batches of this epoch already consumed
    tokens_seen: int = 0       # non-padding tokens trained on, all workers


def checkpoint_dir_name(step: int) -> str:
    """The checkpoint of step N in the run's storage: <storage_path>/<run_name>/step_0000000N."""
    return f"step_{step:08d}"


def marker_name(rank: int) -> str:
    return f"rank{rank}.complete.json"


def common_step(markers: list[dict], where) -> int:
    """The step every rank's marker names; a checkpoint whose ranks disagree is refused."""
    if len({m["step"] for m in markers}) != 1:
        raise CheckpointError(f"checkpoint {where} mixes ranks from different steps")
    return markers[0]["step"]


def save(engine, state: TrainState, rank: int, world_size: int, lora: bool, with_optimizer: bool = True,
         local_root: str | None = None) -> Path:
    """Write this rank's part of the checkpoint into a fresh directory under `local_root` (None: the
    temp dir) and return it; without the optimizer it is weights-only (see the module doc)."""
    if local_root is not None:
        Path(local_root).mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"med42-ckpt-{state.step}-rank{rank}-", dir=local_root))
    if with_optimizer:
        # LoRA: the frozen base never changes, so only the adapters (and their optimizer) are saved.
        engine.save_checkpoint(str(out), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=lora)
    else:
        _save_master_weights(engine, out, rank)
    save_file(_rng_state(), str(out / f"rank{rank}.rng.safetensors"))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    marker = {"world_size": world_size, "rank": rank, "files": files, "optimizer": with_optimizer, **asdict(state)}
    (out / marker_name(rank)).write_text(json.dumps(marker, indent=1))
    return out


def restore(engine, ckpt_dir: str | os.PathLike, rank: int, world_size: int, lora: bool) -> TrainState:
    """Load model, optimizer, scheduler, RNG and data position from a complete checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    markers = []
    for r in range(world_size):
        path = ckpt_dir / marker_name(r)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete: {marker_name(r)} is missing "
                                  f"(it holds {sorted(p.name for p in ckpt_dir.glob('rank*.complete.json'))})")
        markers.append(json.loads(path.read_text()))
    if markers[0]["world_size"] != world_size:
        raise CheckpointError(f"checkpoint {ckpt_dir} was written by {markers[0]['world_size']} workers; "
                              f"this run has {world_size}. DeepSpeed ZeRO shards only load with the same "
                              "number of workers: set train.scaling.num_workers to match.")
    common_step(markers, ckpt_dir)
    if not markers[rank].get("optimizer", True):
        _restore_master_weights(engine, ckpt_dir, rank)
    else:
        _load_deepspeed_checkpoint(engine, ckpt_dir, lora)
    _set_rng_state(load_file(str(ckpt_dir / f"rank{rank}.rng.safetensors")))
    mine = markers[rank]
    return TrainState(step=mine["step"], epoch=mine["epoch"], micro_in_epoch=mine["micro_in_epoch"],
                      tokens_seen=mine["tokens_seen"])


def _load_deepspeed_checkpoint(engine, ckpt_dir: Path, lora: bool) -> None:
    load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=DS_TAG, load_module_strict=not lora,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint under {ckpt_dir}/{DS_TAG}")


def _master_weights_name(rank: int) -> str:
    return f"rank{rank}.master_weights.safetensors"


def _save_master_weights(engine, out: Path, rank: int) -> None:
    """This rank's ZeRO-3 fp32 master partition (one flat tensor per parameter group) and the
    schedule's position: everything a resume needs but Adam's moments."""
    groups = engine.optimizer.fp32_partitioned_groups_flat
    save_file({f"group{i}": g.detach().cpu().contiguous() for i, g in enumerate(groups)},
              str(out / _master_weights_name(rank)))
    position = {"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                "lr_scheduler": engine.lr_scheduler.state_dict()}
    (out / f"rank{rank}.schedule.json").write_text(json.dumps(position))


def _restore_master_weights(engine, ckpt_dir: Path, rank: int) -> None:
    """The inverse of `_save_master_weights`, the way DeepSpeed's own ZeRO-3 load restores weights:
    fp32 partitions, then the training-dtype partitions the parameters live in, then the
    persistent (never partitioned) parameters gathered again."""
    opt = engine.optimizer
    saved = load_file(str(ckpt_dir / _master_weights_name(rank)))
    opt.checkpoint_event_prologue()
    for i, master in enumerate(opt.fp32_partitioned_groups_flat):
        master.data.copy_(saved[f"group{i}"])
        opt.fp16_partitioned_groups_flat[i].data.copy_(master.data)
        for param, view in zip(opt.fp16_partitioned_groups[i],
                               opt.unflatten(opt.fp16_partitioned_groups_flat[i], opt.fp16_partitioned_groups[i])):
            param.data = view.data
    opt.checkpoint_event_epilogue()
    position = json.loads((ckpt_dir / f"rank{rank}.schedule.json").read_text())
    engine.global_steps, engine.global_samples = position["global_steps"], position["global_samples"]
    schedule = engine.lr_scheduler
    schedule.load_state_dict(position["lr_scheduler"])
    # The scheduler sets the optimizer's lr at its next step; until then the optimizer's own state
    # (which DeepSpeed's full load restores) is what the step uses.
    for group, lr in zip(schedule.optimizer.param_groups, schedule.get_last_lr()):
        group["lr"] = lr


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    # Python's `random` too, for any library that draws from it, as a tensor of its state words.
    _, words, _ = random.getstate()
    state["python"] = torch.tensor(list(words), dtype=torch.int64)
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "python" in state:
        random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
