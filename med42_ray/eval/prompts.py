"""Prompts per benchmark and protocol: a context string and the continuations to score after it.

`harness` reproduces lm-evaluation-harness 0.4.x character for character (tests compare with the
installed package's task YAMLs):

  medqa_4options  "Question: {q}\\nA. {a}\\n...D. {d}\\nAnswer:"            choices " A".." D"
  (medqa_4options_dev, the validation split `med42-ray sweep` selects on, is prompted the same)
  medmcqa         "Question: {q}\\nChoices:\\nA. {a}\\n...D. {d}\\nAnswer:"  choices " A".." D"
  pubmedqa        "Abstract: {contexts joined by \\n}\\nQuestion: {q}\\nAnswer:"  " yes" " no" " maybe"
  mmlu_<subject>  "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
                  "{q.strip()}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:"   choices " A".." D"
  headqa_en       "Question: {q}\\nAnswer:"                                  choices " " + answer text
  usmle_*         no lm-eval task: medqa_4options' template with as many letters as options (A-E...)

The continuation is target_delimiter " " + choice, as lm-eval builds it. With k few-shot examples
(`--num-fewshot`, eval/fewshot.py chooses them) the context is lm-eval's fewshot_context rendered as
text: description + k x (doc_to_text + " " + answer + "\n\n") + doc_to_text.

`med42_chat`: the question with its lettered options (the training side's `format_multiple_choice`)
inside Med42's chat template, rendered as training renders it (data/template.py) with the run's
`prepare.system_prompt`, answered by the letter right after "<|assistant|>:" (no space), as
the training answers ("B. Cisplatin") begin. PubMedQA's abstract comes before the question; HEAD-QA
keeps its answer texts as continuations (they are what lm-eval scores for it).

`full_text` (Med42-v2 style): the harness prompt, but every benchmark scores " " + the answer text
instead of its letter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.data.template import MED42_SYSTEM_PROMPT, med42_generation_prompt
from med42_ray.records import LETTERS, format_multiple_choice

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's TaskConfig.fewshot_delimiter, after each example's answer


@dataclass(frozen=True)
class Request:
    """What a scorer needs for one question: a context and the continuations to compare."""

    benchmark: str
    item_id: str
    context: str
    continuations: tuple[str, ...]
    gold: int
    choice_texts: tuple[str, ...]  # lm-eval's doc_to_choice (acc_norm divides by their length)

    @property
    def key(self) -> str:
        """Hash of exactly what is computed: equal keys are scored once."""
        h = hashlib.sha256(self.context.encode())
        for c in self.continuations:
            h.update(b"\x00" + c.encode())
        return h.hexdigest()[:24]

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.context.encode()).hexdigest()[:16]


def mmlu_description(benchmark: str) -> str:
    subject = benchmark.removeprefix("mmlu_").replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _lettered(choices) -> str:
    return "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices))


def harness_description(benchmark: str) -> str:
    """lm-eval's task description (MMLU's subject line), put before any few-shot example."""
    return mmlu_description(benchmark) if benchmark.startswith("mmlu_") else ""


def harness_question(item: BenchmarkItem, benchmark: str | None = None) -> str:
    """lm-eval's doc_to_text for `benchmark`'s template (default: the item's own; a few-shot
    example from another split is rendered with the template of the question it precedes)."""
    b = benchmark or item.benchmark
    if b.startswith(("medqa_4options", "usmle_")):  # _dev: the sweep's validation; _train: few-shot
        return f"Question: {item.question}\n{_lettered(item.choices)}Answer:"
    if b == "medmcqa":
        return f"Question: {item.question}\nChoices:\n{_lettered(item.choices)}Answer:"
    if b == "pubmedqa":
        return f"Abstract: {item.context}\nQuestion: {item.question}\nAnswer:"
    if b.startswith("mmlu_"):
        return f"{item.question.strip()}\n{_lettered(item.choices)}Answer:"
    if b == "headqa_en":
        return f"Question: {item.question}\nAnswer:"
    raise KeyError(f"no prompt template for benchmark {b!r}")


def harness_text(item: BenchmarkItem, examples: Sequence[tuple[BenchmarkItem, str]] = ()) -> str:
    """lm-eval's context: description, then each few-shot example (its doc_to_text, the target
    delimiter, its answer `str`, the few-shot delimiter), then this item's doc_to_text."""
    shots = "".join(harness_question(ex, item.benchmark) + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER
                    for ex, answer in examples)
    return harness_description(item.benchmark) + shots + harness_question(item)


def harness_choices(item: BenchmarkItem) -> tuple[str, ...]:
    """lm-eval's doc_to_choice: letters for lettered prompts, texts for PubMedQA and HEAD-QA."""
    if item.benchmark in ("pubmedqa", "headqa_en"):
        return tuple(item.choices)
    return tuple(LETTERS[i] for i in range(len(item.choices)))


def med42_chat_text(item: BenchmarkItem, system_prompt: str | None = MED42_SYSTEM_PROMPT) -> str:
    """The question as a one-turn conversation, rendered as training renders it (None: no system turn)."""
    if item.benchmark == "headqa_en":
        body = item.question
    else:
        body = format_multiple_choice(item.question, item.choices)
    if item.context:
        body = f"{item.context}\n\n{body}"
    return med42_generation_prompt([{"role": "user", "content": body}], system_prompt)


def build_request(item: BenchmarkItem, protocol: str, system_prompt: str | None = MED42_SYSTEM_PROMPT,
                  examples: Sequence[BenchmarkItem] = ()) -> Request:
    """`system_prompt` (the run's `prepare.system_prompt`, so the model is asked as it was trained)
    is used by the `med42_chat` protocol only. `examples`: few-shot examples (eval/fewshot.py), put
    before the question as lm-eval puts them, each answered by its gold choice in the form this
    protocol scores (harness: the letter; full_text: the answer text); not for med42_chat."""
    if protocol == "harness":
        choices = harness_choices(item)
        shots = [(ex, harness_choices(ex)[ex.gold]) for ex in examples]
        context, conts = harness_text(item, shots), tuple(TARGET_DELIMITER + c for c in choices)
    elif protocol == "med42_chat":
        if examples:
            raise ValueError("few-shot examples are for the harness and full_text protocols, not med42_chat")
        choices = tuple(item.choices) if item.benchmark == "headqa_en" else harness_choices(item)
        # the training answers follow "<|assistant|>:" directly ("B. Cisplatin"): no delimiter
        context, conts = med42_chat_text(item, system_prompt), choices
    elif protocol == "full_text":
        choices = tuple(item.choices)
        shots = [(ex, ex.choices[ex.gold]) for ex in examples]
        context, conts = harness_text(item, shots), tuple(TARGET_DELIMITER + c for c in choices)
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return Request(item.benchmark, item.id, context, conts, item.gold, choices)
