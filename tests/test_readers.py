"""Readers on the real public files (counts from shared/data/raw/SOURCES.md) and on bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from med42_ray.data.readers import READERS, expand_source_paths, iter_rows, iter_task, plan_read_tasks

KEYS = {"id", "source", "file", "row", "messages", "reject", "detail"}
MMLU_CLINICAL = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144,
                 "college_medicine": 173, "medical_genetics": 100, "professional_medicine": 272}


def read(path: Path, fmt: str, source: str = "src") -> list[dict]:
    rows = list(iter_rows(path, fmt, source))
    for r in rows:
        assert set(r) == KEYS
        assert (r["reject"] is None) == bool(r["messages"]), r
    return rows


def accepted(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["reject"] is None]


def split_read(path: Path, fmt: str, target_bytes: int) -> tuple[list[dict], int]:
    tasks = plan_read_tasks([path], fmt, "src", target_bytes=target_bytes)
    json.dumps(tasks)  # tasks travel to Ray workers as plain data
    return [r for t in tasks for r in iter_task(t)], len(tasks)


# ---- real files: counts ------------------------------------------------------------------------

@pytest.mark.parametrize("rel, fmt, count", [
    ("medqa/US/4_options/phrases_no_exclude_test.jsonl", "medqa", 1273),
    ("medqa/US/4_options/phrases_no_exclude_dev.jsonl", "medqa", 1272),
    ("medqa/US/test.jsonl", "medqa", 1273),
    ("medmcqa/dev.json", "medmcqa", 4183),
    ("pubmedqa/ori_pqal.json", "pubmedqa", 1000),
    ("alpaca/alpaca_tiny.json", "alpaca", 100),
    ("alpaca/alpaca_en_demo.json", "alpaca", 999),
    ("medalpaca/medical_meadow_small.json", "alpaca", 5942),
    ("dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl", "prompt_response", 1000),
] + [(f"mmlu/test/{s}_test.csv", "mmlu", n) for s, n in MMLU_CLINICAL.items()])
def test_real_counts_all_accepted(raw_dir, rel, fmt, count):
    rows = read(raw_dir / rel, fmt)
    assert len(rows) == count
    assert [r["reject"] for r in rows if r["reject"]] == []
    assert len({r["id"] for r in rows}) == count
    for r in rows:
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()


def test_headqa_train_rejects_image_questions(raw_dir):
    rows = read(raw_dir / "headqa/HEAD_EN/train_HEAD_EN.json", "headqa")
    assert len(rows) == 2657
    # SOURCES.md: "68 train questions reference an image".
    assert Counter(r["reject"] for r in rows) == {None: 2589, "needs_image": 68}
    assert [r["row"] for r in rows] == list(range(1, 2658))  # position across all 12 exams
    first = rows[0]["messages"]  # Cuaderno_2013_1_B q1: ra = 3, "They can be added."
    assert first[0]["content"].startswith("The excitatory postsynaptic potentials:\n\nA. They are all or nothing.")
    assert first[1]["content"] == "C. They can be added."


def test_usmle_self_assessment(raw_dir):
    path = raw_dir / "usmle_self_assessment/usmle_self_assessment.json"
    rows = read(path, "usmle_self_assessment")
    assert len(rows) == 376
    # Three items lost their options (a table in the original): "Options: A:  B:  C: ..."
    assert Counter(r["reject"] for r in rows) == {None: 373, "empty_field": 3}
    assert [r["row"] for r in rows if r["reject"]] == [62, 80, 85]
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    for r in accepted(rows):  # the answer text maps back to the letter we emit
        letter_and_text = r["messages"][1]["content"]
        assert letter_and_text.split(". ", 1)[1] == raw[r["row"] - 1]["answer"].strip()
    assert rows[0]["messages"][1]["content"] == "B. 120-140"
    assert "Options:" not in rows[0]["messages"][0]["content"]


# ---- real files: content ------------------------------------------------------------------------

def test_medmcqa_cop_counts_from_one(raw_dir):
    rows = read(raw_dir / "medmcqa/dev.json", "medmcqa")
    # Line 1: cop = 1 -> opa "Impulse through myelinated fibers is slower than non-myelinated fibers".
    assert rows[0]["messages"][1]["content"] == "A. Impulse through myelinated fibers is slower than non-myelinated fibers"
    raw = [json.loads(line) for line in (raw_dir / "medmcqa/dev.json").read_text().splitlines()]
    letters = Counter(r["messages"][1]["content"][0] for r in rows)
    assert letters == {"ABCD"[c - 1]: n for c, n in Counter(x["cop"] for x in raw).items()}
    assert letters == {"A": 1348, "B": 1085, "C": 925, "D": 825}  # SOURCES.md


def test_medqa_answer_letter_matches_answer_idx(raw_dir):
    path = raw_dir / "medqa/US/test.jsonl"  # 5 options
    rows = read(path, "medqa")
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    for r, x in zip(rows, raw):
        assert r["messages"][1]["content"] == f"{x['answer_idx']}. {x['answer'].strip()}"
        assert r["messages"][0]["content"].endswith(f"E. {x['options']['E'].strip()}")
    assert rows[0]["id"] == "src:test:1" and rows[0]["file"] == str(path)


def test_pubmedqa_user_has_abstract_and_question(raw_dir):
    rows = read(raw_dir / "pubmedqa/ori_pqal.json", "pubmedqa")
    user, answer = (m["content"] for m in rows[0]["messages"])
    assert user.startswith("Abstract:\nBACKGROUND: Programmed cell death (PCD)")
    assert user.endswith("Question: Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?")
    assert answer.startswith("Yes. Results depicted mitochondrial dynamics")
    assert Counter(r["messages"][1]["content"].split(".")[0] for r in rows) == {"Yes": 552, "No": 338, "Maybe": 110}


def test_prompt_response_unwraps_alpaca_template(raw_dir):
    rows = read(raw_dir / "dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl", "prompt_response")
    assert rows[0]["messages"][0]["content"] == "what is kangen water?"
    assert not any("### Instruction" in r["messages"][0]["content"] for r in rows)


def test_mmlu_multiline_records_keep_their_line(raw_dir):
    path = raw_dir / "mmlu/test/college_medicine_test.csv"  # 173 records over 224 lines
    rows = read(path, "mmlu")
    assert rows[-1]["row"] > 173 and rows[3]["row"] == 7  # row = line the record starts on
    assert rows[0]["messages"][1]["content"] == "B. Psychoanalytic"


# ---- byte-range splitting -------------------------------------------------------------------------

@pytest.mark.parametrize("rel, fmt, target", [
    ("medmcqa/dev.json", "medmcqa", 20_000),
    ("medqa/US/4_options/phrases_no_exclude_dev.jsonl", "medqa", 50_000),
    ("usmle_self_assessment/usmle_self_assessment.json", "usmle_self_assessment", 5_000),
    ("mmlu/test/college_medicine_test.csv", "mmlu", 1_000),   # quoted newlines
    ("mmlu/val/college_medicine_val.csv", "mmlu", 300),      # a stray quote in an unquoted field
    ("mmlu/test/professional_medicine_test.csv", "mmlu", 7_000),
])
def test_split_read_equals_single_read(raw_dir, rel, fmt, target):
    whole = read(raw_dir / rel, fmt)
    parts, n_tasks = split_read(raw_dir / rel, fmt, target)
    assert n_tasks > 5
    assert parts == whole


def test_json_documents_are_one_task(raw_dir):
    for rel, fmt in [("pubmedqa/ori_pqal.json", "pubmedqa"), ("alpaca/alpaca_tiny.json", "alpaca"),
                     ("headqa/HEAD_EN/dev_HEAD_EN.json", "headqa")]:
        [task] = plan_read_tasks([raw_dir / rel], fmt, "src", target_bytes=1000)
        assert (task["start"], task["end"]) == (0, (raw_dir / rel).stat().st_size)


def test_split_tiny_ranges_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(50)]
    lines[10:10] = ["", "   "]
    path.write_text("\n".join(lines))  # no newline at the end
    whole = read(path, "alpaca")
    assert len(whole) == 50 and whole[10]["row"] == 13
    for target in (1, 7, 40, 10_000):
        assert split_read(path, "alpaca", target)[0] == whole


# ---- bad input ------------------------------------------------------------------------------------

def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


def test_bad_jsonl_rows_are_rejects_not_errors(tmp_path):
    good = {"instruction": "Name a vitamin.", "input": "", "output": "Vitamin C."}
    path = write_lines(tmp_path / "bad.jsonl", [
        good,
        b'{"instruction": "broken", ',
        {"instruction": "no output"},
        {"instruction": "x", "output": "   "},
        b'{"instruction": "caf\xe9", "output": "latin-1 byte"}',
        ["a", "list"],
        good,
    ])
    rows = read(path, "alpaca", "mine")
    got = [(r["row"], r["reject"]) for r in rows]
    assert got == [(1, None), (2, "malformed_json"), (3, "missing_field"), (4, "empty_field"),
                   (5, "non_utf8"), (6, "unsupported_shape"), (7, None)]
    assert rows[2]["detail"] == "field 'output' is missing"
    assert rows[3]["detail"] == "field 'output' is empty"
    assert rows[1]["id"] == "mine:bad:2" and rows[1]["messages"] == []


def test_answer_key_outside_options(tmp_path):
    medqa = {"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "C", "answer": "z"}
    medmcqa = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 5}
    usmle = {"question": "Q? Options: A: one B: two", "answer": "three"}
    for fmt, row, field in [("medqa", medqa, "answer_idx"), ("medmcqa", medmcqa, "cop"),
                            ("usmle_self_assessment", usmle, "answer")]:
        [r] = read(write_lines(tmp_path / f"{fmt}.jsonl", [row]), fmt)
        assert r["reject"] == "bad_answer_key" and f"field {field!r}" in r["detail"], r
    (tmp_path / "m.csv").write_text('What?,a,b,c,d,E\n"Two\nlines",a,b,c,d,B\nshort,a,b\n')
    rows = read(tmp_path / "m.csv", "mmlu")
    assert [(r["row"], r["reject"]) for r in rows] == [(1, "bad_answer_key"), (2, None), (4, "malformed_csv")]


def test_csv_non_utf8_row_rejected_rest_read(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"ok?,a,b,c,d,A\nbad \xff?,a,b,c,d,B\nfine?,a,b,c,d,C\n")
    assert [(r["row"], r["reject"]) for r in read(path, "mmlu")] == [(1, None), (2, "non_utf8"), (3, None)]


def test_json_document_errors(tmp_path):
    (tmp_path / "arr.json").write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ')
    rows = read(tmp_path / "arr.json", "alpaca")
    assert [(r["row"], r["reject"]) for r in rows] == [(1, None), (2, "malformed_json")]
    (tmp_path / "pq.json").write_text('[1, 2]')
    [r] = read(tmp_path / "pq.json", "pubmedqa")
    assert (r["row"], r["reject"]) == (0, "unsupported_shape")
    (tmp_path / "bin.json").write_bytes(b'[{"instruction": "a\xff", "output": "b"}]')
    assert [r["reject"] for r in read(tmp_path / "bin.json", "alpaca")] == ["non_utf8"]


@pytest.mark.parametrize("fmt, name, text", [
    ("alpaca", "e.jsonl", ""), ("alpaca", "e.json", "[]"), ("mmlu", "e.csv", "\n\n"),
    ("pubmedqa", "e.json", "  "), ("headqa", "e.json", '{"exams": {}}'),
])
def test_empty_file(tmp_path, fmt, name, text):
    (tmp_path / name).write_text(text)
    [r] = read(tmp_path / name, fmt)
    assert (r["row"], r["reject"], r["id"]) == (0, "empty_file", "src:e:0")


def test_chat_and_sharegpt_shapes(tmp_path):
    rows = read(write_lines(tmp_path / "c.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "u"}]},
        {"messages": [{"role": "robot", "content": "u"}, {"role": "assistant", "content": "a"}]},
    ]), "chat")
    assert [r["reject"] for r in rows] == [None, "unsupported_shape", "bad_role"]
    rows = read(write_lines(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": []},
    ]), "sharegpt")
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert rows[1]["reject"] == "empty_field"


def test_headqa_bad_ra(tmp_path):
    doc = {"exams": {"E": {"data": [{"qid": "1", "qtext": "Q", "ra": "9", "image": "",
                                     "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}]}]}}}
    (tmp_path / "h.json").write_text(json.dumps(doc))
    [r] = read(tmp_path / "h.json", "headqa")
    assert r["reject"] == "bad_answer_key" and "'ra'" in r["detail"]


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(iter_rows(tmp_path / "nope.jsonl", "alpaca", "s"))
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="'parquet'"):
        plan_read_tasks([tmp_path / "a.jsonl"], "parquet", "s")
    assert set(READERS) >= {"medqa", "medmcqa", "pubmedqa", "mmlu", "headqa", "usmle_self_assessment",
                            "alpaca", "dolly", "prompt_response", "chat", "sharegpt"}


def test_expand_source_paths(tmp_path, raw_dir):
    paths = expand_source_paths(str(raw_dir / "mmlu/test/*_test.csv"))
    assert len(paths) == 13 and paths == sorted(paths)
    assert expand_source_paths(str(raw_dir / "medmcqa/dev.json")) == [raw_dir / "medmcqa/dev.json"]
    with pytest.raises(FileNotFoundError, match="nothing"):
        expand_source_paths(str(tmp_path / "nothing*.json"))
