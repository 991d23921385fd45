"""Benchmark registry on the real public files (raw_dir) and on small hand-made roots."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import pytest

from med42_ray.benchmarks import BENCHMARKS, BenchmarkFormatError, BenchmarkItem, load_benchmarks, usmle
from med42_ray.benchmarks.images import headqa_needs_image, usmle_needs_image
from med42_ray.paths import resolve_path

CANONICAL = {"medqa_4options": 1273, "medmcqa": 4183, "pubmedqa": 500, "mmlu_anatomy": 135,
             "mmlu_clinical_knowledge": 265, "mmlu_college_biology": 144, "mmlu_college_medicine": 173,
             "mmlu_medical_genetics": 100, "mmlu_professional_medicine": 272, "usmle_sample_exam": 376,
             "usmle_self_assessment": 376, "headqa_en": 2742}


@pytest.fixture(scope="session")
def real(raw_dir) -> dict[str, list[BenchmarkItem]]:
    return load_benchmarks(raw_dir)


def by_id(items):
    return {it.id: it for it in items}


def test_every_benchmark_loads_with_its_canonical_size(real):
    assert {k: len(v) for k, v in real.items()} == CANONICAL
    for name, items in real.items():
        assert BENCHMARKS[name].size == len(items)
        assert len({it.id for it in items}) == len(items), f"{name}: ids not unique"
        assert all(it.benchmark == name for it in items)


def test_gold_answers_spot_checked(real):
    medqa = by_id(real["medqa_4options"])["test-0001"]
    assert medqa.choices[medqa.gold] == "Tell the attending that he cannot fail to disclose this mistake"
    mcqa = real["medmcqa"][0]  # cop 1 -> opa
    assert mcqa.gold == 0 and mcqa.choices[0].startswith("Impulse through myelinated fibers is slower")
    # cop counts from 1: the dev answer distribution of SOURCES.md, shifted to 0-based
    assert collections.Counter(it.gold for it in real["medmcqa"]) == {0: 1348, 1: 1085, 2: 925, 3: 825}
    pubmed = real["pubmedqa"]
    assert collections.Counter(it.choices[it.gold] for it in pubmed) == {"yes": 276, "no": 169, "maybe": 55}
    first = by_id(pubmed)["12377809"]
    assert first.context.startswith("Dyschesia can be provoked") and "\n" in first.context
    anatomy = real["mmlu_anatomy"][0]
    assert anatomy.gold == 0 and anatomy.choices[0] == "paralysis of the facial muscles."
    head = by_id(real["headqa_en"])
    assert head["Cuaderno_2016_1_B-1"].choices[head["Cuaderno_2016_1_B-1"].gold] == "Collagen"
    assert head["Cuaderno_2017_1_M-35"].choices[head["Cuaderno_2017_1_M-35"].gold] == "Tuberculosis."
    exam = by_id(real["usmle_sample_exam"])  # golds from the booklets' answer keys
    assert exam["step1-001"].choices[exam["step1-001"].gold] == "BMI"
    assert exam["step1-002"].choices[exam["step1-002"].gold] == "Keratosis pilaris"
    assert exam["step2ck-010"].choices[exam["step2ck-010"].gold] == "Vitamin B12 (cyanocobalamin) supplementation"
    assert exam["step3-137"].choices[exam["step3-137"].gold] == "Anal fistula"
    self_assessment = by_id(real["usmle_self_assessment"])
    assert self_assessment["step1-001"].choices == ("105-155", "120-140", "125-135", "128-132", "129-131")
    assert self_assessment["step1-001"].gold == 1


def test_usmle_steps_and_sources(real):
    for name in ("usmle_sample_exam", "usmle_self_assessment"):
        steps = collections.Counter(it.meta["step"] for it in real[name])
        assert steps == {"step1": 119, "step2ck": 120, "step3": 137}
    assert {it.meta["source"] for it in real["usmle_sample_exam"]} == {"pdf"}
    pdf_item = by_id(real["usmle_sample_exam"])["step1-001"]
    assert pdf_item.question.startswith("A 14-year-old boy is brought to the emergency department")
    assert pdf_item.question.endswith("most increased his risk for developing this condition?")
    assert "  " not in pdf_item.question and "\n" not in pdf_item.question


def test_usmle_crosscheck_finds_shared_items_and_no_answer_mismatch(raw_dir):
    report = usmle.crosscheck(raw_dir)
    # different editions: only these items are in both the 2023-24 booklets and the JSONL
    assert report["matched"] == 78
    assert report["answer_mismatches"] == []


def test_image_rule_counts_pinned(real):
    def excluded(name):
        return collections.Counter(it.meta.get("step", "all") for it in real[name] if it.needs_image)

    assert excluded("headqa_en") == {"all": 67}
    assert excluded("usmle_sample_exam") == {"step1": 24, "step2ck": 17, "step3": 19}
    assert excluded("usmle_self_assessment") == {"step1": 26, "step2ck": 12, "step3": 16}
    for name in ("medqa_4options", "medmcqa", "pubmedqa", "mmlu_anatomy"):
        assert not any(it.needs_image for it in real[name])
    exam = by_id(real["usmle_sample_exam"])
    assert exam["step1-040"].meta["options_in_figure"]  # options are labels in a drawing
    assert exam["step2ck-017"].meta["exhibit"]  # refers to an abstract printed on another page


@pytest.mark.parametrize("stem,expected", [
    ("Physical examination shows the findings in the photograph. Which is the diagnosis?", True),
    ("A photograph of the lesion is shown.", True),
    ("Photomicrographs of her gastric wall are shown: A is a hematoxylin and eosin stain.", True),
    ("Which of the following labeled arteries is occluded?", True),
    ("Chest x- ray is shown.", True),
    ("Study results are shown: XXX Based on these data, which is right?", True),
    ("Results of laboratory studies are shown: Hemoglobin 9 g/dL ECG shows atrial fibrillation.", False),
    ("Her past three Pap smears have shown no abnormalities.", False),
    ("A chest x-ray shows consolidation in the left lower lobe.", False),
    ("Research has shown that team communication is most effective.", False),
])
def test_usmle_image_rule(stem, expected):
    assert usmle_needs_image(stem) is expected


def test_headqa_image_rule():
    assert headqa_needs_image("./data/MIR/img35.png", "Q")
    assert headqa_needs_image("", "Question linked to image nº35 A woman ...")
    assert not headqa_needs_image("", "Form extracellular fibers:")


def test_items_pickle_and_round_trip_through_dicts(real):
    item = real["usmle_sample_exam"][0]
    assert pickle.loads(pickle.dumps(item)) == item
    assert BenchmarkItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    with pytest.raises(TypeError):
        item.meta["step"] = "x"  # frozen all the way down


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_absent_benchmarks_are_skipped_with_a_line(tmp_path, caplog):
    _write(tmp_path, "mmlu/test/anatomy_test.csv", 'What is "x"?,a,b,c,d,C\n')
    with caplog.at_level("WARNING"):
        got = load_benchmarks(tmp_path)
    assert list(got) == ["mmlu_anatomy"]
    assert got["mmlu_anatomy"][0].gold == 2 and got["mmlu_anatomy"][0].question == 'What is "x"?'
    assert "benchmark medqa_4options skipped: medqa/US/4_options/phrases_no_exclude_test.jsonl not found" in caplog.text
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmarks(tmp_path, ["mmlu_astrology"])


def test_usmle_jsonl_alone_is_the_sample_exam(tmp_path):
    rows = [{"question": f"Q{i}? Options: A: x{i} B: y{i}", "answer": f"y{i}", "rationale": ""} for i in range(376)]
    _write(tmp_path, usmle.JSONL, "\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_benchmarks(tmp_path)
    assert list(got) == ["usmle_sample_exam"]  # self_assessment would be the same items twice
    items = got["usmle_sample_exam"]
    assert [it.id for it in (items[0], items[119], items[239])] == ["step1-001", "step2ck-001", "step3-001"]
    assert items[375].meta == {"step": "step3", "source": "jsonl", "line": 376, "needs_image": False}
    assert all(it.gold == 1 for it in items)


@pytest.mark.parametrize("rel,text,message", [
    ("medmcqa/dev.json", '{"question":"q","opa":"a","opb":"b","opc":"c","opd":"d","cop":5,"id":"x"}\n',
     r"dev.json: row 1: field 'cop': expected 1..4, got 5"),
    ("medmcqa/dev.json", '{"question":"q","opa":"a","opb":"b","opc":"c","cop":1,"id":"x"}\n',
     r"dev.json: row 1: field 'opd': missing"),
    ("medqa/US/4_options/phrases_no_exclude_test.jsonl",
     '{"question":"q","options":{"A":"a","B":"b"},"answer_idx":"C"}\n',
     r"row 1: field 'answer_idx': 'C' is not an option"),
    ("mmlu/test/anatomy_test.csv", "q,a,b,c,d,A\nq2,a,b,c,d,E\n", r"anatomy_test.csv: row 2: field 'answer'"),
    ("headqa/HEAD_EN/test_HEAD_EN.json",
     '{"exams":{"E1":{"data":[{"qid":"1","qtext":"q","ra":"7","image":"","answers":[{"aid":1,"atext":"a"}]}]}}}',
     r"row E1\[1\]: field 'ra': 7 is not an answer aid"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rel, text, message):
    _write(tmp_path, rel, text)
    with pytest.raises(BenchmarkFormatError, match=message):
        load_benchmarks(tmp_path)


def test_usmle_jsonl_rows_name_file_row_and_field(tmp_path):
    good = json.dumps({"question": "Q? Options: A: x B: y", "answer": "y"})
    _write(tmp_path, usmle.JSONL, f"{good}\n{good}\n" + json.dumps({"question": "no options here", "answer": "x"}))
    with pytest.raises(BenchmarkFormatError, match=r"usmle_self_assessment.json: row 3: field 'question'"):
        load_benchmarks(tmp_path)


def test_usmle_options_in_a_figure_are_kept_unscored(tmp_path):
    # MedAlpaca kept empty options and no answer for items whose options are labels in a figure
    rows = [{"question": "Which\n  label? Options: A:  B:  C: ", "answer": ""},
            {"question": "Q? Options: A: x B: y", "answer": "y"}]
    _write(tmp_path, usmle.JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    figure, plain = load_benchmarks(tmp_path)["usmle_sample_exam"]
    assert (figure.question, figure.choices, figure.gold) == ("Which label?", ("A", "B", "C"), -1)
    assert figure.meta["options_in_figure"] and figure.needs_image
    assert (plain.choices, plain.gold, plain.needs_image) == (("x", "y"), 1, False)


def test_pubmedqa_test_label_must_match_final_decision(tmp_path):
    row = {"QUESTION": "Q?", "CONTEXTS": ["c"], "final_decision": "no", "LONG_ANSWER": "a"}
    _write(tmp_path, "pubmedqa/ori_pqal.json", json.dumps({"1": row}))
    _write(tmp_path, "pubmedqa/test_ground_truth.json", json.dumps({"1": "yes"}))
    with pytest.raises(BenchmarkFormatError, match=r"ori_pqal.json: row 1: field 'final_decision': 'no', but"):
        load_benchmarks(tmp_path, ["pubmedqa"])


def test_embedded_sample_benchmarks_load():
    root = resolve_path("pkg://sample/data/benchmarks")
    if not root.is_dir():
        pytest.skip("embedded sample benchmarks not built yet")
    sample = load_benchmarks(root)
    # laid out like raw/ with the JSONL alone: every benchmark but the PDF-only second USMLE edition
    assert set(sample) == set(BENCHMARKS) - {"usmle_self_assessment"}
    for name, items in sample.items():
        assert items and all(0 <= it.gold < len(it.choices) for it in items), name
        assert len({it.id for it in items}) == len(items), name
