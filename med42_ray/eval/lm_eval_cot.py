"""lm-evaluation-harness 0.4 result files for `evaluate --protocol cot` (eval/generation.py).

The chain-of-thought protocol is lm-eval's `flan_cot_zeroshot` (generate_until, two filters), so
its files are those of lm-eval's generative tasks, written by the same EvaluationTracker as the
multiple-choice ones (eval/lm_eval_format.py):

- MMLU subjects keep lm-eval's own task, `mmlu_flan_cot_zeroshot_<subject>`, and its config from
  the YAML lm-eval ships (max_gen_toks set to evaluate.max_new_tokens); the other benchmarks have
  no lm-eval CoT task and get `<benchmark>_flan_cot_zeroshot`, the template's config with Jinja
  that renders our doc as eval/generation.py's cot_text does.
- results: "exact_match,strict-match" and "exact_match,flexible-extract" (results.json's
  acc_strict and acc) with their stderrs; group mmlu_clinical for both filters.
- samples: one line per question and filter, as lm-eval logs generate_until: arguments (prompt,
  generation kwargs), resps (the generation), filtered_resps (what the filter extracted).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from med42_ray.benchmarks import BENCHMARKS, MMLU_CLINICAL, BenchmarkItem
from med42_ray.eval import lm_eval_format
from med42_ray.eval.generation import COT_TRIGGER, FILTERS, GenerationRequest, Generated
from med42_ray.records import LETTERS

if TYPE_CHECKING:
    from med42_ray.eval.config import EvalModel
    from med42_ray.layout import EvalDir

COT_DIR = "mmlu/flan_cot_zeroshot"
TEMPLATE = f"{COT_DIR}/_mmlu_flan_cot_zeroshot_template_yaml"
METRIC = "exact_match"
# results.json's metric of each filter (generation.sample_row)
FILTER_METRIC = {"strict-match": "acc_strict", "flexible-extract": "acc"}
# cot_text as Jinja over our doc (BenchmarkItem.to_dict), for the benchmarks lm-eval has no CoT task for
OWN_COT_TEMPLATES = {
    "doc_to_text": "{% if context %}Abstract: {{context}}\n{% endif %}Q: {{question.strip()}}\n"
                   "{% for c in choices %}({{'" + LETTERS + "'[loop.index0]}}) {{c}}{% if not loop.last %} "
                   "{% endif %}{% endfor %}\nA: " + COT_TRIGGER,
    "doc_to_target": "({{'" + LETTERS + "'[gold]}})",
}


def task_name(benchmark: str) -> str:
    return f"mmlu_flan_cot_zeroshot_{benchmark.removeprefix('mmlu_')}" if benchmark in MMLU_CLINICAL \
        else f"{benchmark}_flan_cot_zeroshot"


def task_config(benchmark: str, max_new_tokens: int, protocol_description: str) -> dict:
    import lm_eval
    from lm_eval.config.task import TaskConfig
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = Path(lm_eval.__file__).parent / "tasks"
    if benchmark in MMLU_CLINICAL:
        cfg = load_yaml(tasks / COT_DIR / f"{benchmark}.yaml", resolve_func=True)
        cfg.pop("tag", None)
    else:
        cfg = {**load_yaml(tasks / TEMPLATE, resolve_func=True), "task": task_name(benchmark),
               "dataset_path": None, "validation_split": None, "fewshot_split": None, "test_split": "test",
               "description": "", **OWN_COT_TEMPLATES,
               "metadata": {"version": 3.0, "note": f"no lm-eval task: {BENCHMARKS[benchmark].description}, "
                                                    "asked in mmlu_flan_cot_zeroshot's form"}}
    cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": max_new_tokens}
    cfg["metadata"] = {**(cfg.get("metadata") or {}), "med42_ray_protocol": "cot", "med42_ray_benchmark": benchmark,
                       "med42_ray_protocol_description": protocol_description}
    return TaskConfig(**cfg).to_dict()


def task_entry(task: str, config: dict, metrics: dict) -> dict:
    entry = {"name": task, "alias": config.get("task_alias") or task, "sample_len": metrics["n"]}
    for f in FILTERS:
        entry[f"{METRIC},{f}"] = metrics[FILTER_METRIC[f]]
        entry[f"{METRIC}_stderr,{f}"] = lm_eval_format.stderr_cell(metrics[f"{FILTER_METRIC[f]}_stderr"])
    return entry


def samples_of(doc_id: int, item: BenchmarkItem, req: GenerationRequest, g: Generated, row: dict,
               gen_kwargs: dict) -> list[dict]:
    """The question as lm-eval logs a generate_until doc: one line per filter."""
    from lm_eval.utils import hash_string

    doc = item.to_dict()
    extracted = {"strict-match": row["strict_match"], "flexible-extract": row["flexible_extract"]}
    common = {"doc_id": doc_id, "doc": doc, "target": req.target, "arguments": [(req.context, gen_kwargs)],
              "resps": [[g.text]], "metrics": [METRIC], "prompt_hash": hash_string(req.context),
              "target_hash": hash_string(req.target), "doc_hash": lm_eval_format.doc_hash(doc)}
    return [{**common, "filtered_resps": [extracted[f]], "filter": f, METRIC: row[FILTER_METRIC[f]]}
            for f in FILTERS]


def write_model(dest: EvalDir, model: EvalModel, protocol_description: str,
                pairs: Mapping[str, Sequence[tuple[BenchmarkItem, GenerationRequest]]],
                generated: Mapping[str, Generated], rows: Mapping[str, Sequence[dict]], model_result: dict,
                limit: int | None, seconds: float) -> list[Path]:
    """The model's CoT results in lm-eval's files (as lm_eval_format.write_model); [] without lm-eval."""
    reason = lm_eval_format.missing()
    if reason:
        lm_eval_format.say_skipped(reason)
        return []
    results, configs, samples = {}, {}, {}
    for name, metrics in model_result["benchmarks"].items():
        if not metrics["n"]:
            continue
        task = task_name(name)
        configs[task] = task_config(name, pairs[name][0][1].max_new_tokens, protocol_description)
        results[task] = task_entry(task, configs[task], metrics)
        kwargs = configs[task]["generation_kwargs"]
        samples[task] = [s for i, ((it, r), row) in enumerate(zip(pairs[name], rows[name]))
                         for s in samples_of(i, it, r, generated[r.key], row, kwargs)]
    out = lm_eval_format.envelope(model, "cot", protocol_description, results, configs, limit, seconds, 0,
                                  group_keys=[f"{METRIC},{f}" for f in FILTERS])
    return lm_eval_format.save(dest, model, out, samples, seconds)
