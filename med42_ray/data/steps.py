"""The steps of `prepare`, each a small function over one Ray Data batch with one job.

Every input row flows through every step and leaves with exactly one `status`:

    rejected      the reader could not turn it into a chat record (reason: malformed_json, ...)
    duplicate     the same conversation (case and whitespace folded) came earlier in the mixture
    contaminated  it overlaps an evaluation benchmark item (reason: the benchmark)
    sampled_out   its source's weight left it out
    kept          it goes into training, `copies` times (weight > 1 repeats it)

Nothing is filtered before the ledger is written, so every row read is accounted for.
Batches are Arrow tables in and out (`LEDGER_SCHEMA`), never pandas: columns keep their types
even in a batch where every value is empty.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from typing import Any, Iterator

import pyarrow as pa

from med42_ray.data.mixture import copies as n_copies

LEDGER_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("file", pa.string()),
    ("row", pa.int64()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("messages", pa.string()),  # JSON list of {role, content}
    ("dedup_key", pa.string()),
    ("dedup_bucket", pa.int32()),  # groupby key: a few big groups, not one tiny group per row
    ("copies", pa.int32()),
    ("match_item", pa.string()),
    ("match_rule", pa.string()),
    ("match_part", pa.string()),
    ("match_text", pa.string()),  # the matched run: the row's normalised words match_start..match_end
    ("match_start", pa.int32()),
    ("match_end", pa.int32()),
    ("match_coverage", pa.float32()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
    ("trainable_tokens", pa.int32()),
])

_DEFAULTS = {"status": "kept", "reason": "", "detail": "", "copies": 0, "match_item": "", "match_rule": "",
             "match_part": "", "match_text": "", "match_start": 0, "match_end": 0, "match_coverage": 0.0,
             "input_ids": [], "labels": [], "num_tokens": 0, "trainable_tokens": 0}
_SPACE = re.compile(r"\s+")

# Worker-process cache of large read-only objects (the contamination index, the tokenizer):
# Ray reuses worker processes across tasks, so each loads them once, not once per batch.
_CACHE: dict[str, Any] = {}


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def _conversation_key(messages: list[dict]) -> str:
    text = "\x1e".join(f"{m['role']}\x1f{_SPACE.sub(' ', m['content']).strip().casefold()}" for m in messages)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def read_task(batch: dict[str, Any], dedup_buckets: int, rows_per_batch: int = 1024) -> Iterator[pa.Table]:
    """Read one planned task (a file, or a byte range of one) into ledger rows."""
    from med42_ray.data.readers import iter_task

    for task_json in batch["task"]:
        out: list[dict] = []
        for r in iter_task(json.loads(task_json)):
            row = dict(_DEFAULTS, id=r["id"], source=r["source"], file=r["file"], row=r["row"],
                       messages=json.dumps(r["messages"], ensure_ascii=False))
            if r["reject"]:
                row.update(status="rejected", reason=r["reject"], detail=r["detail"] or "",
                           dedup_key=f"rejected:{r['id']}")  # unique: rejects are never "duplicates"
            else:
                row["dedup_key"] = _conversation_key(r["messages"])
            row["dedup_bucket"] = zlib.crc32(row["dedup_key"].encode()) % dedup_buckets
            out.append(row)
            if len(out) >= rows_per_batch:
                yield _table(out)
                out = []
        if out:
            yield _table(out)


def mark_duplicates(bucket: pa.Table, source_rank: dict[str, int]) -> pa.Table:
    """All rows of one dedup bucket (every row with a given dedup_key is in the same bucket):
    per key, keep the first in mixture order (source order, then file, then row)."""
    rows = bucket.to_pylist()
    first: dict[str, dict] = {}
    for r in sorted((r for r in rows if r["status"] == "kept"),
                    key=lambda r: (source_rank[r["source"]], r["file"], r["row"])):
        kept = first.setdefault(r["dedup_key"], r)
        if kept is not r:
            r.update(status="duplicate", reason="duplicate", detail=f"same conversation as {kept['id']}")
    return _table(rows)


def decontaminate(batch: pa.Table, index_ref: Any) -> pa.Table:
    index = _cached("index", index_ref)
    rows = batch.to_pylist()
    live = [r for r in rows if r["status"] == "kept"]
    texts = ["\n".join(m["content"] for m in json.loads(r["messages"])) for r in live]
    for r, match in zip(live, index.find(texts)):
        if match is not None:
            r.update(status="contaminated", reason=match.benchmark, match_item=match.item_id,
                     match_rule=match.rule, match_part=match.part, match_text=match.text,
                     match_start=match.start, match_end=match.end, match_coverage=match.coverage,
                     detail=f"overlaps {match.benchmark} item {match.item_id} ({match.rule})")
    return _table(rows)


def sample(batch: pa.Table, weights: dict[str, float], seed: int) -> pa.Table:
    rows = batch.to_pylist()
    for r in rows:
        if r["status"] != "kept":
            continue
        r["copies"] = n_copies(seed, r["id"], weights[r["source"]])
        if r["copies"] == 0:
            r.update(status="sampled_out", reason="weight")
    return _table(rows)


def tokenise(batch: pa.Table, tokenizer_path: str, template: str, system_prompt: str | None,
             seq_len: int, overlong: str) -> pa.Table:
    from med42_ray.data.template import IGNORE_INDEX, Tokenise

    tok = _CACHE.get(("tokenise", tokenizer_path, template, system_prompt))
    if tok is None:
        from transformers import AutoTokenizer

        tok = Tokenise(AutoTokenizer.from_pretrained(tokenizer_path), template, system_prompt)
        _CACHE[("tokenise", tokenizer_path, template, system_prompt)] = tok
    rows = batch.to_pylist()
    for r in rows:
        if r["status"] != "kept":
            continue
        input_ids, labels = tok(json.loads(r["messages"]))
        trainable = sum(1 for x in labels if x != IGNORE_INDEX)
        if trainable == 0:
            r.update(status="rejected", reason="no_trainable_tokens", detail="the answer is empty after tokenisation")
        elif len(input_ids) > seq_len and overlong == "reject":
            r.update(status="rejected", reason="overlong",
                     detail=f"{len(input_ids)} tokens > seq_len {seq_len} (prepare.overlong=reject)")
        else:
            r.update(input_ids=input_ids, labels=labels, num_tokens=len(input_ids), trainable_tokens=trainable)
            continue
        r["copies"] = 0
    return _table(rows)


def _cached(name: str, ref: Any) -> Any:
    import ray

    key = (name, ref.hex() if isinstance(ref, ray.ObjectRef) else id(ref))
    if key not in _CACHE:
        _CACHE[key] = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
    return _CACHE[key]


PACKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("position_ids", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
    ("doc_sources", pa.list_(pa.string())),
    ("doc_tokens", pa.list_(pa.int32())),
    ("doc_trainable", pa.list_(pa.int32())),
])


def pack_batch(batch: pa.Table, seq_len: int) -> pa.Table:
    """Kept ledger rows (each repeated `copies` times) -> packed sequences."""
    from med42_ray.data.packing import Doc, pack, split_overlong

    docs: list[Doc] = []
    for r in batch.select(["source", "input_ids", "labels", "copies"]).to_pylist():
        doc = Doc(r["input_ids"], r["labels"], r["source"])
        pieces = split_overlong(doc, seq_len) if len(doc.input_ids) > seq_len else [doc]
        docs += pieces * r["copies"]
    return pa.Table.from_pylist([s.to_row() for s in pack(docs, seq_len)], schema=PACKED_SCHEMA)
