"""The training-loss figure (the accuracy bar chart is evaluate's own comparison_chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from med42_ray.report.inputs import TrainingRun


def loss_curves(runs: Mapping[str, TrainingRun], path: Path) -> None:
    """Loss per optimizer step of every strategy on one axis. x is the optimizer step (not tokens:
    steps are what the LR schedule follows, and packed rows carry different token counts)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        steps = [r["step"] for r in run.metrics]
        ax.plot(steps, [r["loss"] for r in run.metrics], label=name, linewidth=1.2,
                marker="." if len(steps) <= 60 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over answer tokens)")
    ax.set_title("Training loss: " + " vs ".join(runs))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
