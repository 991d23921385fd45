"""Metrics as lm-evaluation-harness computes them, and the files a run writes.

acc: argmax of the choices' log-likelihoods (first one on ties, numpy's argmax, like lm-eval).
acc_norm: argmax of log-likelihood / len(choice text in characters) (lm-eval's multiple_choice).
stderr: sample standard deviation (n - 1) / sqrt(n), lm-eval's `mean_stderr`.

Per model directory: results.json, samples/<benchmark>.jsonl. At the top: results.json with every
model, comparison.md and comparison.png (Med42-70B's published numbers in a reference column).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from med42_ray.benchmarks import MMLU_CLINICAL, BenchmarkItem
from med42_ray.eval.prompts import Request
from med42_ray.eval.scoring import Scored

# Med42-70B model card (m42-health/med42-70b), zero-shot accuracy in %.
MED42_70B_PUBLISHED = {
    "medqa_4options": 61.5, "medmcqa": 60.9, "mmlu_clinical_knowledge": 74.3, "mmlu_college_biology": 84.0,
    "mmlu_college_medicine": 68.8, "mmlu_medical_genetics": 86.0, "mmlu_professional_medicine": 79.8,
    "mmlu_anatomy": 67.4, "usmle_self_assessment": 71.7, "usmle_sample_exam": 72.0,
}
NOTES = [
    "NBME's paid USMLE self-assessment set (used by Nori et al. 2023) is not available; "
    "'usmle_self_assessment' is MedAlpaca's JSONL of the older free USMLE sample-exam edition, "
    "'usmle_sample_exam' the official 2023-24 sample booklets (PDF, answer keys parsed).",
    "Questions that need an image or an exhibit missing from their text are excluded and counted "
    "under 'excluded' (rule: med42_ray/benchmarks/images.py).",
]


def mean_stderr(xs: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    return float(np.std(xs, ddof=1) / math.sqrt(n))


def _predictions(req: Request, s: Scored) -> tuple[int, int]:
    """(acc's argmax, acc_norm's argmax: log-likelihood per character of the choice text)."""
    lls = np.array(s.loglikelihoods)
    lengths = np.array([float(len(c)) for c in req.choice_texts])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def sample_row(item: BenchmarkItem, req: Request, s: Scored) -> dict:
    pred, pred_norm = _predictions(req, s)
    return {"id": item.id, "prompt_hash": req.prompt_hash, "request_key": req.key,
            "loglikelihoods": s.loglikelihoods, "is_greedy": s.is_greedy, "num_tokens": s.num_tokens,
            "prediction": pred, "prediction_norm": pred_norm, "gold": item.gold,
            "acc": float(pred == item.gold), "acc_norm": float(pred_norm == item.gold), "method": s.method,
            **({"step": item.meta["step"]} if "step" in item.meta else {})}


def permuted_row(item: BenchmarkItem, j: int, order: Sequence[int], req: Request, s: Scored) -> dict:
    """One permuted order of `item` (eval/permute.py): `order[p]` is the original index of the option
    shown at position p; `original_choice` the chosen option's index in the original order."""
    pred, _ = _predictions(req, s)
    return {"id": req.item_id, "id_original": item.id, "permutation": j, "order": list(order),
            "request_key": req.key, "loglikelihoods": s.loglikelihoods, "prediction": pred, "gold": req.gold,
            "original_choice": order[pred], "acc": float(pred == req.gold)}


def benchmark_metrics(rows: Sequence[dict], excluded: int, canonical: int) -> dict:
    acc = [r["acc"] for r in rows]
    acc_norm = [r["acc_norm"] for r in rows]
    return {"acc": float(np.mean(acc)) if acc else float("nan"), "acc_stderr": mean_stderr(acc),
            "acc_norm": float(np.mean(acc_norm)) if acc else float("nan"), "acc_norm_stderr": mean_stderr(acc_norm),
            "n": len(rows), "excluded": excluded, "canonical_size": canonical}


def aggregate(per_benchmark: Mapping[str, dict], samples: Mapping[str, Sequence[dict]]) -> dict:
    """The six-subject MMLU mean and the USMLE accuracy per step and overall."""
    out: dict = {}
    mmlu = [b for b in MMLU_CLINICAL if b in per_benchmark]
    if mmlu:
        accs = [per_benchmark[b]["acc"] for b in mmlu]
        ns = [per_benchmark[b]["n"] for b in mmlu]
        out["mmlu_clinical"] = {"acc": float(np.mean(accs)), "subjects": mmlu,
                                "acc_weighted_by_size": float(np.average(accs, weights=ns)), "n": int(sum(ns))}
    for name in ("usmle_sample_exam", "usmle_self_assessment"):
        if name in samples:
            steps: dict = {}
            for r in samples[name]:
                steps.setdefault(r["step"], []).append(r["acc"])
            out[f"{name}_by_step"] = {
                **{s: {"acc": float(np.mean(v)), "acc_stderr": mean_stderr(v), "n": len(v)} for s, v in steps.items()},
                "overall": {"acc": per_benchmark[name]["acc"], "n": per_benchmark[name]["n"]}}
    return out


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# -- comparison across models ----------------------------------------------------------------------

def comparison_rows(models: Mapping[str, dict]) -> list[tuple[str, list[float | None], float | None]]:
    """(row label, accuracy % per model, published Med42-70B %) for every benchmark any model has,
    with the MMLU six-subject mean after the last MMLU subject and USMLE steps under each exam."""
    names: list[str] = []
    for m in models.values():
        names += [b for b in m["benchmarks"] if b not in names]
    last_mmlu = [b for b in names if b in MMLU_CLINICAL][-1:]

    def pct(m: dict, *path: str) -> float | None:
        node = m
        for p in path:
            if p not in node:
                return None
            node = node[p]
        return 100 * node["acc"]

    rows = []
    for b in names:
        rows.append((b, [pct(m, "benchmarks", b) for m in models.values()], MED42_70B_PUBLISHED.get(b)))
        if [b] == last_mmlu:
            pub = float(np.mean([MED42_70B_PUBLISHED[s] for s in MMLU_CLINICAL]))
            rows.append(("mmlu_clinical (6-subject mean)",
                         [pct(m, "aggregates", "mmlu_clinical") for m in models.values()], pub))
        if b in ("usmle_sample_exam", "usmle_self_assessment"):
            for step in ("step1", "step2ck", "step3"):
                vals = [pct(m, "aggregates", f"{b}_by_step", step) for m in models.values()]
                if any(v is not None for v in vals):  # items without a step (e.g. the sample) have no row
                    rows.append((f"  {b} {step}", vals, None))
    return rows


def comparison_markdown(models: Mapping[str, dict], protocol: str) -> str:
    names = list(models)
    head = "| benchmark | " + " | ".join(names) + " | Med42-70B (published) |"
    shots = sorted({m.get("num_fewshot", 0) for m in models.values()})
    kind = "Zero-shot" if shots == [0] else "/".join(map(str, shots)) + "-shot"  # earlier results may differ
    lines = [f"{kind} accuracy (%), protocol `{protocol}`.", "", head,
             "|---|" + "---:|" * (len(names) + 1)]

    def fmt(v):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"

    for label, vals, pub in comparison_rows(models):
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(pub)} |")
    lines += permutation_markdown(models)
    lines += ["", *[f"- {n}" for n in NOTES]]
    return "\n".join(lines) + "\n"


def permutation_table(models: Mapping[str, dict]) -> dict | None:
    """Robustness to option order (None without permutations): per benchmark and model, accuracy in
    the original order, mean accuracy over the rotated orders, right in every order, and the share
    of questions whose chosen option is the same in every order; then those pooled over the
    benchmarks, each question counted once."""
    benches = list(dict.fromkeys(b for m in models.values() for b, v in m["benchmarks"].items() if "permutations" in v))
    if not benches:
        return None
    k = next(v["permutations"]["k"] for m in models.values() for v in m["benchmarks"].values() if "permutations" in v)
    rows = []
    for b in benches:
        cells = {}
        for name, m in models.items():
            v = m["benchmarks"].get(b, {})
            p = v.get("permutations")
            cells[name] = None if p is None else {"acc": v["acc"], **{f: p[f] for f in PERMUTATION_FIGURES}}
        rows.append({"benchmark": b, "cells": cells})
    pooled = {}
    for name in models:
        cs = [r["cells"][name] for r in rows if r["cells"][name] is not None]
        n = sum(c["n"] for c in cs)
        pooled[name] = None if not n else {
            **{f: sum(c[f] * c["n"] for c in cs) / n for f in ("acc", *PERMUTATION_FIGURES) if f != "n"}, "n": n}
    return {"k": k, "rows": rows, "pooled": pooled}


PERMUTATION_FIGURES = ("acc_permuted", "acc_all_orders", "consistency", "n")  # permute.permutation_metrics'


def permutation_cell(c: dict | None) -> str:
    return "—" if c is None else f"{100 * c['acc']:.1f} / {100 * c['acc_permuted']:.1f} / {100 * c['consistency']:.1f}"


def permutation_title(k: int) -> str:
    return (f"Options rotated {k} way(s) (eval/permute.py): accuracy in the original order / mean accuracy "
            "over the rotated orders / share of questions whose chosen option is the same in every order (%).")


def permutation_markdown(models: Mapping[str, dict]) -> list[str]:
    """permutation_table as Markdown lines (empty without permutations)."""
    table = permutation_table(models)
    if table is None:
        return []
    names = list(models)
    lines = ["", permutation_title(table["k"]), "", "| benchmark | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for r in table["rows"]:
        lines.append(f"| {r['benchmark']} | " + " | ".join(permutation_cell(r["cells"][n]) for n in names) + " |")
    lines.append("| **pooled** | " + " | ".join(permutation_cell(table["pooled"][n]) for n in names) + " |")
    return lines


def comparison_chart(models: Mapping[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comparison_rows(models) if not r[0].startswith("  ")]
    labels = [r[0].replace(" (6-subject mean)", "\n(6-subj. mean)") for r in rows]
    series = {name: [r[1][i] for r in rows] for i, name in enumerate(models)}
    series["Med42-70B (published)"] = [r[2] for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(rows) * max(1, len(series) / 2)), 4.5))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [v if v is not None else 0 for v in vals], width, label=name)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
