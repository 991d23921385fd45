"""`med42-ray pipeline` and `med42-ray demo`."""

from __future__ import annotations

import argparse
import logging

from med42_ray.config import ConfigError

DEMO_RUN_DIR = "runs/demo"


def _shortcuts(args: argparse.Namespace) -> list[str]:
    out = []
    if args.benchmarks_dir:  # evaluate on them, and keep them out of the training data
        out += [f"prepare.benchmarks_dir={args.benchmarks_dir}", f"evaluate.benchmarks_dir={args.benchmarks_dir}"]
    if getattr(args, "strategies", None):
        out.append(f"pipeline.strategies=[{args.strategies}]")
    if args.limit is not None:
        out.append(f"evaluate.limit={args.limit}")
    if getattr(args, "seed", None) is not None:
        out.append(f"seed={args.seed}")
    return out


def _run(cfg) -> dict:
    from med42_ray.pipeline.run import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    outputs = run_pipeline(cfg)
    print(summary(outputs))
    return outputs


def summary(outputs: dict[str, dict]) -> str:
    """Mean accuracy per model over the benchmarks every model was scored on, and the report path."""
    accuracy = {k.removeprefix("evaluate_"): v["accuracy"] for k, v in outputs.items() if k.startswith("evaluate_")}
    lines = []
    if accuracy:
        shared = sorted(set.intersection(*(set(a) for a in accuracy.values())))
        means = {label: sum(a[b] for b in shared) / len(shared) for label, a in accuracy.items()} if shared else {}
        lines.append(f"mean zero-shot accuracy over {len(shared)} benchmarks: "
                     + ", ".join(f"{label} {100 * m:.1f}%" for label, m in means.items()))
    if "report" in outputs:
        lines.append(f"report: {outputs['report']['report']}")
    return "\n".join(lines)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from med42_ray.cli import load_from_args

    _run(load_from_args(args, _shortcuts(args)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from med42_ray.cli import load_from_args

    if args.config is not None:
        raise ConfigError("demo always runs the embedded default; use `med42-ray pipeline --config ...` "
                          "for your own config")
    if args.run_dir is None:
        args.run_dir = DEMO_RUN_DIR
    _run(load_from_args(args, _shortcuts(args)))
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command

    p = add_command(
        sub, "pipeline", cmd_pipeline,
        help="the whole recipe: prepare, evaluate base, train full + LoRA, evaluate, report (resumable)",
        description=(
            "prepare -> [pretrain] -> evaluate base -> train full and LoRA -> evaluate each -> report. "
            "Each stage writes <run_dir>/stages/<stage>.json when it finishes; running again on the "
            "same run dir (or resubmitting the job) skips finished stages and resumes training from "
            "its last checkpoint. Per-strategy settings go in pipeline.full / pipeline.lora."
        ),
    )
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--benchmarks-dir", default=None,
                   help="benchmark root laid out like shared/data/raw: decontaminate against it and evaluate on it")
    p.add_argument("--strategies", default=None, help="comma-separated subset of full,lora")

    d = add_command(
        sub, "demo", cmd_demo,
        help="the pipeline in miniature on the embedded default (tiny Llama, sample data), ~10 min on 2 CPUs",
        description=(
            "Sample mixture -> short pre-training of the tiny Llama on the general-domain sample -> "
            "full-parameter and LoRA fine-tuning -> zero-shot evaluation of base, full and LoRA -> "
            f"report. Writes to {DEMO_RUN_DIR}/ unless --run-dir is given; prints the report's path."
        ),
    )
    d.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    d.add_argument("--benchmarks-dir", default=None,
                   help="evaluate on (and decontaminate against) real benchmark files laid out like "
                        "shared/data/raw, instead of the sample benchmark")
    d.add_argument("--seed", type=int, default=None, help="seed for data sampling and model init")
