"""One parser per public multiple-choice format, shared by the training readers and the benchmark
registry, so that both read a MedQA, MedMCQA, PubMedQA, MMLU, HEAD-QA or USMLE-inline row alike.

A parser takes one raw row (a JSON object, or MMLU's CSV fields) and returns a `MultipleChoice`:
question, options, gold index and context, with the text as the file has it (callers strip or
normalise it when they render it). A row that cannot be read raises `ParseError(reason, field,
problem)`: the training reader turns it into a reject ({"reject": reason, "detail": detail}), the
registry into `BenchmarkFormatError(path, row, field, problem)`.

Rendering stays with the callers: the reader makes a chat record, the registry a BenchmarkItem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from med42_ray.records import LETTERS


class ParseError(Exception):
    """A row that cannot be parsed. `reason` is a short code ("missing_field", "bad_answer_key", ...),
    `field` the field at fault (None for the row as a whole), `problem` what is wrong with it."""

    def __init__(self, reason: str, field: str | None, problem: str):
        self.reason, self.field, self.problem = reason, field, problem
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        """For a person, naming the field: "field 'cop': expected 1..4, got 5"."""
        if self.field is None:
            return self.problem
        if self.problem in ("missing", "empty"):  # a state reads as a sentence
            return f"field {self.field!r} is {self.problem}"
        return f"field {self.field!r}: {self.problem}"


@dataclass(frozen=True)
class MultipleChoice:
    """One parsed question. `context` is text shown before the question (PubMedQA's abstract)."""

    question: str
    options: tuple[str, ...]
    gold: int
    context: str = ""


@dataclass(frozen=True)
class PubMedQARow(MultipleChoice):
    """A PubMedQA row also carries what the training rendering shows: the abstract's non-blank
    sections as (label, text), label "" where LABELS do not line up, and the conclusion."""

    sections: tuple[tuple[str, str], ...] = ()
    long_answer: str = ""


# --------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------

def record(row: Any) -> dict:
    """A row of a JSON format: it must be an object."""
    if not isinstance(row, dict):
        raise ParseError("unsupported_shape", None, f"expected a JSON object, got {type(row).__name__}")
    return row


def optional_text(row: dict, name: str) -> str:
    """A text field as given ('' when absent or null); a number counts as text (MedMCQA has a few
    numeric options, e.g. 4)."""
    value = row.get(name)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ParseError("unsupported_shape", name, f"expected text, got {type(value).__name__}")
    return value


def text(row: dict, name: str) -> str:
    """A required text field, as given; blank text is empty."""
    if row.get(name) is None:
        raise ParseError("missing_field", name, "missing")
    value = optional_text(row, name)
    if not value.strip():
        raise ParseError("empty_field", name, "empty")
    return value


def items(row: dict, name: str) -> list:
    """A required, non-empty list field."""
    value = row.get(name)
    if value is None:
        raise ParseError("missing_field", name, "missing")
    if not isinstance(value, list):
        raise ParseError("unsupported_shape", name, f"expected a list, got {type(value).__name__}")
    if not value:
        raise ParseError("empty_field", name, "empty")
    return value


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------

def parse_medqa(row: Any) -> MultipleChoice:
    """MedQA (4 or 5 options): options {A..E}, answer_idx a letter, answer (optional) its text."""
    question = text(record(row), "question")
    mapping = row.get("options")
    if mapping is None:
        raise ParseError("missing_field", "options", "missing")
    if not isinstance(mapping, dict) or not mapping:
        raise ParseError("unsupported_shape", "options", "expected a mapping of letters to options")
    letters = sorted(mapping)
    if letters != list(LETTERS[:len(letters)]):
        raise ParseError("unsupported_shape", "options", f"expected keys A, B, ...; got {letters}")
    options = tuple(text(mapping, k) for k in letters)
    key = text(row, "answer_idx")
    if key not in mapping:
        raise ParseError("bad_answer_key", "answer_idx", f"{key!r} is not an option")
    gold = letters.index(key)
    answer = optional_text(row, "answer").strip()
    if answer and answer != options[gold].strip():
        raise ParseError("bad_answer_key", "answer", f"{answer!r} is not option {key} {options[gold].strip()!r}")
    return MultipleChoice(question, options, gold)


MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")


def parse_medmcqa(row: Any) -> MultipleChoice:
    """MedMCQA: opa..opd, cop the right one counting from 1 (1 = opa)."""
    question = text(record(row), "question")
    options = tuple(text(row, k) for k in MEDMCQA_OPTIONS)
    cop = row.get("cop")
    if cop is None:
        raise ParseError("missing_field", "cop", "missing")
    if isinstance(cop, bool) or not isinstance(cop, int) or not 1 <= cop <= 4:
        raise ParseError("bad_answer_key", "cop", f"expected 1..4, got {cop!r}")
    return MultipleChoice(question, options, cop - 1)


PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def parse_pubmedqa(row: Any) -> PubMedQARow:
    """PubMedQA PQA-L: QUESTION, the abstract without its conclusion (CONTEXTS, with LABELS),
    final_decision yes/no/maybe and the conclusion (LONG_ANSWER). `context` is the CONTEXTS joined
    by newlines, as lm-eval's pubmedqa shows them."""
    question = text(record(row), "QUESTION")
    contexts = items(row, "CONTEXTS")
    if not all(isinstance(c, str) for c in contexts):
        raise ParseError("unsupported_shape", "CONTEXTS", "expected a list of texts")
    sections = [c.strip() for c in contexts if c.strip()]
    if not sections:
        raise ParseError("empty_field", "CONTEXTS", "has no text")
    labels = row.get("LABELS") or []
    if not isinstance(labels, list) or len(labels) != len(sections):
        labels = [""] * len(sections)
    decision = text(row, "final_decision").strip().lower()
    if decision not in PUBMEDQA_CHOICES:
        raise ParseError("bad_answer_key", "final_decision", f"expected yes, no or maybe, got {decision!r}")
    return PubMedQARow(question, PUBMEDQA_CHOICES, PUBMEDQA_CHOICES.index(decision), "\n".join(contexts),
                       sections=tuple((str(label).strip().upper() if label else "", section)
                                      for label, section in zip(labels, sections)),
                       long_answer=optional_text(row, "LONG_ANSWER").strip())


MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def parse_mmlu(fields: Sequence[str]) -> MultipleChoice:
    """MMLU: one headerless CSV record question,A,B,C,D,answer."""
    if len(fields) != len(MMLU_COLUMNS):
        raise ParseError("malformed_csv", None,
                         f"expected {len(MMLU_COLUMNS)} columns ({','.join(MMLU_COLUMNS)}), got {len(fields)}")
    row = dict(zip(MMLU_COLUMNS, fields))
    question = text(row, "question")
    options = tuple(text(row, k) for k in "ABCD")
    answer = text(row, "answer")
    if answer not in ("A", "B", "C", "D"):
        raise ParseError("bad_answer_key", "answer", f"expected A, B, C or D, got {answer!r}")
    return MultipleChoice(question, options, "ABCD".index(answer))


def parse_headqa(row: Any) -> MultipleChoice:
    """A HEAD-QA question: answers [{aid, atext}], ra the aid of the right answer (text or number)."""
    question = text(record(row), "qtext")
    try:
        answers = sorted(items(row, "answers"), key=lambda a: int(a["aid"]))
        aids = [int(a["aid"]) for a in answers]
    except (KeyError, TypeError, ValueError):
        raise ParseError("unsupported_shape", "answers", "expected {aid, atext} items") from None
    options = tuple(text(a, "atext") for a in answers)
    ra = text(row, "ra").strip()
    if not ra.isdigit() or int(ra) not in aids:
        raise ParseError("bad_answer_key", "ra", f"{ra} is not an answer aid {aids}")
    return MultipleChoice(question, options, aids.index(int(ra)))


def headqa_exam_questions(name: str, exam: Any) -> list:
    """The questions of one exam of HEAD-QA's {"exams": {name: {"data": [question, ...]}}}."""
    if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
        raise ParseError("unsupported_shape", None, f"exam {name!r} has no 'data' list of questions")
    return exam["data"]


_OPTIONS_MARK = "Options:"
_INLINE_OPTION = re.compile(r"(?:^|\s)([A-Z]):\s")


def split_inline_options(question: str) -> tuple[str, tuple[str, ...]]:
    """'<stem> Options: A: x B: y ...' -> (stem as given, (x, y, ...)). Markers must run A, B, C...
    in order, which tells a real option marker from a stray 'B: ' inside an option."""
    cut = question.rfind(_OPTIONS_MARK)
    if cut < 0:
        raise ParseError("unsupported_shape", "question", "no 'Options:' list")
    tail = question[cut + len(_OPTIONS_MARK):]
    spans = []  # (start of the letter, end of the marker)
    for m in _INLINE_OPTION.finditer(tail):
        if len(spans) < len(LETTERS) and m.group(1) == LETTERS[len(spans)]:
            spans.append((m.start(1), m.end()))
    if len(spans) < 2:
        raise ParseError("unsupported_shape", "question", "fewer than two inline options 'A: ... B: ...'")
    if tail[:spans[0][0]].strip():
        raise ParseError("unsupported_shape", "question", "text between 'Options:' and option A")
    ends = [start for start, _ in spans[1:]] + [len(tail)]
    return question[:cut], tuple(tail[end_of_mark:end].strip() for (_, end_of_mark), end in zip(spans, ends))


def parse_usmle_inline(row: Any) -> MultipleChoice:
    """USMLE sample items as MedAlpaca's JSONL has them: the options inline after 'Options:' in
    `question`, and `answer` the right option's text."""
    stem, options = split_inline_options(text(record(row), "question"))
    empty = [LETTERS[i] for i, option in enumerate(options) if not option]
    if empty:  # a few items had their options in a table or picture that was dropped
        raise ParseError("empty_field", "question", f"option(s) {', '.join(empty)} have no text")
    if not stem.strip():
        raise ParseError("empty_field", "question", "no stem before 'Options:'")
    answer = text(row, "answer").strip()
    matches = [i for i, option in enumerate(options) if option == answer]
    if len(matches) != 1:
        raise ParseError("bad_answer_key", "answer", f"{answer!r} matches {len(matches)} options")
    return MultipleChoice(stem, options, matches[0])
