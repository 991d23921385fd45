"""`med42-ray prepare`: the instruction mixture as a Ray Data program.

    plan reads ─► read ─► mark duplicates ─► decontaminate ─► sample ─► tokenise ─► ledger/
                                                                                     │ kept rows
                                                                     shards/ ◄─ pack ◄┘

Stage 1 streams every input row to `ledger/` (Parquet) with its status; stage 2 packs the kept
rows into `shards/`. The driver then writes manifest.json, contamination.jsonl and rejects/ from
those two tables and checks that every row read is accounted for. Everything that can be wrong
with the configuration (missing files, unknown formats, the tokenizer, the benchmarks) is
checked before Ray starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from med42_ray.data import output, steps
from med42_ray.errors import ConfigError
from med42_ray.layout import PreparedDir, prepared_dir_for
from med42_ray.paths import resolve_path

if TYPE_CHECKING:  # annotations only: a stage never imports the config composition at run time
    from med42_ray.config import RunConfig

log = logging.getLogger(__name__)

STATUSES = ("rejected", "duplicate", "contaminated", "sampled_out", "kept")
# contamination.jsonl: record field -> ledger column. `rule` is which rule fired (decontam.RULES);
# run_start/run_end are word offsets of the matched run in the row's normalised words (all its
# messages joined by newlines) and matching_text is that run.
CONTAMINATION_FIELDS = {"id": "id", "source": "source", "file": "file", "row": "row", "benchmark": "reason",
                        "item_id": "match_item", "rule": "match_rule", "part": "match_part",
                        "coverage": "match_coverage", "run_start": "match_start", "run_end": "match_end",
                        "matching_text": "match_text"}


class AccountingError(RuntimeError):
    """Rows were lost or counted twice: the outputs must not be used."""


@dataclass
class PreparePlan:
    """Everything `prepare` needs, resolved and checked on the driver before Ray starts."""

    output: PreparedDir
    read_tasks: list[dict]
    input_bytes: int
    tokenizer_path: str
    benchmarks_dir: Path
    benchmark_items: list
    benchmark_counts: dict[str, int]
    files: dict[str, dict]  # source -> {"read": [file, ...], "skipped": [{"file", "why"}, ...]}


def plan_prepare(cfg: RunConfig) -> PreparePlan:
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.data.readers import plan_read_tasks, source_files
    from med42_ray.model import resolve_model

    p = cfg.prepare
    if not p.sources:
        raise ConfigError("prepare.sources is empty: nothing to prepare")
    tasks, files = [], {}
    for src in p.sources:
        try:
            found = source_files(src.path, src.format)
            tasks += plan_read_tasks(found.read, src.format, src.name)
        except (OSError, ValueError) as e:  # OSError: also a remote store that refuses or cannot be reached
            raise ConfigError(f"source {src.name!r}: {e}") from None
        files[src.name] = {"read": [str(f) for f in found.read],
                           "skipped": [{"file": str(f), "why": why} for f, why in found.skipped]}
        if found.skipped:  # a directory source: say what was left out, before anything runs
            print(f"source {src.name!r}: reading {len(found.read)} file(s) of {src.path}, skipping "
                  + "; ".join(f"{f.name} ({why})" for f, why in found.skipped), flush=True)

    bench_dir = resolve_path(p.benchmarks_dir)
    if not bench_dir.is_dir():
        raise ConfigError(f"prepare.benchmarks_dir not found: {bench_dir}")
    # validation splits too (MedQA dev): the sweep selects on them, so they must not leak either
    benchmarks = load_benchmarks(bench_dir, p.benchmarks, include_validation=True)
    if not benchmarks:
        raise ConfigError(f"no benchmark found under {bench_dir}: decontamination would check nothing")

    tokenizer_path = resolve_model(p.tokenizer or cfg.model)
    try:
        from transformers import AutoTokenizer

        from med42_ray.data.template import Tokenise

        Tokenise(AutoTokenizer.from_pretrained(tokenizer_path), p.template, p.system_prompt)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer {tokenizer_path!r} cannot be used: {e}") from None

    return PreparePlan(
        output=prepared_dir_for(cfg),
        read_tasks=tasks,
        input_bytes=sum(t["end"] - t["start"] for t in tasks),
        tokenizer_path=tokenizer_path,
        benchmarks_dir=bench_dir,
        benchmark_items=[it for items in benchmarks.values() for it in items],
        benchmark_counts={name: len(items) for name, items in benchmarks.items()},
        files=files,
    )


def run_prepare(cfg: RunConfig) -> dict:
    """Run the pipeline; returns the manifest (also written to <output_dir>/manifest.json)."""
    import ray
    from ray.data.expressions import col

    from med42_ray.cluster import connect
    from med42_ray.data.decontam import ContaminationIndex
    from med42_ray.data.parquet_read import read_parquet

    started = time.time()
    plan = plan_prepare(cfg)
    log.info("planned in %.1fs", time.time() - started)
    p = cfg.prepare
    out = plan.output
    output.clear(out)  # the old manifest first: a run that fails below leaves nothing claiming shards
    out.root.mkdir(parents=True, exist_ok=True)

    index = ContaminationIndex.build(plan.benchmark_items, n=p.ngram)
    print(f"decontamination index: {index.stats['items']} items from {len(plan.benchmark_counts)} benchmarks, "
          f"{index.stats['ngrams']} {p.ngram}-grams, {index.stats['short_items']} short items", flush=True)

    connect(cfg.ray)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # Task-based sort shuffle for the dedup groupby: the hash shuffle's aggregator actors outlive
    # the stage and hold CPUs that the packing stage then waits for.
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    # Blocks keep their input order through both programs. Without it the ledger's files, and so
    # the order in which kept rows reach the packer, follow task completion: the same seed packed
    # different sequences on every run (the demo's numbers changed from run to run).
    ctx.execution_options.preserve_order = True
    index_ref = ray.put(index)
    weights = {s.name: s.weight for s in p.sources}
    source_rank = {s.name: i for i, s in enumerate(p.sources)}

    # Stage 1: every row read, with its status, to the ledger.
    items = [{"task": json.dumps(t)} for t in plan.read_tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Duplicates are found per bucket of conversation hashes: map_groups costs a Python call per
    # group, so one group per distinct conversation would dominate the run. ~4 MB of input per
    # bucket keeps groups bounded on large inputs; at least two buckets per CPU keep every CPU
    # busy in the steps after the shuffle, which run in the shuffle's output partitions.
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    buckets = int(min(4096, max(2 * cpus, plan.input_bytes // (4 << 20))))
    partitions = min(buckets, cpus)
    ds = ds.map_batches(steps.read_task, batch_size=1, fn_kwargs={"dedup_buckets": buckets})
    ds = ds.groupby("dedup_bucket", num_partitions=partitions).map_groups(
        steps.mark_duplicates, batch_format="pyarrow", fn_kwargs={"source_rank": source_rank})
    ds = ds.map_batches(steps.decontaminate, batch_format="pyarrow", fn_kwargs={"index_ref": index_ref})
    ds = ds.map_batches(steps.sample, batch_format="pyarrow", fn_kwargs={"weights": weights, "seed": cfg.seed})
    ds = ds.map_batches(steps.tokenise, batch_format="pyarrow", fn_kwargs={
        "tokenizer_path": plan.tokenizer_path, "template": p.template, "system_prompt": p.system_prompt,
        "seq_len": p.seq_len, "overlong": p.overlong})
    ds.set_name("prepare.read_decontaminate")  # the dashboard's Data page lists each program by name
    with output.finishing(out):  # a full disk: one error naming the file, the partial output removed
        ds.write_parquet(str(out.ledger))

        # Stage 2: pack the kept rows.
        kept = read_parquet(str(out.ledger)).filter(expr=col("status") == "kept")  # no footer actors
        kept = kept.select_columns(["source", "input_ids", "labels", "copies"])
        packed = kept.map_batches(steps.pack_batch, batch_size=p.pack_window, batch_format="pyarrow",
                                  fn_kwargs={"seq_len": p.seq_len})
        packed.set_name("prepare.pack")
        packed.write_parquet(str(out.shards), min_rows_per_file=p.rows_per_shard)

        manifest = write_reports(cfg, plan, index.stats, time.time() - started)
    print_summary(manifest)
    return manifest


# -- reports ----------------------------------------------------------------------------------

def _read(path: Path, columns: list[str]) -> pa.Table:
    if not path.exists():
        return pa.table({c: [] for c in columns})
    return pads.dataset(str(path), format="parquet").to_table(columns=columns)


def count_sources(ledger: pa.Table, shards: pa.Table) -> dict[str, dict]:
    """Per-source counts from the ledger, tokens from the shards, checked against each other."""
    per: dict[str, dict] = defaultdict(lambda: {
        "read": 0, "rejected": Counter(), "duplicates": 0, "contaminated": Counter(), "sampled_out": 0,
        "kept": 0, "kept_copies": 0, "repeated_copies": 0, "tokens": 0, "trainable_tokens": 0,
        "ledger_tokens": 0, "ledger_trainable": 0})
    for r in ledger.select(["source", "status", "reason", "copies", "num_tokens", "trainable_tokens"]).to_pylist():
        s = per[r["source"]]
        s["read"] += 1
        status = r["status"]
        if status == "rejected":
            s["rejected"][r["reason"]] += 1
        elif status == "duplicate":
            s["duplicates"] += 1
        elif status == "contaminated":
            s["contaminated"][r["reason"]] += 1
        elif status == "sampled_out":
            s["sampled_out"] += 1
        elif status == "kept":
            s["kept"] += 1
            s["kept_copies"] += r["copies"]
            s["repeated_copies"] += r["copies"] - 1
            s["ledger_tokens"] += r["copies"] * r["num_tokens"]
            s["ledger_trainable"] += r["copies"] * r["trainable_tokens"]
        else:
            raise AccountingError(f"unknown status {status!r} in the ledger")
    for r in shards.select(["doc_sources", "doc_tokens", "doc_trainable"]).to_pylist():
        for src, n, t in zip(r["doc_sources"], r["doc_tokens"], r["doc_trainable"]):
            per[src]["tokens"] += n
            per[src]["trainable_tokens"] += t
    return per


def check_accounting(per: dict[str, dict], ledger: pa.Table) -> None:
    """Fail loudly unless every row is counted exactly once and every kept token was packed."""
    keys = pc.binary_join_element_wise(ledger["file"], pc.cast(ledger["row"], pa.string()), "\x00")
    if pc.count_distinct(keys).as_py() != ledger.num_rows:
        raise AccountingError("a (file, row) appears twice in the ledger: a row was counted twice")
    problems = []
    for name, s in per.items():
        total = (sum(s["rejected"].values()) + s["duplicates"] + sum(s["contaminated"].values())
                 + s["sampled_out"] + s["kept"])
        if s["read"] != total:
            problems.append(f"{name}: read {s['read']} != rejected + duplicates + contaminated + "
                            f"sampled_out + kept = {total}")
        if (s["tokens"], s["trainable_tokens"]) != (s["ledger_tokens"], s["ledger_trainable"]):
            problems.append(f"{name}: {s['ledger_tokens']} tokens kept but {s['tokens']} packed "
                            f"({s['ledger_trainable']} vs {s['trainable_tokens']} trainable)")
    if problems:
        raise AccountingError("row accounting failed:\n  " + "\n  ".join(problems))


def write_reports(cfg: RunConfig, plan: PreparePlan, index_stats: dict, seconds: float) -> dict:
    out = plan.output
    ledger = _read(out.ledger, [f.name for f in steps.LEDGER_SCHEMA if f.name not in ("input_ids", "labels")])
    shards_table = _read(out.shards, ["num_tokens", "doc_sources", "doc_tokens", "doc_trainable"])
    per = count_sources(ledger, shards_table)
    check_accounting(per, ledger)

    _write_jsonl(out.contamination, ledger.filter(pc.equal(ledger["status"], "contaminated")), CONTAMINATION_FIELDS)
    out.rejects.mkdir(exist_ok=True)
    _write_jsonl(out.rejects_file, ledger.filter(pc.equal(ledger["status"], "rejected")),
                 {"file": "file", "row": "row", "source": "source", "reason": "reason", "detail": "detail", "id": "id"})
    _write_jsonl(out.duplicates_file, ledger.filter(pc.equal(ledger["status"], "duplicate")),
                 {"file": "file", "row": "row", "source": "source", "id": "id", "detail": "detail"})

    shard_files = sorted(str(f.relative_to(out.root)) for f in out.shards.glob("*.parquet"))
    n_tokens = pc.sum(shards_table["num_tokens"]).as_py() or 0
    sources = {}
    for src in cfg.prepare.sources:
        s = per[src.name]
        sources[src.name] = {
            "format": src.format, "path": src.path, "weight": src.weight, "domain": src.domain,
            "files": plan.files[src.name]["read"], "skipped_files": plan.files[src.name]["skipped"],
            "read": s["read"], "rejected": dict(s["rejected"]), "duplicates": s["duplicates"],
            "contaminated": dict(s["contaminated"]), "sampled_out": s["sampled_out"], "kept": s["kept"],
            "kept_copies": s["kept_copies"], "repeated_copies": s["repeated_copies"],
            "tokens": s["tokens"], "trainable_tokens": s["trainable_tokens"],
        }
    manifest = {
        "invariant": "read = sum(rejected) + duplicates + sum(contaminated) + sampled_out + kept, per source; "
                     "kept counts each input row once, kept_copies counts its repeats (weight > 1); "
                     "tokens and trainable_tokens are what the shards hold, repeats included",
        "seq_len": cfg.prepare.seq_len,
        "template": cfg.prepare.template,
        "tokenizer": plan.tokenizer_path,
        "seed": cfg.seed,
        "shards": shard_files,
        "sequences": shards_table.num_rows,
        "tokens": n_tokens,
        "packing_efficiency": round(n_tokens / (shards_table.num_rows * cfg.prepare.seq_len), 4)
        if shards_table.num_rows else 0.0,
        "sources": sources,
        "benchmarks": {"dir": str(plan.benchmarks_dir), "items": plan.benchmark_counts, "index": index_stats},
        "seconds": round(seconds, 1),
        "config": cfg.model_dump(mode="json"),
    }
    output.write_manifest(out.manifest, json.dumps(manifest, indent=2) + "\n")  # last: it marks the output complete
    return manifest


def _write_jsonl(path: Path, table: pa.Table, fields: dict[str, str]) -> None:
    rows = table.sort_by([("source", "ascending"), ("file", "ascending"), ("row", "ascending")]).to_pylist()
    with output.writing(path), path.open("w") as f:
        for r in rows:
            f.write(json.dumps({k: r[col] for k, col in fields.items()}, ensure_ascii=False) + "\n")


def print_summary(manifest: dict) -> None:
    cols = ["read", "rejected", "duplicates", "contaminated", "sampled_out", "kept", "kept_copies",
            "tokens", "trainable_tokens"]
    rows = []
    for name, s in manifest["sources"].items():
        rows.append([name] + [sum(s[c].values()) if isinstance(s[c], dict) else s[c] for c in cols])
    rows.append(["TOTAL"] + [sum(r[i + 1] for r in rows) for i in range(len(cols))])
    header = ["source"] + cols
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    print()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    contaminated = Counter()
    for s in manifest["sources"].values():
        contaminated.update(s["contaminated"])
    if contaminated:
        print("contaminated rows by benchmark: " + ", ".join(f"{b} {n}" for b, n in sorted(contaminated.items())))
    print(f"{manifest['sequences']} packed sequences of <= {manifest['seq_len']} tokens, "
          f"{manifest['packing_efficiency']:.1%} full, in {len(manifest['shards'])} shards; "
          f"{manifest['seconds']}s")
