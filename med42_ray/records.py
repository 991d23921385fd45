"""The one chat schema every source is normalised to, and the multiple-choice rendering.

A chat record is a plain dict so it travels through Ray Data (Arrow) without custom types:

    {"id": "<source>:<file stem>:<line>", "source": "<source name>",
     "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}

Plain dicts (not dataclasses) because Ray Data blocks are Arrow tables; a dataclass would be
pickled per row and lose the columnar layout.
"""

from __future__ import annotations

import string
from typing import Sequence

ROLES = ("system", "user", "assistant")
LETTERS = string.ascii_uppercase


def chat_record(record_id: str, source: str, messages: list[dict]) -> dict:
    """Build a chat record, checking the invariants the rest of the pipeline relies on."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"{record_id}: a chat record must end with an assistant message")
    for m in messages:
        if m["role"] not in ROLES:
            raise ValueError(f"{record_id}: unknown role {m['role']!r}")
    return {"id": record_id, "source": source, "messages": messages}


def format_multiple_choice(question: str, options: Sequence[str]) -> str:
    """Question plus lettered options, one per line: the instruction side of an MC row."""
    lines = [question.strip(), ""]
    lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def format_mc_answer(options: Sequence[str], gold: int) -> str:
    """The answer side of an MC row: letter and text, e.g. 'B. Cisplatin'."""
    return f"{LETTERS[gold]}. {options[gold].strip()}"


def mc_record(record_id: str, source: str, question: str, options: Sequence[str], gold: int,
              system: str | None = None) -> dict:
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [
        {"role": "user", "content": format_multiple_choice(question, options)},
        {"role": "assistant", "content": format_mc_answer(options, gold)},
    ]
    return chat_record(record_id, source, messages)
