"""Benchmark decontamination: find training rows that contain an evaluation item, or a long piece of one.

Words are normalised (NFKC, case folded, every run of non-word characters a single break, so
re-casing and re-punctuating change nothing). Three rules; a row is contaminated when one fires:

1. **coverage** (GPT-3 / lm-evaluation-harness style n-grams, default n=13). The n-grams of each
   item part -- its question, its question followed by its options, its context (PubMedQA's
   abstract) -- go into the index. A row is contaminated by a part when it holds at least
   `min_coverage` (default half) of that part's n-grams: a copied item, whole or embedded in a
   longer prompt, re-cased or with its options shuffled, holds all of them. A part with fewer
   than 3 n-grams must be there whole.

2. **run**: the row and one item part share a contiguous run of at least `min_run` (default 25)
   words. This catches what coverage lets through: the first 40% of a MedQA vignette, or a
   25-word stretch from its middle pasted into an unrelated prompt, holds well under half of
   the question's n-grams. The run is found from the n-gram hits, in numpy over the whole
   batch: every hit puts the row and the part on one alignment (row word i faces part word
   i - d), and k consecutive hits on one alignment are k + n - 1 equal words. Every occurrence
   of an n-gram in a part is indexed, boilerplate ones too (flagged), so a run passes through
   a templated phrase; but it starts and ends on non-boilerplate n-grams, so a template at its
   edge adds nothing and a template alone is no run. The reported run is confirmed on the words.

   Why 25 words, and why a contiguous run rather than a count of rare n-grams: exam vignettes
   share templated stretches that are not any item's content (vital signs, lab panels, "the
   remainder of the examination shows no abnormalities; which of the following is the most
   appropriate next step in management"). Against the benchmark index, MedQA's dev questions
   (different items of the same exam as the MedQA test set) share a run of >= 13 words with
   some item in about a third of questions, and the share falls slowly with the run's length:
   about 1% at 25 words (BENCHMARKS.md, "Decontamination", has the sweep). Weighting n-grams by
   how few items hold them does not separate templates from content either, since vital signs
   with their numbers are as rare as anything else (tried while choosing this rule: >= 17
   words of n-grams found in at most 2 items, numbers masked, flagged 2.2% of dev questions and
   still missed 7% of 25-word middle runs). So the run rule stops at 25 words.

   n-grams found in more than `max_item_frequency` (10) benchmark items are boilerplate: they
   count towards no coverage, and a run made only of them is not a match. (Not "more than one":
   the same question can sit in two benchmarks, e.g. an MMLU professional medicine item that
   is also a USMLE sample item, and must stay findable.)

3. **short_item** (question shorter than n words; a third of MMLU clinical is, e.g. "The
   auditory tube", "Kinase reactions:"). Such a question has no n-gram, and matching it alone would
   flag any text that mentions "osteoclasts". So a short item matches when its whole normalised
   question occurs as a word sequence AND at least half of its informative options occur as word
   sequences too, in any order (so shuffled options are still caught). Options shared by a whole
   benchmark (PubMedQA's yes/no/maybe) carry no information; an item whose options are all such
   matches on its question alone.

Every match names its rule, the item part, and the matched run: word offsets [start, end) in
the row's normalised words and those words (for coverage, the longest run behind it).

Hashing is vectorised. Each word maps to its id in the benchmarks' vocabulary (0 for a word no
benchmark has: no indexed n-gram contains it), built on the driver and shipped with the index,
so every Ray worker hashes alike (Python's `hash` of a str is salted per process). n-gram hashes
are a polynomial rolling hash over a whole batch of rows at once in numpy, tested against a
presence table and then the sorted keys. Word ids are exact, so comparing a row's ids with a
part's ids is comparing the words: a hash collision cannot remove a row.
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
MIN_GRAMS = 3  # a coverage match needs at least this many of a part's n-grams (all of them, if it has fewer)
RULES = ("coverage", "run", "short_item")


@dataclass
class Match:
    benchmark: str
    item_id: str
    rule: str  # one of RULES: which rule fired
    part: str  # the item part matched (one of PARTS)
    text: str  # the matched run: the row's normalised words start..end, space-joined
    start: int  # word offsets [start, end) of the run in the row's normalised words
    end: int
    coverage: float  # share of the item part's indexed n-grams found in the row (1.0 for short items)


@dataclass
class ContaminationIndex:
    """Built once on the driver from the benchmark registry, then shipped to Ray Data workers.

    Parallel arrays, sorted by gram hash; a hash may repeat when several items (or parts) share
    an n-gram.
    """

    n: int
    min_coverage: float
    min_run: int
    gram_hashes: np.ndarray  # uint64, sorted
    gram_owner: np.ndarray  # int64: index into `parts` of the item part that has this n-gram
    gram_offset: np.ndarray  # int32: where the n-gram starts in that part's words (every occurrence)
    # True for a boilerplate n-gram: kept only so that a run can pass through it; it never counts
    # towards coverage, and a run made of nothing else is not a match.
    gram_boilerplate: np.ndarray
    parts: list[tuple[int, int, int]]  # (item index, part index, number of distinct non-boilerplate n-grams)
    # Every part's word ids end to end; part o is part_ids[part_bounds[o]:part_bounds[o + 1]].
    part_ids: np.ndarray = field(repr=False)
    part_bounds: np.ndarray = field(repr=False)
    part_totals: np.ndarray = field(repr=False)  # int64: parts[o][2] as an array
    item_keys: list[tuple[str, str]]
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
              max_item_frequency: int = 10, min_run: int = 25) -> "ContaminationIndex":
        """`items`: objects with .benchmark, .id, .question, .choices, .context (BenchmarkItem).

        `min_coverage`: a row matches an item part when it holds at least this share of the
        part's n-grams. `min_run`: ... or when it shares this many consecutive words with it
        (never fewer than n: one n-gram is n words). See the module docstring for why.
        """
        items = list(items)
        item_keys = [(it.benchmark, it.id) for it in items]
        vocab: dict[str, int] = {}
        for it in items:
            for text in (it.question, it.context or "", *it.choices):
                for w in normalise_words(text):
                    vocab.setdefault(w, len(vocab) + 1)
        part_grams: list[tuple[int, int, np.ndarray, list[int]]] = []
        item_freq: Counter[int] = Counter()
        for idx, it in enumerate(items):
            q = normalise_words(it.question)
            qo = q + [w for c in it.choices for w in normalise_words(c)]
            ctx = normalise_words(it.context or "")
            seen_in_item: set[int] = set()
            for part, words in enumerate((q, qo, ctx)):
                ids = _word_ids(vocab, words)
                grams = _gram_hashes(ids, n).tolist()  # grams[i]: the n-gram at word i
                if grams:
                    part_grams.append((idx, part, ids, grams))
                seen_in_item.update(grams)
            item_freq.update(seen_in_item)

        boilerplate = {h for h, c in item_freq.items() if c > max_item_frequency}
        keys, owners, offsets, parts, part_ids = [], [], [], [], []
        for idx, part, ids, grams in part_grams:
            kept = {h for h in grams if h not in boilerplate}
            if not kept:
                continue
            parts.append((idx, part, len(kept)))
            part_ids.append(ids.astype(np.uint32))
            keys += grams
            owners += [len(parts) - 1] * len(grams)
            offsets += range(len(grams))
        keys_arr = np.array(keys, dtype=np.uint64)
        is_boilerplate = np.array([h in boilerplate for h in keys], dtype=bool)
        order = np.argsort(keys_arr, kind="stable")

        gram_filter = _presence_table([keys_arr], _FILTER_BITS)
        short_items, short_by_len = cls._build_short(items, n, vocab)
        short_filter = _presence_table([k for k, _ in short_by_len.values()], _FILTER_BITS - 3)
        bounds = np.concatenate([[0], np.cumsum([len(p) for p in part_ids])]).astype(np.int64)
        index = cls(n=n, min_coverage=min_coverage, min_run=max(min_run, n), gram_hashes=keys_arr[order],
                    gram_owner=np.array(owners, dtype=np.int64)[order],
                    gram_offset=np.array(offsets, dtype=np.int32)[order],
                    gram_boilerplate=is_boilerplate[order], parts=parts,
                    part_ids=np.concatenate(part_ids) if part_ids else np.empty(0, dtype=np.uint32),
                    part_bounds=bounds, part_totals=np.array([t for _, _, t in parts], dtype=np.int64),
                    item_keys=item_keys, vocab=vocab, gram_filter=gram_filter,
                    short_by_len=short_by_len, short_items=short_items, short_filter=short_filter)
        index.stats = {
            "items": len(items),
            "ngrams": len(set(keys) - boilerplate),
            "boilerplate_ngrams": len(boilerplate),
            "short_items": len(short_items),
            "n": n,
            "min_coverage": min_coverage,
            "min_run": index.min_run,
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
        word_ids = _word_ids(self.vocab, list(chain.from_iterable(words_per_text)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row_of = np.repeat(np.arange(len(texts)), lengths)
        row_ends = starts + lengths

        self._find_ngrams(words_per_text, word_ids, starts, row_ends, row_of, results)
        self._find_short(words_per_text, word_ids, starts, row_ends, row_of, results)
        return results

    @staticmethod
    def _hits(word_ids, row_ends, row_of, k, sorted_keys, presence):
        """(position, first key index) of every k-gram inside one row whose hash is a key.
        `presence`, a table indexed by the hash's low bits, rules most grams out first."""
        grams = _gram_hashes(word_ids, k)
        if len(grams) == 0 or len(sorted_keys) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        maybe = np.nonzero(presence[grams & np.uint64(len(presence) - 1)])[0]
        pos = np.searchsorted(sorted_keys, grams[maybe])
        pos[pos == len(sorted_keys)] = 0
        found = sorted_keys[pos] == grams[maybe]
        hit, pos = maybe[found], pos[found]
        inside = hit + k <= row_ends[row_of[hit]]
        return hit[inside], pos[inside]

    def _find_ngrams(self, words_per_text, word_ids, starts, row_ends, row_of, results) -> None:
        n, keys = self.n, self.gram_hashes
        positions, first = self._hits(word_ids, row_ends, row_of, n, keys, self.gram_filter)
        if len(positions) == 0:
            return
        # Every (position, key entry) pair: a hash can belong to several item parts.
        last = np.searchsorted(keys, keys[first], side="right")
        counts = last - first
        pos = np.repeat(positions, counts)
        entry = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        row, owner, gram = row_of[pos], self.gram_owner[entry], keys[entry]
        pair = row.astype(np.int64) * len(self.parts) + owner
        rare = ~self.gram_boilerplate[entry]
        local = pos - starts[row]
        run_pair, run_start, run_len, run_diag = _longest_runs(pair, local, local - self.gram_offset[entry], rare, n)
        n_found = _lookup(*_distinct_per_pair(pair[rare], gram[rare]), run_pair)
        total = self.part_totals[run_pair % len(self.parts)]
        # A part with few n-grams (a question just over n words) must be there whole: two of
        # its three n-grams can be one templated phrase of an unrelated question.
        covered = n_found >= np.maximum(np.ceil(self.min_coverage * total - 1e-9), np.minimum(total, MIN_GRAMS))
        covered &= run_len > 0
        hit = np.nonzero(covered | (run_len >= self.min_run))[0]
        for i in hit.tolist():  # in pair order: rows ascending, parts in index order
            r, o = divmod(int(run_pair[i]), len(self.parts))
            start, end, d = int(run_start[i]), int(run_start[i] + run_len[i]), int(run_diag[i])
            if not self._same_words(word_ids, int(starts[r]), o, start, end, d):
                continue  # a hash collision, not a real overlap
            item, part, n_total = self.parts[o]
            rule = "coverage" if covered[i] else "run"
            coverage = round(int(n_found[i]) / n_total, 4)
            prev = results[r]
            if prev is not None and _rank(rule, coverage, end - start) <= _rank(prev.rule, prev.coverage,
                                                                                prev.end - prev.start):
                continue
            bench, item_id = self.item_keys[item]
            results[r] = Match(bench, item_id, rule, PARTS[part], " ".join(words_per_text[r][start:end]),
                               start, end, coverage)

    def _same_words(self, word_ids, row_start: int, part: int, start: int, end: int, diag: int) -> bool:
        """Row words start..end equal the part's words opposite them (ids are exact words)."""
        p0 = int(self.part_bounds[part])
        return bool(np.array_equal(word_ids[row_start + start:row_start + end],
                                   self.part_ids[p0 + start - diag:p0 + end - diag]))

    def _find_short(self, words_per_text, word_ids, starts, row_ends, row_of, results) -> None:
        for k, (keys, owners) in self.short_by_len.items():
            positions, first = self._hits(word_ids, row_ends, row_of, k, keys, self.short_filter)
            for p, ki in zip(positions.tolist(), first.tolist()):
                row = int(row_of[p])
                if results[row] is not None:
                    continue
                words, local = words_per_text[row], p - int(starts[row])
                end = int(np.searchsorted(keys, keys[ki], side="right"))
                # Several short items can share one question ("Kinase reactions:"); try each.
                for j in range(ki, end):
                    item, question, options = self.short_items[int(owners[j])]
                    if tuple(words[local:local + k]) != question:
                        continue
                    if not options or _count_present(words, options) >= math.ceil(len(options) / 2):
                        bench, item_id = self.item_keys[item]
                        results[row] = Match(bench, item_id, "short_item", PARTS[0], " ".join(question),
                                             local, local + k, 1.0)
                        break


def _longest_runs(pair, local, diag, rare, n: int):
    """The longest run of each (row, item part) pair: (pair, start, length, diagonal), by pair.

    Every hit puts row word i opposite part word i - diagonal. Consecutive hits on one (pair,
    diagonal) are a stretch of equal words (an n-gram after the last hit would be a hit too,
    boilerplate included, had its words matched). The run is that stretch from its first to its
    last non-boilerplate n-gram: a template inside a copied passage counts, a template at its
    edge does not, and a template alone is no run (length 0).
    """
    order = np.lexsort((local, diag, pair))
    pair_s, diag_s, local_s, rare_s = pair[order], diag[order], local[order], rare[order]
    cut = np.nonzero(np.r_[True, (pair_s[1:] != pair_s[:-1]) | (diag_s[1:] != diag_s[:-1])
                           | (local_s[1:] != local_s[:-1] + 1)])[0]
    first = np.minimum.reduceat(np.where(rare_s, local_s, np.iinfo(np.int64).max), cut)
    last = np.maximum.reduceat(np.where(rare_s, local_s, -1), cut)
    length = np.where(last >= 0, last - first + n, 0)
    best = np.lexsort((-length, pair_s[cut]))
    best = best[np.r_[True, pair_s[cut][best][1:] != pair_s[cut][best][:-1]]]
    return pair_s[cut][best], first[best], length[best], diag_s[cut][best]


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values[keys == w] for each w of `wanted` (keys sorted and distinct), 0 where absent."""
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=np.int64)
    k = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[k] == wanted, values[k], 0)


def _distinct_per_pair(pair: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct pairs, distinct n-grams of each), all in numpy: sort by pair then gram, count runs."""
    if len(pair) == 0:  # every hit a boilerplate n-gram
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.lexsort((gram, pair))
    pair_s, gram_s = pair[order], gram[order]
    new_pair = np.r_[True, pair_s[1:] != pair_s[:-1]]
    new_gram = new_pair | np.r_[True, gram_s[1:] != gram_s[:-1]]
    pair_start = np.nonzero(new_pair)[0]
    return pair_s[pair_start], np.add.reduceat(new_gram.astype(np.int64), pair_start)


def _rank(rule: str, coverage: float, run_length: int) -> tuple:
    """Which of two n-gram matches of a row to report: coverage before run, then the stronger."""
    return (1, coverage, run_length) if rule == "coverage" else (0, run_length, coverage)


def _count_present(words: list[str], options: list[tuple[str, ...]]) -> int:
    haystack = " " + " ".join(words) + " "
    return sum(1 for o in options if " " + " ".join(o) + " " in haystack)
