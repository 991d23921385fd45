"""Read a pipeline run directory: evaluation results, training metrics, the prepare manifest.

Every file is checked against the fields the report uses (extra fields are fine: the report reads
outputs of other stages, which may grow), so bad input fails here with the file, the line for
JSONL, and the field, not later as a KeyError inside a table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from med42_ray.layout import EvalDir, RunLayout, TrainDir

# Column / curve order when present; any other sub-directory follows, sorted.
EVAL_ORDER = ("base", "full", "lora")
TRAIN_ORDER = ("full", "lora")


class ReportError(ValueError):
    """A run-directory file is missing or malformed; the message names the file and field."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Score(_Loose):
    acc: float
    acc_stderr: float | None = None
    n: int | None = Field(None, ge=0)


class Aggregates(_Loose):
    mmlu_clinical: Score | None = None
    usmle_sample_exam_by_step: dict[str, Score] | None = None
    usmle_self_assessment_by_step: dict[str, Score] | None = None


class ModelResults(_Loose):
    """One model's results.json (or one entry of a summary's "models")."""
    protocol: str | None = None
    benchmarks: dict[str, Score]
    aggregates: Aggregates = Aggregates()


class EvalSummary(_Loose):
    """The results.json `med42-ray evaluate` writes at its output directory."""
    protocol: str
    protocol_description: str | None = None
    benchmarks_dir: str | None = None
    models: dict[str, ModelResults] = Field(min_length=1)


class StepMetrics(_Loose):
    step: int
    loss: float
    tokens_seen: int | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    mfu: float | None = None


class RunInfo(_Loose):
    strategy: str
    model: str | None = None
    trainable_params: int = Field(ge=0)
    total_params: int = Field(gt=0)
    world_size: int = Field(ge=1)
    zero_stage: int | None = None
    total_steps: int | None = None
    peak_flops_per_worker: float | None = None


class SourceCounts(_Loose):
    read: int
    kept: int
    duplicates: int
    rejected: dict[str, int]
    contaminated: dict[str, int]
    sampled_out: int


class BenchmarkIndex(_Loose):
    items: dict[str, int]


class Manifest(_Loose):
    sources: dict[str, SourceCounts]
    benchmarks: BenchmarkIndex


def _validate(schema: type[BaseModel], data: Any, where: str) -> None:
    try:
        schema.model_validate(data)
    except ValidationError as e:
        err, more = e.errors()[0], e.error_count() - 1
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ReportError(f"{where}: field {loc!r}: {err['msg']}"
                          + (f" (and {more} more error(s))" if more else "")) from None


def read_json(path: Path, schema: type[BaseModel] | None = None) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if schema is not None:
        _validate(schema, data, str(path))
    return data


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path} line {i}: not valid JSON ({e})") from None
        _validate(StepMetrics, row, f"{path} line {i}")
        rows.append(row)
    return rows


def _subdirs(parent: Path, first: tuple[str, ...]) -> list[Path]:
    others = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name not in first) if parent.is_dir() else []
    return [parent / n for n in (*first, *others)]


@dataclass
class EvalRuns:
    models: dict[str, dict]                 # column name -> one model's results (evaluate's format)
    protocols: dict[str, str | None]        # column name -> protocol
    files: dict[str, str]                   # column name -> results.json it came from
    descriptions: set[str] = field(default_factory=set)
    benchmarks_dirs: set[str] = field(default_factory=set)


def load_eval(run_dir: Path) -> EvalRuns:
    """eval/<name>/results.json, in EVAL_ORDER: either evaluate's summary (one model: the column is
    the directory's name; several: their own names) or one model's results.json."""
    out = EvalRuns({}, {}, {})
    eval_root = RunLayout(run_dir).eval_root
    for d in _subdirs(eval_root.root, EVAL_ORDER):
        path = EvalDir(d).summary
        if not path.is_file():
            continue
        data = read_json(path)
        if "models" in data:
            _validate(EvalSummary, data, str(path))
            named = {d.name: m for m in data["models"].values()} if len(data["models"]) == 1 else {
                name if name not in out.models else f"{d.name}/{name}": m for name, m in data["models"].items()}
            out.descriptions.add(data.get("protocol_description") or "")
            if data.get("benchmarks_dir"):
                out.benchmarks_dirs.add(data["benchmarks_dir"])
        else:
            _validate(ModelResults, data, str(path))
            named = {d.name: data}
        for name, m in named.items():
            out.models[name] = m
            out.protocols[name] = m.get("protocol") or data.get("protocol")
            out.files[name] = str(path)
    top = eval_root.summary  # a stage-by-stage run's summary: only for the protocol notes
    if top.is_file():
        summary = read_json(top)
        out.descriptions.add(summary.get("protocol_description") or "")
        if summary.get("benchmarks_dir"):
            out.benchmarks_dirs.add(summary["benchmarks_dir"])
    if not out.models:
        raise ReportError(f"no evaluation results: expected {RunLayout(run_dir).eval('base').summary} "
                          f"(or full/, lora/ beside it), written by `med42-ray evaluate`")
    out.descriptions.discard("")
    return out


@dataclass
class TrainingRun:
    name: str
    outputs: TrainDir
    metrics: list[dict]
    run_info: dict | None   # None for runs trained before run_info.json existed


def load_training(run_dir: Path) -> dict[str, TrainingRun]:
    """train/<strategy>/metrics.jsonl (+ run_info.json): where `train` writes, alone or in the pipeline."""
    runs = {}
    for d in _subdirs(RunLayout(run_dir).train_root, TRAIN_ORDER):
        outputs = TrainDir(d)
        if not outputs.metrics.is_file():
            continue
        info = read_json(outputs.run_info, RunInfo) if outputs.run_info.is_file() else None
        runs[d.name] = TrainingRun(d.name, outputs, read_metrics(outputs.metrics), info)
    return runs


def load_manifest(run_dir: Path) -> dict | None:
    path = RunLayout(run_dir).prepared.manifest
    return read_json(path, Manifest) if path.is_file() else None
