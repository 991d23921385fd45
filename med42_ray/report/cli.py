"""`med42-ray report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    """one page per run: accuracy table vs Med42-70B, loss curves, training cost, decontamination

    Read a pipeline run directory (eval/<model>/results.json, train/<strategy>/metrics.jsonl and
    run_info.json, prepared/manifest.json) and write report.md, a self-contained report.html,
    report.json, comparison.png and loss_curves.png to <run_dir>/report/. Prints report.md's path.
    """
    from med42_ray.report import ReportError, build_report

    if args.run_dir is None:  # only then is the config needed: it names the run directory
        from med42_ray.cli import load_from_args

        args.run_dir = load_from_args(args).run_dir
    try:
        path = build_report(Path(args.run_dir), Path(args.output_dir) if args.output_dir else None)
    except ReportError as e:
        print(f"med42-ray report: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command

    p = add_command(sub, "report", cmd_report)
    p.add_argument("--output-dir", default=None, help="where the report goes (default: <run_dir>/report)")
