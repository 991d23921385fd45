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
from med42_ray.train.config import PEFT_METHODS

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


# The paper's claim, as this report checks it: each fine-tune beats the base by at least this many
# standard errors of the difference, and full-parameter is not below LoRA.
ORDERING_MIN_ERRORS = 2.0
# (model, minus), when both columns exist: the paper's three, then each other adapter method against
# the base and against LoRA (pipeline.strategies: [full, lora, dora] adds dora-base and dora-lora).
DIFFERENCES = (("full", "base"), ("lora", "base"), ("full", "lora"),
               *((m, minus) for m in PEFT_METHODS if m != "lora" for minus in ("base", "lora")))


def pooled_accuracy(models: Mapping[str, dict], protocol: str, headline: bool) -> dict:
    """Accuracy over every scored question of every benchmark each model has, counted once each
    (not the mean of per-benchmark accuracies), with the binomial standard error
    sqrt(p(1 - p) / n); the differences between the pipeline's columns, each with its standard
    error sqrt(se1² + se2²) and its size in those errors; and whether the paper's ordering holds.
    A question's correctness is the per-benchmark `acc` (argmax of log-likelihoods), so
    correct = acc · n. Accuracies, errors and differences are fractions (0-1)."""
    benchmarks: list[str] = []
    for m in models.values():
        benchmarks += [b for b in m["benchmarks"] if b not in benchmarks]
    per_model = {name: _pool(m["benchmarks"]) for name, m in models.items()}
    differences = {f"{a}-{b}": _difference(a, b, per_model) for a, b in DIFFERENCES
                   if a in per_model and b in per_model}
    return {"protocol": protocol, "headline": headline, "scale": "fraction", "benchmarks": benchmarks,
            "models": per_model, "differences": differences, "ordering": ordering_verdict(differences)}


def _pool(scores: Mapping[str, dict]) -> dict:
    n = sum(s["n"] for s in scores.values())
    # acc is a mean of 0/1 (inputs.py checks acc · n is whole): counting keeps equal pools equal
    correct = sum(round(s["acc"] * s["n"]) for s in scores.values() if s["n"])  # n = 0: acc is NaN
    p = correct / n if n else None
    return {"correct": correct, "n": n, "acc": p,
            "se": math.sqrt(p * (1 - p) / n) if n else None, "benchmarks": list(scores)}


def _difference(a: str, b: str, per_model: Mapping[str, dict]) -> dict:
    x, y = per_model[a], per_model[b]
    if x["acc"] is None or y["acc"] is None:
        return {"model": a, "minus": b, "diff": None, "se": None, "z": None, "same_benchmarks": False}
    diff, se = x["acc"] - y["acc"], math.hypot(x["se"], y["se"])
    return {"model": a, "minus": b, "diff": diff, "se": se, "z": diff / se if se else None,
            # pooled over different question sets, a difference is not a like-for-like comparison
            "same_benchmarks": sorted(x["benchmarks"]) == sorted(y["benchmarks"])}


def ordering_verdict(differences: Mapping[str, dict]) -> dict:
    """full > base and lora > base each by >= ORDERING_MIN_ERRORS standard errors; full >= lora.
    A check whose columns are missing is None (not checked); `holds` is over the checks made
    (None when none could be)."""
    def beats(d: dict | None) -> bool | None:
        return None if d is None or d["diff"] is None else d["diff"] > 0 and d["diff"] >= k * d["se"]

    def not_below(d: dict | None) -> bool | None:
        return None if d is None or d["diff"] is None else d["diff"] >= 0

    k = ORDERING_MIN_ERRORS
    checks = [{"claim": f"full > base by >= {k:g} se", "difference": "full-base",
               "holds": beats(differences.get("full-base"))},
              {"claim": f"lora > base by >= {k:g} se", "difference": "lora-base",
               "holds": beats(differences.get("lora-base"))},
              {"claim": "full >= lora", "difference": "full-lora", "holds": not_below(differences.get("full-lora"))}]
    made = [c["holds"] for c in checks if c["holds"] is not None]
    return {"checks": checks, "holds": all(made) if made else None, "complete": len(made) == len(checks)}


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
