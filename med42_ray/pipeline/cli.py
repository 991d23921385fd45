"""`med42-ray pipeline` and `med42-ray demo`."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from med42_ray.errors import ConfigError

DEMO_RUN_DIR = "runs/demo"
FULL_BUDGET_RUN_DIR = "runs/demo-full-budget"
# --full-budget: the paper's epochs (full 3, LoRA 8: TrainConfig's defaults) instead of the demo's step caps
FULL_BUDGET_OVERRIDES = (("pipeline.full.max_steps", None), ("pipeline.lora.max_steps", None))


def _run(cfg) -> dict:
    from med42_ray.cli import require_dir, require_model
    from med42_ray.pipeline.run import run_pipeline

    # Before Ray starts: what the first stages read (the later ones read what the earlier wrote).
    require_model(cfg.prepare.tokenizer or cfg.model, "prepare.tokenizer" if cfg.prepare.tokenizer else "model")
    require_model(cfg.model, "model")
    require_dir(cfg.prepare.benchmarks_dir, "prepare.benchmarks_dir")
    require_dir(cfg.evaluate.benchmarks_dir, "evaluate.benchmarks_dir")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    outputs = run_pipeline(cfg)
    print(summary(outputs))
    print(f"pipeline finished in {_minutes(time.perf_counter() - started)} (stages run now; finished ones skipped)")
    return outputs


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:02.0f}s"


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
        report_json = Path(outputs["report"]["report"]).with_name("report.json")
        if report_json.is_file():
            report = json.loads(report_json.read_text())
            lines += pooled_lines(report) + cost_lines(report)
        lines.append(f"report: {outputs['report']['report']}")
    return "\n".join(lines)


def pooled_lines(report: dict) -> list[str]:
    """The report's pooled comparison, headline protocol first: accuracies, differences, ordering."""
    lines = []
    for protocol, block in report.get("pooled", {}).items():
        models = ", ".join(f"{name} {100 * m['acc']:.1f} ± {100 * m['se']:.1f}%" for name, m in block["models"].items())
        diffs = ", ".join(f"{k.replace('-', ' − ')} {100 * d['diff']:+.1f} ± {100 * d['se']:.1f} ({d['z']:+.1f} se)"
                          for k, d in block["differences"].items() if d.get("diff") is not None)
        verdict = {True: "holds", False: "does not hold", None: "not checked"}[block["ordering"]["holds"]]
        n = max((m["n"] for m in block["models"].values()), default=0)
        lines.append(f"pooled accuracy, protocol {protocol}{' (headline)' if block.get('headline') else ''}, "
                     f"{n} questions: {models}; {diffs}; the paper's ordering {verdict}")
    return lines


def cost_lines(report: dict) -> list[str]:
    """The report's training cost, one line: wall time and accelerator-hours per strategy."""
    from med42_ray.report.render import duration

    training = report.get("cost", {}).get("training", {})
    if not training:
        return []
    return ["training cost: " + ", ".join(f"{name} {duration(t['wall_time_s'])} ({t['accelerator_hours']:.3g} "
                                           f"{t['accelerator']}-hours)" for name, t in training.items())
            + "; inference cost and the plan's estimates in the report"]


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
    """the pipeline in miniature on the embedded default (tiny Llama, sample data), < 10 min on 2 CPUs

    Sample mixture -> short pre-training of the tiny Llama on the general-domain sample ->
    full-parameter and LoRA fine-tuning -> zero-shot evaluation of base, full and LoRA -> report.
    Writes to {demo_run_dir}/ unless --run-dir is given; prints the report's path.
    """
    _run(demo_config(args))
    return 0


def demo_config(args: argparse.Namespace):
    """The embedded default with the demo's options (and --full-budget's epochs) applied."""
    from med42_ray.cli import load_from_args

    if args.config is not None:
        raise ConfigError("demo always runs the embedded default; use `med42-ray pipeline --config ...` "
                          "for your own config")
    if args.full_budget:
        args.overrides = [*args.overrides, *((key, value, "flag --full-budget") for key, value in FULL_BUDGET_OVERRIDES)]
    if args.run_dir is None:
        args.run_dir = FULL_BUDGET_RUN_DIR if args.full_budget else DEMO_RUN_DIR
    return load_from_args(args)


def register(sub) -> None:
    from med42_ray.cli import add_command, add_config_flag, comma_list

    p = add_command(sub, "pipeline", cmd_pipeline)
    add_config_flag(p, "--limit", "evaluate.limit", type=int, help="first N questions of each benchmark")
    # evaluate on the benchmarks, and keep them out of the training data
    add_config_flag(p, "--benchmarks-dir", "prepare.benchmarks_dir", "evaluate.benchmarks_dir",
                    help="benchmark root laid out like shared/data/raw: decontaminate against it and evaluate on it")
    add_config_flag(p, "--strategies", "pipeline.strategies", type=comma_list,
                    help="comma-separated runs to compare: full and adapter methods (lora, rslora, dora, ia3, loha, lokr)")

    d = add_command(sub, "demo", cmd_demo, demo_run_dir=DEMO_RUN_DIR)
    add_config_flag(d, "--limit", "evaluate.limit", type=int, help="first N questions of each benchmark")
    add_config_flag(d, "--benchmarks-dir", "prepare.benchmarks_dir", "evaluate.benchmarks_dir",
                    help="evaluate on (and decontaminate against) real benchmark files laid out like "
                         "shared/data/raw, instead of the sample benchmark")
    add_config_flag(d, "--seed", "seed", type=int, help="seed for data sampling and model init")
    d.add_argument("--full-budget", action="store_true",
                   help=f"the paper's epochs (full-parameter 3, LoRA 8) instead of the demo's step caps; "
                        f"writes to {FULL_BUDGET_RUN_DIR}/ unless --run-dir is given")
