"""`build_report(run_dir)`: one page per pipeline run, in <run_dir>/report/:
report.md (+ comparison.png, loss_curves.png, cost.png beside it), report.html (self-contained), report.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from med42_ray.eval.results import NOTES, comparison_chart, permutation_cell, permutation_table, permutation_title
from med42_ray.layout import RunLayout
from med42_ray.report import cost, sections
from med42_ray.report.inputs import ReportError, load_eval, load_manifest, load_training
from med42_ray.report.plots import loss_curves
from med42_ray.report.render import Doc, Table, duration, to_html, to_markdown

PUBLISHED = "Med42-70B (published)"


def _pct(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if se is None else f"{v:.1f} ± {se:.1f}"


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _accuracy_section(doc: Doc, evals, table: dict, headline: dict) -> None:
    cols = table["columns"]
    doc.heading("Zero-shot accuracy")
    if headline["sets"]:
        def shown(c):  # a model scored on fewer sets says so: its mean is not like the others'
            used = headline["sets_used"][c]
            if headline["values"][c] is None:
                return f"{c} —"
            return f"{c} **{_pct(headline['values'][c])}%**" + (
                f" ({', '.join(used)} only)" if used != headline["sets"] else "")

        vals = ", ".join(shown(c) for c in cols)
        doc.para(f"**USMLE headline** (mean of {', '.join(f'`{s}`' for s in headline['sets'])}): {vals}; "
                 f"Med42-70B {_pct(headline['published'])}% published "
                 f"(the paper's headline: {headline['paper_headline']:.0f}%).")
    else:
        doc.para("**USMLE headline**: no USMLE set was evaluated in this run.")
    rows = [[r["benchmark"], *(_pct(r["values"][c], r["stderr"][c]) for c in cols), _pct(r["published"])]
            for r in table["rows"]]
    doc.table(Table(["benchmark", *cols, PUBLISHED], rows, [False] + [True] * (len(cols) + 1),
                    {i for i, r in enumerate(table["rows"]) if r["sub_row"]}))
    doc.image("comparison.png", "zero-shot accuracy per benchmark and model")
    doc.para("Results: " + ", ".join(f"{c}: `{evals.files[c]}`" for c in cols) + ".")


def _signed(v: float) -> str:
    return f"{v:+.1f}".replace("-", "−")


def _pooled_section(doc: Doc, pooled: dict[str, dict], headline: str | None) -> None:
    doc.heading("Pooled accuracy")
    others = [f"`{p}`" for p in pooled if p != headline]
    doc.para("Every scored question of every benchmark a model was scored on, counted once (not the mean "
             "of the benchmarks' accuracies): accuracy in % ± its binomial standard error √(p(1−p)/n). A "
             "difference's error is √(se₁² + se₂²); its size is the difference in those errors. "
             + (f"Headline protocol `{headline}` (the accuracy table below)" if headline else
                "The accuracy table's columns used different protocols")
             + (f"; also scored: {', '.join(others)}." if headline and others else "."))
    for block in pooled.values():
        _pooled_block(doc, block)


def _pooled_block(doc: Doc, block: dict) -> None:
    doc.subheading(f"Protocol `{block['protocol']}`" + (" (headline)" if block["headline"] else ""))
    rows = [[c, f"{m['correct']:,} / {m['n']:,}", "—" if m["acc"] is None else _pct(100 * m["acc"], 100 * m["se"])]
            for c, m in block["models"].items()]
    doc.table(Table(["model", "correct / questions", "accuracy (%)"], rows, [False, True, True]))
    fewer = {c: [b for b in block["benchmarks"] if b not in m["benchmarks"]] for c, m in block["models"].items()}
    if any(fewer.values()):
        doc.para("Not scored on every benchmark (a smaller pool; its differences compare other questions): "
                 + "; ".join(f"{c} lacks {', '.join(f'`{b}`' for b in bs)}" for c, bs in fewer.items() if bs) + ".")
    if block["differences"]:
        rows = [[f"{d['model']} − {d['minus']}" + ("" if d["same_benchmarks"] else " (different benchmarks)"),
                 "—" if d["diff"] is None else f"{_signed(100 * d['diff'])} ± {100 * d['se']:.1f}",
                 "—" if d["z"] is None else _signed(d["z"])]
                for d in block["differences"].values()]
        doc.table(Table(["difference", "points (%)", "size (standard errors)"], rows, [False, True, True]))
    doc.para(_ordering_text(block["ordering"]))


def _ordering_text(ordering: dict) -> str:
    mark = {True: "✓", False: "✗", None: "not checked"}
    checks = "; ".join(f"{c['claim'].replace('>=', '≥')} {mark[c['holds']]}" for c in ordering["checks"])
    if ordering["holds"] is None:
        return (f"The paper's ordering (full > base and lora > base by ≥ {sections.ORDERING_MIN_ERRORS:g} se each, "
                "full ≥ lora) **cannot be checked**: it needs two of the columns base, full, lora.")
    verdict = "**holds**" if ordering["holds"] else "**does not hold**"
    partial = "" if ordering["complete"] else " (on the columns present)"
    return f"The paper's ordering {verdict}{partial}: {checks}."


def _robustness_section(doc: Doc, robustness: dict | None) -> None:
    if robustness is None:  # evaluated without --permutations: nothing to say
        return
    doc.heading("Robustness to option order")
    cols = list(robustness["pooled"])
    rows = [[r["benchmark"], *(permutation_cell(r["cells"][c]) for c in cols)] for r in robustness["rows"]]
    rows.append(["**pooled**", *(permutation_cell(robustness["pooled"][c]) for c in cols)])
    doc.table(Table(["benchmark", *cols], rows, [False] + [True] * len(cols)))
    doc.para(permutation_title(robustness["k"]) + " A gain that survives the rotations is knowledge; one that "
             "does not is a preference for a letter or a position. Pooled: every question counted once.")


def _training_section(doc: Doc, strategies: dict) -> None:
    doc.heading("Training")
    if not strategies:
        doc.para("No training metrics found (`train/<strategy>/metrics.jsonl`).")
        return
    doc.image("loss_curves.png", "training loss per optimizer step")
    header = ["strategy", "trainable params", "% of total", "total params", "workers", "ZeRO stage", "steps",
              "final loss", "median tokens/s", "median MFU", "train time"]
    rows = []
    for name, s in strategies.items():
        steps = f"{s['steps']} / {s['total_steps']}" if s["total_steps"] else str(s["steps"])
        if s["median_mfu"] is not None:
            mfu = f"{100 * s['median_mfu']:.1f}%"
        else:
            mfu = "n/a on CPU" if s["run_info_file"] and s["peak_flops_per_worker"] is None else "—"
        rows.append([name, _count(s["trainable_params"]),
                     "—" if s["trainable_pct"] is None else f"{s['trainable_pct']:.2f}%",
                     _count(s["total_params"]), _count(s["workers"]),
                     "—" if s["zero_stage"] is None else str(s["zero_stage"]), steps,
                     "—" if s["final_loss"] is None else f"{s['final_loss']:.4f}",
                     "—" if s["median_tokens_per_s"] is None else f"{s['median_tokens_per_s']:,.0f}",
                     mfu, duration(s["wall_time_s"])])
    doc.table(Table(header, rows, [False] + [True] * (len(header) - 1)))
    missing = [n for n, s in strategies.items() if s["run_info_file"] is None]
    doc.para("Loss is the mean over answer tokens of each optimizer step's global batch; x is the optimizer "
             "step. Tokens/s counts every worker's non-padding tokens (first step left out: warm-up); MFU "
             "needs a GPU's peak FLOP/s, so it is n/a on CPU; train time sums the step times (data, "
             "compute, checkpoints), not cluster start-up."
             + (f" No run_info.json for {', '.join(missing)}: parameter counts unknown." if missing else ""))


def _contamination_section(doc: Doc, contam: dict | None) -> None:
    doc.heading("Decontamination")
    if contam is None:
        doc.para("No `prepared/manifest.json` in this run.")
        return
    doc.para(f"**{contam['total_removed']} training rows removed** because they overlap a benchmark item "
             "(every match is listed in `prepared/contamination.jsonl`).")
    rows = [[b, _count(e["items"]), str(e["removed"]),
             ", ".join(f"{s} ({n})" for s, n in e["sources"].items()) or "—"]
            for b, e in contam["benchmarks"].items()]
    rows.append(["**total**", _count(sum(e["items"] or 0 for e in contam["benchmarks"].values())),
                 f"**{contam['total_removed']}**", ""])
    doc.table(Table(["benchmark", "benchmark items", "training rows removed", "from sources"], rows,
                    [False, True, True, False]))
    fields = ["read", "kept", "duplicates", "rejected", "contaminated", "sampled_out"]
    rows = [[src, *(_count(c[f]) for f in fields), "✓" if c["unaccounted"] == 0 else f"✗ ({c['unaccounted']:+d})"]
            for src, c in contam["sources"].items()]
    doc.table(Table(["source", *fields, "balanced"], rows, [False] + [True] * len(fields) + [False]))
    if contam["invariant"]:
        doc.para(f"Invariant: {contam['invariant']}.")


def _how_to_read(doc: Doc, evals) -> None:
    doc.heading("How to read this")
    protocols = sorted({p or "unknown" for p in evals.protocols.values()})
    described = "; ".join(sorted(evals.descriptions))
    text = (f"Protocol `{', '.join(protocols)}`" + (f" ({described})" if described else "") + ": zero-shot, "
            "each answer choice scored by its log-likelihood, as lm-evaluation-harness does. Cells are "
            "accuracy in % ± one standard error (sample standard deviation / √n, lm-eval's `acc_stderr`); "
            "a difference under about two standard errors is noise. Aggregate rows carry no ± value; "
            "— means the model was not scored on that benchmark. The Med42-70B column is the model "
            "card's published numbers, for scale only.")
    if len(protocols) > 1:
        text += " **The columns used different protocols and are not directly comparable.**"
    if any("sample/data/benchmarks" in d for d in evals.benchmarks_dirs):
        text += (" These numbers come from the embedded sample (tens of questions per benchmark, a tiny "
                 "model trained for minutes): a smoke test that the pipeline runs end to end, not a "
                 "medical claim.")
    elif evals.benchmarks_dirs:
        text += (f" Benchmarks read from `{', '.join(sorted(evals.benchmarks_dirs))}`. Accuracy on exam "
                 "questions is not clinical safety: nothing in this report is a medical claim.")
    else:
        text += (" On the embedded sample (the default config) these numbers are a smoke test of the "
                 "pipeline; in any case nothing in this report is a medical claim.")
    doc.para(text)
    doc.bullets(NOTES)


def build_report(run_dir: Path | str, out_dir: Path | str | None = None) -> Path:
    """Write report.md, report.html, report.json, comparison.png and loss_curves.png for a pipeline
    run; returns the path of report.md. Raises ReportError naming the file when input is missing
    or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found")
    out_dir = Path(out_dir) if out_dir else RunLayout(run_dir).report
    evals = load_eval(run_dir)
    training = load_training(run_dir)
    manifest = load_manifest(run_dir)

    table = sections.accuracy_table(evals.models)
    headline_protocol = evals.headline_protocol
    pooled = {p: {**sections.pooled_accuracy(models, p, p == headline_protocol),
                  "results_files": evals.protocol_files[p]}
              for p, models in evals.by_protocol.items()}
    headline = sections.usmle_headline(evals.models)
    robustness = permutation_table(evals.models)
    strategies = {name: sections.strategy_summary(run) for name, run in training.items()}
    costs = cost.cost_summary(training, evals, pooled.get(headline_protocol))
    contam = sections.contamination(manifest) if manifest is not None else None

    out_dir.mkdir(parents=True, exist_ok=True)
    comparison_chart(evals.models, out_dir / "comparison.png")
    if training:
        loss_curves(training, out_dir / "loss_curves.png")
    if costs["accuracy_vs_hours"]:
        cost.cost_plot(costs["accuracy_vs_hours"], out_dir / "cost.png")

    doc = Doc(f"med42-ray run report: `{run_dir.name}`")
    doc.para(f"Run directory `{run_dir}`; models " + ", ".join(f"**{c}**" for c in table["columns"]) + ".")
    _pooled_section(doc, pooled, headline_protocol)
    _accuracy_section(doc, evals, table, headline)
    _robustness_section(doc, robustness)
    _training_section(doc, strategies)
    cost.cost_section(doc, costs)
    _contamination_section(doc, contam)
    _how_to_read(doc, evals)

    (out_dir / "report.md").write_text(to_markdown(doc))
    (out_dir / "report.html").write_text(to_html(doc, out_dir))
    report = {"run_dir": str(run_dir), "protocols": evals.protocols, "results_files": evals.files,
              "headline_protocol": headline_protocol, "pooled": pooled,
              "columns": table["columns"], "rows": table["rows"], "usmle_headline": headline,
              "robustness": robustness, "strategies": strategies, "cost": costs, "contamination": contam}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return out_dir / "report.md"
