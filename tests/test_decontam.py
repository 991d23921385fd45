"""Decontamination against the real benchmarks: what it must catch and what it must leave alone."""

from __future__ import annotations

import json
import random

import pytest

from med42_ray.benchmarks import load_benchmarks
from med42_ray.data.decontam import ContaminationIndex, normalise_words


@pytest.fixture(scope="module")
def bench(raw_dir):
    return load_benchmarks(raw_dir)


@pytest.fixture(scope="module")
def index(bench):
    return ContaminationIndex.build([it for items in bench.values() for it in items], n=13)


def _mc_text(question: str, options) -> str:
    return question + "\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


def test_normalise_folds_case_punctuation_and_space():
    assert normalise_words("The  Auditory-tube?\n(is) ") == ["the", "auditory", "tube", "is"]


def test_index_covers_every_benchmark(index, bench):
    assert index.stats["items"] == sum(len(v) for v in bench.values())
    assert {b for b, _ in index.item_keys} == set(bench)


@pytest.mark.parametrize("name", ["medqa_4options", "medmcqa", "headqa_en", "usmle_sample_exam", "pubmedqa",
                                  "mmlu_professional_medicine"])
def test_catches_planted_items_in_every_disguise(index, bench, name):
    rng = random.Random(0)
    items = [it for it in bench[name] if len(normalise_words(it.question)) >= 13]
    for it in rng.sample(items, 10):
        shuffled = list(it.choices)
        rng.shuffle(shuffled)
        variants = {
            "verbatim": _mc_text(it.question, it.choices),
            "recased": _mc_text(it.question, it.choices).upper(),
            "repunctuated": _mc_text(it.question.replace(",", " ;").replace(".", "!!"), it.choices),
            "embedded": "You are a tutor. Explain step by step.\n\nCase: " + it.question
                        + "\nThink about the mechanism first, then answer.",
            "shuffled_options": _mc_text(it.question, shuffled),
        }
        for how, text in variants.items():
            (match,) = index.find([text])
            assert match is not None, f"{name} item {it.id} not caught when {how}"
            assert match.benchmark == name, (how, match)


def test_catches_short_mmlu_questions_with_shuffled_options(index, bench):
    short = [it for name, items in bench.items() if name.startswith("mmlu_") for it in items
             if len(normalise_words(it.question)) < 13]
    assert len(short) > 300  # MMLU's clinical subjects are full of them ("Kinase reactions:")
    rng = random.Random(1)
    missed = []
    for it in short:
        opts = list(it.choices)
        rng.shuffle(opts)
        (match,) = index.find(["Question: " + it.question + "\n" + "\n".join(opts)])
        if match is None:
            missed.append(it.question)
    assert not missed, f"{len(missed)} short MMLU items missed, e.g. {missed[:3]}"


def test_leaves_unrelated_medical_text_alone(index, raw_dir):
    # MedQA's dev questions are the same exam style as its test set but different items: no
    # dev question may be flagged (they share templated phrases, not items).
    dev = [json.loads(line) for line in (raw_dir / "medqa/US/4_options/phrases_no_exclude_dev.jsonl").open()]
    texts = [_mc_text(d["question"], list(d["options"].values())) for d in dev]
    flagged = [m for m in index.find(texts) if m is not None]
    assert len(flagged) <= 2, flagged[:5]
    # Nor plain medical prose that mentions MMLU's short-question topics.
    prose = [
        "Osteoclasts resorb bone; parathyroid hormone increases their activity indirectly via RANKL.",
        "The auditory tube connects the middle ear to the nasopharynx and equalises pressure.",
        "Kinase reactions transfer a phosphate group from ATP to a substrate.",
    ]
    assert index.find(prose) == [None, None, None]


def test_match_reports_the_item_and_text(index, bench):
    it = bench["medqa_4options"][7]
    (match,) = index.find(["Q: " + it.question])
    assert (match.benchmark, match.item_id) == ("medqa_4options", it.id)
    assert match.text in " ".join(normalise_words(it.question))
    assert match.coverage == 1.0


def test_a_hash_hit_counts_only_when_the_words_agree():
    from dataclasses import dataclass

    @dataclass
    class Item:
        benchmark: str
        id: str
        question: str
        choices: tuple
        context: str = ""

    text = " ".join(f"w{i}" for i in range(20))
    idx = ContaminationIndex.build([Item("b", "1", text, ("x", "y"))], n=13)
    assert idx.find([text])[0] is not None
    # Pretend every hash belonged to other words (a collision): the same text must now be clean.
    idx.part_text = [" ".join(["other"] * 20) for _ in idx.part_text]
    assert idx.find([text]) == [None]
