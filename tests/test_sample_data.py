"""The embedded sample data: reproducible, readable, gold answers right, decontamination demo sound."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from med42_ray.data.readers import iter_rows
from med42_ray.sample import generate
from med42_ray.sample.generate import DATA_DIR

TRAIN = {"medical_flashcards.json": "alpaca", "medical_mcq.jsonl": "medqa", "medical_chat.jsonl": "sharegpt",
         "general_dolly.jsonl": "dolly", "general_chat.jsonl": "chat"}
BENCH = {"medqa/US/4_options/phrases_no_exclude_test.jsonl": "medqa", "medmcqa/dev.json": "medmcqa",
         "pubmedqa/ori_pqal.json": "pubmedqa", "headqa/HEAD_EN/test_HEAD_EN.json": "headqa",
         "usmle_self_assessment/usmle_self_assessment.json": "usmle_self_assessment",
         **{f"mmlu/test/{s}_test.csv": "mmlu" for s in ("anatomy", "clinical_knowledge", "college_biology",
                                                         "college_medicine", "medical_genetics",
                                                         "professional_medicine")}}


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train_rows() -> dict[str, list[dict]]:
    return {name: list(iter_rows(DATA_DIR / "train" / name, fmt, Path(name).stem)) for name, fmt in TRAIN.items()}


def test_regenerating_is_byte_identical(tmp_path):
    generate.main(["--out", str(tmp_path)])
    assert files_under(tmp_path) == files_under(DATA_DIR)


def test_sizes_and_no_duplicate_rows():
    rows = [r for rs in train_rows().values() for r in rs]
    assert 1500 <= len(rows) <= 3000
    # Distinct conversations (case/space folded), so deduplication removes nothing, planted rows included.
    keys = {repr([(m["role"], " ".join(m["content"].casefold().split())) for m in r["messages"]]) for r in rows}
    assert len(keys) == len(rows)
    assert sum(len(b) for b in files_under(DATA_DIR).values()) < 1.5 * 2**20


@pytest.mark.parametrize("rel, fmt", [(f"train/{k}", v) for k, v in TRAIN.items()] +
                         [(f"benchmarks/{k}", v) for k, v in BENCH.items()])
def test_every_file_reads_without_rejects(rel, fmt):
    rows = list(iter_rows(DATA_DIR / rel, fmt, "sample"))
    assert len(rows) >= 12
    assert [(r["row"], r["reject"], r["detail"]) for r in rows if r["reject"]] == []


def test_benchmark_gold_answers_consistent():
    root = DATA_DIR / "benchmarks"
    for line in (root / "medqa/US/4_options/phrases_no_exclude_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert sorted(row["options"]) == list("ABCD") and row["answer"] == row["options"][row["answer_idx"]]
    for line in (root / "medmcqa/dev.json").read_text().splitlines():
        row = json.loads(line)
        assert row["cop"] in (1, 2, 3, 4) and row["exp"].endswith(".")
    for line in (root / "usmle_self_assessment/usmle_self_assessment.json").read_text().splitlines():
        row = json.loads(line)
        assert row["question"].count(f": {row['answer']}") == 1  # answer text is exactly one option
    for path in sorted((root / "mmlu/test").glob("*.csv")):
        with path.open(newline="") as f:
            assert all(len(r) == 6 and r[5] in "ABCD" for r in csv.reader(f))
    pqal = json.loads((root / "pubmedqa/ori_pqal.json").read_text())
    truth = json.loads((root / "pubmedqa/test_ground_truth.json").read_text())
    assert set(truth) < set(pqal) and all(pqal[k]["final_decision"] == v for k, v in truth.items())
    headqa = json.loads((root / "headqa/HEAD_EN/test_HEAD_EN.json").read_text())
    for exam in headqa["exams"].values():
        for q in exam["data"]:
            assert int(q["ra"]) in [a["aid"] for a in q["answers"]] and q["image"] == ""

    # Independently of the file formats: the gold choice is the fact's value, never a distractor.
    items = generate.build_benchmarks(generate.Distractors(generate.FACTS))
    for its in items.values():
        for it in its:
            assert it.choices.count(it.choices[it.gold]) == 1
            if it.benchmark != "pubmedqa":
                assert it.choices[it.gold] == it.fact.v  # written as taught, not capitalised


def test_every_benchmark_fact_is_taught():
    taught = {m["content"] for rows in train_rows().values() for r in rows for m in r["messages"]
              if m["role"] == "assistant"}
    items = generate.build_benchmarks(generate.Distractors(generate.FACTS))
    for its in items.values():
        for it in its:
            assert any(it.fact.stmt in t for t in taught), it.fact.key


def test_decontamination_flags_exactly_the_planted_rows():
    """With the pipeline's own index over the sample benchmark, the planted rows are caught, each
    against the item it repeats, and nothing else in the training data is."""
    from med42_ray.benchmarks.item import BenchmarkItem
    from med42_ray.data.decontam import ContaminationIndex

    distractors = generate.Distractors(generate.FACTS)
    items = generate.build_benchmarks(distractors)
    generate.benchmark_files(items)  # fixes HEAD-QA positions to the file's exam order
    bench = [BenchmarkItem(it.benchmark, f"{it.benchmark}#{it.position}", it.question, tuple(it.choices), it.gold,
                           context="\n".join(it.context))
             for its in items.values() for it in its
             if not (it.benchmark == "pubmedqa" and it.position > generate.PUBMEDQA_TEST)]
    index = ContaminationIndex.build(bench, n=13)

    flagged = {}
    for rows in train_rows().values():
        texts = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
        for r, match in zip(rows, index.find(texts)):
            if match is not None:
                flagged[r["id"]] = match.item_id
    planted = json.loads((DATA_DIR / "PLANTED.json").read_text())
    assert 5 <= len(planted) <= 10
    assert flagged == {k: f"{v['benchmark']}#{v['position']}" for k, v in planted.items()}
    hows = {v["how"] for v in planted.values()}
    assert {"verbatim", "re-cased", "options shuffled", "embedded in a longer prompt"} <= hows
