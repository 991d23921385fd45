"""`med42-ray evaluate`."""

from __future__ import annotations

import argparse
import logging

from med42_ray.errors import ConfigError


def _model_spec(text: str) -> dict:
    """'name=path' or 'name=path@adapter_dir'."""
    if "=" not in text:
        raise ConfigError(f"--compare-model {text!r}: expected NAME=MODEL[@ADAPTER]")
    name, rest = text.split("=", 1)
    path, _, adapter = rest.partition("@")
    return {"name": name, "path": path, "adapter": adapter or None}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """zero-shot medical benchmarks (lm-evaluation-harness protocol) on a pool of Ray actors

    Score MedQA, MedMCQA, PubMedQA, the six clinical MMLU subjects, HEAD-QA and the USMLE sample
    items by the log-likelihood of each choice, as lm-evaluation-harness 0.4 does, on a pool of
    Ray actors per model. Writes results.json, samples/<benchmark>.jsonl per model, and a
    comparison table (Markdown + PNG) with Med42-70B's published numbers; --also-protocols scores
    other protocols in the same pass, each written to protocols/<name>/ in the same layout. With
    no options it evaluates the embedded tiny model on the embedded sample benchmarks.
    """
    from med42_ray.cli import load_from_args
    from med42_ray.eval.run import run_evaluate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_from_args(args)
    if args.compare_model:  # the run's own model first, then the others
        from med42_ray.eval.run import default_model_name

        models = [m.model_dump() for m in cfg.evaluate.models] or [
            {"name": default_model_name(cfg.model, args.adapter), "path": cfg.model, "adapter": args.adapter}]
        cfg.evaluate.models = models + [_model_spec(t) for t in args.compare_model]  # validated on assignment
    if args.compare_with:
        cfg.evaluate.compare_with = [*cfg.evaluate.compare_with, *args.compare_with]
    run_evaluate(cfg, adapter=args.adapter)
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command, add_config_flag, comma_list
    from med42_ray.eval.config import PROTOCOLS

    p = add_command(sub, "evaluate", cmd_evaluate)
    p.add_argument("--adapter", default=None, help="LoRA adapter directory for --model (peft, not merged)")
    add_config_flag(p, "--benchmarks-dir", "evaluate.benchmarks_dir",
                    help="root laid out like shared/data/raw (default: the embedded sample)")
    add_config_flag(p, "--benchmarks", "evaluate.benchmarks", type=comma_list,
                    help="comma-separated benchmark names (default: all found)")
    add_config_flag(p, "--protocol", "evaluate.protocol", choices=PROTOCOLS,
                    help="the headline prompt and scoring protocol (default: harness)")
    add_config_flag(p, "--also-protocols", "evaluate.also_protocols", type=comma_list,
                    help=f"comma-separated protocols ({', '.join(PROTOCOLS)}) scored too, by the same actors "
                         "in the same pass, written to <output-dir>/protocols/<name>/")
    add_config_flag(p, "--num-actors", "evaluate.num_actors", type=int, help="scoring actors per model")
    add_config_flag(p, "--limit", "evaluate.limit", type=int, help="first N questions of each benchmark")
    add_config_flag(p, "--output-dir", "evaluate.output_dir", help="where results go (default: <run_dir>/eval)")
    # evaluate-only: more models and earlier results beside the run's own model
    p.add_argument("--compare-model", action="append", default=[], metavar="NAME=MODEL[@ADAPTER]",
                   help="another model to evaluate in the same run (repeatable)")
    p.add_argument("--compare-with", action="append", default=[], metavar="RESULTS_JSON",
                   help="earlier results.json to include in the comparison table (repeatable)")
