"""Packing keeps every token and respects seq_len; sampling is deterministic and honours weights."""

from __future__ import annotations

import random

import pytest

from med42_ray.data.mixture import copies
from med42_ray.data.packing import Doc, pack, split_overlong


def _docs(n: int, max_len: int, seed: int = 0) -> list[Doc]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(1, max_len)
        ids = [rng.randint(3, 999) for _ in range(length)]
        labels = [-100 if j < length // 2 else t for j, t in enumerate(ids)]
        out.append(Doc(ids, labels, f"s{i % 3}"))
    return out


def test_pack_keeps_every_token_and_fits_seq_len():
    docs = _docs(500, 300)
    seqs = pack(docs, 512)
    rows = [s.to_row() for s in seqs]
    assert all(r["num_tokens"] <= 512 for r in rows)
    assert sum(r["num_tokens"] for r in rows) == sum(len(d.input_ids) for d in docs)
    # the multiset of documents is unchanged
    packed = sorted(tuple(d.input_ids) for s in seqs for d in s.docs)
    assert packed == sorted(tuple(d.input_ids) for d in docs)
    # best-fit decreasing fills sequences well on short documents
    assert sum(r["num_tokens"] for r in rows) / (len(rows) * 512) > 0.95


def test_position_ids_restart_per_document_and_labels_align():
    a, b = Doc([5, 6, 7], [-100, 6, 7], "x"), Doc([8, 9], [-100, 9], "y")
    (seq,) = pack([a, b], 8)
    row = seq.to_row()
    assert row["position_ids"] == [0, 1, 2, 0, 1]
    assert row["input_ids"] == [5, 6, 7, 8, 9] and row["labels"] == [-100, 6, 7, -100, 9]
    assert row["doc_sources"] == ["x", "y"] and row["doc_tokens"] == [3, 2] and row["doc_trainable"] == [2, 1]


def test_overlong_documents_are_split_not_truncated():
    doc = Doc(list(range(1, 26)), list(range(1, 26)), "s")
    pieces = split_overlong(doc, 10)
    assert [len(p.input_ids) for p in pieces] == [10, 10, 5]
    assert sum((p.input_ids for p in pieces), []) == doc.input_ids
    with pytest.raises(ValueError, match="longer than seq_len"):
        pack([doc], 10)


def test_sampling_is_deterministic_and_matches_weights():
    ids = [f"src:file:{i}" for i in range(20000)]
    half = [copies(7, i, 0.5) for i in ids]
    assert half == [copies(7, i, 0.5) for i in ids]  # same seed, same rows
    assert half != [copies(8, i, 0.5) for i in ids]  # another seed, other rows
    assert abs(sum(half) / len(ids) - 0.5) < 0.02
    assert set(copies(7, i, 2.0) for i in ids[:100]) == {2}
    two_and_half = [copies(7, i, 2.5) for i in ids]
    assert set(two_and_half) == {2, 3} and abs(sum(two_and_half) / len(ids) - 2.5) < 0.02
    assert all(copies(7, i, 0.0) == 0 for i in ids[:100])
