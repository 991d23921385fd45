"""`--num-fewshot k` builds lm-evaluation-harness's own few-shot contexts and scores them as it does.

lm-eval's installed task YAMLs (mmlu_anatomy, medqa_4options) run on local copies of the same
questions and pools (MMLU dev; MedQA's pool: the dev file, since the raw files have no MedQA train,
given to lm-eval as its training split, where medqa_4options draws from), with k = 3 and lm-eval's
default seed. Its contexts must equal ours character for character, and its HFLM's per-choice
log-likelihoods on a tiny model built here must equal our Scorer's (float32, within 1e-4).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_eval import make_tiny_llama

from med42_ray.benchmarks import load_benchmarks
from med42_ray.benchmarks.formats import HEADQA_TEST, HEADQA_TRAIN, MEDQA_DEV, MEDQA_TEST, mmlu_test_file
from med42_ray.eval.fewshot import DEFAULT_SEED, draw_examples, fewshot_pool
from med42_ray.eval.prompts import build_request

lm_eval = pytest.importorskip("lm_eval")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from harness_tasks import HARNESS_TASKS, lm_eval_tasks_dir, to_harness_doc

K = 3
N = 6  # test questions per benchmark
FEWSHOT_BENCHMARKS = ["mmlu_anatomy", "medqa_4options", "headqa_en"]


@pytest.fixture(scope="module")
def root(raw_dir, tmp_path_factory) -> Path:
    """The first N test questions of MedQA, MMLU anatomy and HEAD-QA, with their whole few-shot pools."""
    root = tmp_path_factory.mktemp("fewshot_root")
    for rel in (MEDQA_TEST, MEDQA_DEV):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        lines = (raw_dir / rel).read_text().splitlines(keepends=True)
        (root / rel).write_text("".join(lines[:N] if rel == MEDQA_TEST else lines))
    for split in ("test", "dev"):
        rel = mmlu_test_file("anatomy", split)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with (raw_dir / rel).open(newline="") as f, (root / rel).open("w", newline="") as g:
            rows = list(csv.reader(f))
            csv.writer(g).writerows(rows[:N] if split == "test" else rows)
    (root / HEADQA_TRAIN).parent.mkdir(parents=True)
    (root / HEADQA_TRAIN).write_text((raw_dir / HEADQA_TRAIN).read_text())
    test = json.loads((raw_dir / HEADQA_TEST).read_text())
    first = next(iter(test["exams"]))  # one exam's first N questions
    test["exams"] = {first: {**test["exams"][first], "data": test["exams"][first]["data"][:N]}}
    (root / HEADQA_TEST).write_text(json.dumps(test))
    return root


def _write_docs(path: Path, items, benchmark: str) -> Path:
    # the pool's items carry their split's benchmark name; lm-eval's schema is the test task's
    path.write_text("".join(json.dumps(to_harness_doc(replace(it, benchmark=benchmark))) + "\n" for it in items))
    return path


def _lm_eval_task(tmp: Path, benchmark: str, test_items, pool) -> str:
    """A task YAML including lm-eval's own, reading local files: the pool as the split lm-eval
    draws from for this task (MMLU: fewshot_split dev; MedQA: training_split train)."""
    split = "dev" if pool.sampler == "first_n" else "train"
    task = f"fewshot_{benchmark}"
    test = _write_docs(tmp / f"{task}_test.jsonl", test_items, benchmark)
    shots = _write_docs(tmp / f"{task}_{split}.jsonl", pool.items, benchmark)
    lines = [f"include: {lm_eval_tasks_dir() / HARNESS_TASKS[benchmark]}", f"task: {task}",
             "dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:",
             f"    test: {test}", f"    {split}: {shots}", "test_split: test", "validation_split: null",
             f"training_split: {'null' if split == 'dev' else 'train'}"]
    (tmp / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return task


@pytest.fixture(scope="module")
def model_dir(root, tmp_path_factory) -> Path:
    texts = [f"{it.question} {' '.join(it.choices)}" for v in load_benchmarks(root).values() for it in v]
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", texts, max_positions=8192)


@pytest.fixture(scope="module")
def both_sides(root, model_dir, tmp_path_factory):
    """{benchmark: (our requests, lm-eval's (context, continuation) per doc, lm-eval's log-likelihoods)}"""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp = tmp_path_factory.mktemp("lm_eval_fewshot")
    benches = load_benchmarks(root, FEWSHOT_BENCHMARKS)
    ours, names = {}, {}
    for name, items in benches.items():
        pool = fewshot_pool(root, name)
        shots = draw_examples(pool, items, K, DEFAULT_SEED)
        ours[name] = [build_request(it, "harness", examples=shots[it.id]) for it in items]
        names[name] = _lm_eval_task(tmp, name, items, pool)
    loaded = TaskManager(include_path=str(tmp), include_defaults=False).load(list(names.values()))["tasks"]
    torch.set_num_threads(1)
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=4, max_length=8192)
    lm.softmax_dtype = torch.float32
    out = {}
    for name, task_name in names.items():
        task = loaded[task_name]
        task.set_config(key="num_fewshot", value=K)
        task.set_fewshot_seed(seed=DEFAULT_SEED)  # what lm_eval.evaluator does with fewshot_random_seed
        task.build_all_requests(rank=0, world_size=1, limit=None)
        instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
        lls = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
        out[name] = (ours[name], [inst.args for inst in instances], lls)
    return out


@pytest.mark.parametrize("benchmark", FEWSHOT_BENCHMARKS)
def test_fewshot_contexts_equal_lm_eval(both_sides, benchmark):
    ours, theirs, _ = both_sides[benchmark]
    assert [(r.context, c) for r in ours for c in r.continuations] == theirs
    assert ours[0].context.count("\n\n") >= K  # the examples are there


@pytest.mark.parametrize("benchmark", FEWSHOT_BENCHMARKS)
def test_fewshot_loglikelihoods_equal_lm_eval(both_sides, model_dir, benchmark):
    from med42_ray.eval.scoring import Scorer
    from med42_ray.eval.workers import load_model

    ours, _, theirs = both_sides[benchmark]
    tokenizer, model = load_model(str(model_dir), dtype="float32", device="cpu")
    got = [ll for s in Scorer(model, tokenizer, max_batch_tokens=8192).score(ours) for ll in s.loglikelihoods]
    assert len(got) == len(theirs) == N * len(ours[0].continuations)  # HEAD-QA: 5 options, MedQA and MMLU: 4
    assert got == pytest.approx(theirs, abs=1e-4)


def test_mmlu_takes_dev_in_order_and_medqa_draws_with_the_seed(root):
    mmlu = load_benchmarks(root, ["mmlu_anatomy"])["mmlu_anatomy"]
    pool = fewshot_pool(root, "mmlu_anatomy")
    assert (pool.split, pool.sampler) == ("dev", "first_n")
    assert all(ex == pool.items[:K] for ex in draw_examples(pool, mmlu, K).values())
    medqa = load_benchmarks(root, ["medqa_4options"])["medqa_4options"]
    pool = fewshot_pool(root, "medqa_4options")
    assert (pool.split, pool.sampler) == ("dev", "default")  # the raw files have no MedQA train
    drawn = draw_examples(pool, medqa, K)
    assert len({ex.id for e in drawn.values() for ex in e}) > K  # a fresh draw per question
    assert drawn == draw_examples(pool, medqa, K)  # deterministic
    pool = fewshot_pool(root, "headqa_en")
    assert (pool.split, pool.sampler, pool.source) == ("train", "default", HEADQA_TRAIN)
    assert len(pool.items) == sum(len(e["data"]) for e in json.loads((root / HEADQA_TRAIN).read_text())["exams"].values())


def test_benchmark_without_pool_says_why(root):
    assert "train split" in fewshot_pool(root, "medmcqa")
    assert "not under" in fewshot_pool(Path("/nonexistent"), "mmlu_anatomy")
