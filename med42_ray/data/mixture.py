"""Deterministic, streaming weighted sampling of a source.

A row's number of copies depends only on (seed, row id, weight): floor(weight) copies, plus one
more with probability frac(weight), decided by a hash of the seed and the id. No row needs to
see another, so sampling streams through Ray Data in any order and on any number of workers, and
the same seed always selects the same rows.
"""

from __future__ import annotations

import hashlib
import math


def uniform_from_id(seed: int, row_id: str) -> float:
    """A stable draw in [0, 1) for this row under this seed."""
    digest = hashlib.blake2b(f"{seed}\x00{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def copies(seed: int, row_id: str, weight: float) -> int:
    whole = math.floor(weight)
    return whole + (1 if uniform_from_id(seed, row_id) < weight - whole else 0)
