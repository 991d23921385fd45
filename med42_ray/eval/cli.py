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
    other protocols in the same pass, each written to protocols/<name>/ in the same layout.
    --num-fewshot k puts k examples before each question as lm-evaluation-harness chooses them;
    --permutations k scores the questions again with their options rotated (letter bias). With
    no options it evaluates the embedded tiny model on the embedded sample benchmarks.
    """
    from med42_ray.cli import load_from_args
    from med42_ray.eval.run import run_evaluate
    from med42_ray.layout import eval_dir_for
    from med42_ray.upload import upload_outputs

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_from_args(args)
    if args.compare_model:  # the run's own model first, then the others
        from med42_ray.eval.run import default_model_name

        models = [m.model_dump() for m in cfg.evaluate.models] or [
            {"name": default_model_name(cfg.model, args.adapter), "path": cfg.model, "adapter": args.adapter}]
        cfg.evaluate.models = models + [_model_spec(t) for t in args.compare_model]  # validated on assignment
    if args.compare_with:
        cfg.evaluate.compare_with = [*cfg.evaluate.compare_with, *args.compare_with]
    require_inputs(cfg, args.adapter)
    run_evaluate(cfg, adapter=args.adapter)
    upload_outputs(cfg, eval_dir_for(cfg).root)
    return 0


def require_inputs(cfg, adapter: str | None) -> None:
    """Each model, adapter and the benchmarks directory exist, checked before any actor starts."""
    from med42_ray.cli import require_adapter, require_dir, require_model

    require_dir(cfg.evaluate.benchmarks_dir, "evaluate.benchmarks_dir")
    models = [(m.path, m.adapter, f"evaluate.models[{i}]") for i, m in enumerate(cfg.evaluate.models)]
    for path, adapter_dir, key in models or [(cfg.model, adapter, None)]:
        require_model(path, f"{key}.path" if key else "model")
        if adapter_dir is not None:
            require_adapter(adapter_dir, f"{key}.adapter" if key else "--adapter")


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
    add_config_flag(p, "--max-new-tokens", "evaluate.max_new_tokens", type=int,
                    help="tokens the cot protocol may generate per answer (default 256)")
    add_config_flag(p, "--num-fewshot", "evaluate.num_fewshot", type=int,
                    help="k examples before each question, as lm-evaluation-harness 0.4 chooses and renders them "
                         "(MMLU: the first k of dev; MedQA and USMLE: k drawn with seed 1234 from MedQA train, "
                         "else dev); benchmarks without a few-shot split are skipped (default: 0)")
    add_config_flag(p, "--permutations", "evaluate.permutations", type=int,
                    help="also score every lettered multiple-choice question with its options rotated 1..k "
                         "places (k <= 3): accuracy under permutation and answer consistency (default: 0)")
    add_config_flag(p, "--output-dir", "evaluate.output_dir", help="where results go (default: <run_dir>/eval)")
    # evaluate-only: more models and earlier results beside the run's own model
    p.add_argument("--compare-model", action="append", default=[], metavar="NAME=MODEL[@ADAPTER]",
                   help="another model to evaluate in the same run (repeatable)")
    p.add_argument("--compare-with", action="append", default=[], metavar="RESULTS_JSON",
                   help="earlier results.json to include in the comparison table (repeatable)")
