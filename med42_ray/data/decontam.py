"""Benchmark decontamination: find training rows that contain an evaluation item.

Two rules, both over normalised words (NFKC, case folded, every run of non-word characters a
single break, so re-casing and re-punctuating change nothing):

1. **n-gram overlap** (GPT-3 / lm-evaluation-harness style, default n=13). The n-grams of each
   item part -- its question, its question followed by its options, its context (PubMedQA's
   abstract) -- go into the index. A training row is contaminated by a part when it holds at
   least `min_coverage` (default half) of that part's n-grams: a copied item, whole or embedded
   in a longer prompt, holds all of them, while an unrelated exam question shares one or two
   templated phrases ("respirations are 21/min, and blood pressure is ..."). A part with fewer
   than 3 n-grams must be there whole. n-grams found in more than 10 benchmark items are
   boilerplate and left out of the index.

2. **short items** (question shorter than n words; a third of MMLU clinical is, e.g. "The
   auditory tube", "Kinase reactions:"). Such a question has no n-gram, and matching it alone would
   flag any text that mentions "osteoclasts". So a short item matches when its whole normalised
   question occurs as a word sequence AND at least half of its informative options occur as word
   sequences too, in any order (so shuffled options are still caught). Options shared by a whole
   benchmark (PubMedQA's yes/no/maybe) carry no information; an item whose options are all such
   matches on its question alone.

Hashing is vectorised. Each word maps to its id in the benchmarks' vocabulary (0 for a word no
benchmark has: no indexed n-gram contains it), built on the driver and shipped with the index,
so every Ray worker hashes alike (Python's `hash` of a str is salted per process). n-gram hashes
are a polynomial rolling hash over a whole batch of rows at once in numpy, tested against a
presence table and then the sorted keys. A match is confirmed on the actual words, so a hash
collision cannot remove a row.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_BASE = np.uint64(1_000_003)  # odd multiplier for the rolling hash; arithmetic wraps mod 2**64
_MIX = np.uint64(0x9E3779B97F4A7C15)  # spreads small word ids over 64 bits (Fibonacci hashing)
_FILTER_BITS = 23  # a 8 MiB presence table in front of the sorted keys


def normalise_words(text: str) -> list[str]:
    """Case, punctuation and whitespace folded: 'The  Auditory-tube?' -> ['the', 'auditory', 'tube']."""
    if not text.isascii():  # NFKC is a no-op on ASCII, the common case; skip its cost
        text = unicodedata.normalize("NFKC", text)
    return _WORD.findall(text.casefold())


def _word_ids(vocab: dict[str, int], words: Sequence[str]) -> np.ndarray:
    """Benchmark words get ids 1..V; any other word is 0 (no n-gram with it can be indexed)."""
    return np.fromiter(map(vocab.get, words, repeat(0)), dtype=np.uint64, count=len(words))


def _presence_table(key_arrays: list[np.ndarray], bits: int) -> np.ndarray:
    """table[h & (2**bits - 1)] is True for every key h: most non-keys miss it."""
    table = np.zeros(1 << bits, dtype=bool)
    for keys in key_arrays:
        table[keys & np.uint64((1 << bits) - 1)] = True
    return table


def _gram_hashes(word_ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-word window (len(words) - n + 1 of them)."""
    count = len(word_ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        acc = acc * _BASE + (word_ids[j:j + count] * _MIX)
    return acc


PARTS = ("question", "question+options", "context")
MIN_GRAMS = 3  # a match needs at least this many of a part's n-grams (all of them, if it has fewer)


@dataclass
class Match:
    benchmark: str
    item_id: str
    rule: str  # "ngram:<part>" or "short_item"
    text: str  # matching words of the training row (the first shared n-gram, or the short question)
    coverage: float  # share of the item part's n-grams found in the row (1.0 for short items)


@dataclass
class ContaminationIndex:
    """Built once on the driver from the benchmark registry, then shipped to Ray Data workers.

    Parallel arrays, sorted by gram hash; a hash may repeat when several items (or parts) share
    an n-gram.
    """

    n: int
    min_coverage: float
    gram_hashes: np.ndarray  # uint64, sorted
    gram_owner: np.ndarray  # int64: index into `parts` of the item part that has this n-gram
    gram_offset: np.ndarray  # int32: where the n-gram starts in that part's words
    parts: list[tuple[int, int, int]]  # (item index, part index, number of distinct n-grams)
    part_text: list[str] = field(repr=False)  # each part's normalised words, space-joined
    item_keys: list[tuple[str, str]]  # (benchmark, item id)
    vocab: dict[str, int] = field(repr=False)
    # gram_filter[h & mask] is False for most hashes no key has: a cheap first test that keeps
    # the binary search (cache misses over ~10^6 keys) for the few hashes that may be keys.
    gram_filter: np.ndarray = field(repr=False)
    # Short items, grouped by question length k: sorted hashes of their k-word question.
    short_by_len: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # (item index, question words, informative option word sequences) per short item.
    short_items: list[tuple[int, tuple[str, ...], list[tuple[str, ...]]]] = field(default_factory=list)
    short_filter: np.ndarray = field(default_factory=lambda: _presence_table([], 1), repr=False)  # all lengths
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, items: Iterable[Any], n: int = 13, min_coverage: float = 0.5,
              max_item_frequency: int = 10) -> "ContaminationIndex":
        """`items`: objects with .benchmark, .id, .question, .choices, .context (BenchmarkItem).

        `min_coverage`: a row matches an item part when it holds at least this share of the
        part's n-grams (at least one). One shared 13-gram is not enough on its own: exam prose is
        templated ("respirations are 21/min, and blood pressure is ..."), and MedQA's dev set
        shares a 13-gram with a test item in a fifth of its questions without repeating any.
        """
        items = list(items)
        item_keys = [(it.benchmark, it.id) for it in items]
        vocab: dict[str, int] = {}
        for it in items:
            for text in (it.question, it.context or "", *it.choices):
                for w in normalise_words(text):
                    vocab.setdefault(w, len(vocab) + 1)
        part_grams: list[tuple[int, int, str, dict[int, int]]] = []
        item_freq: Counter[int] = Counter()
        for idx, it in enumerate(items):
            q = normalise_words(it.question)
            qo = q + [w for c in it.choices for w in normalise_words(c)]
            ctx = normalise_words(it.context or "")
            seen_in_item: set[int] = set()
            for part, words in enumerate((q, qo, ctx)):
                grams: dict[int, int] = {}  # hash -> offset of its first occurrence
                for i, h in enumerate(_gram_hashes(_word_ids(vocab, words), n).tolist()):
                    grams.setdefault(h, i)
                if grams:
                    part_grams.append((idx, part, " ".join(words), grams))
                seen_in_item.update(grams)
            item_freq.update(seen_in_item)

        # An n-gram shared by many benchmark items is exam boilerplate, not one item's text. (Not
        # "more than one": the same question can sit in two benchmarks, e.g. an MMLU professional
        # medicine item that is also a USMLE sample item, and must stay findable.)
        boilerplate = {h for h, c in item_freq.items() if c > max_item_frequency}
        keys, owners, offsets, parts, part_text = [], [], [], [], []
        for idx, part, text, grams in part_grams:
            kept = [h for h in grams if h not in boilerplate]
            if not kept:
                continue
            parts.append((idx, part, len(kept)))
            part_text.append(text)
            for h in kept:
                keys.append(h)
                owners.append(len(parts) - 1)
                offsets.append(grams[h])
        keys_arr = np.array(keys, dtype=np.uint64)
        order = np.argsort(keys_arr, kind="stable")

        gram_filter = _presence_table([keys_arr], _FILTER_BITS)
        short_items, short_by_len = cls._build_short(items, n, vocab)
        short_filter = _presence_table([k for k, _ in short_by_len.values()], _FILTER_BITS - 3)
        index = cls(n=n, min_coverage=min_coverage, gram_hashes=keys_arr[order],
                    gram_owner=np.array(owners, dtype=np.int64)[order],
                    gram_offset=np.array(offsets, dtype=np.int32)[order], parts=parts, part_text=part_text,
                    item_keys=item_keys, vocab=vocab, gram_filter=gram_filter,
                    short_by_len=short_by_len, short_items=short_items, short_filter=short_filter)
        index.stats = {
            "items": len(items),
            "ngrams": len(set(keys)),
            "boilerplate_ngrams_dropped": len(boilerplate),
            "short_items": len(short_items),
            "n": n,
            "min_coverage": min_coverage,
            "max_item_frequency": max_item_frequency,
        }
        return index

    @staticmethod
    def _build_short(items: list[Any], n: int, vocab: dict[str, int]):
        # Options found in a large share of one benchmark's items are labels (yes/no/maybe).
        option_count: dict[str, Counter] = defaultdict(Counter)
        bench_size: Counter[str] = Counter()
        for it in items:
            bench_size[it.benchmark] += 1
            option_count[it.benchmark].update({tuple(normalise_words(c)) for c in it.choices})
        short_items, by_len = [], defaultdict(list)
        for idx, it in enumerate(items):
            q = normalise_words(it.question)
            if not q or len(q) >= n:
                continue
            counts, size = option_count[it.benchmark], bench_size[it.benchmark]
            options = sorted({o for c in it.choices if (o := tuple(normalise_words(c)))
                              and not (counts[o] > 3 and counts[o] > 0.2 * size)})
            short_items.append((idx, tuple(q), options))
            by_len[len(q)].append((int(_gram_hashes(_word_ids(vocab, q), len(q))[0]), len(short_items) - 1))
        short_by_len = {}
        for k, pairs in by_len.items():
            pairs.sort()
            short_by_len[k] = (np.array([h for h, _ in pairs], dtype=np.uint64),
                               np.array([i for _, i in pairs], dtype=np.int64))
        return short_items, short_by_len

    # -- lookup -----------------------------------------------------------------------------

    def find(self, texts: Sequence[str]) -> list[Match | None]:
        """The best match per text (None if clean). Vectorised over the whole batch."""
        words_per_text = [normalise_words(t) for t in texts]
        results: list[Match | None] = [None] * len(texts)
        lengths = np.array([len(w) for w in words_per_text], dtype=np.int64)
        if lengths.sum() == 0:
            return results
        all_hashes = _word_ids(self.vocab, list(chain.from_iterable(words_per_text)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row_of = np.repeat(np.arange(len(texts)), lengths)
        row_ends = starts + lengths

        self._find_ngrams(words_per_text, all_hashes, starts, row_ends, row_of, results)
        self._find_short(words_per_text, all_hashes, starts, row_ends, row_of, results)
        return results

    @staticmethod
    def _hits(all_hashes, row_ends, row_of, k, sorted_keys, presence):
        """(position, first key index) of every k-gram inside one row whose hash is a key.
        `presence`, a table indexed by the hash's low bits, rules most grams out first."""
        grams = _gram_hashes(all_hashes, k)
        if len(grams) == 0 or len(sorted_keys) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        maybe = np.nonzero(presence[grams & np.uint64(len(presence) - 1)])[0]
        pos = np.searchsorted(sorted_keys, grams[maybe])
        pos[pos == len(sorted_keys)] = 0
        found = sorted_keys[pos] == grams[maybe]
        hit, pos = maybe[found], pos[found]
        inside = hit + k <= row_ends[row_of[hit]]
        return hit[inside], pos[inside]

    def _find_ngrams(self, words_per_text, all_hashes, starts, row_ends, row_of, results) -> None:
        n, keys = self.n, self.gram_hashes
        positions, first = self._hits(all_hashes, row_ends, row_of, n, keys, self.gram_filter)
        if len(positions) == 0:
            return
        # Every (position, key entry) pair: a hash can belong to several item parts.
        last = np.searchsorted(keys, keys[first], side="right")
        counts = last - first
        pos = np.repeat(positions, counts)
        entry = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        row, owner, gram = row_of[pos], self.gram_owner[entry], keys[entry]
        # Distinct n-grams per (row, item part), all in numpy: sort by pair then gram, count runs.
        pair = row.astype(np.int64) * len(self.parts) + owner
        order = np.lexsort((gram, pair))
        pair_s, gram_s = pair[order], gram[order]
        new_pair = np.r_[True, pair_s[1:] != pair_s[:-1]]
        new_gram = new_pair | np.r_[True, gram_s[1:] != gram_s[:-1]]
        pair_start = np.nonzero(new_pair)[0]
        distinct = np.add.reduceat(new_gram.astype(np.int64), pair_start)
        # The earliest hit of each pair: confirmed on the actual words, reported as the match text.
        by_pos = np.lexsort((pos, pair))
        earliest = by_pos[np.r_[True, pair[by_pos][1:] != pair[by_pos][:-1]]]
        pairs = zip(row[earliest].tolist(), owner[earliest].tolist(), pos[earliest].tolist(),
                    entry[earliest].tolist(), distinct.tolist())
        for r, o, p, e, found in pairs:
            item, part, total = self.parts[o]
            # A part with few n-grams (a question just over n words) must be there whole: two of
            # its three n-grams can be one templated phrase of an unrelated question.
            if found < max(math.ceil(self.min_coverage * total - 1e-9), min(total, MIN_GRAMS)):
                continue
            coverage = found / total
            best = results[r]
            if best is not None and coverage <= best.coverage:
                continue
            words = words_per_text[r][p - starts[r]:p - starts[r] + n]
            offset = int(self.gram_offset[e])
            if self.part_text[o].split(" ")[offset:offset + n] != words:
                continue  # a hash collision, not a real overlap
            bench, item_id = self.item_keys[item]
            results[r] = Match(bench, item_id, f"ngram:{PARTS[part]}", " ".join(words), round(coverage, 4))

    def _find_short(self, words_per_text, all_hashes, starts, row_ends, row_of, results) -> None:
        for k, (keys, owners) in self.short_by_len.items():
            positions, first = self._hits(all_hashes, row_ends, row_of, k, keys, self.short_filter)
            for p, ki in zip(positions.tolist(), first.tolist()):
                row = int(row_of[p])
                if results[row] is not None:
                    continue
                words, local = words_per_text[row], p - starts[row]
                end = int(np.searchsorted(keys, keys[ki], side="right"))
                # Several short items can share one question ("Kinase reactions:"); try each.
                for j in range(ki, end):
                    item, question, options = self.short_items[int(owners[j])]
                    if tuple(words[local:local + k]) != question:
                        continue
                    if not options or _count_present(words, options) >= math.ceil(len(options) / 2):
                        bench, item_id = self.item_keys[item]
                        results[row] = Match(bench, item_id, "short_item", " ".join(question), 1.0)
                        break


def _count_present(words: list[str], options: list[tuple[str, ...]]) -> int:
    haystack = " " + " ".join(words) + " "
    return sum(1 for o in options if " " + " ".join(o) + " " in haystack)
