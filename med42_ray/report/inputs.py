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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from med42_ray.layout import PROTOCOLS_DIR, EvalDir, RunLayout, TrainDir
from med42_ray.pipeline.config import RUN_NAMES

# Column / curve order when present (the pipeline's runs: full, then the adapter methods); any
# other sub-directory follows, sorted.
TRAIN_ORDER = RUN_NAMES
EVAL_ORDER = ("base", *RUN_NAMES)


class ReportError(ValueError):
    """A run-directory file is missing or malformed; the message names the file and field."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Score(_Loose):
    acc: float
    acc_stderr: float | None = None
    n: int | None = Field(None, ge=0)


class BenchmarkScore(Score):
    """A benchmark's entry: its question count is required (the pooled accuracy counts questions)."""
    n: int = Field(ge=0)

    @model_validator(mode="after")
    def _whole_count(self) -> "BenchmarkScore":
        if self.n and abs(self.acc * self.n - round(self.acc * self.n)) > 1e-6:
            raise ValueError(f"acc {self.acc} of n {self.n} questions is not a whole number correct")
        return self


class Aggregates(_Loose):
    mmlu_clinical: Score | None = None
    usmle_sample_exam_by_step: dict[str, Score] | None = None
    usmle_self_assessment_by_step: dict[str, Score] | None = None


class ModelResults(_Loose):
    """One model's results.json (or one entry of a summary's "models")."""
    protocol: str | None = None
    benchmarks: dict[str, BenchmarkScore]
    aggregates: Aggregates = Aggregates()


class InferenceCost(_Loose):
    """One model variant's entry of results.json's inference_cost (eval/cost.py)."""
    questions: int = Field(ge=1)
    seconds: float = Field(ge=0)
    questions_per_s: float | None = None
    ms_per_question: float | None = None
    params: int = Field(ge=1)
    dtype: str
    peak_device_bytes: int | None = None
    peak_host_bytes: int = Field(ge=0)


class EvalSummary(_Loose):
    """The results.json `med42-ray evaluate` writes at its output directory."""
    protocol: str
    protocol_description: str | None = None
    benchmarks_dir: str | None = None
    protocols_in_pass: list[str] | None = None  # the headline first, then evaluate.also_protocols
    models: dict[str, ModelResults] = Field(min_length=1)
    inference_cost: dict[str, dict[str, InferenceCost]] = Field(default_factory=dict)


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


class WorkerPeak(_Loose):
    device_bytes: int | None = Field(None, ge=0)
    host_bytes: int = Field(ge=0)


class WorkerMemory(_Loose):
    """train/<run>/worker_memory.json (train/cost.py)."""
    workers: list[WorkerPeak] = Field(min_length=1)


class TrainCost(_Loose):
    """train/<run>/cost.json (train/cost.py)."""
    wall_time_s: float = Field(ge=0)
    workers: int = Field(ge=1)
    accelerator: str
    accelerator_hours: float = Field(ge=0)
    checkpoint_bytes: int | None = None
    export_bytes: dict[str, int]
    plan: dict


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
class _Source:
    """Where a column's results came from, to find the same model under the other protocols."""
    eval_dir: EvalDir       # the evaluate output holding it (protocols/<name>/ beside its results)
    model: str              # its name in that evaluate's summary
    protocols: list[str]    # what that evaluate scored, the headline first ([]: recorded before protocols were)


@dataclass
class EvalRuns:
    models: dict[str, dict]                 # column name -> one model's results (evaluate's format)
    protocols: dict[str, str | None]        # column name -> protocol
    files: dict[str, str]                   # column name -> results.json it came from
    descriptions: set[str] = field(default_factory=set)
    benchmarks_dirs: set[str] = field(default_factory=set)
    # protocol -> column -> that column's results under it (the headline's included), headline first
    by_protocol: dict[str, dict[str, dict]] = field(default_factory=dict)
    protocol_files: dict[str, dict[str, str]] = field(default_factory=dict)  # same keys -> results.json
    inference_cost: dict[str, dict[str, dict]] = field(default_factory=dict)  # column -> variant -> figures

    @property
    def headline_protocol(self) -> str | None:
        """The protocol of the accuracy table, when its columns share one."""
        found = set(self.protocols.values())
        return found.pop() if len(found) == 1 else None


def load_eval(run_dir: Path) -> EvalRuns:
    """eval/<name>/results.json, in EVAL_ORDER: either evaluate's summary (one model: the column is
    the directory's name; several: their own names) or one model's results.json; then the same
    models under every other protocol their evaluate scored (evaluate.also_protocols)."""
    out = EvalRuns({}, {}, {})
    eval_root = RunLayout(run_dir).eval_root
    top = read_json(eval_root.summary) if eval_root.summary.is_file() else None
    sources: dict[str, _Source] = {}
    for d in _subdirs(eval_root.root, EVAL_ORDER):
        path = EvalDir(d).summary
        if d.name == PROTOCOLS_DIR or not path.is_file():
            continue
        data = read_json(path)
        if "models" in data:
            _validate(EvalSummary, data, str(path))
            own = {d.name: next(iter(data["models"]))} if len(data["models"]) == 1 else {
                n if n not in out.models else f"{d.name}/{n}": n for n in data["models"]}
            named = {c: data["models"][n] for c, n in own.items()}
            passed = data.get("protocols_in_pass") or []
            out.inference_cost.update({c: data["inference_cost"][n] for c, n in own.items()
                                       if n in data.get("inference_cost", {})})
            sources.update({c: _Source(EvalDir(d), n, passed) for c, n in own.items()})
            out.descriptions.add(data.get("protocol_description") or "")
            if data.get("benchmarks_dir"):
                out.benchmarks_dirs.add(data["benchmarks_dir"])
        else:
            _validate(ModelResults, data, str(path))
            named = {d.name: data}
            if top is not None and d.name in top.get("models", {}):  # evaluate's own per-model copy
                sources[d.name] = _Source(eval_root, d.name, top.get("protocols_in_pass") or [])
        for name, m in named.items():
            out.models[name] = m
            out.protocols[name] = m.get("protocol") or data.get("protocol")
            out.files[name] = str(path)
    if top is not None:  # a stage-by-stage run's summary: only for the protocol notes
        out.descriptions.add(top.get("protocol_description") or "")
        if top.get("benchmarks_dir"):
            out.benchmarks_dirs.add(top["benchmarks_dir"])
    if not out.models:
        raise ReportError(f"no evaluation results: expected {RunLayout(run_dir).eval('base').summary} "
                          f"(or full/, lora/ beside it), written by `med42-ray evaluate`")
    out.descriptions.discard("")
    _load_other_protocols(out, sources)
    return out


def _load_other_protocols(out: EvalRuns, sources: dict[str, _Source]) -> None:
    """Fill out.by_protocol: each column's headline results, then, for each other protocol its
    evaluate scored (only those: a protocols/ folder left by an earlier run is not read), the
    same model's results from <its evaluate output>/protocols/<protocol>/results.json."""
    for name, m in out.models.items():
        out.by_protocol.setdefault(out.protocols[name] or "unknown", {})[name] = m
        out.protocol_files.setdefault(out.protocols[name] or "unknown", {})[name] = out.files[name]
    for name, src in sources.items():
        for protocol in src.protocols:
            if protocol == out.protocols[name]:
                continue
            path = src.eval_dir.protocol(protocol).summary
            data = read_json(path, EvalSummary)
            if src.model not in data["models"]:
                raise ReportError(f"{path}: field 'models.{src.model}': missing (the headline results in "
                                  f"{out.files[name]} list protocol {protocol!r} for this model)")
            out.by_protocol.setdefault(protocol, {})[name] = data["models"][src.model]
            out.protocol_files.setdefault(protocol, {})[name] = str(path)
    for by in (out.by_protocol, out.protocol_files):  # each protocol's columns in the table's order
        for protocol, cols in by.items():
            by[protocol] = {c: cols[c] for c in out.models if c in cols}


@dataclass
class TrainingRun:
    name: str
    outputs: TrainDir
    metrics: list[dict]
    run_info: dict | None   # None for runs trained before run_info.json existed
    cost: dict | None = None           # cost.json; None for runs trained before it existed
    worker_memory: dict | None = None  # worker_memory.json; likewise


def load_training(run_dir: Path) -> dict[str, TrainingRun]:
    """train/<strategy>/metrics.jsonl (+ run_info.json): where `train` writes, alone or in the pipeline."""
    runs = {}
    for d in _subdirs(RunLayout(run_dir).train_root, TRAIN_ORDER):
        outputs = TrainDir(d)
        if not outputs.metrics.is_file():
            continue
        info = read_json(outputs.run_info, RunInfo) if outputs.run_info.is_file() else None
        cost = read_json(outputs.cost, TrainCost) if outputs.cost.is_file() else None
        memory = read_json(outputs.worker_memory, WorkerMemory) if outputs.worker_memory.is_file() else None
        runs[d.name] = TrainingRun(d.name, outputs, read_metrics(outputs.metrics), info, cost, memory)
    return runs


def load_manifest(run_dir: Path) -> dict | None:
    path = RunLayout(run_dir).prepared.manifest
    return read_json(path, Manifest) if path.is_file() else None
