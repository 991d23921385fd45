"""Robustness to option order: each question asked again with its options rotated, and the metrics.

Permutation j (1..k) rotates the options j places: the option at position i is shown at position
(i + j) mod n, and gold moves with it. Rotations are deterministic (no seed to record) and distinct
for j < n; with k = n - 1 every option is shown once under every letter, which balances letter
bias exactly. k is at most 3 (config), so every 4-option question has k distinct orders.

Only benchmarks whose prompt lists lettered options are permuted: PubMedQA's yes/no/maybe and
HEAD-QA's prompt (the question alone, answer texts as continuations) show no order to change.

Metrics per benchmark (beside the original order's acc):
  acc_permuted     mean acc over the k permuted orders
  acc_all_orders   share of questions answered right in the original order and in every permuted one
  consistency      share of questions whose chosen option (by content, not letter) is the same in
                   the original order and in every permuted one
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from med42_ray.benchmarks import BenchmarkItem

MAX_PERMUTATIONS = 3
UNORDERED = ("pubmedqa", "headqa_en")


def permutable(benchmark: str) -> bool:
    return benchmark not in UNORDERED


def rotation(n: int, j: int) -> tuple[int, ...]:
    """order[p] = the original index of the option shown at position p."""
    return tuple((p - j) % n for p in range(n))


def permuted_items(item: BenchmarkItem, k: int) -> list[tuple[int, tuple[int, ...], BenchmarkItem]]:
    """(j, order, the item with its options in that order and gold moved) for j = 1..k."""
    out = []
    for j in range(1, k + 1):
        order = rotation(len(item.choices), j)
        choices = tuple(item.choices[i] for i in order)
        out.append((j, order, replace(item, id=f"{item.id}~perm{j}", choices=choices, gold=order.index(item.gold))))
    return out


def permutation_metrics(original: Sequence[dict], permuted: Sequence[dict]) -> dict:
    """From the original order's sample rows and the permuted rows (each with `id_original`,
    `permutation` and `original_choice`, the chosen option's index in the original order)."""
    by_id: dict[str, list[dict]] = {}
    for r in permuted:
        by_id.setdefault(r["id_original"], []).append(r)
    all_orders, consistent = [], []
    for r in original:
        rows = by_id.get(r["id"], [])
        all_orders.append(float(r["acc"] == 1.0 and all(p["acc"] == 1.0 for p in rows)))
        consistent.append(float(all(p["original_choice"] == r["prediction"] for p in rows)))
    k = max((r["permutation"] for r in permuted), default=0)
    return {"k": k, "acc_permuted": float(np.mean([r["acc"] for r in permuted])) if permuted else float("nan"),
            "acc_all_orders": float(np.mean(all_orders)) if all_orders else float("nan"),
            "consistency": float(np.mean(consistent)) if consistent else float("nan"), "n": len(original)}
