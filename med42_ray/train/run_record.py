"""What a training run's checkpoints were computed from, and whether this start may use them
(`train.resume`).

The one home of a training run's inputs (`train_inputs`): the pipeline fingerprints its train
stages on them (pipeline/run.py), and `train` records them beside the run's checkpoints
(`<storage>/<run_name>/med42_run.json`), so a rerun with another configuration is refused,
naming each key that differs, instead of silently continuing checkpoints it did not write.

`train.resume`: auto continues the run's checkpoints (Ray Train offers its latest; loop._resume
checks it); never refuses a run that already has checkpoints; a path seeds a run that has none of
its own from that checkpoint directory (once the run has its own, a restart continues those).
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from med42_ray.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from pyarrow.fs import FileSystem

    from med42_ray.train.config import TrainConfig

# Settings that change how a run goes, not what it computes: a rerun on another cluster shape or
# with other trackers still continues its checkpoints, and the pipeline still finds its finished
# stages. (A key added to TrainConfig that changes no result belongs here, or every pipeline run
# dir made before it would see its train stages' fingerprints change.)
OPERATIONAL_TRAIN_KEYS = {"scaling", "max_failures", "peak_tflops", "keep_checkpoints", "checkpoint_local_dir",
                          "checkpoint_upload", "export_resources", "export_max_shard_size", "export_node_wait_s",
                          "export_merged", "report_every_s", "log_every_steps", "report_to", "tracking_experiment",
                          "mlflow_tracking_uri", "wandb_mode", "resume"}
# Where a run reads and writes, and whether it exports: the same run moved, or exported again,
# still has the same checkpoints. (The pipeline's fingerprints keep them: its paths are fixed.)
PLACEMENT_KEYS = {"data_dir", "output_dir", "storage_path", "run_name", "export"}
# What of prepare's manifest says which data a run trains on (not its timings or shard file names,
# which differ between two prepares of the same data).
DATA_KEYS = ("seq_len", "template", "seed", "sequences", "tokens", "config")

RECORD = "med42_run.json"
AUTO, NEVER = "auto", "never"


def train_inputs(tcfg: TrainConfig, model: str, exclude: set[str] = frozenset()) -> dict:
    """The training configuration a run computes from (no operational key, none of `exclude`).
    `train.peft` counts only when it says something: full has no adapters, and LoRA with peft's
    defaults is what every run was before train.peft existed, so their fingerprints stay."""
    from med42_ray.train.config import PeftSettings

    train = tcfg.model_dump(exclude=OPERATIONAL_TRAIN_KEYS | set(exclude))
    if tcfg.strategy == "full" or tcfg.peft == PeftSettings():
        del train["peft"]
    return {"train": train, "model": model}


def run_inputs(tcfg: TrainConfig, model: str, manifest: dict) -> dict:
    """What a run's checkpoints are recorded with: its training inputs and its data, as JSON
    would read them back (tuples as lists), so a record compares equal to its own run."""
    inputs = {**train_inputs(tcfg, model, PLACEMENT_KEYS), "data": {k: manifest.get(k) for k in DATA_KEYS}}
    return json.loads(json.dumps(inputs, default=str))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def differences(then: dict, now: dict, limit: int = 6) -> str:
    """'train.lr: 0.001 then, 0.0001 now; ...' (the first `limit` keys that differ)."""
    a, b = _flat(then), _flat(now)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, "(unset)") != b.get(k, "(unset)")]
    shown = [f"{k}: {a.get(k, '(unset)')!r} then, {b.get(k, '(unset)')!r} now" for k in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def checkpoint_dirs(fs: FileSystem, run: str) -> list[str]:
    """The run's step_* checkpoint directories (registered or not), oldest first."""
    from pyarrow.fs import FileSelector, FileType

    from med42_ray.train.checkpointing import checkpoint_step

    infos = fs.get_file_info(FileSelector(run, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos
                  if i.type == FileType.Directory and checkpoint_step(i.path) is not None)


def check_and_record(storage: str, tcfg: TrainConfig, model: str, manifest: dict) -> None:
    """Before a run starts: refuse what `train.resume` forbids, or checkpoints written with another
    configuration; record this run's inputs when it has no checkpoints yet (or a record from
    before records existed)."""
    from pyarrow.fs import FileSystem

    fs, root = FileSystem.from_uri(storage if "://" in storage else f"file://{storage}")
    run = posixpath.join(root, tcfg.run_name)
    where = f"{storage.rstrip('/')}/{tcfg.run_name}"
    found = checkpoint_dirs(fs, run)
    if found and tcfg.resume == NEVER:
        raise ConfigError(f"{where} already has checkpoints ({', '.join(found[-3:])}) and train.resume is "
                          "never: choose a new train.run_name or --run-dir for a fresh run, or set "
                          "train.resume=auto to continue that one")
    inputs = run_inputs(tcfg, model, manifest)
    recorded = _read(fs, posixpath.join(run, RECORD), where) if found else None
    if recorded is not None and recorded != inputs:
        raise ConfigError(
            f"the checkpoints in {where} were written by a different configuration "
            f"({differences(recorded, inputs)}). For a run with this one, choose a new train.run_name or "
            f"--run-dir (with train.resume=<one of its step_* directories> to start from that "
            f"checkpoint), or delete {where}; to continue that run, train it with the configuration it "
            f"was started with")
    if recorded is None:
        fs.create_dir(run, recursive=True)
        with fs.open_output_stream(posixpath.join(run, RECORD)) as f:
            f.write((json.dumps({"inputs": inputs}, indent=1) + "\n").encode())


def _read(fs: FileSystem, path: str, where: str) -> dict | None:
    from pyarrow.fs import FileType

    if fs.get_file_info(path).type != FileType.File:
        return None  # a run checkpointed before runs were recorded: its config is not known
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())["inputs"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where}/{RECORD}: not a run record ({e}); delete it to record this "
                          "configuration for the run") from None
