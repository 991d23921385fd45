"""The shared multiple-choice parsers: each format on a good row and on each kind of bad row, and
the training reader and the benchmark registry agreeing on the same raw rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from med42_ray.benchmarks import formats, load_benchmarks, usmle
from med42_ray.data.readers import iter_rows
from med42_ray.parsers import (MultipleChoice, ParseError, parse_headqa, parse_medmcqa, parse_medqa, parse_mmlu,
                               parse_pubmedqa, parse_usmle_inline, split_inline_options)
from med42_ray.records import format_mc_answer, format_multiple_choice

MEDQA = {"question": " Which drug? ", "options": {"A": "Aspirin", "B": " Cisplatin "}, "answer_idx": "B",
         "answer": "Cisplatin", "meta_info": "step1"}
MEDMCQA = {"question": "Which nerve?", "opa": "Facial", "opb": "Vagus", "opc": 4, "opd": "Optic", "cop": 2,
           "id": "m-1", "subject_name": "Anatomy", "choice_type": "single"}
PUBMEDQA = {"QUESTION": "Does it work?", "CONTEXTS": ["It was tried. ", "It worked."],
            "LABELS": ["methods", "results"], "final_decision": "yes", "LONG_ANSWER": " It works. ", "YEAR": "2001"}
MMLU = [" What is x? ", "one", "two", "three", "four", "C"]
HEADQA = {"qid": "7", "qtext": "Form extracellular fibers:", "ra": "2", "image": "",
          "answers": [{"aid": 2, "atext": "Collagen"}, {"aid": 1, "atext": "Keratin"}]}
USMLE = {"question": "A man has\n  a ratio?  Options: A: 1 B: ratio A: B C: 3", "answer": "ratio A: B"}


def test_good_rows_keep_the_text_as_given():
    assert parse_medqa(MEDQA) == MultipleChoice(" Which drug? ", ("Aspirin", " Cisplatin "), 1)
    assert parse_medmcqa(MEDMCQA) == MultipleChoice("Which nerve?", ("Facial", "Vagus", "4", "Optic"), 1)
    assert parse_mmlu(MMLU) == MultipleChoice(" What is x? ", ("one", "two", "three", "four"), 2)
    assert parse_headqa(HEADQA) == MultipleChoice("Form extracellular fibers:", ("Keratin", "Collagen"), 1)
    assert parse_headqa({**HEADQA, "ra": 1}).gold == 0  # ra as a number
    # markers run A, B, C in order: the 'A: B' inside option B is text
    assert parse_usmle_inline(USMLE) == MultipleChoice("A man has\n  a ratio?  ", ("1", "ratio A: B", "3"), 1)


def test_pubmedqa_row_has_both_renderings():
    parsed = parse_pubmedqa(PUBMEDQA)
    assert (parsed.question, parsed.options, parsed.gold) == ("Does it work?", ("yes", "no", "maybe"), 0)
    assert parsed.context == "It was tried. \nIt worked."  # the benchmark's: CONTEXTS joined as given
    assert parsed.sections == (("METHODS", "It was tried."), ("RESULTS", "It worked."))
    assert parsed.long_answer == "It works."
    unlabelled = parse_pubmedqa({**PUBMEDQA, "LABELS": ["only one"], "final_decision": " Maybe"})
    assert unlabelled.sections == (("", "It was tried."), ("", "It worked.")) and unlabelled.gold == 2


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


@pytest.mark.parametrize("parse, row, reason, field", [
    (parse_medqa, ["not", "an", "object"], "unsupported_shape", None),
    (parse_medqa, without(MEDQA, "question"), "missing_field", "question"),
    (parse_medqa, {**MEDQA, "question": "  "}, "empty_field", "question"),
    (parse_medqa, {**MEDQA, "question": ["q"]}, "unsupported_shape", "question"),
    (parse_medqa, without(MEDQA, "options"), "missing_field", "options"),
    (parse_medqa, {**MEDQA, "options": ["Aspirin", "Cisplatin"]}, "unsupported_shape", "options"),
    (parse_medqa, {**MEDQA, "options": {"A": "x", "C": "y"}}, "unsupported_shape", "options"),
    (parse_medqa, {**MEDQA, "options": {"A": "x", "B": ""}}, "empty_field", "B"),
    (parse_medqa, {**MEDQA, "answer_idx": "C"}, "bad_answer_key", "answer_idx"),
    (parse_medqa, {**MEDQA, "answer": "Aspirin"}, "bad_answer_key", "answer"),
    (parse_medmcqa, without(MEDMCQA, "opd"), "missing_field", "opd"),
    (parse_medmcqa, without(MEDMCQA, "cop"), "missing_field", "cop"),
    (parse_medmcqa, {**MEDMCQA, "cop": 5}, "bad_answer_key", "cop"),
    (parse_medmcqa, {**MEDMCQA, "cop": "2"}, "bad_answer_key", "cop"),
    (parse_medmcqa, {**MEDMCQA, "cop": True}, "bad_answer_key", "cop"),
    (parse_pubmedqa, without(PUBMEDQA, "QUESTION"), "missing_field", "QUESTION"),
    (parse_pubmedqa, {**PUBMEDQA, "CONTEXTS": "text"}, "unsupported_shape", "CONTEXTS"),
    (parse_pubmedqa, {**PUBMEDQA, "CONTEXTS": []}, "empty_field", "CONTEXTS"),
    (parse_pubmedqa, {**PUBMEDQA, "CONTEXTS": [" ", ""]}, "empty_field", "CONTEXTS"),
    (parse_pubmedqa, {**PUBMEDQA, "CONTEXTS": ["text", 3]}, "unsupported_shape", "CONTEXTS"),
    (parse_pubmedqa, {**PUBMEDQA, "final_decision": "probably"}, "bad_answer_key", "final_decision"),
    (parse_mmlu, MMLU[:3], "malformed_csv", None),
    (parse_mmlu, ["", *MMLU[1:]], "empty_field", "question"),
    (parse_mmlu, [*MMLU[:5], "E"], "bad_answer_key", "answer"),
    (parse_mmlu, [*MMLU[:5], "c"], "bad_answer_key", "answer"),
    (parse_headqa, without(HEADQA, "answers"), "missing_field", "answers"),
    (parse_headqa, {**HEADQA, "answers": []}, "empty_field", "answers"),
    (parse_headqa, {**HEADQA, "answers": [{"aid": "x", "atext": "a"}]}, "unsupported_shape", "answers"),
    (parse_headqa, {**HEADQA, "answers": [{"aid": 1}]}, "missing_field", "atext"),
    (parse_headqa, {**HEADQA, "ra": "9"}, "bad_answer_key", "ra"),
    (parse_headqa, {**HEADQA, "ra": True}, "unsupported_shape", "ra"),
    (parse_usmle_inline, {**USMLE, "question": "No list here"}, "unsupported_shape", "question"),
    (parse_usmle_inline, {**USMLE, "question": "Q? Options: A: only"}, "unsupported_shape", "question"),
    (parse_usmle_inline, {**USMLE, "question": "Q? Options: see A: 1 B: 2"}, "unsupported_shape", "question"),
    (parse_usmle_inline, {**USMLE, "question": "Q? Options: A: 1 B:  C: 3"}, "empty_field", "question"),
    (parse_usmle_inline, {**USMLE, "question": " Options: A: 1 B: 2"}, "empty_field", "question"),
    (parse_usmle_inline, {**USMLE, "answer": "4"}, "bad_answer_key", "answer"),
    (parse_usmle_inline, {"question": "Q? Options: A: 1 B: 1", "answer": "1"}, "bad_answer_key", "answer"),
    (parse_usmle_inline, without(USMLE, "answer"), "missing_field", "answer"),
])
def test_bad_rows_raise_reason_and_field(parse, row, reason, field):
    with pytest.raises(ParseError) as caught:
        parse(row)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_error_detail_names_the_field():
    assert ParseError("missing_field", "output", "missing").detail == "field 'output' is missing"
    assert ParseError("bad_answer_key", "cop", "expected 1..4, got 5").detail == "field 'cop': expected 1..4, got 5"
    assert ParseError("malformed_csv", None, "expected 6 columns").detail == "expected 6 columns"


def test_split_inline_options_keeps_the_stem_as_given():
    stem, choices = split_inline_options("Which range? Options: A: 105-155 B: 120-140 C: ratio A: B D: none")
    assert stem == "Which range? "
    assert choices == ("105-155", "120-140", "ratio A: B", "none")


# ---- the reader and the registry agree --------------------------------------------------------------

def same_text(a: str, b: str) -> bool:
    return a.split() == b.split()  # the registry keeps USMLE stems with single spaces


def assert_agree(reader_row: dict, item) -> None:
    user, answer = (m["content"] for m in reader_row["messages"])
    assert same_text(user, format_multiple_choice(item.question, item.choices)), (reader_row["id"], item.id)
    assert answer == format_mc_answer(item.choices, item.gold), (reader_row["id"], item.id)


def write_root(root: Path) -> None:
    files = {formats.MEDQA_TEST: json.dumps(MEDQA) + "\n", formats.MEDMCQA_DEV: json.dumps(MEDMCQA) + "\n",
             formats.mmlu_test_file("anatomy"): ",".join(MMLU) + "\n",
             formats.HEADQA_TEST: json.dumps({"exams": {"E1": {"data": [HEADQA]}}}),
             usmle.JSONL: json.dumps(USMLE) + "\n",
             formats.PUBMEDQA_QUESTIONS: json.dumps({"123": PUBMEDQA}),
             formats.PUBMEDQA_TEST_IDS: json.dumps({"123": "yes"})}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_reader_and_registry_agree_on_one_raw_row_per_format(tmp_path):
    write_root(tmp_path)
    items = load_benchmarks(tmp_path)
    for name, rel, fmt in [("medqa_4options", formats.MEDQA_TEST, "medqa"),
                           ("medmcqa", formats.MEDMCQA_DEV, "medmcqa"),
                           ("mmlu_anatomy", formats.mmlu_test_file("anatomy"), "mmlu"),
                           ("headqa_en", formats.HEADQA_TEST, "headqa"),
                           ("usmle_sample_exam", usmle.JSONL, "usmle_self_assessment")]:
        [row] = iter_rows(tmp_path / rel, fmt, "src")
        [item] = items[name]
        assert_agree(row, item)
    [row] = iter_rows(tmp_path / formats.PUBMEDQA_QUESTIONS, "pubmedqa", "src")
    [item] = items["pubmedqa"]
    assert row["messages"][0]["content"].endswith(f"Question: {item.question}")
    assert row["messages"][1]["content"] == "Yes. It works."
    assert item.context == "It was tried. \nIt worked."


@pytest.mark.parametrize("name, rel, fmt", [
    ("medqa_4options", formats.MEDQA_TEST, "medqa"),
    ("medqa_4options_dev", formats.MEDQA_DEV, "medqa"),
    ("medmcqa", formats.MEDMCQA_DEV, "medmcqa"),
    ("mmlu_professional_medicine", formats.mmlu_test_file("professional_medicine"), "mmlu"),
    ("mmlu_college_medicine", formats.mmlu_test_file("college_medicine"), "mmlu"),
    ("headqa_en", formats.HEADQA_TEST, "headqa"),
    ("usmle_self_assessment", usmle.JSONL, "usmle_self_assessment"),
])
def test_reader_and_registry_agree_on_the_real_files(raw_dir, name, rel, fmt):
    [items] = load_benchmarks(raw_dir, [name]).values()
    rows = list(iter_rows(raw_dir / rel, fmt, "src"))
    assert len(rows) == len(items)
    for row, item in zip(rows, items):
        if row["reject"] is None:
            assert_agree(row, item)
        else:  # the reader leaves out questions the registry keeps only to exclude them from scoring
            assert row["reject"] in ("needs_image", "empty_field") and item.needs_image, (row, item.id)


def test_reader_and_registry_agree_on_real_pubmedqa(raw_dir):
    items = {it.id: it for it in load_benchmarks(raw_dir, ["pubmedqa"])["pubmedqa"]}
    pmids = list(json.loads((raw_dir / formats.PUBMEDQA_QUESTIONS).read_text()))
    rows = list(iter_rows(raw_dir / formats.PUBMEDQA_QUESTIONS, "pubmedqa", "src"))
    for pmid, row in zip(pmids, rows):
        if pmid in items:
            item = items[pmid]
            assert row["messages"][0]["content"].endswith(f"\n\nQuestion: {item.question}")
            assert row["messages"][1]["content"].startswith(item.choices[item.gold].capitalize() + ".")
    assert len(items) == 500 and len(rows) == 1000
