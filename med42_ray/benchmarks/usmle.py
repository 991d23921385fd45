"""USMLE sample items: the official sample-question booklets (PDF, with their answer keys) and the
MedAlpaca-derived JSONL of the sample items with inline options.

The two are NOT the same edition (checked on shared/data/raw): the PDFs are the 2023-24 booklets
(Step 1 Jan 2024, Step 2 CK Jul 2023, Step 3 Dec 2023) and the JSONL is the older edition that
MedAlpaca scraped, which Nori et al. (2023) and Med42 evaluated. Both have 376 = 119 + 120 + 137
items, but only 78 items (77 of Step 1) appear in both; their answers agree. So:

* `usmle_sample_exam` is the PDF edition (gold = the booklet's answer key) when the PDFs are
  present; without them it is the JSONL edition, so a root with the JSONL alone still has it.
* `usmle_self_assessment` is the JSONL edition, registered only when the PDFs are present too
  (otherwise it would be the same items twice).
* `crosscheck(root)` matches JSONL items to PDF items by normalised question text and compares the
  JSONL answer with the PDF key: the report lists matches and mismatches.

Steps in the JSONL: the file has no step field; its order is Step 1, Step 2 CK, Step 3 (119, 120,
137 lines) as in MedAlpaca's step1/2/3 files it was built from, so steps are assigned by position.
A JSONL of any other length (the embedded sample's 30 items) cannot be split that way: its items
get step "unknown" (ids "unknown-NNN") and the per-step report has only that row.

Image-dependent items (`needs_image`): the stem rule of images.py, plus, in the PDFs, items whose
options are only letters in a figure and items that refer to an abstract or advertisement printed on
other pages ("Items #17-19 refer to the abstract displayed on the previous page").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from med42_ray.benchmarks.images import usmle_needs_image
from med42_ray.benchmarks.item import BenchmarkFormatError, BenchmarkItem
from med42_ray.cache import cache_root
from med42_ray.parsers import ParseError, optional_text, parse_usmle_inline, record, split_inline_options, text
from med42_ray.records import LETTERS

log = logging.getLogger(__name__)

PDF_DIR = "usmle_sample_exam"
PDFS = {"step1": "Step1_Sample_Items.pdf", "step2ck": "Step2_CK_Sample_Questions.pdf",
        "step3": "Step3_Sample_Items.pdf"}
JSONL = "usmle_self_assessment/usmle_self_assessment.json"
STEP_SIZES = {"step1": 119, "step2ck": 120, "step3": 137}

_QUESTION = re.compile(r"^\s*(\d{1,3})\.\s+(\S.*)$")
_OPTION = re.compile(r"^\s*\(([A-J])\)\s*(.*)$")
_KEY = re.compile(r"^\s*(\d{1,3})\.\s*([A-J])\s*$")
# Booklet furniture between items: page numbers, block headers, timing notes, set markers.
_FURNITURE = re.compile(
    r"^\s*(\d{1,3}|END OF SET|NOTE: THIS IS THE END OF BLOCK.*|ANY REMAINING TIME.*|Block \d.*|BLOCK \d.*"
    r"|Items \d.*Time.*|ALL ITEMS REQUIRE.*|USMLE STEP .*SAMPLE TEST QUESTIONS.*)\s*$")
# "The abstract displayed on this page is for use with items #17–19", "... items #69 and 70":
# those items need an exhibit that is not part of their text.
_EXHIBIT = re.compile(r"(?:abstract|advertisement).*?items?\s*#\s*(\d[\d ]*?)\s*(?:[–-]|and)\s*#?\s*(\d+)", re.I)


@dataclass
class PdfItem:
    number: int
    stem: list[str] = field(default_factory=list)
    options: list[list[str]] = field(default_factory=list)


def _clean(lines: list[str]) -> str:
    """Join extracted lines into one string with single spaces: PDF line breaks are visual wraps."""
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


PARSER_VERSION = 2  # bump when parsing changes: invalidates the on-disk cache


def pdf_lines(path: Path, mode: str, last_pages: int | None = None) -> list[str]:
    """Text lines of a PDF. mode "layout" keeps words whole where "plain" splits them ("patien t",
    "h\ne were"), so items are read in layout mode; the answer key's columns come out one answer a
    line only in plain mode."""
    from pypdf import PdfReader

    pages = PdfReader(path).pages
    lines: list[str] = []
    for page in pages[-last_pages:] if last_pages else pages:
        lines += (page.extract_text(extraction_mode=mode) or "").splitlines()
        lines.append("")  # a page break ends an option
    return lines


def parse_booklet(path: Path, expected: int) -> dict:
    """Items, exhibit item numbers and answer key of one booklet. pypdf's layout extraction takes
    5-20 s a booklet, so the parse is cached on disk keyed by the file's sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cached = cache_root() / "usmle_pdf" / f"{digest}-v{PARSER_VERSION}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    items, exhibits = parse_pdf_items(pdf_lines(path, "layout"), path, expected)
    key = parse_answer_key(pdf_lines(path, "plain", last_pages=4), path, expected)
    parsed = {"items": [{"number": it.number, "stem": _clean(it.stem), "options": [_clean(o) for o in it.options]}
                        for it in items],
              "exhibits": sorted(exhibits), "key": {str(n): k for n, k in key.items()}}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(parsed))
    tmp.replace(cached)  # atomic: parallel readers never see half a file
    return parsed


def parse_answer_key(lines: list[str], path: Path, expected: int) -> dict[int, str]:
    """The key on the booklet's last pages: lines 'N. X' (the answer form's 'N. ___' has no letter)."""
    key: dict[int, str] = {}
    for ln in lines:
        m = _KEY.match(ln)
        if m:
            key[int(m.group(1))] = m.group(2)
    missing = [n for n in range(1, expected + 1) if n not in key]
    if missing:
        raise BenchmarkFormatError(path, missing[0], "answer key", f"no key for items {missing[:10]}")
    return {n: key[n] for n in range(1, expected + 1)}


def parse_pdf_items(lines: list[str], path: Path, expected: int) -> tuple[list[PdfItem], set[int]]:
    """Items 1..expected in order, and the item numbers that need an exhibit.

    An item starts at 'N. text' with N the next number; options are '(A) text' in letter order.
    A line after an option continues it until a blank line; after that, lines up to the next item
    are exhibits or furniture (abstract pages, set notes) and are dropped.
    """
    items: list[PdfItem] = []
    exhibits: set[int] = set()
    cur: PdfItem | None = None
    option_open = False
    for ln in lines:
        m_ex = _EXHIBIT.search(ln)
        if m_ex:
            first = int(m_ex.group(1).replace(" ", ""))  # layout text can split digits: "#1   7–19"
            exhibits.update(range(first, int(m_ex.group(2)) + 1))
        m_q = _QUESTION.match(ln)
        if m_q and m_q.group(1) == "1" and not _KEY.match(ln) and not any(it.options for it in items):
            items, cur = [], None  # numbered lists in the booklet's introduction are not items
        nxt = len(items) + 1
        # (an item whose options are labels in a figure has no '(A)' lines: the next number starts the next item)
        if m_q and int(m_q.group(1)) == nxt and (cur is None or len(cur.options) != 1) and nxt <= expected:
            if not _KEY.match(ln):
                cur = PdfItem(nxt, [m_q.group(2)])
                items.append(cur)
                option_open = False
                continue
        if cur is None:
            continue
        m_o = _OPTION.match(ln)
        if m_o and ord(m_o.group(1)) - ord("A") == len(cur.options):
            cur.options.append([m_o.group(2)])
            option_open = True
        elif not ln.strip():
            option_open = False
            if not cur.options:
                cur.stem.append("")
        elif cur.options:
            if option_open and not _FURNITURE.match(ln):
                cur.options[-1].append(ln)
        elif not _FURNITURE.match(ln):
            cur.stem.append(ln)
    if len(items) != expected or any(len(it.options) == 1 for it in items):
        bad = next((it.number for it in items if len(it.options) == 1), len(items) + 1)
        raise BenchmarkFormatError(path, bad, "options", f"could not parse {expected} items (got {len(items)})")
    return items, exhibits


def load_pdf_step(root: Path, step: str) -> Iterator[BenchmarkItem]:
    path = root / PDF_DIR / PDFS[step]
    parsed = parse_booklet(path, STEP_SIZES[step])
    exhibits = set(parsed["exhibits"])
    for it in parsed["items"]:
        number, question = it["number"], it["stem"]
        gold = ord(parsed["key"][str(number)]) - ord("A")
        # Options printed only as labels inside a figure: keep the letters so the item is still
        # indexed for decontamination; it needs the image, so it is never scored.
        in_figure = not it["options"]
        choices = tuple(it["options"]) or tuple(LETTERS[:max(5, gold + 1)])
        if gold >= len(choices):
            raise BenchmarkFormatError(path, number, "answer key", f"{chr(65 + gold)} but {len(choices)} options")
        yield BenchmarkItem("usmle_sample_exam", f"{step}-{number:03d}", question, choices, gold,
                            meta={"step": step, "source": "pdf", "exhibit": number in exhibits,
                                  "options_in_figure": in_figure,
                                  "needs_image": in_figure or number in exhibits or usmle_needs_image(question)})


def _norm(value: str) -> str:
    return re.sub(r"[^a-z0-9]", "", value.lower())


def load_jsonl(root: Path, benchmark: str) -> Iterator[BenchmarkItem]:
    path = root / JSONL
    steps = [s for s, k in STEP_SIZES.items() for _ in range(k)]
    with path.open(encoding="utf-8") as f:
        rows = [ln for ln in f if ln.strip()]
    if len(rows) != len(steps):
        # Not MedAlpaca's 376-item file (whose order is Step 1, 2, 3): the step of an item is not
        # known from its position, so it is reported under "unknown" rather than guessed.
        steps = ["unknown"] * len(rows)
    counters = dict.fromkeys([*STEP_SIZES, "unknown"], 0)
    for n, line in enumerate(rows, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(path, n, "<line>", f"not JSON: {e}") from None
        question, choices, gold = _jsonl_item(row, path, n)
        step = steps[n - 1]
        counters[step] += 1
        meta = {"step": step, "source": "jsonl", "line": n, "needs_image": usmle_needs_image(question)}
        if gold < 0:
            meta.update(needs_image=True, options_in_figure=True)
        yield BenchmarkItem(benchmark, f"{step}-{counters[step]:03d}", question, choices, gold, meta=meta)


def _jsonl_item(row: dict, path: Path, n: int) -> tuple[str, tuple[str, ...], int]:
    """(question, its whitespace runs made single spaces; choices; gold) of one JSONL row."""
    try:
        parsed = parse_usmle_inline(row)
    except ParseError as e:
        in_figure = _options_in_figure(row)
        if in_figure is None:
            raise BenchmarkFormatError.from_parse_error(path, n, e) from None
        return in_figure
    return _clean([parsed.question]), parsed.options, parsed.gold


def _options_in_figure(row: dict) -> tuple[str, tuple[str, ...], int] | None:
    """3 items have their options as labels in a figure: MedAlpaca kept empty options and no answer.
    They are kept (decontamination indexes the stem) with letters for choices and gold -1: never
    scored. None for any other row the parser rejects."""
    try:
        stem, options = split_inline_options(text(record(row), "question"))
        if any(options) or optional_text(row, "answer").strip():
            return None
    except ParseError:
        return None
    return _clean([stem]), tuple(LETTERS[:len(options)]), -1


def pdfs_present(root: Path) -> bool:
    return all((root / PDF_DIR / f).is_file() for f in PDFS.values())


def load_sample_exam(root: Path) -> Iterator[BenchmarkItem]:
    if pdfs_present(root):
        for step in PDFS:
            yield from load_pdf_step(root, step)
    else:
        yield from load_jsonl(root, "usmle_sample_exam")


def crosscheck(root: Path) -> dict:
    """Compare the JSONL's answers with the PDF keys on the items both hold (matched by the first
    200 characters of normalised question text). Returns counts and the mismatches (on
    shared/data/raw: 78 items in both, no answer mismatch)."""
    pdf_items = [it for step in PDFS for it in load_pdf_step(root, step)]
    by_text = {_norm(it.question)[:200]: it for it in pdf_items}
    matched, mismatches = 0, []
    for it in load_jsonl(root, "usmle_self_assessment"):
        other = by_text.get(_norm(it.question)[:200])
        if other is None:
            continue
        matched += 1
        if it.gold < 0 or other.meta.get("options_in_figure"):
            continue  # no answer text on one side to compare
        # compare letters: the PDF's table-form options ("High low") are not comparable as text
        same = it.gold == other.gold if len(it.choices) == len(other.choices) else \
            _norm(it.choices[it.gold]) == _norm(other.choices[other.gold])
        if not same:
            mismatches.append({"jsonl": it.id, "pdf": other.id, "jsonl_answer": it.choices[it.gold],
                               "pdf_answer": other.choices[other.gold]})
    report = {"jsonl_items": sum(STEP_SIZES.values()), "pdf_items": len(pdf_items), "matched": matched,
              "answer_mismatches": mismatches}
    log.info("USMLE cross-check: %d JSONL items found in the PDFs, %d answer mismatches",
             matched, len(mismatches))
    return report
