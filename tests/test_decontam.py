"""Decontamination against the real benchmarks: what it must catch and what it must leave alone."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import numpy as np
import pytest

from med42_ray.benchmarks import load_benchmarks
from med42_ray.data.decontam import _WORD, PARTS, RULES, ContaminationIndex, normalise_words


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
    # MedQA's dev questions are the same exam style as its test set but different items: they
    # share templated phrases, not items. None holds half of a test question; at most 1% shares a
    # 25-word run with one (issue 13's bound: vital signs, lab panels, a few near-twin vignettes).
    dev = [json.loads(line) for line in (raw_dir / "medqa/US/4_options/phrases_no_exclude_dev.jsonl").open()]
    texts = [_mc_text(d["question"], list(d["options"].values())) for d in dev]
    flagged = [m for m in index.find(texts) if m is not None]
    assert len(flagged) <= 0.01 * len(dev), flagged[:5]
    assert {m.rule for m in flagged} <= {"run"}, flagged
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
    assert (match.benchmark, match.item_id, match.rule, match.part) == ("medqa_4options", it.id, "coverage", "question")
    assert match.text == " ".join(normalise_words(it.question))  # the whole question is the matched run
    assert (match.start, match.end, match.coverage) == (1, 1 + len(normalise_words(it.question)), 1.0)


# -- partial copies: the run rule (issue 13) ------------------------------------------------------

_LONG = ("medqa_4options", "usmle_self_assessment", "mmlu_professional_medicine")
MIN_RUN = 25


def _span(text: str, first: int, last: int) -> str:
    """The raw text from word `first` to word `last` (exclusive), punctuation inside kept."""
    spans = [m.span() for m in _WORD.finditer(text)]
    return text[spans[first][0]:spans[last - 1][1]]


def _fragments(question: str) -> dict[str, str]:
    """Long verbatim pieces of a question, as a training row might hold them."""
    w = len(normalise_words(question))
    middle = (w - MIN_RUN) // 2
    piece = _span(question, middle, middle + MIN_RUN)
    forms = {f"prefix{p}": _span(question, 0, math.ceil(w * p / 100)) for p in (40, 60, 80)}
    return {**forms, "middle_run": piece,
            "embedded_fragment": f"{UNRELATED_BEFORE}\n\n{piece}\n\n{UNRELATED_AFTER}"}


UNRELATED_BEFORE = ("Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep "
                    "at least seven hours a night. Now a different request:")
UNRELATED_AFTER = "Also, translate 'good morning' into French and Spanish."


@pytest.mark.parametrize("name", _LONG)
def test_catches_long_fragments_of_a_question(index, bench, name):
    rng = random.Random(13)
    items = [it for it in bench[name] if len(normalise_words(it.question)) * 0.4 >= MIN_RUN]
    for it in rng.sample(items, 8):
        question = " ".join(normalise_words(it.question))
        for how, text in _fragments(it.question).items():
            (match,) = index.find([text])
            assert match is not None, f"{name} item {it.id} not caught as {how}"
            # The matched run is a piece of this question, at the offsets reported.
            assert match.text in question, (how, match)
            assert match.text.split(" ") == normalise_words(text)[match.start:match.end]
            assert match.end - match.start >= MIN_RUN
            if how in ("prefix40", "middle_run", "embedded_fragment"):  # well under half its n-grams
                assert (match.rule, match.part) == ("run", "question"), (how, match)


@dataclass
class Item:
    benchmark: str
    id: str
    question: str
    choices: tuple = ("x", "y")
    context: str = ""


def _words(prefix: str, k: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(k))


def test_a_run_needs_min_run_words():
    item = Item("b", "1", _words("q", 100))  # 88 n-grams: a 24-word piece holds 12, far from half
    idx = ContaminationIndex.build([item], n=13, min_run=MIN_RUN)
    words = item.question.split()
    assert idx.find(["Before. " + " ".join(words[40:40 + MIN_RUN - 1]) + " After."]) == [None]
    (match,) = idx.find(["Before. " + " ".join(words[40:40 + MIN_RUN]) + " After."])
    assert (match.rule, match.item_id, match.start, match.end) == ("run", "1", 1, 1 + MIN_RUN)
    assert match.coverage == round(13 / 88, 4)


def test_boilerplate_shared_by_many_items_is_not_contamination():
    # Twelve items share a 40-word template (more than max_item_frequency=10 hold its n-grams),
    # with content of their own before and after it.
    template = _words("t", 40)
    items = [Item("b", str(i), f"{_words(f'a{i}x', 30)} {template} {_words(f'c{i}x', 60)}") for i in range(12)]
    idx = ContaminationIndex.build(items, n=13, max_item_frequency=10)
    assert idx.stats["boilerplate_ngrams"] == 28
    assert idx.find([f"Intro. {template} and then something else entirely."]) == [None]
    # The template at the edge of a short piece of one item adds nothing to its run: 10 own
    # words after it are a 22-word run (from the first n-gram that is not template), not 50.
    words = items[5].question.split()
    assert idx.find([f"Intro. {' '.join(words[30:80])} outro."]) == [None]
    # ...while 25 words of one item's own content are a leak,
    (match,) = idx.find([f"Intro. {' '.join(words[80:80 + MIN_RUN])} outro."])
    assert (match.rule, match.item_id, match.end - match.start) == ("run", "5", MIN_RUN)
    # and a template inside a copied passage counts: 12 own words, the template, 12 own words.
    (match,) = idx.find([f"Intro. {' '.join(words[18:82])} outro."])
    assert (match.rule, match.item_id, match.start, match.end) == ("run", "5", 1, 65)


def test_a_hash_hit_counts_only_when_the_words_agree():
    text = " ".join(f"w{i}" for i in range(20))
    idx = ContaminationIndex.build([Item("b", "1", text)], n=13)
    assert idx.find([text])[0] is not None
    # Pretend every hash belonged to other words (a collision): the same text must now be clean.
    idx.part_ids = np.full_like(idx.part_ids, idx.vocab["x"])
    assert idx.find([text]) == [None]


# -- contamination.jsonl ------------------------------------------------------------------------

def test_contamination_record_names_rule_part_and_run(tmp_path):
    """decontaminate (the prepare step) and the record prepare writes, for each rule."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from med42_ray.data import steps
    from med42_ray.data.pipeline import CONTAMINATION_FIELDS, _write_jsonl

    items = [Item("bench", "long", _words("q", 80)), Item("bench", "short", "The auditory tube", ("ear", "nose"))]
    idx = ContaminationIndex.build(items, n=13)
    texts = {"coverage": "Q: " + items[0].question, "run": "See: " + " ".join(_words("q", 80).split()[30:60]),
             "short_item": "The auditory tube?\nA. nose\nB. ear", "clean": "Name the vitamin deficient in scurvy."}
    rows = [dict(steps._DEFAULTS, id=k, source="s", file="f.jsonl", row=i, dedup_key=k, dedup_bucket=0,
                 messages=json.dumps([{"role": "user", "content": t}])) for i, (k, t) in enumerate(texts.items())]
    ledger = steps.decontaminate(pa.Table.from_pylist(rows, schema=steps.LEDGER_SCHEMA), idx)
    _write_jsonl(tmp_path / "contamination.jsonl", ledger.filter(pc.equal(ledger["status"], "contaminated")),
                 CONTAMINATION_FIELDS)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "contamination.jsonl").open())}
    assert set(records) == {"coverage", "run", "short_item"}
    for rule, r in records.items():
        assert r["rule"] == rule and r["benchmark"] == "bench" and (r["file"], r["source"]) == ("f.jsonl", "s")
        assert r["matching_text"].split(" ") == normalise_words(texts[rule])[r["run_start"]:r["run_end"]]
    assert (records["run"]["item_id"], records["run"]["part"], records["run"]["run_start"],
            records["run"]["run_end"]) == ("long", "question", 1, 31)
    whole = records["coverage"]
    assert (whole["coverage"], whole["part"], whole["run_end"] - whole["run_start"]) == (1.0, "question", 80)
    assert (records["short_item"]["item_id"], records["short_item"]["matching_text"]) == ("short", "the auditory tube")


def test_prepare_writes_the_record_fields(sample_prepared):
    """The sample run's contamination.jsonl: every record says its rule, part and matched run."""
    import pyarrow.parquet as pq

    out, _ = sample_prepared
    records = [json.loads(line) for line in (out / "contamination.jsonl").open()]
    assert records
    ledger = {r["id"]: r for r in pq.read_table(out / "ledger", columns=["id", "messages"]).to_pylist()}
    for r in records:
        assert r["rule"] in RULES and r["part"] in PARTS, r
        text = "\n".join(m["content"] for m in json.loads(ledger[r["id"]]["messages"]))
        assert r["matching_text"].split(" ") == normalise_words(text)[r["run_start"]:r["run_end"]], r
