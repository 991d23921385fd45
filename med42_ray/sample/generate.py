"""Generate the embedded sample data from the hand-written facts in facts.py.

    python -m med42_ray.sample.generate            # rewrites med42_ray/sample/data/
    python -m med42_ray.sample.generate --out DIR  # anywhere else

Output is deterministic (string-seeded RNGs, fixed orders): a re-run is byte-identical.

- data/train/: the training mixture, in real public formats. Every medical fact is taught
  several ways: Alpaca flashcards, MedQA-style MCQs, ShareGPT chats. Plus general-domain
  instructions (Dolly) and chats (`messages`).
- data/benchmarks/: a held-out sample benchmark laid out exactly like shared/data/raw. Its
  questions test the same facts with other wording (`Kind.rel_b`, vignettes) and other
  distractors, so tuning on the mixture can help on it without any item leaking into training.
  It includes a MedQA dev split (validation for `med42-ray sweep`) about other facts than the test's.
- A few training rows deliberately repeat benchmark items (verbatim, re-cased, embedded in a
  longer prompt, options shuffled); data/PLANTED.json lists them so tests can check that
  decontamination catches exactly those.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from med42_ray.records import LETTERS, format_mc_answer, format_multiple_choice
from med42_ray.sample.facts import CAPITALS, CONVERSIONS, DEFINITIONS, KINDS, TOPIC_TIPS, Kind

DATA_DIR = Path(__file__).resolve().parent / "data"
OPTION_CARDS = 2  # flashcards with options, answered with the value
TRAIN_MCQ_VARIANTS = 3  # training MCQs per fact; each uses its own 3 distractors


# ---- facts ------------------------------------------------------------------------------------

def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def with_article(phrase: str) -> str:
    """'a biguanide', 'an HMG-CoA reductase inhibitor', 'an X-linked ...'."""
    head = re.split(r"[\s-]", phrase, maxsplit=1)[0]
    if head.isupper() and len(head) > 1 or head in {"X", "Y"}:  # read letter by letter
        vowel_sound = head[0] in "AEFHILMNORSX"
    else:
        vowel_sound = head[0].lower() in "aeiou"
    return ("an " if vowel_sound else "a ") + phrase


@dataclass(frozen=True)
class Fact:
    kind: Kind
    s: str  # subject
    v: str  # value (the answer)
    key: str  # stable id: kind/subject

    def fill(self, template: str, v: str | None = None) -> str:
        v = self.v if v is None else v
        return template.format(s=self.s, S=cap(self.s), v=v, a_v=with_article(v))

    @property
    def rels(self) -> list[str]:
        """The training phrasings of what is asked (the first is the canonical one)."""
        return [self.fill(r) for r in self.kind.rels]

    @property
    def rel(self) -> str:
        return self.rels[0]

    @property
    def rel_b(self) -> str:
        return self.fill(self.kind.rel_b)

    @property
    def stmts(self) -> list[str]:
        """The fact as sentences, one per training sentence form (the first is the canonical one)."""
        return [self.fill(s) for s in self.kind.stmts]

    @property
    def stmt(self) -> str:
        return self.stmts[0]

    def other_values(self) -> list[str]:
        return sorted({v for _, v in self.kind.facts if v != self.v})


FACTS: tuple[Fact, ...] = tuple(Fact(k, s, v, f"{k.name}/{s}") for k in KINDS for s, v in k.facts)


class Distractors:
    """Per fact, a fixed shuffle of the other values of its kind. Training MCQs take the first
    ones; benchmark items take the next, cycling, so they rarely repeat training's options."""

    def __init__(self, facts: tuple[Fact, ...]):
        self.pool = {}
        self.cursor = {}
        for f in facts:
            others = f.other_values()
            random.Random(f"distractors:{f.key}").shuffle(others)
            self.pool[f.key] = others
            self.cursor[f.key] = min(TRAIN_MCQ_VARIANTS * 3, len(others))

    def training(self, fact: Fact, variant: int) -> list[str]:
        pool = self.pool[fact.key]
        return [pool[(variant * 3 + i) % len(pool)] for i in range(3)]

    def benchmark(self, fact: Fact, k: int) -> list[str]:
        pool = self.pool[fact.key]
        if k > len(pool):
            raise ValueError(f"{fact.key}: {k} distractors wanted, the kind has {len(pool)} other values")
        start = self.cursor[fact.key]
        self.cursor[fact.key] = start + k
        picked = [pool[(start + i) % len(pool)] for i in range(k)]
        assert len(set(picked)) == k
        return picked


def shuffled_options(rng: random.Random, gold: str, distractors: list[str]) -> tuple[list[str], int]:
    options = [gold] + list(distractors)
    rng.shuffle(options)
    # Options are written as the facts teach them: for a BPE tokenizer ' Biguanide' and ' biguanide'
    # share no token, so a capitalised option would test a word the model never saw in its answers.
    return list(options), options.index(gold)


# ---- benchmark items ----------------------------------------------------------------------------

@dataclass
class Item:
    benchmark: str
    position: int  # 1-based, in the order the benchmark registry loads items
    fact: Fact
    question: str
    choices: list[str]
    gold: int
    context: list[str] = field(default_factory=list)  # PubMedQA CONTEXTS
    extra: dict = field(default_factory=dict)


PEOPLE = ("man", "woman")
FILLERS = (
    "Vital signs are within normal limits.",
    "The patient has no known drug allergies.",
    "Physical examination shows no other abnormalities.",
    "The patient asks about the condition and its management.",
    "The patient's medical history is otherwise unremarkable.",
    "The patient is accompanied by a family member.",
)

# (name, kinds, count, style, options). A benchmark asks about each of its facts once before it asks
# about any fact again; a repeat uses the style's next stem and other distractors.
BENCHMARKS = (
    ("medqa_4options", ("disease_treatment", "drug_adverse", "antidote", "disease_finding", "deficiency",
                        "nerve_injury", "organism_disease"), 60, "medqa", 4),
    ("medmcqa", ("drug_class", "drug_mechanism", "organism_disease", "deficiency", "hormone_source",
                 "antidote", "nerve_injury"), 120, "medmcqa", 4),
    ("pubmedqa", tuple(k.name for k in KINDS), 60, "pubmedqa", 0),  # 50 test + 10 train/dev pool
    ("mmlu_anatomy", ("nerve_injury",), 39, "mmlu", 4),
    ("mmlu_clinical_knowledge", ("disease_finding", "antidote"), 60, "mmlu", 4),
    ("mmlu_college_biology", ("hormone_source", "organism_disease"), 60, "mmlu", 4),
    ("mmlu_college_medicine", ("drug_mechanism", "deficiency"), 60, "mmlu", 4),
    ("mmlu_medical_genetics", ("genetics_inheritance", "gene"), 60, "mmlu", 4),
    ("mmlu_professional_medicine", ("disease_treatment", "drug_adverse"), 60, "mmlu", 4),
    ("headqa_en", tuple(k.name for k in KINDS), 120, "headqa", 5),
    ("usmle_sample_exam", ("drug_mechanism", "disease_finding", "disease_treatment", "gene",
                           "genetics_inheritance", "hormone_source", "drug_adverse"), 100, "usmle", 5),
)
PUBMEDQA_TEST = 50
# MedQA's dev split, the validation set `med42-ray sweep` selects hyper-parameters on: MedQA-style
# vignettes about facts of the same kinds as the test split's, but other facts than the test items,
# so choosing on it says nothing about the test answers. Built last, so adding it changed no other file.
MEDQA_DEV = ("medqa_4options_dev", 36)


def vignette(rng: random.Random, fact: Fact, ask: str) -> str:
    age, person = rng.randint(19, 78), rng.choice(PEOPLE)
    fillers = " ".join(rng.sample(FILLERS, 2))
    return f"A {age}-year-old {person} {fact.fill(fact.kind.case)}. {fillers} {ask}"


# Stems per style; the n-th question about a fact in a benchmark uses stem n (cycling).
QUESTION_STYLES = {
    "medqa": ("Which of the following is {rel}?", "Which of the following is the correct answer for {rel}?"),
    "usmle": ("Which of the following is most likely {rel}?", "Which of the following best describes {rel}?"),
    "medmcqa": ("{Rel} is:", "{Rel}:", "Regarding {rel}, the answer is:"),
    "mmlu": ("Which one of the following is {rel}?", "{Rel} is best described as which one of the following?",
             "Choose {rel}."),
    "headqa": ("Indicate {rel}:", "Point out {rel}:", "{Rel} corresponds to:"),
}


def question(rng: random.Random, fact: Fact, style: str, repeat: int) -> str:
    stems = QUESTION_STYLES[style]
    ask = stems[repeat % len(stems)].format(rel=fact.rel_b, Rel=cap(fact.rel_b))
    return vignette(rng, fact, ask) if style in ("medqa", "usmle") else ask


def pubmedqa_item(rng: random.Random, fact: Fact, position: int, distractors: Distractors) -> Item:
    """A yes/no question with a short structured abstract that settles it, as in PQA-L."""
    asked = fact.v if rng.random() < 0.5 else distractors.benchmark(fact, 1)[0]
    decision = "yes" if asked == fact.v else "no"
    context = [
        f"{cap(fact.rel_b)} is a recurring question in clinical teaching, and recalling it wrongly can harm patients.",
        f"We compared standard textbooks, prescribing information and review articles for statements about {fact.s}.",
        f"All sources agreed that {fact.rel_b} is {fact.v}." if decision == "yes" else
        f"All sources agreed that {fact.rel_b} is {fact.v}, and none supported {asked}.",
    ]
    item = Item("pubmedqa", position, fact, f"Is {asked} {fact.rel_b}?", ["yes", "no", "maybe"],
                ["yes", "no", "maybe"].index(decision), context)
    long_answer = fact.stmt if decision == "yes" else f"{fact.stmt} {cap(asked)} is not {fact.rel_b}."
    item.extra = {"long_answer": long_answer, "year": str(2018 + position % 6)}
    return item


def build_benchmarks(distractors: Distractors) -> dict[str, list[Item]]:
    out = {}
    for name, kinds, count, style, n_options in BENCHMARKS:
        out[name] = benchmark_items(name, [f for f in FACTS if f.kind.name in kinds], count, style, n_options,
                                    distractors)
    test = out["medqa_4options"]
    kinds = BENCHMARKS[0][1]
    used = {it.fact.key for it in test}
    dev_name, dev_count = MEDQA_DEV
    out[dev_name] = benchmark_items(dev_name, [f for f in FACTS if f.kind.name in kinds and f.key not in used],
                                    dev_count, "medqa", len(test[0].choices), distractors)
    return out


def benchmark_items(name: str, candidates: list[Fact], count: int, style: str, n_options: int,
                    distractors: Distractors) -> list[Item]:
    rng = random.Random(f"benchmark:{name}")
    chosen: list[Fact] = []
    while len(chosen) < count:  # every candidate once (in a shuffled order) before any twice
        chosen += rng.sample(candidates, min(count - len(chosen), len(candidates)))
    items, seen = [], {}
    for position, fact in enumerate(chosen, start=1):
        repeat = seen[fact.key] = seen.get(fact.key, -1) + 1
        if style == "pubmedqa":
            items.append(pubmedqa_item(rng, fact, position, distractors))
            continue
        choices, gold = shuffled_options(rng, fact.v, distractors.benchmark(fact, n_options - 1))
        items.append(Item(name, position, fact, question(rng, fact, style, repeat), choices, gold))
    return items


# ---- training rows ------------------------------------------------------------------------------

def mcq_line(question: str, options: list[str], gold: int, meta: str = "step1") -> dict:
    letters = LETTERS[: len(options)]
    return {"question": question, "answer": options[gold], "options": dict(zip(letters, options)),
            "meta_info": meta, "answer_idx": letters[gold]}


# Question templates of the training data; none is a benchmark stem. Each fact is asked with every
# training phrasing of its kind (`Kind.rels`) under several of these.
SHORT_QUESTIONS = ("What is {rel}?", "Name {rel}.", "{Rel}?", "Tell me {rel}.", "Do you know {rel}?",
                   "Quick check: what is {rel}?")
MCQ_STEMS = ("Which of the following is {rel}?", "{Rel} is which of the following?", "Select {rel}.",
             "Identify {rel} among these options.")


def short_answer(value: str) -> str:
    return f"Answer: {value}."


def ask(template: str, rel: str) -> str:
    return template.format(rel=rel, Rel=cap(rel))


def cloze(fact: Fact, form: int) -> str:
    text = fact.fill(fact.kind.stmts[form], v="____")
    return text.replace("a ____", "____").replace("an ____", "____")


def flashcards(fact: Fact, rng: random.Random, distractors: Distractors) -> list[dict]:
    """MedAlpaca-style flashcards: the fact asked in each training phrasing with a short answer (the
    value right after the question), answered in each sentence form, as cloze items and as yes/no checks."""
    cards = []
    form = rng.randrange(len(fact.stmts))
    cards.append((f"Explain {rng.choice(fact.rels)} in one sentence.", fact.stmts[form]))
    cards.append((f"Fill in the blank: {cloze(fact, (form + 1) % len(fact.stmts))}", short_answer(fact.v)))
    wrong = distractors.training(fact, 0)[0]
    asked = fact.v if rng.random() < 0.5 else wrong
    rel = rng.choice(fact.rels)
    verdict = "Yes." if asked == fact.v else "No."
    cards.append((f"Is {asked} {rel}?", f"{verdict} {fact.stmts[rng.randrange(len(fact.stmts))]}"))
    for variant in range(OPTION_CARDS):
        options, _ = shuffled_options(rng, fact.v, distractors.training(fact, variant))
        stem = ask(MCQ_STEMS[(variant + 1) % len(MCQ_STEMS)], fact.rels[(variant + 1) % len(fact.rels)])
        cards.append((f"Question: {stem}\n" + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options)),
                      short_answer(fact.v)))
    return [{"instruction": q, "input": "", "output": a} for q, a in cards]


def training_mcqs(fact: Fact, rng: random.Random, distractors: Distractors) -> list[dict]:
    rows = []
    stems = rng.sample(MCQ_STEMS, TRAIN_MCQ_VARIANTS)
    for variant in range(TRAIN_MCQ_VARIANTS):
        options, gold = shuffled_options(rng, fact.v, distractors.training(fact, variant))
        rows.append(mcq_line(ask(stems[variant], fact.rels[variant % len(fact.rels)]), options, gold))
    return rows


def chat(fact: Fact, follow_up: Fact) -> dict:
    turns = [
        ("human", f"I'm revising {fact.kind.topic}. What is {fact.rel}?"),
        ("gpt", f"{fact.stmt} {TOPIC_TIPS[fact.kind.topic]}"),
        ("human", f"Thanks. And what is {follow_up.rel}?"),
        ("gpt", follow_up.stmt),
    ]
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


QUIZ_ROUNDS = 8  # quiz chats each fact appears in
QUIZ_TURNS = 8   # questions per quiz chat


def quizzes(rng: random.Random) -> list[dict]:
    """Rapid-fire revision chats: several facts of different kinds, each asked in a random training
    phrasing and template and answered with the bare value, so the answer follows a question cue."""
    chats = []
    for round_ in range(QUIZ_ROUNDS):
        order = list(FACTS)
        rng.shuffle(order)
        for i in range(0, len(order), QUIZ_TURNS):
            turns = [("human", "Quiz me on some medical facts, short answers please."), ("gpt", "Sure. Go ahead.")]
            for fact in order[i:i + QUIZ_TURNS]:
                turns += [("human", ask(rng.choice(SHORT_QUESTIONS), rng.choice(fact.rels))), ("gpt", short_answer(fact.v))]
            chats.append({"conversations": [{"from": who, "value": text} for who, text in turns]})
    return chats


def number(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:.2f}".rstrip("0").rstrip(".")


VOCABULARY_ROUNDS, DRILL_WORDS = 3, 6


def vocabulary_drills(rng: random.Random) -> list[list[str]]:
    """Lists of the medical terms in random order, each term in VOCABULARY_ROUNDS lists: general text
    that uses the words without stating a fact (a term's neighbours are random), so pre-training
    learns the words, as a real base model knows them, and fine-tuning has the facts to learn."""
    terms = sorted({t for f in FACTS for t in (f.s, f.v)})
    lists = []
    for _ in range(VOCABULARY_ROUNDS):
        rng.shuffle(terms)
        lists += [terms[i:i + DRILL_WORDS] for i in range(0, len(terms), DRILL_WORDS)]
    return lists


def general_rows() -> tuple[list[dict], list[dict]]:
    """(Dolly rows, chat rows) from the general-domain tables."""
    rng = random.Random("general")
    dolly, chats = [], []

    def d(instruction, response, category, context=""):
        dolly.append({"instruction": instruction, "context": context, "response": response, "category": category})

    def c(*turns, system=None):
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        chats.append({"messages": msgs})

    by_continent: dict[str, list[str]] = {}
    for country, capital, continent in CAPITALS:
        by_continent.setdefault(continent, []).append(country)
        d(f"What is the capital of {country}?", f"The capital of {country} is {capital}.", "open_qa")
        others = rng.sample([x for x in CAPITALS if x[0] != country], 2)
        passage = " ".join(f"{a} is a country in {k}, and its capital city is {b}." for a, b, k in
                           sorted(others + [(country, capital, continent)]))
        d(f"Using the passage, name the capital city of {country}.", f"{capital} is the capital of {country}.",
          "closed_qa", passage)
        c(f"What's the capital of {country}?", f"{capital}.", "Which continent is it in?",
          f"{country} is in {continent}.", system="You are a concise assistant." if rng.random() < 0.3 else None)
    # The same facts asked other ways (short answers, lettered options, quizzes), so pre-training
    # already practises answering a fact asked in words it was not stated in.
    continents = sorted({k for _, _, k in CAPITALS})
    for country, capital, continent in CAPITALS:
        d(f"Name the capital city of {country}.", capital, "open_qa")
        d(f"Which city is the seat of government of {country}?", capital, "open_qa")
        options = [capital] + rng.sample([x[1] for x in CAPITALS if x[0] != country], 3)
        rng.shuffle(options)
        d(format_multiple_choice(f"Which of the following is the capital of {country}?", options),
          format_mc_answer(options, options.index(capital)), "classification")
        options = [continent] + rng.sample([k for k in continents if k != continent], 3)
        rng.shuffle(options)
        d(format_multiple_choice(f"On which continent is {country}?", options),
          format_mc_answer(options, options.index(continent)), "classification")
    facts = [(f"the capital of {a}", b) for a, b, _ in CAPITALS] + [(f"the continent of {a}", k) for a, _, k in CAPITALS]
    for _ in range(2):
        rng.shuffle(facts)
        for i in range(0, len(facts), 6):
            turns = ["Let's do a quick geography quiz. Short answers only.", "Ready."]
            for rel, value in facts[i:i + 6]:
                turns += [rng.choice(SHORT_QUESTIONS).format(rel=rel, Rel=cap(rel)), value]
            c(*turns)
    for continent, countries in sorted(by_continent.items()):
        three = sorted(rng.sample(countries, 3))
        d(f"List three countries in {continent}.", f"Three countries in {continent} are {three[0]}, {three[1]} and {three[2]}.",
          "brainstorming")
    for _ in range(12):
        group = sorted(rng.sample(CAPITALS, 3))
        d("Classify each country by its continent: " + ", ".join(g[0] for g in group) + ".",
          "\n".join(f"{g[0]}: {g[2]}" for g in group), "classification")

    for words in vocabulary_drills(rng):
        d("Repeat these words in the same order: " + ", ".join(words) + ".", ", ".join(words) + ".", "general_qa")

    for term, meaning in DEFINITIONS:
        d(f"What is {term}?", f"{cap(term)} is {meaning}.", "open_qa")
        d(f"Define {term} in one sentence.", f"{cap(term)} is {meaning}.", "general_qa")
        c(f"Can you explain what {term} is?", f"{cap(term)} is {meaning}.")

    for a in rng.sample(range(2, 100), 30):  # distinct first operands: no duplicate rows
        b, k = rng.randint(2, 99), rng.randint(2, 12)
        d(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", "general_qa")
        d(f"What is {a} times {k}?", f"{a} times {k} is {a * k}.", "general_qa")
        c(f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.", f"And {a} times {k}?", f"{a} times {k} is {a * k}.")

    for src, dst, factor, offset in CONVERSIONS:
        for x in sorted(rng.sample([1, 2, 3, 5, 10, 12, 25, 100], 3)):
            y = number(x * factor + offset)
            d(f"Convert {x} {src} to {dst}.", f"{x} {src} is {y} {dst}.", "general_qa")
            c(f"How many {dst} are in {x} {src}?", f"There are {y} {dst} in {x} {src}.")
    return dolly, chats


# ---- planted contamination -----------------------------------------------------------------------

def plant(items: dict[str, list[Item]]) -> dict[str, list[tuple[dict, Item, str]]]:
    """Training rows that repeat benchmark items, per training file: (row, item, how)."""
    rng = random.Random("planted")

    def pick(name: str) -> Item:
        return items[name][rng.randrange(len(items[name]))]

    def lettered(it: Item, sep: str = ". ") -> str:
        return "\n".join(f"{LETTERS[i]}{sep}{c}" for i, c in enumerate(it.choices))

    medqa, headqa, prof = pick("medqa_4options"), pick("headqa_en"), pick("mmlu_professional_medicine")
    anatomy, usmle, medmcqa = pick("mmlu_anatomy"), pick("usmle_sample_exam"), pick("medmcqa")
    pubmed = pick("pubmedqa")
    while pubmed.position > PUBMEDQA_TEST:  # only test items are in the benchmark
        pubmed = pick("pubmedqa")
    biology = pick("mmlu_college_biology")

    order = list(range(len(headqa.choices)))
    while order == sorted(order):
        rng.shuffle(order)
    shuffled = [headqa.choices[i] for i in order]
    return {
        "medical_mcq": [
            (mcq_line(medqa.question, medqa.choices, medqa.gold), medqa, "verbatim"),
            (mcq_line(headqa.question, shuffled, order.index(headqa.gold)), headqa, "options shuffled"),
            (mcq_line(prof.question.lower(), [c.lower() for c in prof.choices], prof.gold), prof, "re-cased"),
        ],
        "medical_flashcards": [
            ({"instruction": "Answer this question truthfully",
              "input": f"{anatomy.question}\n{lettered(anatomy, ') ')}".upper(),
              "output": f"{LETTERS[anatomy.gold]}) {anatomy.choices[anatomy.gold]}"}, anatomy, "re-cased"),
            ({"instruction": "Answer this question truthfully", "input": usmle_question(usmle),
              "output": usmle.choices[usmle.gold]}, usmle, "verbatim"),
        ],
        "medical_chat": [
            ({"conversations": [
                {"from": "human", "value": "Hi! I'm preparing for my medical entrance exam and got stuck on this one "
                                           f"from a practice paper:\n\n{medmcqa.question}\n{lettered(medmcqa, ') ')}\n\n"
                                           "Which option is right, and why?"},
                {"from": "gpt", "value": f"The answer is {LETTERS[medmcqa.gold]}) {medmcqa.choices[medmcqa.gold]}. "
                                         f"{medmcqa.fact.stmt}"}]}, medmcqa, "embedded in a longer prompt"),
            ({"conversations": [
                {"from": "human", "value": "Please read this abstract and answer the question after it.\n\n"
                                           + "\n".join(pubmed.context) + f"\n\nQuestion: {pubmed.question}"},
                {"from": "gpt", "value": cap(pubmed.choices[pubmed.gold]) + ". " + pubmed.extra["long_answer"]}]},
             pubmed, "abstract embedded in a longer prompt"),
        ],
        "general_chat": [
            ({"messages": [
                {"role": "system", "content": "You are a helpful tutor."},
                {"role": "user", "content": f"Quiz me! Here is a biology question: {biology.question} "
                                            f"Options: {'; '.join(biology.choices)}."},
                {"role": "assistant", "content": f"The correct option is {biology.choices[biology.gold]}."}]},
             biology, "embedded in a longer prompt"),
        ],
    }


# ---- writing files -------------------------------------------------------------------------------

def jsonl(rows: list[dict], **dumps) -> str:
    return "".join(json.dumps(r, **dumps) + "\n" for r in rows)


def usmle_question(it: Item) -> str:
    return f"{it.question} Options: " + " ".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(it.choices))


def metamap_phrases(question: str) -> list[str]:
    """A stand-in for MedQA's MetaMap phrases: the question's clauses, lower-cased."""
    return [p.strip().lower() for p in re.split(r"[.,;:?]", question) if p.strip()]


def benchmark_files(items: dict[str, list[Item]]) -> dict[str, str]:
    files = {}
    files["medqa/US/4_options/phrases_no_exclude_test.jsonl"] = jsonl([
        {**mcq_line(it.question, it.choices, it.gold, meta="step1" if it.position % 2 else "step2&3"),
         "metamap_phrases": metamap_phrases(it.question)} for it in items["medqa_4options"]])
    files["medqa/US/4_options/phrases_no_exclude_dev.jsonl"] = jsonl([
        {**mcq_line(it.question, it.choices, it.gold, meta="step1" if it.position % 2 else "step2&3"),
         "metamap_phrases": metamap_phrases(it.question)} for it in items[MEDQA_DEV[0]]])
    files["medmcqa/dev.json"] = jsonl([
        {"question": it.question, "exp": it.fact.stmt, "cop": it.gold + 1,
         **{k: c for k, c in zip(("opa", "opb", "opc", "opd"), it.choices)},
         "subject_name": it.fact.kind.medmcqa_subject, "topic_name": None,
         "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"med42-ray-sample/medmcqa/{it.position}")),
         "choice_type": "single"} for it in items["medmcqa"]], separators=(",", ":"))

    rng = random.Random("pubmedqa-pmids")
    pmids = rng.sample(range(10_000_000, 40_000_000), len(items["pubmedqa"]))
    pqal, truth = {}, {}
    for pmid, it in zip(map(str, pmids), items["pubmedqa"]):
        decision = it.choices[it.gold]
        pqal[pmid] = {"QUESTION": it.question, "CONTEXTS": it.context, "LABELS": ["BACKGROUND", "METHODS", "RESULTS"],
                      "MESHES": [cap(it.fact.kind.topic)], "YEAR": it.extra["year"],
                      "reasoning_required_pred": decision, "reasoning_free_pred": decision,
                      "final_decision": decision, "LONG_ANSWER": it.extra["long_answer"]}
        if it.position <= PUBMEDQA_TEST:
            truth[pmid] = decision
    files["pubmedqa/ori_pqal.json"] = json.dumps(pqal, indent=4) + "\n"
    files["pubmedqa/test_ground_truth.json"] = json.dumps(truth, indent=4) + "\n"

    for name, its in items.items():
        if name.startswith("mmlu_"):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            for it in its:
                writer.writerow([it.question, *it.choices, LETTERS[it.gold]])
            files[f"mmlu/test/{name[len('mmlu_'):]}_test.csv"] = buf.getvalue()

    exams = {}
    for it in items["headqa_en"]:
        pharma = it.fact.kind.name in ("drug_class", "drug_mechanism", "drug_adverse", "antidote")
        exam = exams.setdefault("Cuaderno_2016_1_F" if pharma else "Cuaderno_2016_1_M", [])
        exam.append(it)
    exams_json = {}
    for name in sorted(exams):
        data = [{"qid": str(i), "qtext": it.question, "ra": str(it.gold + 1),
                 "answers": [{"aid": a + 1, "atext": c} for a, c in enumerate(it.choices)], "image": ""}
                for i, it in enumerate(exams[name], start=1)]
        exams_json[name] = {"name": name, "data": data,
                            "category": "pharmacology" if name.endswith("_F") else "medicine", "year": "2016"}
    files["headqa/HEAD_EN/test_HEAD_EN.json"] = json.dumps({"version": "1.0", "language": "en", "exams": exams_json}) + "\n"
    # Loading order (and so positions) of HEAD-QA follows the exams in the file.
    ordered = [it for name in sorted(exams) for it in exams[name]]
    for position, it in enumerate(ordered, start=1):
        it.position = position
    items["headqa_en"] = ordered

    files["usmle_self_assessment/usmle_self_assessment.json"] = jsonl([
        {"question": usmle_question(it), "answer": it.choices[it.gold], "rationale": ""}
        for it in items["usmle_sample_exam"]])
    return files


def with_planted(name: str, rows: list[dict], planted: dict, rng: random.Random) -> tuple[list[dict], dict]:
    """Insert the planted rows at seeded positions; return rows and {row id: provenance}."""
    rows = list(rows)
    marks = {}
    for row, item, how in planted.get(name, []):
        rows.insert(rng.randrange(len(rows) + 1), row)
        marks[id(row)] = (item, how)
    found = {}
    for n, row in enumerate(rows, start=1):
        if id(row) in marks:
            item, how = marks[id(row)]
            found[f"{name}:{name}:{n}"] = {"benchmark": item.benchmark, "position": item.position, "how": how,
                                          "file": f"train/{name}{'.json' if name == 'medical_flashcards' else '.jsonl'}",
                                          "row": n}
    return rows, found


def build() -> dict[str, str]:
    """Every file of data/, by relative path -> text."""
    distractors = Distractors(FACTS)
    rng = random.Random("train")
    flash, mcq, chats = [], [], []
    for i, fact in enumerate(FACTS):
        flash += flashcards(fact, rng, distractors)
        mcq += training_mcqs(fact, rng, distractors)
        same_kind = [f for f in FACTS if f.kind is fact.kind]
        chats.append(chat(fact, same_kind[(same_kind.index(fact) + 1) % len(same_kind)]))
    chats += quizzes(random.Random("quiz"))
    dolly, general_chat = general_rows()
    for rows in (flash, mcq, chats, dolly, general_chat):
        rng.shuffle(rows)

    items = build_benchmarks(distractors)
    files = {f"benchmarks/{path}": text for path, text in benchmark_files(items).items()}
    planted = plant(items)
    manifest = {}
    for name, rows in (("medical_flashcards", flash), ("medical_mcq", mcq), ("medical_chat", chats),
                       ("general_dolly", dolly), ("general_chat", general_chat)):
        rows, found = with_planted(name, rows, planted, rng)
        manifest.update(found)
        if name == "medical_flashcards":
            files[f"train/{name}.json"] = json.dumps(rows, indent=4) + "\n"
        else:
            files[f"train/{name}.jsonl"] = jsonl(rows)
    files["PLANTED.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return files


def write(out_dir: Path) -> list[Path]:
    written = []
    for rel, text in sorted(build().items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output directory (default: the package's data/)")
    args = parser.parse_args(argv)
    paths = write(args.out)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1024:.0f} KiB, under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
