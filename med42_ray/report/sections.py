"""The report's numbers, as plain data (report.json holds exactly these; the pages render them).

Accuracy rows come from med42_ray.eval.results.comparison_rows, so the report and evaluate's own
comparison.md always list the same rows in the same order with the same numbers.
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping

from med42_ray.eval.results import MED42_70B_PUBLISHED, comparison_rows
from med42_ray.report.inputs import TrainingRun

USMLE_SETS = ("usmle_sample_exam", "usmle_self_assessment")
PAPER_USMLE_HEADLINE = 72.0  # Med42 paper (arXiv 2404.14779): 72% on the USMLE sample exams


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _stderr_view(node):
    """The same results with every accuracy replaced by its standard error (NaN where none), so
    comparison_rows yields the stderr of exactly the cells it yields accuracies for."""
    if not isinstance(node, dict):
        return node
    out = {k: _stderr_view(v) for k, v in node.items()}
    if "acc" in node:
        se = node.get("acc_stderr")
        out["acc"] = float("nan") if se is None else se
    return out


def accuracy_table(models: Mapping[str, dict]) -> dict:
    columns = list(models)
    errors = comparison_rows({k: _stderr_view(m) for k, m in models.items()})
    rows = []
    for (label, accs, published), (_, ses, _) in zip(comparison_rows(models), errors):
        rows.append({"benchmark": label.strip(), "sub_row": label.startswith(" "),
                     "values": {c: _num(v) for c, v in zip(columns, accs)},
                     "stderr": {c: _num(v) for c, v in zip(columns, ses)},
                     "published": _num(published)})
    return {"columns": columns, "rows": rows}


def usmle_headline(models: Mapping[str, dict]) -> dict:
    """Mean accuracy (%) over the USMLE sets each model was scored on, the paper's headline metric."""
    sets = [s for s in USMLE_SETS if any(s in m["benchmarks"] for m in models.values())]
    per_model, used = {}, {}
    for name, m in models.items():
        used[name] = [s for s in sets if s in m["benchmarks"]]
        accs = [100 * m["benchmarks"][s]["acc"] for s in used[name]]
        per_model[name] = _num(statistics.fmean(accs)) if accs else None
    published = statistics.fmean(MED42_70B_PUBLISHED[s] for s in sets) if sets else None
    return {"sets": sets, "values": per_model, "sets_used": used, "published": published,
            "paper_headline": PAPER_USMLE_HEADLINE}


def strategy_summary(run: TrainingRun) -> dict:
    info, rows = run.run_info or {}, run.metrics
    # The first step carries warm-up (compilation, the first data fetch); it is not the steady rate.
    steady = rows[1:] or rows
    tps = [r["tokens_per_s"] for r in steady if r.get("tokens_per_s") is not None]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    times = [r["step_time_s"] for r in rows if r.get("step_time_s") is not None]
    trainable, total = info.get("trainable_params"), info.get("total_params")
    return {
        "strategy": info.get("strategy", run.name), "model": info.get("model"),
        "trainable_params": trainable, "total_params": total,
        "trainable_pct": 100 * trainable / total if trainable is not None and total else None,
        "workers": info.get("world_size"), "zero_stage": info.get("zero_stage"),
        "steps": rows[-1]["step"] if rows else 0, "total_steps": info.get("total_steps"),
        "first_loss": rows[0]["loss"] if rows else None, "final_loss": rows[-1]["loss"] if rows else None,
        "tokens_seen": rows[-1].get("tokens_seen") if rows else None,
        "median_tokens_per_s": statistics.median(tps) if tps else None,
        "median_mfu": statistics.median(mfu) if mfu else None,
        "peak_flops_per_worker": info.get("peak_flops_per_worker"),
        # Sum of step times: the training loop itself (data, compute, checkpoints), not Ray start-up.
        "wall_time_s": sum(times) if times else None,
        "metrics_file": str(run.outputs.metrics),
        "run_info_file": str(run.outputs.run_info) if run.run_info is not None else None,
    }


def contamination(manifest: Mapping) -> dict:
    """Training rows dropped for overlapping each benchmark, and each source's row accounting."""
    items = manifest["benchmarks"]["items"]
    per_benchmark = {b: {"items": n, "removed": 0, "sources": {}} for b, n in items.items()}
    per_source = {}
    for src, c in manifest["sources"].items():
        for bench, n in c["contaminated"].items():
            entry = per_benchmark.setdefault(bench, {"items": None, "removed": 0, "sources": {}})
            entry["removed"] += n
            entry["sources"][src] = n
        rejected, contaminated = sum(c["rejected"].values()), sum(c["contaminated"].values())
        accounted = rejected + c["duplicates"] + contaminated + c["sampled_out"] + c["kept"]
        per_source[src] = {"read": c["read"], "kept": c["kept"], "duplicates": c["duplicates"],
                           "rejected": rejected, "contaminated": contaminated, "sampled_out": c["sampled_out"],
                           "unaccounted": c["read"] - accounted}
    return {"benchmarks": per_benchmark, "sources": per_source,
            "total_removed": sum(e["removed"] for e in per_benchmark.values()),
            "invariant": manifest.get("invariant")}
