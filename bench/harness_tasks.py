"""Run lm-evaluation-harness's own task definitions on our local benchmark files.

lm-eval's medical tasks load Hugging Face datasets (GBaker/MedQA-USMLE-4-options-hf, ...). Offline,
we write the same questions in each dataset's schema to a JSON-lines file and a task YAML that
`include`s the installed task YAML, overriding only where the data comes from. The prompts and
scoring are then lm-eval's own: tests/test_eval_harness.py compares our prompts with them,
bench/bench_eval.py our scores and speed with lm-eval's HF backend. Only those two use it, so it
lives beside the benchmarks rather than in the package (which never imports lm-eval).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from med42_ray.benchmarks import BenchmarkItem

HARNESS_TASKS = {
    "medqa_4options": "medqa/medqa.yaml",
    "medmcqa": "medmcqa/medmcqa.yaml",
    "pubmedqa": "pubmedqa/pubmedqa.yaml",
    "headqa_en": "headqa/headqa_en.yaml",
    **{f"mmlu_{s}": f"mmlu/default/mmlu_{s}.yaml" for s in (
        "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
        "professional_medicine")},
}


def to_harness_doc(item: BenchmarkItem) -> dict:
    """The item in the schema of the HF dataset lm-eval's task reads."""
    b, q, c = item.benchmark, item.question, list(item.choices)
    if b == "medqa_4options":  # GBaker/MedQA-USMLE-4-options-hf
        return {"id": item.id, "sent1": q, **{f"ending{i}": x for i, x in enumerate(c)}, "label": item.gold}
    if b == "medmcqa":  # openlifescienceai/medmcqa: cop counts from 0 there
        return {"id": item.id, "question": q, "opa": c[0], "opb": c[1], "opc": c[2], "opd": c[3], "cop": item.gold}
    if b == "pubmedqa":  # bigbio/pubmed_qa, pubmed_qa_labeled_fold0_source
        return {"QUESTION": q, "CONTEXTS": item.context.split("\n"), "final_decision": c[item.gold],
                "pubid": item.id}
    if b.startswith("mmlu_"):  # cais/mmlu
        return {"question": q, "choices": c, "answer": item.gold, "subject": b.removeprefix("mmlu_")}
    if b == "headqa_en":  # EleutherAI/headqa, en
        return {"qid": item.id, "qtext": q, "ra": item.gold + 1,
                "answers": [{"aid": i + 1, "atext": x} for i, x in enumerate(c)]}
    raise KeyError(f"lm-eval has no task of this form for {b!r}")


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def write_local_task(out_dir: Path, benchmark: str, items: Sequence[BenchmarkItem], task_name: str | None = None) -> str:
    """Write <out_dir>/<task>.jsonl and <task>.yaml; returns the task name to pass to lm-eval
    (with `TaskManager(include_path=out_dir)`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = task_name or f"local_{benchmark}"
    data = out_dir / f"{task}.jsonl"
    data.write_text("".join(json.dumps(to_harness_doc(it)) + "\n" for it in items))
    lines = [
        f"include: {lm_eval_tasks_dir() / HARNESS_TASKS[benchmark]}",
        f"task: {task}",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {data}",
        "training_split: null",
        "validation_split: null",
        "fewshot_split: null",
        "test_split: test",
    ]
    (out_dir / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return task
