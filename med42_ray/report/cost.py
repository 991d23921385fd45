"""The report's cost section: what each strategy cost to train and each model costs to run,
measured, beside what `med42-ray plan` estimated for the same run, and accuracy against
accelerator-hours (cost.png).

Training figures come from train/<run>/cost.json and worker_memory.json (train/cost.py), inference
figures from each evaluation's results.json `inference_cost` (eval/cost.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from med42_ray.report.inputs import EvalRuns, TrainingRun
from med42_ray.report.render import Doc, Table, duration
from med42_ray.train.plan import weight_bytes


def training_cost(run: TrainingRun) -> dict | None:
    """One run's measured cost and plan, the workers' peaks reduced to the largest (None: no cost.json)."""
    if run.cost is None:
        return None
    peaks = (run.worker_memory or {}).get("workers", [])
    device = [p["device_bytes"] for p in peaks if p.get("device_bytes") is not None]
    host = [p["host_bytes"] for p in peaks]
    c = run.cost
    return {"wall_time_s": c["wall_time_s"], "workers": c["workers"], "accelerator": c["accelerator"],
            "accelerator_hours": c["accelerator_hours"],
            "peak_device_bytes": max(device) if device else None, "peak_host_bytes": max(host) if host else None,
            "peak_memory_per_worker": peaks, "checkpoint_bytes": c.get("checkpoint_bytes"),
            "export_bytes": c["export_bytes"], "plan": c["plan"], "cost_file": str(run.outputs.cost)}


def inference_cost(evals: EvalRuns) -> dict[str, dict[str, dict]]:
    """column -> variant -> measured figures, with plan's estimate of the weights' bytes."""
    import torch

    return {col: {v: {**f, "plan_weight_bytes": weight_bytes(f["params"], getattr(torch, f["dtype"]).itemsize)}
                  for v, f in variants.items()}
            for col, variants in evals.inference_cost.items()}


def accuracy_vs_hours(training: Mapping[str, dict | None], pooled_block: dict | None) -> list[dict]:
    """Per column of the headline pooled accuracy: fine-tuning accelerator-hours (0 for a model
    this run did not train, such as base) and accuracy ± se in %. None without a trained run's cost."""
    if pooled_block is None or not any(training.values()):
        return []
    points = []
    for col, m in pooled_block["models"].items():
        if m["acc"] is None:
            continue
        t = training.get(col)
        points.append({"model": col, "accelerator_hours": t["accelerator_hours"] if t else 0.0,
                       "accelerator": t["accelerator"] if t else None,
                       "acc": 100 * m["acc"], "se": 100 * m["se"]})
    return points


def cost_summary(training_runs: Mapping[str, TrainingRun], evals: EvalRuns, pooled_block: dict | None) -> dict:
    training = {name: training_cost(run) for name, run in training_runs.items()}
    return {"training": {k: v for k, v in training.items() if v is not None},
            "inference": inference_cost(evals),
            "accuracy_vs_hours": accuracy_vs_hours(training, pooled_block)}


# ---- rendering ---------------------------------------------------------------------------------

def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def _hours(h: float | None) -> str:
    return "—" if h is None else f"{h:.3g}"


def _beside(measured: float | None, plan: float | None, fmt, what: str = "plan") -> str:
    """`measured (plan X, ×measured/plan)`: how far the planner is off, at a glance."""
    text = f"{fmt(measured)} ({what} {fmt(plan)}"
    if measured and plan:
        text += f", ×{measured / plan:.2g}"
    return text + ")"


def _unit(accelerators) -> str:
    """GPU-hours or CPU-hours when the runs used one kind, else accelerator-hours."""
    kinds = {a for a in accelerators if a}
    return f"{kinds.pop()}-hours" if len(kinds) == 1 else "accelerator-hours"


def cost_section(doc: Doc, cost: dict) -> None:
    doc.heading("Cost")
    training, inference = cost["training"], cost["inference"]
    if not training and not inference:
        doc.para("No cost records in this run: `train/<run>/cost.json` and evaluate's `inference_cost` "
                 "(runs trained or evaluated before they existed have none, and evaluate.cost_questions=0 "
                 "measures no inference).")
        return
    if training:
        _training_table(doc, training)
    if inference:
        _inference_table(doc, inference)
    if cost["accuracy_vs_hours"]:
        doc.image("cost.png", "headline pooled accuracy against fine-tuning accelerator-hours")


def _training_table(doc: Doc, training: dict) -> None:
    unit = _unit(t["accelerator"] for t in training.values())
    doc.subheading("Training")
    header = ["strategy", "wall time", unit, "peak device memory / worker", "peak host memory / worker",
              "checkpoint", "exports"]
    rows = []
    for name, t in training.items():
        p = t["plan"]
        exports = "; ".join(f"{k} {_beside(v, p['export_bytes'].get(k), _bytes)}" for k, v in t["export_bytes"].items())
        device = (_beside(t["peak_device_bytes"], p["device_bytes_per_worker"], _bytes)
                  if t["peak_device_bytes"] is not None else f"n/a on CPU (plan {_bytes(p['device_bytes_per_worker'])})")
        rows.append([name, _beside(t["wall_time_s"], p["wall_time_s"], duration),
                     _beside(t["accelerator_hours"], p["accelerator_hours"], _hours), device,
                     _beside(t["peak_host_bytes"], p["host_bytes_per_worker"], _bytes, "plan offloads"),
                     _beside(t["checkpoint_bytes"], p["checkpoint_bytes"], _bytes), exports or "—"])
    doc.table(Table(header, rows, [False] + [True] * (len(header) - 1)))
    first = next(iter(training.values()))["plan"]
    doc.para(
        f"Measured, with `med42-ray plan`'s estimate for the same model, strategy, workers and trained tokens in "
        f"parentheses (× = measured / plan). Wall time runs from the start of `train` to its return: Ray Train "
        f"start-up, training, any restart after a dead worker, and the export. {unit} = wall time × workers × "
        f"{'GPUs' if unit.startswith('GPU') else 'CPUs'} each held. Plan's time assumes "
        f"{100 * first['mfu']:.0f}% MFU of the workers' peak FLOP/s, so it has none on CPU. Peak device memory is "
        "torch's largest allocation on each worker's GPU; on CPU the host holds everything, and plan's device "
        "figure (bf16 weights, DeepSpeed's model-state accounting, activations) is what a GPU would hold. Host "
        "memory is each worker process's peak RSS (libraries included), beside plan's offloaded states. The "
        "checkpoint is the final one in storage, all workers together; exports are their folders on disk "
        "(plan: weights only, in the training dtype).")


def _inference_table(doc: Doc, inference: dict) -> None:
    doc.subheading("Inference")
    header = ["model", "as run", "questions/s", "ms / question", "peak device memory", "peak host memory",
              "weights (plan)", "load time"]
    rows = []
    for col, variants in inference.items():
        for v, f in variants.items():
            rows.append([col, {"model": "—", "unmerged": "adapter (peft)", "merged": "merged"}.get(v, v),
                         "—" if f["questions_per_s"] is None else f"{f['questions_per_s']:.2f}",
                         "—" if f["ms_per_question"] is None else f"{f['ms_per_question']:.1f}",
                         "n/a on CPU" if f["peak_device_bytes"] is None else _bytes(f["peak_device_bytes"]),
                         _bytes(f["peak_host_bytes"]), f"{_bytes(f['plan_weight_bytes'])} ({f['dtype']})",
                         duration(f.get("load_s"))])
    doc.table(Table(header, rows, [False, False] + [True] * (len(header) - 2)))
    n = next(iter(next(iter(inference.values())).values()))["questions"]
    doc.para(f"Each model on one of its evaluation actors once its questions were all answered (no second "
             f"load), on the same {n} questions of the headline protocol, sent as the evaluation sends them "
             "and timed after one untimed task (evaluate.cost_questions). A model with an adapter is measured "
             "as evaluated (peft, unmerged), then merged into its base in that actor. Peak device memory is "
             "torch's largest allocation while answering (weights included); host memory is the actor "
             "process's peak RSS over its life (loading and evaluation included); load time is the model's "
             "(and adapter's) loading in the actor. Weights (plan): parameters × bytes of the dtype.")


def cost_plot(points: list[dict], path: Path) -> None:
    """Headline pooled accuracy (± se) against fine-tuning accelerator-hours, one point per model."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    unit = _unit(p["accelerator"] for p in points)
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.errorbar(p["accelerator_hours"], p["acc"], yerr=p["se"], fmt="o", capsize=4, label=p["model"])
        ax.annotate(p["model"], (p["accelerator_hours"], p["acc"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(f"fine-tuning {unit}")
    ax.set_ylabel("pooled accuracy (%), ± 1 se")
    ax.set_title("Accuracy against training cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
