"""Readers for the benchmarks stored in their original public formats (see shared/data/raw/SOURCES.md).

Each reader takes the root directory (laid out like shared/data/raw) and yields BenchmarkItems in
file order. Ids are stable across runs: the dataset's own id where it has one, else the row.
Rows are parsed by `med42_ray.parsers`, as the training readers parse them; a malformed row raises
BenchmarkFormatError naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from med42_ray.benchmarks.images import headqa_needs_image
from med42_ray.benchmarks.item import BenchmarkFormatError, BenchmarkItem
from med42_ray.parsers import (PUBMEDQA_CHOICES, ParseError, headqa_exam_questions, parse_headqa, parse_medmcqa,
                               parse_medqa, parse_mmlu, parse_pubmedqa, text)

T = TypeVar("T")

MEDQA_TEST = "medqa/US/4_options/phrases_no_exclude_test.jsonl"
MEDQA_DEV = "medqa/US/4_options/phrases_no_exclude_dev.jsonl"  # validation (sweep), never reported
MEDQA_TRAIN = "medqa/US/4_options/phrases_no_exclude_train.jsonl"  # few-shot examples only
MEDMCQA_DEV = "medmcqa/dev.json"
PUBMEDQA_QUESTIONS = "pubmedqa/ori_pqal.json"
PUBMEDQA_TEST_IDS = "pubmedqa/test_ground_truth.json"
HEADQA_TEST = "headqa/HEAD_EN/test_HEAD_EN.json"
HEADQA_TRAIN = "headqa/HEAD_EN/train_HEAD_EN.json"  # few-shot examples only
MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                 "medical_genetics", "professional_medicine")


def mmlu_test_file(subject: str, split: str = "test") -> str:
    return f"mmlu/{split}/{subject}_{split}.csv"


def _parsed(parse: Callable[..., T], path: Path, row: Any, *args: Any) -> T:
    """`parse(*args)`, its ParseError named by file and row."""
    try:
        return parse(*args)
    except ParseError as e:
        raise BenchmarkFormatError.from_parse_error(path, row, e) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkFormatError(path, n, "<line>", f"not JSON: {e}") from None
            if not isinstance(row, dict):
                raise BenchmarkFormatError(path, n, "<line>", "not a JSON object")
            yield n, row


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(path, e.lineno, "<file>", f"not JSON: {e.msg}") from None


def load_medqa(root: Path, split: str = "test") -> Iterator[BenchmarkItem]:
    """MedQA USMLE 4-option test (the file lm-eval's medqa_4options was built from), or its dev
    split (`medqa_4options_dev`, ids dev-0001...) or train split (few-shot examples), the same format."""
    files = {"test": MEDQA_TEST, "dev": MEDQA_DEV, "train": MEDQA_TRAIN}
    if split not in files:
        raise ValueError(f"MedQA split {split!r}: expected one of {', '.join(files)}")
    path = root / files[split]
    name = "medqa_4options" if split == "test" else f"medqa_4options_{split}"
    for n, row in _jsonl(path):
        mc = _parsed(parse_medqa, path, n, row)
        yield BenchmarkItem(name, f"{split}-{n:04d}", mc.question, mc.options, mc.gold,
                            meta={"step": row.get("meta_info"), "needs_image": False})


def load_medmcqa(root: Path) -> Iterator[BenchmarkItem]:
    """MedMCQA dev (lm-eval's medmcqa test split is the validation = dev set); `cop` counts from 1."""
    path = root / MEDMCQA_DEV
    for n, row in _jsonl(path):
        mc = _parsed(parse_medmcqa, path, n, row)
        yield BenchmarkItem("medmcqa", _parsed(text, path, n, row, "id"), mc.question, mc.options, mc.gold,
                            meta={"subject": row.get("subject_name"), "choice_type": row.get("choice_type"),
                                  "needs_image": False})


def load_pubmedqa(root: Path) -> Iterator[BenchmarkItem]:
    """PubMedQA PQA-L: the 500 test PMIDs of test_ground_truth.json, text from ori_pqal.json.

    `context` is the abstract without its conclusion, the CONTEXTS joined by newlines, exactly as
    lm-eval's pubmedqa doc_to_text joins them. The test label must be the row's final_decision.
    """
    ids_path, q_path = root / PUBMEDQA_TEST_IDS, root / PUBMEDQA_QUESTIONS
    truth = _json(ids_path)
    questions = _json(q_path)
    if not isinstance(truth, dict) or not isinstance(questions, dict):
        raise BenchmarkFormatError(ids_path, "-", "<file>", "expected a JSON object keyed by PMID")
    for pmid, label in truth.items():
        if label not in PUBMEDQA_CHOICES:
            raise BenchmarkFormatError(ids_path, pmid, "<value>", f"expected yes/no/maybe, got {label!r}")
        if pmid not in questions:
            raise BenchmarkFormatError(q_path, pmid, "<key>", "test PMID missing from ori_pqal.json")
        mc = _parsed(parse_pubmedqa, q_path, pmid, questions[pmid])
        if mc.options[mc.gold] != label:
            raise BenchmarkFormatError(q_path, pmid, "final_decision",
                                       f"{mc.options[mc.gold]!r}, but {PUBMEDQA_TEST_IDS} says {label!r}")
        yield BenchmarkItem("pubmedqa", pmid, mc.question, mc.options, mc.gold, context=mc.context,
                            meta={"year": questions[pmid].get("YEAR"), "needs_image": False})


def load_mmlu(root: Path, subject: str, split: str = "test") -> Iterator[BenchmarkItem]:
    """One MMLU subject's test split (or dev, its five few-shot examples): headerless CSV
    `question,A,B,C,D,answer`."""
    path = root / mmlu_test_file(subject, split)
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            mc = _parsed(parse_mmlu, path, n, row)
            yield BenchmarkItem(f"mmlu_{subject}", f"{subject}-{split}-{n:04d}", mc.question, mc.options, mc.gold,
                                meta={"subject": subject, "needs_image": False})


def load_headqa(root: Path, split: str = "test") -> Iterator[BenchmarkItem]:
    """HEAD-QA English test, or its train split (few-shot examples), in file order: exams, then
    their questions (the order of the HF dataset lm-eval reads). Answers are keyed by `aid` and `ra`
    is the right aid, so gold is found by aid (not position). needs_image: the `image` field names a picture."""
    files = {"test": HEADQA_TEST, "train": HEADQA_TRAIN}
    if split not in files:
        raise ValueError(f"HEAD-QA split {split!r}: expected one of {', '.join(files)}")
    path = root / files[split]
    data = _json(path)
    exams = data.get("exams") if isinstance(data, dict) else None
    if not isinstance(exams, dict):
        raise BenchmarkFormatError(path, "-", "exams", "missing or not an object")
    for exam_name, exam in exams.items():
        for n, q in enumerate(_parsed(headqa_exam_questions, path, exam_name, exam_name, exam), start=1):
            where = f"{exam_name}[{n}]"
            mc = _parsed(parse_headqa, path, where, q)
            yield BenchmarkItem("headqa_en", f"{exam_name}-{_parsed(text, path, where, q, 'qid')}", mc.question,
                                mc.options, mc.gold,
                                meta={"subject": exam.get("category"), "year": exam.get("year"),
                                      "needs_image": headqa_needs_image(str(q.get("image") or ""), mc.question)})
