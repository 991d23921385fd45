"""Ray Train checkpoints that hold every rank's DeepSpeed shard plus the loop's own state.

Every rank writes its part (DeepSpeed's `save_checkpoint` layout: model states from rank 0,
one ZeRO optimizer partition per rank) into its own local directory and reports it; Ray Train
merges the parts into one checkpoint directory in storage, and only registers it once all ranks
have reported. Each rank also writes `rank<i>.complete.json` as its last file, naming the world
size, the training position, and the size and SHA-256 of every file it wrote. Before a checkpoint
is loaded, every rank's files are checked against their markers (`problem`): one that was only
partly written, or truncated, deleted or altered since, is never loaded; the newest intact
checkpoint of the run is used instead (`candidates`, loop._resume). SHA-256 rather than a CRC:
hardware-accelerated it hashes ~1.7 GB/s on one core (~35 ms for the tiny model's 60 MB
checkpoint, ~8 s for one rank's ~14 GB part of a 70B one on 64 GPUs: small beside writing it),
`sha256sum` checks it by hand, and no corruption passes it by chance.

The loop's state (position in the data, RNG) is JSON + safetensors: nothing we write is pickled.
DeepSpeed's own shard files are its torch.save format, read back only by `engine.load_checkpoint`.

A complete ZeRO-3 checkpoint is ~12 bytes per parameter (fp32 master weights and Adam's two
moments; ~0.9 TB at 70B). `train.checkpoint_optimizer: epoch_end` makes the every-N-steps ones
*weights-only*: each rank writes its fp32 master partition (4 bytes/param, safetensors) and the
schedule's position; restoring one puts the weights back exactly and restarts Adam's moments.
Epoch ends and the last step always write everything (the export reads the last one).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from safetensors.torch import load_file, save_file

from med42_ray.errors import RunError

if TYPE_CHECKING:  # annotations only
    from ray.train import Checkpoint

DS_TAG = "deepspeed"
_STEP_DIR = re.compile(r"step_(\d{8})(?:-[\w.]+)?")


class CheckpointError(RuntimeError, RunError):
    pass


@dataclass
class TrainState:
    step: int = 0              # optimizer steps done
    epoch: int = 0             # epoch in progress
    micro_in_epoch: int = 0    # micro-batches of this epoch already consumed
    tokens_seen: int = 0       # non-padding tokens trained on, all workers


def checkpoint_dir_name(step: int, tag: str = "") -> str:
    """The checkpoint of step N in the run's storage: <storage_path>/<run_name>/step_0000000N.
    A run resumed past broken checkpoints tags the ones it writes (step_0000000N-<tag>): Ray Train
    still lists the broken ones, and evicting one (`keep_checkpoints`) deletes its directory, which
    must not be the directory a new checkpoint of the same step was written to."""
    return f"step_{step:08d}-{tag}" if tag else f"step_{step:08d}"


def checkpoint_step(path: str) -> int | None:
    """The step of the checkpoint directory at `path` (checkpoint_dir_name's form), or None."""
    m = _STEP_DIR.fullmatch(posixpath.basename(path.rstrip("/")))
    return int(m.group(1)) if m else None


def candidates(latest: Checkpoint) -> list[Checkpoint]:
    """Where a resume may start, best first: Ray Train's latest registered checkpoint, then the
    older step_* directories beside it in the run's storage, newest first. Newer ones are left out:
    Ray never registered them (a write the run did not live to finish)."""
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    newest = checkpoint_step(latest.path)
    if newest is None:
        return [latest]
    infos = latest.filesystem.get_file_info(FileSelector(posixpath.dirname(latest.path.rstrip("/"))))
    older = sorted(((step, i.path) for i in infos
                    if i.type == FileType.Directory and (step := checkpoint_step(i.path)) is not None
                    and step < newest), reverse=True)
    return [latest] + [Checkpoint(path, filesystem=latest.filesystem) for _, path in older]


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
    files = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    marker = {"world_size": world_size, "rank": rank, "files": files, "optimizer": with_optimizer, **asdict(state)}
    (out / marker_name(rank)).write_text(json.dumps(marker, indent=1))
    return out


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def problem(ckpt_dir: str | os.PathLike, world_size: int, hash_ranks: Iterable[int]) -> str | None:
    """What is wrong with the checkpoint in `ckpt_dir` (None: nothing): every rank's marker must be
    there and readable, and every file it lists there with the size it was written with; the files
    of `hash_ranks` must also have their SHA-256 (each worker hashes its own rank's, so a
    checkpoint is read once). A checkpoint of another world size is a configuration error, raised."""
    ckpt_dir = Path(ckpt_dir)
    markers = []
    for r in range(world_size):
        try:
            markers.append(json.loads((ckpt_dir / marker_name(r)).read_text()))
        except FileNotFoundError:
            return f"{marker_name(r)} is missing (a write that never finished)"
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes
            return f"{marker_name(r)} is unreadable ({e})"
    if markers[0]["world_size"] != world_size:
        raise CheckpointError(f"checkpoint {ckpt_dir} was written by {markers[0]['world_size']} workers; "
                              f"this run has {world_size}. DeepSpeed ZeRO shards only load with the same "
                              "number of workers: set train.scaling.num_workers to match.")
    try:
        common_step(markers, ckpt_dir)
    except CheckpointError:
        return "its ranks' markers name different steps"
    for r, marker in enumerate(markers):
        found = _files_problem(ckpt_dir, marker.get("files", []), hashed=r in hash_ranks)
        if found:
            return f"{found} (rank {r}'s part)"
    return None


def _files_problem(ckpt_dir: Path, files: dict | list, hashed: bool) -> str | None:
    if isinstance(files, list):  # a marker from before sizes were recorded: names only
        files = {name: None for name in files}
    for name, written in files.items():
        path = ckpt_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if written is None:
            continue
        size = path.stat().st_size
        if size != written["bytes"]:
            return f"{name} has {size} bytes, {written['bytes']} were written"
        if hashed and _sha256(path) != written["sha256"]:
            return f"{name} is altered: its SHA-256 is not the one recorded when it was written"
    return None


def restore(engine, ckpt_dir: str | os.PathLike, rank: int, world_size: int, lora: bool) -> TrainState:
    """Load model, optimizer, scheduler, RNG and data position from a complete checkpoint. The
    caller has checked it (checksums included, loop._resume); what is checked again here costs a
    few stat calls and keeps a partly written checkpoint from being half-loaded by any caller."""
    ckpt_dir = Path(ckpt_dir)
    found = problem(ckpt_dir, world_size, hash_ranks=())
    if found:
        raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete: {found}")
    mine = json.loads((ckpt_dir / marker_name(rank)).read_text())
    if not mine.get("optimizer", True):
        _restore_master_weights(engine, ckpt_dir, rank)
    else:
        _load_deepspeed_checkpoint(engine, ckpt_dir, lora)
    _set_rng_state(load_file(str(ckpt_dir / f"rank{rank}.rng.safetensors")))
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


def resume_line(path: str, step: int, epoch: int, broken: list[tuple[str, str]]) -> str:
    """The one line a resume prints (after progress.PREFIX); it names the broken checkpoints it
    passed over, if any."""
    if not broken:
        return f"resumed from checkpoint {path}: step {step}, epoch {epoch}"
    skipped = "; ".join(f"{p} is broken: {why}" for p, why in broken)
    return (f"checkpoint {skipped}; not loaded, resumed from the newest intact one instead, "
            f"{path}: step {step}, epoch {epoch}")


def none_intact_message(broken: list[tuple[str, str]]) -> str:
    run = posixpath.dirname(broken[0][0].rstrip("/"))
    listed = "; ".join(f"{posixpath.basename(p.rstrip('/'))}: {why}" for p, why in broken)
    return (f"no intact checkpoint to resume the run in {run} from ({listed}). To train it again from "
            "the start, delete that directory or choose another train.run_name")
