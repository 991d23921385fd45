"""The benchmark registry: every benchmark by name, whether its files are under a root, and how to
read it. `root` is laid out like shared/data/raw (see its SOURCES.md).

BENCHMARKS are the test sets `evaluate` reports. VALIDATION_BENCHMARKS are dev splits used for model
selection (`med42-ray sweep`): never reported, loaded only when named or with include_validation
(prepare decontaminates against them too, so selecting on them is not biased by leaked items).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from med42_ray.benchmarks import formats, usmle
from med42_ray.benchmarks.item import BenchmarkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    description: str
    files: tuple[str, ...]  # relative to root; all must exist
    reader: Callable[[Path], Iterator[BenchmarkItem]]
    size: int  # canonical number of questions (before image exclusions)
    condition: Callable[[Path], bool] | None = None  # extra availability rule

    def available(self, root: Path | str) -> bool:
        root = Path(root)
        return all((root / f).is_file() for f in self.files) and (self.condition is None or self.condition(root))

    def missing(self, root: Path | str) -> list[str]:
        return [f for f in self.files if not (Path(root) / f).is_file()]

    def load(self, root: Path | str) -> Iterator[BenchmarkItem]:
        return self.reader(Path(root))


def _usmle_sample_files(root: Path) -> bool:
    return usmle.pdfs_present(root) or (root / usmle.JSONL).is_file()


def _specs() -> Iterable[BenchmarkSpec]:
    yield BenchmarkSpec("medqa_4options", "MedQA (USMLE) 4-option test", (formats.MEDQA_TEST,),
                        formats.load_medqa, 1273)
    yield BenchmarkSpec("medmcqa", "MedMCQA dev (lm-eval's test split)", (formats.MEDMCQA_DEV,),
                        formats.load_medmcqa, 4183)
    yield BenchmarkSpec("pubmedqa", "PubMedQA PQA-L labelled test (500 PMIDs)",
                        (formats.PUBMEDQA_QUESTIONS, formats.PUBMEDQA_TEST_IDS), formats.load_pubmedqa, 500)
    mmlu_sizes = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
                  "medical_genetics": 100, "professional_medicine": 272}
    for subject in formats.MMLU_SUBJECTS:
        yield BenchmarkSpec(f"mmlu_{subject}", f"MMLU {subject.replace('_', ' ')} test",
                            (formats.mmlu_test_file(subject),), partial(formats.load_mmlu, subject=subject),
                            mmlu_sizes[subject])
    # Either source makes the sample exam available: the PDFs when present, else the JSONL.
    yield BenchmarkSpec("usmle_sample_exam", "USMLE sample items, Step 1/2 CK/3 (official PDF booklets; "
                        "MedAlpaca JSONL when the PDFs are absent)", (), usmle.load_sample_exam, 376,
                        condition=_usmle_sample_files)
    yield BenchmarkSpec("usmle_self_assessment", "USMLE sample items, older edition (MedAlpaca JSONL); "
                        "only when the PDFs are present too", (usmle.JSONL,),
                        partial(usmle.load_jsonl, benchmark="usmle_self_assessment"), 376,
                        condition=usmle.pdfs_present)
    yield BenchmarkSpec("headqa_en", "HEAD-QA English test", (formats.HEADQA_TEST,), formats.load_headqa, 2742)


def _validation_specs() -> Iterable[BenchmarkSpec]:
    yield BenchmarkSpec("medqa_4options_dev", "MedQA (USMLE) 4-option dev (validation: model selection)",
                        (formats.MEDQA_DEV,), partial(formats.load_medqa, split="dev"), 1272)


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in _specs()}
VALIDATION_BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in _validation_specs()}
MMLU_CLINICAL = tuple(f"mmlu_{s}" for s in formats.MMLU_SUBJECTS)


def load_benchmarks(root: Path | str, names: Iterable[str] | None = None,
                    include_validation: bool = False) -> dict[str, list[BenchmarkItem]]:
    """Every requested benchmark whose files are under `root`, in registry order. An absent one is
    skipped with one log line; an unknown name is an error. `names` None means every test
    benchmark, plus the validation ones with `include_validation`."""
    root = Path(root)
    known = {**BENCHMARKS, **VALIDATION_BENCHMARKS}
    if names is None:
        wanted = list(BENCHMARKS) + (list(VALIDATION_BENCHMARKS) if include_validation else [])
    else:
        wanted = list(names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise KeyError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out: dict[str, list[BenchmarkItem]] = {}
    for name in wanted:
        spec = known[name]
        if not spec.available(root):
            why = ", ".join(spec.missing(root)) or "its source files"
            log.warning("benchmark %s skipped: %s not found under %s", name, why, root)
            continue
        out[name] = list(spec.load(root))
    return out
