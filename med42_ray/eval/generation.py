"""Chain-of-thought evaluation (`evaluate --protocol cot`): greedy generation, answer extraction.

lm-evaluation-harness 0.4 has no generative variant of the medical tasks; its generative
multiple-choice template is MMLU's `flan_cot_zeroshot` (lm_eval/tasks/mmlu/flan_cot_zeroshot), and
every benchmark is asked in that form here:

  [MMLU: "The following are multiple choice questions (with answers) about {subject}.\\n\\n"]
  [PubMedQA: "Abstract: {contexts}\\n"]
  "Q: {question.strip()}\\n(A) {a} (B) {b} (C) {c} (D) {d}\\nA: Let's think step by step."

as many letters as options (USMLE has up to E..., PubMedQA's are yes/no/maybe, HEAD-QA's its
answer texts). Target "({letter})". Generation as lm-eval's HF backend does `generate_until`:
greedy, prompt encoded with the tokenizer's special tokens (not when it starts with BOS) and
left-truncated to max_length - max_new_tokens, stop at "</s>", "Q:", "<|im_end|>" or the
tokenizer's EOS, the decoded continuation cut at the first stop string.

Extraction and scoring are that task's two filters, reimplemented so that lm-eval stays optional
(tests run lm-eval's own filter classes on the same strings):

  strict-match      regex on "The answer is X." and the like (lm-eval's `regex` filter)
  flexible-extract  the last "(X)" in the answer; else the last option text found in it (case and
                    punctuation ignored); else ": X" (lm-eval's `multi_choice_regex`)

and exact_match(ignore_case, ignore_punctuation) against the target. `acc` is flexible-extract's,
`acc_strict` strict-match's; `unparsed` / `unparsed_strict` the share of answers where the filter
found nothing (its fallback "[invalid]").
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import sys
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.records import LETTERS

COT_TRIGGER = "Let's think step by step."
STOP_SEQUENCES = ("</s>", "Q:", "<|im_end|>")  # flan_cot_zeroshot's generation_kwargs.until
FALLBACK = "[invalid]"
STRICT_PATTERN = (r"((?<=The answer is )(.*)(?=.)|(?<=answer is )(.*)(?=.)|(?<=The answer: )(.*)(?=.)"
                  r"|(?<=The final answer: )(.*)(?=.))")
FLEXIBLE_PATTERN = r"(\([A-Z]\))"
FILTERS = ("strict-match", "flexible-extract")


@dataclass(frozen=True)
class GenerationRequest:
    """One question to answer by generating: the prompt and how long the answer may be."""

    benchmark: str
    item_id: str
    context: str
    gold: int
    choice_texts: tuple[str, ...]  # the options as shown (flexible-extract searches the answer for them)
    max_new_tokens: int
    stop: tuple[str, ...] = STOP_SEQUENCES

    @property
    def key(self) -> str:
        """Hash of what is generated; its own namespace, so it never equals a scoring request's key."""
        h = hashlib.sha256(b"generate\x00" + self.context.encode())
        h.update(f"\x00{self.max_new_tokens}\x00".encode() + "\x00".join(self.stop).encode())
        return h.hexdigest()[:24]

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.context.encode()).hexdigest()[:16]

    @property
    def target(self) -> str:
        return f"({LETTERS[self.gold]})"


@dataclass
class Generated:
    key: str
    text: str  # the continuation, cut at the first stop sequence
    num_tokens: int  # tokens generated (up to the stop, or max_new_tokens)
    hit_max_new_tokens: bool  # stopped by the length limit, not by a stop sequence or EOS


def cot_text(item: BenchmarkItem) -> str:
    """flan_cot_zeroshot's description + doc_to_text, for any number of options."""
    from med42_ray.eval.prompts import mmlu_description

    head = mmlu_description(item.benchmark) if item.benchmark.startswith("mmlu_") else ""
    abstract = f"Abstract: {item.context}\n" if item.context else ""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(item.choices))
    return f"{head}{abstract}Q: {item.question.strip()}\n{options}\nA: {COT_TRIGGER}"


def build_cot_request(item: BenchmarkItem, max_new_tokens: int) -> GenerationRequest:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"{item.benchmark}/{item.id}: the cot protocol needs max_new_tokens >= 1, got {max_new_tokens!r}")
    return GenerationRequest(item.benchmark, item.id, cot_text(item), item.gold, tuple(item.choices), max_new_tokens)


# -- generation on the model ------------------------------------------------------------------------

def generate(scorer, requests: Sequence[GenerationRequest]) -> list[Generated]:
    """Greedy answers in the order of `requests` (equal keys generated once), batched by prompt
    length under the scorer's token budget (prompt + max_new_tokens per row), run under the
    scorer's own context (inference mode, sdpa), with its tokenisation (lm-eval's BOS rule)."""
    first: dict[str, GenerationRequest] = {}
    for r in requests:
        first.setdefault(r.key, r)
    unique = list(first.values())
    prompts = dict(zip(first, scorer._tok_encode_all([r.context for r in unique])))
    out: dict[str, Generated] = {}
    with scorer.scoring_context():
        for batch in _batches(unique, prompts, scorer.max_batch_tokens):
            out.update(_generate_batch(scorer, batch, [prompts[r.key] for r in batch]))
    return [out[r.key] for r in requests]


def _batches(requests: list[GenerationRequest], prompts: dict, budget: int):
    """Longest prompt first, rows of one max_new_tokens together, padded tokens under `budget`."""
    ordered = sorted(requests, key=lambda r: (r.max_new_tokens, r.stop, -len(prompts[r.key])))
    batch: list[GenerationRequest] = []
    for r in ordered:
        same = not batch or (batch[0].max_new_tokens, batch[0].stop) == (r.max_new_tokens, r.stop)
        width = len(prompts[batch[0].key]) if batch else len(prompts[r.key])
        if batch and (not same or (width + r.max_new_tokens) * (len(batch) + 1) > budget):
            yield batch
            batch = []
        batch.append(r)
    if batch:
        yield batch


class _StopOnSequences:
    """Marks a row finished once its generated text contains a stop sequence (lm-eval's
    stop_sequences_criteria): only the last few tokens are decoded at each step. (transformers'
    StoppingCriteria is an interface only: not subclassed, so the driver never imports transformers.)"""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.start = tokenizer, [s for s in stop if s], prompt_width
        # a stop string spans at most as many tokens as it has characters (+2 for merges at its edges)
        self.tail = max(len(s) for s in self.stop) + 2
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        tails = self.tokenizer.batch_decode(input_ids[:, self.start:][:, -self.tail:], skip_special_tokens=False)
        for i, text in enumerate(tails):
            self.done[i] |= any(s in text for s in self.stop)
        return self.done.to(input_ids.device)


def _generate_batch(scorer, batch: list[GenerationRequest], prompts: list[list[int]]) -> dict[str, Generated]:
    from transformers import StoppingCriteriaList

    tok, model = scorer.tokenizer, scorer.model
    new = batch[0].max_new_tokens
    max_ctx = scorer.max_length - new
    if max_ctx <= 0:
        raise ValueError(f"evaluate.max_new_tokens {new} leaves no room for a prompt in the model's "
                         f"{scorer.max_length} positions")
    prompts = [p[-max_ctx:] for p in prompts]  # lm-eval left-truncates to max_length - max_gen_toks
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[scorer.pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    eos = tok.decode([tok.eos_token_id], skip_special_tokens=False) if tok.eos_token_id is not None else ""
    stop = [*batch[0].stop, *([eos] if eos and eos not in batch[0].stop else [])]
    criteria = _StopOnSequences(tok, stop, width)
    out = model.generate(input_ids=ids.to(scorer.device), attention_mask=mask.to(scorer.device),
                         max_new_tokens=new, do_sample=False, num_beams=1, pad_token_id=scorer.pad_id,
                         stopping_criteria=StoppingCriteriaList([criteria]), use_cache=True)
    result = {}
    for r, row in zip(batch, out[:, width:].cpu().tolist()):
        n = len(row)
        while n and row[n - 1] == scorer.pad_id:  # rows finished early are padded to the batch's length
            n -= 1
        text = tok.decode(row[:n], skip_special_tokens=True)
        cut = _cut_at_stop(text, stop)
        stopped = cut != text or n < new or row[n - 1] == tok.eos_token_id
        result[r.key] = Generated(r.key, cut, n, hit_max_new_tokens=not stopped)
    return result


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """lm-eval's postprocess_generated_text: the text before the first occurrence of each stop string."""
    for s in stop:
        if s:
            text = text.split(s)[0]
    return text


# -- extraction and scoring -------------------------------------------------------------------------

@functools.cache
def _punctuation_table() -> dict[int, None]:
    """Every Unicode punctuation character (category P*), as lm-eval's multi_choice_regex removes them."""
    return dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))


def _find(regex: re.Pattern, text: str, group_select: int, convert: dict | None = None) -> str:
    """lm-eval's find_match: the selected findall hit, the first non-empty group of a tuple, stripped."""
    hits = regex.findall(text)
    if not hits:
        return ""
    hit = hits[group_select]
    if isinstance(hit, tuple):
        hit = next((g for g in hit if g), "")
    hit = hit.strip()
    return (convert or {}).get(hit, hit) if hit else hit


def strict_match(response: str) -> str:
    """lm-eval's `regex` filter with flan_cot_zeroshot's strict pattern, then take_first."""
    return _find(re.compile(STRICT_PATTERN), response, 0) or FALLBACK


def flexible_extract(response: str, choices: Sequence[str]) -> str:
    """lm-eval's `multi_choice_regex` (group_select -1, ignore_case, ignore_punctuation)."""
    def ignore(s: str) -> str:
        return s.lower().translate(_punctuation_table())

    texts = {ignore(c.strip()): f"({LETTERS[i]})" for i, c in enumerate(choices)}
    # longest first, so an option that is a prefix of another cannot shadow it (as lm-eval sorts)
    by_text = re.compile("|".join(sorted((re.escape(ignore(c.strip())) for c in choices), key=len, reverse=True)))
    letters = LETTERS[:len(choices)]
    by_colon = re.compile(rf":[\s]*({'|'.join(letters)})")
    return (_find(re.compile(FLEXIBLE_PATTERN), response, -1)
            or _find(by_text, ignore(response), -1, texts)
            or _find(by_colon, response, -1, {c: f"({c})" for c in letters})
            or FALLBACK)


def _normalise(text: str) -> str:
    """exact_match's ignore_case and ignore_punctuation (ASCII punctuation, as lm-eval's metric)."""
    return text.lower().translate(str.maketrans("", "", string.punctuation))


def exact_match(filtered: str, target: str) -> float:
    return float(_normalise(filtered) == _normalise(target))


def _letter_index(filtered: str, n_choices: int) -> int:
    """The option an extracted answer names, -1 when it names none."""
    norm = _normalise(filtered).strip()
    return LETTERS.lower().index(norm) if len(norm) == 1 and norm in LETTERS.lower()[:n_choices] else -1


def sample_row(item: BenchmarkItem, req: GenerationRequest, g: Generated) -> dict:
    """One answered question as samples/<benchmark>.jsonl keeps it: the whole generation, both filters."""
    strict, flexible = strict_match(g.text), flexible_extract(g.text, req.choice_texts)
    return {"id": item.id, "prompt_hash": req.prompt_hash, "request_key": req.key, "prompt": req.context,
            "generation": g.text, "num_tokens": g.num_tokens, "hit_max_new_tokens": g.hit_max_new_tokens,
            "strict_match": strict, "flexible_extract": flexible,
            "prediction": _letter_index(flexible, len(req.choice_texts)), "gold": item.gold, "target": req.target,
            "acc": exact_match(flexible, req.target), "acc_strict": exact_match(strict, req.target),
            "unparsed": float(flexible == FALLBACK), "unparsed_strict": float(strict == FALLBACK),
            **({"step": item.meta["step"]} if "step" in item.meta else {})}


def benchmark_metrics(rows: Sequence[dict], excluded: int, canonical: int) -> dict:
    """Accuracy under each filter with lm-eval's stderr, the shares unparsed and cut by the length limit."""
    from med42_ray.eval.results import mean_stderr

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    out = {m: mean(m) for m in ("acc", "acc_strict", "unparsed", "unparsed_strict", "hit_max_new_tokens")}
    out.update(acc_stderr=mean_stderr([r["acc"] for r in rows]),
               acc_strict_stderr=mean_stderr([r["acc_strict"] for r in rows]),
               mean_new_tokens=mean("num_tokens"), n=len(rows), excluded=excluded, canonical_size=canonical)
    return out
