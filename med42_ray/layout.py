"""Where every stage reads and writes: the one home of each output path and file name.

    <run_dir>/stages/<stage>.json          pipeline markers
    <run_dir>/prepared/                    prepare: shards/, ledger/, rejects/, manifest.json, contamination.jsonl
    <run_dir>/pretrain/{prepared,train}/   the demo's pre-training of the tiny base
    <run_dir>/train/<run>/                 metrics.jsonl, run_info.json, worker_memory.json, cost.json,
                                           model/ or adapter/ + merged/
    <run_dir>/ray_results/                 Ray Train checkpoints (unless train.storage_path is set)
    <run_dir>/eval/                        evaluate: results.json, comparison.*, <model>/results.json + samples/
                                           + lm-eval's results_<date>.json, samples_<task>_<date>.jsonl
                                           (the headline protocol), protocols/<name>/ (each of
                                           evaluate.also_protocols, the same layout inside)
    <run_dir>/eval/<label>/                the pipeline's evaluation of base, full, lora, dora, ... (same layout inside)
    <run_dir>/sweep/                       trials.json, best_config.yaml, best_adapter/, trials/<id>/, tune/
    <run_dir>/report/                      report.md, report.html, report.json, *.png

A stage and its readers both ask this module, so `train` run alone and `train_full` in the pipeline
write to the same place, and the report finds both. Config keys that move one output elsewhere
(`prepare.output_dir`, `train.output_dir`, `train.storage_path`, `evaluate.output_dir`,
`sweep.output_dir`) are applied here too (the `*_for(cfg)` functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from med42_ray.paths import resolve_path

if TYPE_CHECKING:  # annotations only: the layout sits below the config composition
    from med42_ray.config import RunConfig

# What training exports, by name: full-parameter writes the model; LoRA its adapter and the
# adapter merged into a copy of the base.
EXPORT_MODEL, EXPORT_ADAPTER, EXPORT_MERGED = "model", "adapter", "merged"
# evaluate's folder of the non-headline protocols, beside its per-model folders: no model may take the name
PROTOCOLS_DIR = "protocols"


def export_names(strategy: str, merged: bool = True) -> tuple[str, ...]:
    """What `train` exports: full its model; LoRA its adapter and (train.export_merged) the merge."""
    if strategy == "full":
        return (EXPORT_MODEL,)
    return (EXPORT_ADAPTER, EXPORT_MERGED) if merged else (EXPORT_ADAPTER,)


def _at(*parts: str, kind: type | None = None) -> property:
    """A path under the directory's root (wrapped in `kind`, a layout of its own, when given)."""

    def get(self):
        path = self.root.joinpath(*parts)
        return kind(path) if kind else path

    return property(get)


@dataclass(frozen=True)
class PreparedDir:
    """What `prepare` writes; `train` reads the manifest and shards."""

    root: Path

    ledger = _at("ledger")
    shards = _at("shards")
    rejects = _at("rejects")
    rejects_file = _at("rejects", "rejects.jsonl")
    duplicates_file = _at("rejects", "duplicates.jsonl")
    manifest = _at("manifest.json")
    contamination = _at("contamination.jsonl")


@dataclass(frozen=True)
class TrainDir:
    """What one training run writes (besides Ray Train's checkpoints)."""

    root: Path

    metrics = _at("metrics.jsonl")
    run_info = _at("run_info.json")
    worker_memory = _at("worker_memory.json")  # every worker's peak memory (rank 0; train/cost.py)
    cost = _at("cost.json")                    # wall time, accelerator-hours, sizes, plan (the driver)

    def export(self, name: str) -> Path:
        return self.root / name

    def exported(self, strategy: str) -> dict[str, Path]:
        """The exports this strategy writes that are on disk, by name."""
        return {n: self.export(n) for n in export_names(strategy) if self.export(n).is_dir()}


@dataclass(frozen=True)
class EvalDir:
    """What one `evaluate` writes: a summary over models, and each model's results and samples."""

    root: Path

    summary = _at("results.json")
    comparison_md = _at("comparison.md")
    comparison_png = _at("comparison.png")

    def model(self, name: str) -> Path:
        return self.root / name

    def model_results(self, name: str) -> Path:
        return self.model(name) / "results.json"

    def samples(self, name: str, benchmark: str) -> Path:
        return self.model(name) / "samples" / f"{benchmark}.jsonl"

    def lm_eval_files(self, name: str) -> list[Path]:
        """The model's lm-evaluation-harness files on disk: lm-eval's EvaluationTracker, given
        model_results (a .json path), writes results_<date>.json and samples_<task>_<date>.jsonl
        beside it, so <eval>/ reads as an lm-eval --output_path (eval/lm_eval_format.py)."""
        folder = self.model(name)
        return sorted([*folder.glob("results_*.json"), *folder.glob("samples_*_*.jsonl")])

    @property
    def protocols_root(self) -> Path:
        return self.root / PROTOCOLS_DIR

    def protocol(self, name: str) -> EvalDir:
        """Where the same evaluation under another protocol (evaluate.also_protocols) goes: kept
        apart, so results.json and <model>/ stay the headline protocol's."""
        return EvalDir(self.protocols_root / name)


@dataclass(frozen=True)
class SweepDir:
    """What `sweep` writes: the trials, the best of them, and Tune's own storage."""

    root: Path

    trials_json = _at("trials.json")
    best_config = _at("best_config.yaml")
    best_adapter = _at("best_adapter")
    tune = _at("tune")

    def trial(self, trial_id: str) -> TrainDir:
        return TrainDir(self.root / "trials" / trial_id)


@dataclass(frozen=True)
class RunLayout:
    """Every stage's place under one run directory (absolute: Ray workers have another cwd)."""

    root: Path  # the run directory

    prepared = _at("prepared", kind=PreparedDir)
    pretrain_prepared = _at("pretrain", "prepared", kind=PreparedDir)
    pretrain_train = _at("pretrain", "train", kind=TrainDir)
    train_root = _at("train")
    eval_root = _at("eval", kind=EvalDir)
    sweep = _at("sweep", kind=SweepDir)
    ray_results = _at("ray_results")
    stages = _at("stages")
    report = _at("report")

    def train(self, strategy: str) -> TrainDir:
        return TrainDir(self.train_root / strategy)

    def eval(self, label: str) -> EvalDir:
        return EvalDir(self.eval_root.root / label)


def layout_for(cfg: RunConfig) -> RunLayout:
    return RunLayout(Path(cfg.run_dir).expanduser().resolve())


def prepared_dir_for(cfg: RunConfig) -> PreparedDir:
    """Where `prepare` writes: prepare.output_dir, else <run_dir>/prepared."""
    p = cfg.prepare.output_dir
    return PreparedDir(resolve_path(p).resolve()) if p else layout_for(cfg).prepared


def train_data_dir_for(cfg: RunConfig) -> PreparedDir:
    """What `train` reads: train.data_dir, else where `prepare` wrote."""
    return PreparedDir(resolve_path(cfg.train.data_dir).resolve()) if cfg.train.data_dir else prepared_dir_for(cfg)


def train_dir_for(cfg: RunConfig) -> TrainDir:
    """Where `train` writes: train.output_dir, else <run_dir>/train/<run> (full, lora, dora, ...: the
    pipeline's name of the same run, so the report finds it)."""
    out = cfg.train.output_dir
    return TrainDir(resolve_path(out).resolve()) if out else layout_for(cfg).train(cfg.train.label())


def storage_path_for(cfg: RunConfig) -> str:
    """Ray Train's checkpoint storage: train.storage_path (local or s3:// gs://), else <run_dir>/ray_results."""
    path = cfg.train.storage_path
    if path and "://" in path:
        return path  # Ray resolves it with pyarrow.fs
    return str(resolve_path(path).resolve() if path else layout_for(cfg).ray_results)


def eval_dir_for(cfg: RunConfig) -> EvalDir:
    """Where `evaluate` writes: evaluate.output_dir, else <run_dir>/eval."""
    out = cfg.evaluate.output_dir
    return EvalDir(resolve_path(out).resolve()) if out else layout_for(cfg).eval_root


def sweep_dir_for(cfg: RunConfig) -> SweepDir:
    """Where `sweep` writes: sweep.output_dir, else <run_dir>/sweep."""
    out = cfg.sweep.output_dir
    return SweepDir(resolve_path(out).resolve()) if out else layout_for(cfg).sweep
