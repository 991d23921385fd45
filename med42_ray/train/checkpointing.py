"""Ray Train checkpoints that hold every rank's DeepSpeed shard plus the loop's own state.

Every rank writes its part (DeepSpeed's `save_checkpoint` layout: model states from rank 0,
one ZeRO optimizer partition per rank) into its own local directory and reports it; Ray Train
merges the parts into one checkpoint directory in storage, and only registers it once all ranks
have reported. Each rank also writes `rank<i>.complete.json` as its last file, naming the world
size and the training position; a checkpoint is only restored if every rank's marker is there,
so a checkpoint that was only partly written is refused rather than half-loaded.

The loop's state (position in the data, RNG) is JSON + safetensors: nothing we write is pickled.
DeepSpeed's own shard files are its torch.save format, read back only by `engine.load_checkpoint`.
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


def marker_name(rank: int) -> str:
    return f"rank{rank}.complete.json"


def save(engine, state: TrainState, rank: int, world_size: int, lora: bool) -> Path:
    """Write this rank's part of the checkpoint into a fresh local directory and return it."""
    out = Path(tempfile.mkdtemp(prefix=f"med42-ckpt-{state.step}-rank{rank}-"))
    # LoRA: the frozen base never changes, so only the adapters (and their optimizer) are saved.
    engine.save_checkpoint(str(out), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=lora)
    save_file(_rng_state(), str(out / f"rank{rank}.rng.safetensors"))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    marker = {"world_size": world_size, "rank": rank, "files": files, **asdict(state)}
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
    if len({m["step"] for m in markers}) != 1:
        raise CheckpointError(f"checkpoint {ckpt_dir} mixes ranks from different steps")
    load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=DS_TAG, load_module_strict=not lora,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint under {ckpt_dir}/{DS_TAG}")
    _set_rng_state(load_file(str(ckpt_dir / f"rank{rank}.rng.safetensors")))
    mine = markers[rank]
    return TrainState(step=mine["step"], epoch=mine["epoch"], micro_in_epoch=mine["micro_in_epoch"],
                      tokens_seen=mine["tokens_seen"])


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
