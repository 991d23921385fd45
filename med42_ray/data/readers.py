"""Streaming readers for the public formats of the mixture: every raw row becomes one dict.

Each yielded dict has exactly the keys

    id      f"{source}:{file stem}:{row}"
    source  the source's name in the config
    file    the file's path, as a string (a URI for a remote file, without its query)
    row     1-based: the line a record starts on (JSON lines, CSV), the element's position in a
            JSON container (array, dict, HEAD-QA's exams) or the row's in a Parquet/Arrow file;
            0 for a whole-file problem
    messages  [{"role", "content"}, ...] ending with the assistant's answer; [] when rejected
    reject  None, or a short reason code ("malformed_json", "missing_field", "needs_image", ...)
    detail  None, or a message for a person, naming the field ("field 'output' is empty")

Bad rows never raise: they come out as reject dicts, so the pipeline can count and write them.
Only a missing file, an unknown format or a directory entry of unknown format raises, before
any work starts. A row larger than
`MAX_ROW_BYTES` is rejected ("oversized_row") without being parsed: such a row is a file pasted
into one field, and kept it would become thousands of training sequences (a JSON line that large
is read past in blocks, so even a gigabyte one never sits in a worker's memory).

A source's path is a file, a glob, or a directory: `source_files` reads a directory's own files
of the format and lists every other entry with why it was not read (see `_skip_reason`). Files are
JSON, CSV, Parquet or Arrow (a `datasets.save_to_disk` folder; see `arrow_files`), on the local disk
or under any URI pyarrow has a filesystem for (s3://, gs://, ...; see `filesystems`).

Two layers keep this readable:
- a *row mapper* per format, `raw row -> messages`, raising `ParseError` (a reason code and a detail); the
  multiple-choice formats parse with `med42_ray.parsers` (shared with the benchmark registry);
- a *layout* per file shape, iterating raw rows: "records" (JSON lines, or a JSON array, sniffed
  from the first byte), "csv", "dict_values" (a JSON object of id -> record, PubMedQA) and
  "headqa" (HEAD-QA's exams -> questions). JSON documents stream with ijson, never json.load.

For Ray Data, `plan_read_tasks` cuts line-based files (JSON lines, CSV) into byte ranges that
start on record boundaries, with their first line number, so many workers read one big file;
`iter_task` reads one such range. A JSON document is one task per file.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import ijson

from med42_ray.data import arrow_files, filesystems as fsys
from med42_ray.data.filesystems import Location, RemoteFile
from med42_ray.parsers import (MultipleChoice, ParseError, headqa_exam_questions, items, optional_text, parse_headqa,
                               parse_medmcqa, parse_medqa, parse_mmlu, parse_pubmedqa, parse_usmle_inline, record,
                               text)
from med42_ray.records import ROLES, format_mc_answer, format_multiple_choice

MiB = 1 << 20
_BLOCK = 8 * MiB  # read size when scanning a file for cut points
# The largest row read. Long documents are prepare's business (split or reject at seq_len); a
# row of tens of megabytes is a mistake: a 30 MB answer, read, took two minutes of `prepare` and
# became 4,300 of the 4,317 sequences it packed.
MAX_ROW_BYTES = 16 * MiB


# --------------------------------------------------------------------------------------------
# Field helpers shared by the row mappers
# --------------------------------------------------------------------------------------------

def _field(row: dict, name: str, *, optional: bool = False) -> str:
    """A non-empty text field, stripped; '' for an absent/empty optional one."""
    return (optional_text(row, name) if optional else text(row, name)).strip()


def _turns(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _mc(parsed: MultipleChoice) -> list[dict]:
    return _turns(format_multiple_choice(parsed.question, parsed.options),
                  format_mc_answer(parsed.options, parsed.gold))


def _with_input(instruction: str, extra: str) -> str:
    """Alpaca/Dolly: the optional input/context follows the instruction after a blank line."""
    return f"{instruction}\n\n{extra}" if extra else instruction


def _checked_chat(messages: list[dict], field: str) -> list[dict]:
    """Validate a multi-turn conversation: known roles, text in every turn, an answer at the end."""
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise ParseError("bad_role", None, f"{field}[{i}]: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ParseError("unsupported_shape", None, f"{field}[{i}]: content should be text")
        if not m["content"].strip():
            raise ParseError("empty_field", None, f"{field}[{i}]: content is empty")
    if not any(m["role"] == "user" for m in messages):
        raise ParseError("unsupported_shape", None, f"{field}: no user turn")
    if messages[-1]["role"] != "assistant":
        raise ParseError("unsupported_shape", None,
                         f"{field}: the last turn is {messages[-1]['role']!r}, not an assistant answer")
    return messages


# --------------------------------------------------------------------------------------------
# Row mappers: one per format, raw row -> messages
# --------------------------------------------------------------------------------------------

def medqa(row: dict) -> list[dict]:
    return _mc(parse_medqa(row))


def medmcqa(row: dict) -> list[dict]:
    return _mc(parse_medmcqa(row))


def pubmedqa(row: dict) -> list[dict]:
    """PubMedQA PQA-L. The user sees the abstract (its labelled sections) and the question, as in
    the benchmark; the answer is the decision first, then the abstract's conclusion (LONG_ANSWER),
    so a tuned model learns to lead with yes/no/maybe and then justify it."""
    parsed = parse_pubmedqa(row)
    abstract = "\n".join(f"{label}: {section}" if label else section for label, section in parsed.sections)
    decision = parsed.options[parsed.gold].capitalize() + "."
    answer = f"{decision} {parsed.long_answer}" if parsed.long_answer else decision
    return _turns(f"Abstract:\n{abstract}\n\nQuestion: {parsed.question.strip()}", answer)


def mmlu(row: list) -> list[dict]:
    return _mc(parse_mmlu(row))


def headqa(row: dict) -> list[dict]:
    """Questions that show an image cannot be answered from text, so they are no use as training
    data (the benchmark keeps them, flagged needs_image)."""
    if _field(row, "image", optional=True):
        raise ParseError("needs_image", None, f"question shows an image ({row['image']})")
    return _mc(parse_headqa(row))


def usmle_self_assessment(row: dict) -> list[dict]:
    return _mc(parse_usmle_inline(row))


def alpaca(row: dict) -> list[dict]:
    return _turns(_with_input(_field(row, "instruction"), _field(row, "input", optional=True)),
                  _field(row, "output"))


def dolly(row: dict) -> list[dict]:
    return _turns(_with_input(_field(row, "instruction"), _field(row, "context", optional=True)),
                  _field(row, "response"))


# The Alpaca prompt wrapper (with or without an input section) used by mosaicml/dolly_hhrlhf.
_ALPACA_WRAPPER = re.compile(
    r"^Below is an instruction that describes a task[^\n]*\n\n### Instruction:\n(?P<instruction>.*?)"
    r"(?:\n\n### Input:\n(?P<input>.*?))?\n\n### Response:\n?$",
    re.DOTALL,
)


def prompt_response(row: dict) -> list[dict]:
    """{prompt, response}; a prompt wrapped in the Alpaca template is unwrapped to the bare
    instruction (and input), since our own chat template is applied later."""
    prompt = _field(row, "prompt")
    wrapped = _ALPACA_WRAPPER.match(prompt)
    if wrapped:
        prompt = _with_input(wrapped["instruction"].strip(), (wrapped["input"] or "").strip())
        if not prompt:
            raise ParseError("empty_field", None, "field 'prompt' wraps an empty instruction")
    return _turns(prompt, _field(row, "response"))


def chat(row: dict) -> list[dict]:
    """{"messages": [{role, content}, ...]} (OpenAI / HF chat style)."""
    turns = items(row, "messages")
    if not all(isinstance(t, dict) and "role" in t and "content" in t for t in turns):
        raise ParseError("unsupported_shape", None, "field 'messages' should hold {role, content} items")
    return _checked_chat([{"role": t["role"], "content": t["content"]} for t in turns], "messages")


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user",
                  "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant"}


def sharegpt(row: dict) -> list[dict]:
    """{"conversations": [{from: human/gpt/system, value}, ...]}."""
    turns = items(row, "conversations")
    if not all(isinstance(t, dict) and "from" in t and "value" in t for t in turns):
        raise ParseError("unsupported_shape", None, "field 'conversations' should hold {from, value} items")
    messages = [{"role": SHAREGPT_ROLES.get(str(t["from"]).lower(), str(t["from"])), "content": t["value"]}
                for t in turns]
    return _checked_chat(messages, "conversations")


# --------------------------------------------------------------------------------------------
# Formats: which mapper, which file layout
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reader:
    layout: str  # "records" | "csv" | "dict_values" | "headqa"
    to_messages: Callable[[Any], list[dict]]


READERS: dict[str, Reader] = {
    "medqa": Reader("records", medqa),
    "medmcqa": Reader("records", medmcqa),
    "pubmedqa": Reader("dict_values", pubmedqa),
    "mmlu": Reader("csv", mmlu),
    "headqa": Reader("headqa", headqa),
    "usmle_self_assessment": Reader("records", usmle_self_assessment),
    "alpaca": Reader("records", alpaca),
    "dolly": Reader("records", dolly),
    "prompt_response": Reader("records", prompt_response),
    "chat": Reader("records", chat),
    "sharegpt": Reader("records", sharegpt),
}


def get_reader(fmt: str) -> Reader:
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(READERS))}")
    return READERS[fmt]


# --------------------------------------------------------------------------------------------
# Output rows
# --------------------------------------------------------------------------------------------

def _out(source: str, path: Location, row: int, messages: list[dict] | None = None,
         reject: str | None = None, detail: str | None = None) -> dict:
    return {"id": f"{source}:{path.stem}:{row}", "source": source, "file": str(path), "row": row,
            "messages": messages or [], "reject": reject, "detail": detail}


def _mapped(reader: Reader, source: str, path: Location, row: int, raw: Any) -> dict:
    """Apply a format's mapper; any failure becomes a reject dict, never an exception."""
    try:
        return _out(source, path, row, reader.to_messages(raw if reader.layout == "csv" else record(raw)))
    except ParseError as e:
        return _out(source, path, row, reject=e.reason, detail=e.detail)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # shapes we did not foresee
        return _out(source, path, row, reject="unsupported_shape", detail=f"{type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------------
# Line-based layouts (JSON lines, CSV): byte ranges that start on a record boundary
# --------------------------------------------------------------------------------------------

def _first_byte(path: Location) -> bytes:
    """The first non-whitespace byte ('' for an empty file): '[' means a JSON array."""
    with fsys.open_input(path) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")  # whitespace and a UTF-8 BOM
            if stripped:
                return stripped[:1]
    return b""


def _is_line_based(path: Location, layout: str) -> bool:
    if arrow_files.container(path):
        return False
    return layout == "csv" or (layout == "records" and _first_byte(path) != b"[")


def _line_starts(path: Location, target_bytes: int) -> list[tuple[int, int]]:
    """(byte offset, 1-based line number) of each range start of a JSON-lines file, ranges of
    at least target_bytes, each starting just after a newline (JSON escapes newlines inside
    strings, so every line is a record). One pass of bytes.find/bytes.count: no parsing."""
    starts = [(0, 1)]
    size = fsys.size(path)
    next_cut, pos, lines = target_bytes, 0, 0
    with fsys.open_input(path) as f:
        while block := f.read(_BLOCK):
            counted = 0  # bytes of `block` whose newlines are in `lines`
            while pos + len(block) > next_cut:
                nl = block.find(b"\n", max(counted, next_cut - 1 - pos))
                if nl < 0:
                    break
                lines += block.count(b"\n", counted, nl + 1)
                counted = nl + 1
                if pos + counted < size:
                    starts.append((pos + counted, lines + 1))
                next_cut = pos + counted + target_bytes
            lines += block.count(b"\n", counted)
            pos += len(block)
    return starts


def _iter_lines(path: Location, start: int, end: int, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for the lines that start in [start, end)."""
    with fsys.open_input(path) as f:
        f.seek(start)
        offset, number = start, first_line
        for line in f:
            if offset >= end:
                break
            yield number, line
            offset += len(line)
            number += 1


def _iter_limited_lines(path: Location, start: int, end: int, first_line: int,
                        limit: int) -> Iterator[tuple[int, bytes | int]]:
    """Like `_iter_lines`, but a line longer than `limit` bytes comes as its size (an int), read
    past in blocks rather than held."""
    with fsys.open_input(path) as f:
        f.seek(start)
        offset, number = start, first_line
        while offset < end:
            line = f.readline(limit + 1)
            if not line:
                return
            size = len(line)
            if size > limit and not line.endswith(b"\n"):
                while (more := f.readline(_BLOCK)) and not more.endswith(b"\n"):
                    size += len(more)
                size += len(more)
                line = size
            yield number, line
            offset += size
            number += 1


def _oversized(size: int, limit: int) -> str:
    return (f"the row is {_bytes(size)}, over the {_bytes(limit)} limit for one row: "
            "likely a whole file pasted into one field (not read)")


def _bytes(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB // 10 else f"{n} bytes"


def _decode(line: bytes, number: int) -> str:
    text = line.decode("utf-8")
    return text.lstrip("\ufeff") if number == 1 else text


def _iter_json_lines(task: dict) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """(line, parsed row, reject, detail); blank lines are skipped but still counted."""
    limit = task.get("max_row_bytes", MAX_ROW_BYTES)
    for number, line in _iter_limited_lines(fsys.from_task(task), task["start"], task["end"], task["first_line"],
                                            limit):
        if isinstance(line, int):
            yield number, None, "oversized_row", _oversized(line, limit)
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(_decode(line, number)), None, None
        except UnicodeDecodeError as e:
            yield number, None, "non_utf8", f"invalid UTF-8 byte {e.object[e.start:e.start + 1]!r} at byte {e.start} of the line"
        except json.JSONDecodeError as e:
            yield number, None, "malformed_json", f"invalid JSON: {e.msg} at column {e.colno}"


# CSV lines are decoded with surrogateescape so that csv.reader splits records exactly as it
# would on the whole file; a field that kept an undecodable byte (a lone surrogate) is non-UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class _CountedLines:
    """Decoded lines for csv.reader, remembering how far it has read (line number, byte offset).
    csv.reader pulls exactly the lines of one record before returning it, so after each record
    these say where the next one starts."""

    def __init__(self, lines: Iterator[tuple[int, bytes]], offset: int, last_line: int):
        self.lines, self.offset, self.last_line = lines, offset, last_line

    def __iter__(self):
        for number, line in self.lines:
            self.offset += len(line)
            self.last_line = number
            text = line.decode("utf-8", "surrogateescape")
            yield text.lstrip("\ufeff") if number == 1 else text


def _csv_record_starts(path: Location, target_bytes: int) -> list[tuple[int, int]]:
    """Like `_line_starts` for CSV, whose quoted fields may hold newlines (MMLU's do), and whose
    unquoted fields may hold stray quotes (MMLU's do too), so only csv.reader itself knows where a
    record ends: planning parses the file once (in C) and cuts after a record."""
    starts = [(0, 1)]
    size = fsys.size(path)
    with fsys.open_input(path) as f:
        lines = _CountedLines(enumerate(f, start=1), 0, 0)
        next_cut = target_bytes
        try:
            for _ in csv.reader(lines):
                if lines.offset >= next_cut and lines.offset < size:
                    starts.append((lines.offset, lines.last_line + 1))
                    next_cut = lines.offset + target_bytes
        except csv.Error:
            pass  # the task that reads this part reports it; cuts made so far are sound
    return starts


def _iter_csv(task: dict) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """(line the record starts on, fields, reject, detail)."""
    lines = _CountedLines(_iter_lines(fsys.from_task(task), task["start"], task["end"], task["first_line"]),
                          task["start"], task["first_line"] - 1)
    reader = csv.reader(lines)
    while True:
        start = lines.last_line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, None, "malformed_csv", f"invalid CSV: {e}"
            continue
        if not any(f.strip() for f in fields):
            continue  # a blank line
        bad = [i + 1 for i, f in enumerate(fields) if _UNDECODABLE.search(f)]
        if bad:
            yield start, None, "non_utf8", f"invalid UTF-8 in column(s) {', '.join(map(str, bad))}"
        else:
            yield start, fields, None, None


# --------------------------------------------------------------------------------------------
# JSON documents, streamed with ijson: one task per file
# --------------------------------------------------------------------------------------------

def _json_elements(f, layout: str) -> Iterator[Any]:
    if layout == "records":  # a JSON array of records
        yield from ijson.items(f, "item", use_float=True)
    elif layout == "dict_values":  # {"<id>": record, ...}, e.g. PubMedQA's PMID -> item
        for _key, value in ijson.kvitems(f, "", use_float=True):
            yield value
    elif layout == "headqa":  # {"exams": {name: {"data": [question, ...]}}}; one exam in memory at a time
        for name, exam in ijson.kvitems(f, "exams", use_float=True):
            yield from headqa_exam_questions(name, exam)
    else:
        raise ValueError(f"unknown layout {layout!r}")


_EXPECTED_TOP = {"records": b"[", "dict_values": b"{", "headqa": b"{"}


def _iter_json_document(task: dict, layout: str) -> Iterator[tuple[int, Any, str | None, str | None]]:
    path = fsys.from_task(task)
    top = _first_byte(path)
    if not top:
        return  # an empty file: the caller reports it once
    if top != _EXPECTED_TOP[layout]:
        yield 0, None, "unsupported_shape", f"expected a JSON document starting with {_EXPECTED_TOP[layout].decode()!r}"
        return
    n = 0
    limit = task.get("max_row_bytes", MAX_ROW_BYTES)
    with fsys.open_input(path) as f:
        try:
            for n, element in enumerate(_json_elements(f, layout), start=1):
                size = _text_bytes(element)
                if size > limit:
                    yield n, None, "oversized_row", _oversized(size, limit)
                else:
                    yield n, element, None, None
        except ParseError as e:
            yield n + 1, None, e.reason, e.detail
        except UnicodeDecodeError:
            yield n + 1, None, "non_utf8", f"invalid UTF-8 after element {n}; the rest of the file is unread"
        except ijson.JSONError as e:  # a broken document cannot be resynchronised: stop here
            message = _first_line(e)
            reason = "non_utf8" if "utf8" in message.lower().replace("-", "") else "malformed_json"
            yield n + 1, None, reason, f"invalid JSON after element {n}: {message}; the rest of the file is unread"


def _text_bytes(value: Any) -> int:
    """About the size of a parsed element: the characters of its text (ijson has already read
    it; this only decides whether to keep it)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + _text_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(map(_text_bytes, value))
    return 8


def _first_line(e: Exception) -> str:
    """yajl's messages are multi-line (they draw an arrow under the input), sometimes bytes."""
    arg = e.args[0] if e.args else str(e)
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _check_file(path: Location) -> None:
    if fsys.kind(path) != "file":
        raise FileNotFoundError(f"source file not found: {path}")


def _check_container(path: Location, container: str, fmt: str) -> None:
    """Parquet and Arrow hold records; MMLU's mapper takes a CSV row (a list of fields)."""
    if get_reader(fmt).layout == "csv":
        raise ValueError(f"{path}: format {fmt!r} reads CSV rows (lists of fields), not {container} records")


def _location(path: Location | str) -> Location:
    return path if isinstance(path, (Path, RemoteFile)) else fsys.locate(str(path))


def plan_read_tasks(paths: list[Location | str], fmt: str, source: str, target_bytes: int = 64 * MiB,
                    max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Split the files of one source into JSON-serialisable read tasks for `iter_task`.

    Line-based files are cut into ranges of about `target_bytes` starting on record boundaries,
    each with its first line number; a JSON document is one task (it streams with ijson), and so
    is a line-based file on a remote filesystem (its cut points would need the whole file read on
    the driver). A Parquet file is one task per row group, an Arrow file one task (see
    `arrow_files`). A row larger than `max_row_bytes` is rejected unread."""
    reader = get_reader(fmt)
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    tasks = []
    for path in map(_location, paths):
        _check_file(path)
        base = {**fsys.to_task(path), "fmt": fmt, "source": source, "max_row_bytes": max_row_bytes}
        if arrow_files.container(path):
            _check_container(path, arrow_files.container(path), fmt)
            tasks += arrow_files.plan(path, base)
            continue
        size = fsys.size(path)
        if not _is_line_based(path, reader.layout):
            tasks.append({**base, "start": 0, "end": size, "first_line": 1, "whole_file": True})
            continue
        cut = target_bytes if isinstance(path, Path) else 1 << 62
        starts = (_csv_record_starts if reader.layout == "csv" else _line_starts)(path, cut)
        ends = [s for s, _ in starts[1:]] + [size]
        for (start, line), end in zip(starts, ends):
            tasks.append({**base, "start": start, "end": end, "first_line": line, "whole_file": len(starts) == 1})
    return tasks


def _iter_table_rows(task: dict) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """Parquet/Arrow rows, with the same size limit as a JSON element."""
    limit = task.get("max_row_bytes", MAX_ROW_BYTES)
    for row, raw, reject, detail in arrow_files.iter_rows(task):
        size = _text_bytes(raw) if reject is None else 0
        yield (row, None, "oversized_row", _oversized(size, limit)) if size > limit else (row, raw, reject, detail)


def iter_task(task: dict) -> Iterator[dict]:
    """Read one task from `plan_read_tasks`: one output dict per raw row (see the module doc)."""
    reader = get_reader(task["fmt"])
    path, source = fsys.from_task(task), task["source"]
    _check_file(path)
    if task.get("container"):
        raw_rows = _iter_table_rows(task)
    elif not _is_line_based(path, reader.layout):
        raw_rows = _iter_json_document(task, reader.layout)
    elif reader.layout == "csv":
        raw_rows = _iter_csv(task)
    else:
        raw_rows = _iter_json_lines(task)
    n = 0
    for n, (row, raw, reject, detail) in enumerate(raw_rows, start=1):
        if reject is not None:
            yield _out(source, path, row, reject=reject, detail=detail)
        else:
            yield _mapped(reader, source, path, row, raw)
    if n == 0 and task.get("whole_file", task["start"] == 0):
        yield _out(source, path, 0, reject="empty_file", detail=f"{path} has no rows")


def iter_rows(path: Location | str, fmt: str, source: str) -> Iterator[dict]:
    """Read a whole file, in order (the serial equivalent of all of its tasks)."""
    for task in plan_read_tasks([path], fmt, source, target_bytes=1 << 62):
        yield from iter_task(task)


def expand_source_paths(pattern: str) -> list[Location]:
    """A file, or a glob of files ('**' allowed; 'pkg://' for files shipped in the package; a URI
    such as 's3://bucket/dir/*.jsonl' for any filesystem pyarrow knows), sorted. A file that exists
    is taken as named, even if its name holds glob characters ('run [v2]/a.json'). Raises
    FileNotFoundError naming the pattern when nothing matches."""
    paths = fsys.expand(pattern)
    if not paths:
        resolved = str(fsys.locate(pattern))
        raise FileNotFoundError(f"no file matches source path {pattern!r}" +
                                (f" (resolved to {resolved})" if resolved != pattern else ""))
    return paths


# The file names a format reads from a directory, by layout.
LAYOUT_SUFFIXES = {"records": (".json", ".jsonl", ".ndjson"), "csv": (".csv",),
                   "dict_values": (".json",), "headqa": (".json",)}
# What sits beside data in a downloaded dataset and holds no rows.
_DOC_SUFFIXES = {".md", ".rst", ".txt", ".pdf", ".html", ".cff", ".bib"}
_DOC_NAMES = {"readme", "license", "licence", "copying", "notice", "citation", "changelog", "authors"}


@dataclass(frozen=True)
class SourceFiles:
    read: list[Location]
    skipped: list[tuple[Location, str]]  # (entry of a directory source, why it was not read)


def source_files(pattern: str, fmt: str) -> SourceFiles:
    """The files a source reads. A file or a glob: those files. A `datasets.save_to_disk` folder:
    its Arrow data files. A directory: its own files of the format (by name: .json/.jsonl for JSON
    formats, .csv for MMLU; its .parquet files when it holds no such file); every other entry is
    skipped with why, for the manifest. A file that may hold rows but whose name does not say
    their format raises ValueError naming it: reading it could garble its rows, skipping it lose
    them. Nothing that matches raises FileNotFoundError. Local or remote alike (see filesystems)."""
    resolved = fsys.locate(pattern)
    if fsys.kind(resolved) != "dir":
        return SourceFiles(expand_source_paths(pattern), [])
    entries = fsys.list_dir(resolved)
    saved = arrow_files.save_to_disk_files(resolved, entries)
    if saved is not None:
        _check_container(resolved, "datasets save_to_disk", fmt)
        return SourceFiles(saved, [])
    suffixes = _directory_suffixes(fmt, entries)
    read, skipped = [], []
    for entry, kind in entries:
        if kind == "file" and entry.suffix.lower() in suffixes and not entry.name.startswith("."):
            read.append(entry)
        else:
            skipped.append((entry, _skip_reason(entry, kind, fmt, suffixes)))
    if not read:
        raise FileNotFoundError(f"source directory {pattern!r} holds no {'/'.join(suffixes)} file for format "
                                f"{fmt!r}" + "".join(f"; {p.name}: {why}" for p, why in skipped[:5]))
    return SourceFiles(read, skipped)


def _directory_suffixes(fmt: str, entries: list[tuple[Location, str]]) -> tuple[str, ...]:
    """The format's text files; Parquet only where there are none: a download that carries both
    carries the same rows twice (Hugging Face's Parquet conversion beside the original JSON)."""
    layout = get_reader(fmt).layout
    suffixes = LAYOUT_SUFFIXES[layout]
    names = [e.name for e, kind in entries if kind == "file" and not e.name.startswith(".")]
    has_text = any(n.lower().endswith(suffixes) for n in names)
    if layout != "csv" and not has_text and any(n.lower().endswith(".parquet") for n in names):
        return (".parquet",)
    return suffixes


def _skip_reason(entry: Location, kind: str, fmt: str, suffixes: tuple[str, ...]) -> str:
    if entry.name.startswith("."):
        return "hidden (its name starts with '.')"
    if kind == "dir":
        return "subdirectory: not read (a glob such as dir/**/*.json reads into subdirectories)"
    if kind != "file":
        return "not a regular file"
    if entry.suffix.lower() in _DOC_SUFFIXES or entry.stem.lower() in _DOC_NAMES:
        return "documentation, not data"
    if not entry.suffix:
        raise ValueError(f"{entry}: no file extension, so it cannot be told whether it holds {fmt!r} rows; "
                         f"rename it (*{suffixes[0]}) or name the source's files with a glob")
    return f"a {entry.suffix} file; format {fmt!r} reads {'/'.join(suffixes)} files"
