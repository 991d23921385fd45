"""One evaluation question, whatever benchmark it comes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from med42_ray.parsers import ParseError


@dataclass(frozen=True)
class BenchmarkItem:
    """A multiple-choice question in a benchmark-neutral form.

    `gold` indexes `choices` (-1 only for an unscorable needs_image item whose source has no answer). `context` is extra text shown before the question (PubMedQA's
    abstract). `meta` holds what only some benchmarks have: subject, step, needs_image, source.
    """

    benchmark: str
    id: str
    question: str
    choices: tuple[str, ...]
    gold: int
    context: str = ""
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # gold -1: the source gives no answer (only for items flagged needs_image, never scored)
        if not (0 <= self.gold < len(self.choices) or (self.gold == -1 and self.meta.get("needs_image"))):
            raise ValueError(f"{self.benchmark}/{self.id}: gold {self.gold} outside {len(self.choices)} choices")
        if not isinstance(self.meta, MappingProxyType):  # frozen all the way down
            object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def needs_image(self) -> bool:
        return bool(self.meta.get("needs_image", False))

    def to_dict(self) -> dict:
        """Plain dict (Ray Data rows, JSON)."""
        return {"benchmark": self.benchmark, "id": self.id, "question": self.question,
                "choices": list(self.choices), "gold": self.gold, "context": self.context,
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchmarkItem":
        return cls(benchmark=d["benchmark"], id=d["id"], question=d["question"],
                   choices=tuple(d["choices"]), gold=int(d["gold"]), context=d.get("context", ""),
                   meta=dict(d.get("meta") or {}))

    def __reduce__(self):  # MappingProxyType does not pickle; Ray ships items between processes
        return (BenchmarkItem.from_dict, (self.to_dict(),))


class BenchmarkFormatError(ValueError):
    """A benchmark file that does not have the expected format; names file, row and field."""

    def __init__(self, path: Path | str, row: Any, field_name: str, problem: str):
        super().__init__(f"{path}: row {row}: field {field_name!r}: {problem}")
        self.path, self.row, self.field = str(path), row, field_name

    @classmethod
    def from_parse_error(cls, path: Path | str, row: Any, error: ParseError) -> "BenchmarkFormatError":
        """The parser's complaint about one row, named by file and row ('<row>': the whole row)."""
        return cls(path, row, error.field or "<row>", error.problem)
