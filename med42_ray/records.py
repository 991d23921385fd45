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
LETTERS = string.ascii_uppercase  # option letters, for every multiple-choice format and prompt


def format_multiple_choice(question: str, options: Sequence[str]) -> str:
    """Question plus lettered options, one per line: the instruction side of an MC row."""
    lines = [question.strip(), ""]
    lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def format_mc_answer(options: Sequence[str], gold: int) -> str:
    """The answer side of an MC row: letter and text, e.g. 'B. Cisplatin'."""
    return f"{LETTERS[gold]}. {options[gold].strip()}"
