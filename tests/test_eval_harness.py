"""Our prompts equal lm-evaluation-harness's, character for character, on real questions.

The installed lm-eval task YAMLs (medqa_4options, medmcqa, pubmedqa, mmlu_*, headqa_en) are run on
local copies of the same questions (bench/harness_tasks.py) and their requests compared with ours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from med42_ray.benchmarks import load_benchmarks
from med42_ray.eval.prompts import build_request

lm_eval = pytest.importorskip("lm_eval")
# bench/ is scripts, not a package: its harness_tasks module is shared with bench/bench_eval.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from harness_tasks import HARNESS_TASKS, write_local_task  # noqa: E402


@pytest.fixture(scope="module")
def lm_eval_requests(raw_dir, tmp_path_factory):
    """{benchmark: (our items, lm-eval's [(context, continuation), ...] per doc, lm-eval's targets)}"""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    benches = load_benchmarks(raw_dir, list(HARNESS_TASKS))
    picked, names = {}, {}
    for name, items in benches.items():
        # the first questions, plus ones with odd whitespace where templates could differ
        odd = [it for it in items if it.question != it.question.strip() or "\n" in it.question][:2]
        picked[name] = items[:3] + odd
        names[name] = write_local_task(root, name, picked[name])
    manager = TaskManager(include_path=str(root), include_defaults=False)
    loaded = manager.load(list(names.values()))["tasks"]
    out = {}
    for name, task_name in names.items():
        task = loaded[task_name]
        task.build_all_requests(rank=0, world_size=1, limit=None)
        per_doc: dict[int, list] = {}
        for inst in task.instances:
            per_doc.setdefault(inst.doc_id, []).append(inst.args)
        targets = [task.doc_to_target(doc) for doc in task.eval_docs]
        out[name] = (picked[name], [per_doc[i] for i in sorted(per_doc)], targets)
    return out


@pytest.mark.parametrize("benchmark", sorted(HARNESS_TASKS))
def test_prompts_equal_lm_eval_character_for_character(lm_eval_requests, benchmark):
    items, theirs, targets = lm_eval_requests[benchmark]
    assert len(theirs) == len(items)
    for item, their_args, target in zip(items, theirs, targets):
        ours = build_request(item, "harness")
        assert [(ours.context, c) for c in ours.continuations] == their_args
        gold = target if isinstance(target, int) else ours.choice_texts.index(target)
        assert int(gold) == item.gold


def test_mmlu_description_line(lm_eval_requests):
    context = lm_eval_requests["mmlu_clinical_knowledge"][1][0][0][0]
    assert context.startswith("The following are multiple choice questions (with answers) about clinical knowledge.\n\n")
