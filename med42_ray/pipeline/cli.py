"""`med42-ray pipeline` and `med42-ray demo`."""

from __future__ import annotations

import argparse
import logging

from med42_ray.errors import ConfigError

DEMO_RUN_DIR = "runs/demo"


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
    """the whole recipe: prepare, evaluate base, train full + LoRA, evaluate, report (resumable)

    prepare -> [pretrain] -> evaluate base -> train full and LoRA -> evaluate each -> report. Each
    stage writes <run_dir>/stages/<stage>.json when it finishes; running again on the same run dir
    (or resubmitting the job) skips finished stages and resumes training from its last checkpoint.
    Per-strategy settings go in pipeline.full / pipeline.lora.
    """
    from med42_ray.cli import load_from_args

    _run(load_from_args(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """the pipeline in miniature on the embedded default (tiny Llama, sample data), ~5 min on 2 CPUs

    Sample mixture -> short pre-training of the tiny Llama on the general-domain sample ->
    full-parameter and LoRA fine-tuning -> zero-shot evaluation of base, full and LoRA -> report.
    Writes to {demo_run_dir}/ unless --run-dir is given; prints the report's path.
    """
    from med42_ray.cli import load_from_args

    if args.config is not None:
        raise ConfigError("demo always runs the embedded default; use `med42-ray pipeline --config ...` "
                          "for your own config")
    if args.run_dir is None:
        args.run_dir = DEMO_RUN_DIR
    _run(load_from_args(args))
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command, add_config_flag, comma_list

    p = add_command(sub, "pipeline", cmd_pipeline)
    add_config_flag(p, "--limit", "evaluate.limit", type=int, help="first N questions of each benchmark")
    # evaluate on the benchmarks, and keep them out of the training data
    add_config_flag(p, "--benchmarks-dir", "prepare.benchmarks_dir", "evaluate.benchmarks_dir",
                    help="benchmark root laid out like shared/data/raw: decontaminate against it and evaluate on it")
    add_config_flag(p, "--strategies", "pipeline.strategies", type=comma_list,
                    help="comma-separated subset of full,lora")

    d = add_command(sub, "demo", cmd_demo, demo_run_dir=DEMO_RUN_DIR)
    add_config_flag(d, "--limit", "evaluate.limit", type=int, help="first N questions of each benchmark")
    add_config_flag(d, "--benchmarks-dir", "prepare.benchmarks_dir", "evaluate.benchmarks_dir",
                    help="evaluate on (and decontaminate against) real benchmark files laid out like "
                         "shared/data/raw, instead of the sample benchmark")
    add_config_flag(d, "--seed", "seed", type=int, help="seed for data sampling and model init")
