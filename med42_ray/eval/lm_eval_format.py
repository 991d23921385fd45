"""lm-evaluation-harness 0.4 result files for each evaluated model, beside our results.json.

lm-eval's own code writes them. Its EvaluationTracker names and saves `results_<date>.json` and
`samples_<task>_<date>.jsonl` in <eval>/<model>/, so an evaluation directory reads as an lm-eval
`--output_path` (lm-eval's `make_table`, `get_results_filenames` and `datasets` read the files). Its
TaskConfig dumps each task's `config` from the task YAML it ships, and its group functions give
the MMLU clinical mean and stderr. What only we supply is the scores:

- task names are lm-eval's: our benchmark names are lm-eval's task names wherever lm-eval has
  the task (LM_EVAL_TASK_YAML). The two USMLE sets have no lm-eval task, keep our names and get
  a config that says how they are prompted.
- "acc,none" and "acc_stderr,none" (and acc_norm where the task's metric_list has it) are
  results.json's numbers: the same formulas as lm-eval's `mean` and `mean_stderr`. A stderr of one
  question is "N/A", as lm-eval writes it.
- group `mmlu_clinical`: the unweighted mean of the MMLU subjects evaluated (results.json's
  aggregates.mmlu_clinical.acc); lm-eval has no such group (its `multimedqa` weights by size).
- per sample: doc_id, doc (our item), target, arguments (context, continuation per choice), resps
  and filtered_resps ([log-likelihood, is_greedy] per choice), the metrics, lm-eval's hashes.

Under a protocol other than `harness` the prompts are not lm-eval's: the task keeps its name,
its alias names the protocol, and its config's metadata describes the protocol.
"""

from __future__ import annotations

import functools
import json
import math
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from med42_ray.benchmarks import BENCHMARKS, MMLU_CLINICAL, BenchmarkItem
from med42_ray.eval.prompts import Request
from med42_ray.eval.scoring import Scored
from med42_ray.records import LETTERS

if TYPE_CHECKING:
    from med42_ray.eval.config import EvalModel
    from med42_ray.layout import EvalDir

# The oldest lm-eval with what this module calls (config.task.TaskConfig, tasks._yaml_loader,
# api.metrics.unweighted_mean_stderr); the files' shape is 0.4's.
MIN_LM_EVAL = "0.4.13"
# Our benchmark -> its task YAML under lm_eval/tasks/ (the task's name is our benchmark's name).
# Read directly: lm-eval's TaskManager indexes every YAML it ships (15-30 s here) to find them;
# tests/test_lm_eval_format.py checks these paths against that index.
LM_EVAL_TASK_YAML = {
    "medqa_4options": "medqa/medqa.yaml",
    "medmcqa": "medmcqa/medmcqa.yaml",
    "pubmedqa": "pubmedqa/pubmedqa.yaml",
    **{b: f"mmlu/default/{b}.yaml" for b in MMLU_CLINICAL},
    "headqa_en": "headqa/headqa_en.yaml",
}
# lm-eval's doc_to_target gives the answer's index, except pubmedqa's (`final_decision`: the text).
TARGET_IS_TEXT = {"pubmedqa"}
# A benchmark lm-eval lacks (USMLE): its templates over our doc (BenchmarkItem.to_dict, what the
# samples log), as lm-eval renders them (Jinja): harness_text's medqa_4options layout, any number of options.
OWN_TASK_TEMPLATES = {
    "doc_to_text": "Question: {{question}}\n{% for c in choices %}{{'" + LETTERS + "'[loop.index0]}}. {{c}}\n"
                   "{% endfor %}Answer:",
    "doc_to_choice": "{{'" + LETTERS + "'[:choices|length]|list}}",
    "doc_to_target": "gold",
}
GROUP = "mmlu_clinical"
FILTER = "none"  # lm-eval's filter for multiple choice: the response as it is


@functools.cache
def missing() -> str | None:
    """Why lm-eval's files cannot be written in this environment (None: they can)."""
    from packaging.version import Version

    try:
        found = version("lm_eval")
    except PackageNotFoundError:
        return "lm-evaluation-harness is not installed"
    if Version(found) < Version(MIN_LM_EVAL):
        return f"lm-eval {found} is older than {MIN_LM_EVAL}"
    return None


@functools.cache
def say_skipped(reason: str) -> None:
    print(f"no lm-eval result files: {reason} (pip install 'lm-eval>={MIN_LM_EVAL},<0.5')", flush=True)


def task_config(benchmark: str, protocol: str, protocol_description: str) -> dict:
    """lm-eval's dump of the task's config (TaskConfig.to_dict, as its results carry it), with the
    protocol in its metadata; for a benchmark lm-eval lacks, a config of ours in the same shape."""
    import lm_eval
    from lm_eval.config.task import TaskConfig
    from lm_eval.tasks._yaml_loader import load_yaml

    if benchmark in LM_EVAL_TASK_YAML:
        cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_TASK_YAML[benchmark], resolve_func=True)
        for key in ("tag", "group", "task_list"):  # structure, not task config (lm-eval's TaskFactory drops them)
            cfg.pop(key, None)
    else:
        cfg = {"task": benchmark, "output_type": "multiple_choice", "test_split": "test",
               "description": "", **OWN_TASK_TEMPLATES,
               "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                               for m in ("acc", "acc_norm")],
               "metadata": {"version": 1.0, "note": f"no lm-eval task: {BENCHMARKS[benchmark].description}; "
                                                    "prompted with medqa_4options' template, a letter per option"}}
    if protocol != "harness":
        cfg["task_alias"] = f"{cfg.get('task_alias', benchmark)} [{protocol}]"
    cfg["metadata"] = {**(cfg.get("metadata") or {}), "med42_ray_protocol": protocol,
                       "med42_ray_protocol_description": protocol_description}
    return TaskConfig(**cfg).to_dict()


def task_metrics(config: dict) -> list[str]:
    return [m["metric"] for m in config["metric_list"]]


def stderr_cell(value: float):
    return "N/A" if value is None or math.isnan(value) else value  # lm-eval's word for "one sample"


def task_entry(benchmark: str, config: dict, metrics: dict) -> dict:
    """One task's line of `results`, from our metrics (results.json's benchmarks.<name>)."""
    entry = {"name": benchmark, "alias": config.get("task_alias", benchmark), "sample_len": metrics["n"]}
    for m in task_metrics(config):
        entry[f"{m},{FILTER}"] = metrics[m]
        entry[f"{m}_stderr,{FILTER}"] = stderr_cell(metrics[f"{m}_stderr"])
    return entry


def group_entry(tasks: Mapping[str, dict], keys: Sequence[str] = (f"acc,{FILTER}",)) -> dict:
    """The MMLU subjects' unweighted mean (Med42's "MMLU clinical") of each `metric,filter` key, as
    lm-eval's Group.aggregate computes a group with weight_by_size false: aggregate_subtask_metrics,
    unweighted_mean_stderr."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, unweighted_mean_stderr

    sizes = [t["sample_len"] for t in tasks.values()]
    entry = {"name": GROUP, "alias": f"{GROUP} (mean of {len(tasks)} MMLU subjects)", "sample_len": sum(sizes),
             "sample_count": {}}
    for key in keys:
        metric, filt = key.split(",")
        stderrs = [t[f"{metric}_stderr,{filt}"] for t in tasks.values()]
        entry[key] = aggregate_subtask_metrics([t[key] for t in tasks.values()], sizes, weight_by_size=False)
        entry[f"{metric}_stderr,{filt}"] = "N/A" if "N/A" in stderrs else float(unweighted_mean_stderr(stderrs))
        entry["sample_count"][key] = sum(sizes)
    return entry


def sample(doc_id: int, item: BenchmarkItem, req: Request, scored: Scored, row: dict, metrics: list[str]) -> dict:
    """One question as lm-eval logs it (before its tracker turns arguments into gen_args_N and the
    responses into strings, as it does for its own)."""
    from lm_eval.utils import hash_string

    doc = item.to_dict()
    target = item.choices[item.gold] if item.benchmark in TARGET_IS_TEXT else item.gold
    resps = [[(ll, greedy)] for ll, greedy in zip(scored.loglikelihoods, scored.is_greedy)]  # one repeat
    return {"doc_id": doc_id, "doc": doc, "target": target,
            "arguments": [(req.context, c) for c in req.continuations],
            "resps": resps, "filtered_resps": [r[0] for r in resps], "filter": FILTER, "metrics": metrics,
            "doc_hash": doc_hash(doc),
            "prompt_hash": hash_string(req.context), "target_hash": hash_string(str(target)),
            **{m: row[m] for m in metrics}}


def doc_hash(doc: dict) -> str:
    """lm-eval's hash of a logged doc (its evaluator's, on the doc's JSON)."""
    from lm_eval.utils import handle_non_serializable, hash_string

    return hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))


def build(model: EvalModel, protocol: str, protocol_description: str,
          pairs: Mapping[str, Sequence[tuple[BenchmarkItem, Request]]], scored: Mapping[str, Scored],
          rows: Mapping[str, Sequence[dict]], model_result: dict, limit: int | None, seconds: float):
    """(results, samples) in lm-eval 0.4's shape: what its simple_evaluate returns, samples apart."""
    results, configs, samples = {}, {}, {}
    shots = model_result.get("num_fewshot", 0)
    for name, metrics in model_result["benchmarks"].items():
        if not metrics["n"]:
            continue  # every question excluded: no task to report
        configs[name] = {**task_config(name, protocol, protocol_description), "num_fewshot": shots}
        results[name] = task_entry(name, configs[name], metrics)
        names = task_metrics(configs[name])
        samples[name] = [sample(i, it, r, scored[r.key], row, names)
                         for i, ((it, r), row) in enumerate(zip(pairs[name], rows[name]))]
    return envelope(model, protocol, protocol_description, results, configs, limit, seconds, shots), samples


def envelope(model: EvalModel, protocol: str, protocol_description: str, results: dict, configs: dict,
             limit: int | None, seconds: float, shots: int, group_keys: Sequence[str] = (f"acc,{FILTER}",)) -> dict:
    """What lm-eval's simple_evaluate returns around the tasks' results: the MMLU group, configs,
    versions, n-shot, higher_is_better, sample counts, the run's config and date."""
    subjects = [n for b in MMLU_CLINICAL for n, c in configs.items() if benchmark_of(n, c) == b]
    groups = {GROUP: group_entry({b: results[b] for b in subjects}, group_keys)} if subjects else {}
    results.update(groups)
    higher = {name: {m["metric"]: m["higher_is_better"] for m in c["metric_list"]} for name, c in configs.items()}
    model_args = f"pretrained={model.path}" + (f",peft={model.adapter}" if model.adapter else "")
    return {"results": results, **({"groups": groups} if groups else {}),
            "group_subtasks": {GROUP: subjects} if groups else {},
            "configs": configs,
            "versions": {**{n: (c.get("metadata") or {}).get("version", "Yaml") for n, c in configs.items()},
                         **{g: "N/A" for g in groups}},
            "n-shot": {**{n: shots for n in configs}, **{g: shots for g in groups}},
            "higher_is_better": {**higher, **{g: {k.split(",")[0]: True for k in group_keys} for g in groups}},
            "n-samples": {n: {"original": BENCHMARKS[benchmark_of(n, c)].size, "effective": results[n]["sample_len"]}
                          for n, c in configs.items()},
            "config": {"model": "med42-ray", "model_args": model_args, "limit": limit, "protocol": protocol,
                       "protocol_description": protocol_description},
            "date": time.time() - seconds, "lm_eval_version": version("lm_eval")}


def benchmark_of(task: str, config: dict) -> str:
    """Our benchmark of an lm-eval task name (equal, except the CoT tasks': eval/lm_eval_cot.py)."""
    return (config.get("metadata") or {}).get("med42_ray_benchmark", task)


def write_model(dest: EvalDir, model: EvalModel, protocol: str, protocol_description: str,
                pairs: Mapping[str, Sequence[tuple[BenchmarkItem, Request]]], scored: Mapping[str, Scored],
                rows: Mapping[str, Sequence[dict]], model_result: dict, limit: int | None,
                seconds: float) -> list[Path]:
    """Write the model's lm-eval files with lm-eval's EvaluationTracker (replacing an earlier run's:
    the folder describes the results.json beside it) and return them; [] when lm-eval is missing."""
    reason = missing()
    if reason:
        say_skipped(reason)
        return []
    results, samples = build(model, protocol, protocol_description, pairs, scored, rows, model_result, limit, seconds)
    return save(dest, model, results, samples, seconds)


def save(dest: EvalDir, model: EvalModel, results: dict, samples: dict, seconds: float) -> list[Path]:
    """Write (results, samples) with lm-eval's EvaluationTracker, replacing an earlier run's files."""
    from lm_eval.loggers import EvaluationTracker

    for old in dest.lm_eval_files(model.name):
        old.unlink()
    # a .json output_path: lm-eval writes <stem>_<date>.json and samples_<task>_<date>.jsonl beside it
    tracker = EvaluationTracker(output_path=str(dest.model_results(model.name)))
    tracker.general_config_tracker.log_experiment_args(
        model_source="med42-ray", model_args=results["config"]["model_args"], system_instruction=None,
        chat_template=None, fewshot_as_multiturn=False)
    tracker.general_config_tracker.start_time -= seconds  # its total_evaluation_time_seconds: our pass
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    written = dest.lm_eval_files(model.name)
    if len(written) != 1 + len(results["configs"]):  # the tracker logs a failure and carries on
        raise RuntimeError(f"lm-eval's EvaluationTracker wrote {[p.name for p in written]} under "
                           f"{dest.model(model.name)}, expected results_*.json and one samples_*.jsonl per task "
                           f"({', '.join(results['configs'])}); its log line 'Could not save' says why")
    return written
