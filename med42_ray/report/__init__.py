"""The per-run report: pooled accuracy per protocol with the differences between base, full and
LoRA and the paper's ordering, accuracy table with Med42-70B's published numbers, loss curves,
training cost per strategy and the decontamination summary, as Markdown, self-contained HTML and JSON.

    from med42_ray.report import build_report
    build_report("runs/demo")      # -> runs/demo/report/report.md
"""

from med42_ray.report.build import build_report
from med42_ray.report.inputs import ReportError

__all__ = ["ReportError", "build_report"]
