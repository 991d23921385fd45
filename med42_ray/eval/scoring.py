"""Log-likelihood of each choice after a prompt, as lm-evaluation-harness computes it, but cheaper.

lm-eval (HF backend) scores every (context, continuation) pair as its own sequence:
  context_enc = tok(context); whole = tok(context + continuation); cont_enc = whole[len(context_enc):]
  input = (context_enc + cont_enc)[-(max_length + 1):][:-1]; ll = sum log p(cont_enc | prefix)
(trailing spaces of the context move to the continuation first). We compute the same numbers:

* one pass: when every continuation is one token (letters; " yes"/" no"/" maybe" usually), the
  logits at the context's last position score all choices at once. Prompts are batched by length,
  right-padded, and only the last position of each row is projected onto the vocabulary.
* prefix cache: otherwise the context runs once (batched, KV cache kept), and all continuations of
  a batch of questions run together on top of that cache.
* brute force: one sequence per choice, exactly lm-eval's recipe; used when left truncation would
  make the choices' prefixes differ, and as the reference in tests.

Log-softmax is taken in float32 whatever the model dtype.

A model too large for one GPU is spread over several devices (accelerate's device map): its last
hidden state lives on the last GPU, its KV cache layers on theirs. Every index here follows the
device of the tensor it indexes, and the one-pass path picks the last position of each row itself
(decoder, then the output head on those rows only) instead of handing transformers a 2-D
`logits_to_keep` tensor, which it indexes on the hidden state's device in recent versions and
mis-shapes in older ones.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from med42_ray.eval.prompts import Request


@dataclass
class Encoded:
    context: list[int]
    continuations: list[list[int]]


@dataclass
class Scored:
    key: str
    loglikelihoods: list[float]
    is_greedy: list[bool]
    num_tokens: list[int]
    method: str  # "one_pass" | "prefix_cache" | "brute_force"


def model_max_length(model, tokenizer) -> int:
    """lm-eval HFLM's rule: the model config's context size, else the tokenizer's, else 2048."""
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1e9:
        return int(tok_max)
    return 2048


class Scorer:
    def __init__(self, model, tokenizer, max_length: int | None = None, max_batch_tokens: int = 8192,
                 inference_mode: bool = True):
        self.model = model
        # False: plain no_grad, for a model that trains on after scoring (see `score`)
        self.inference_mode = inference_mode
        self.tokenizer = tokenizer
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        bos = tokenizer.bos_token
        self._bos_text = bos if bos else None
        # transformers >= 5.2x names the KV cache argument `cache`; earlier ones `past_key_values`
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        # The causal LM's own forward is decoder -> output head; one-pass scoring runs the two
        # itself so that only one position per row reaches the head (peft's adapters sit inside
        # both, so an unmerged LoRA model scores the same way).
        self._decoder = base.get_decoder()
        self._head = base.get_output_embeddings()
        self._softcap = getattr(base.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- tokenisation: lm-eval's _encode_pair / tok_encode ---------------------------------------

    def tok_encode(self, text: str) -> list[int]:
        # lm-eval: the tokenizer's default special tokens, unless the text already starts with BOS
        if self._bos_text and text.startswith(self._bos_text):
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(text)

    def encode(self, req: Request) -> Encoded:
        context = req.context
        n_spaces = len(context) - len(context.rstrip())
        moved = context[len(context) - n_spaces:] if n_spaces else ""
        context = context[: len(context) - n_spaces]
        context_enc = self.tok_encode(context)
        conts = []
        for cont in req.continuations:
            whole = self.tok_encode(context + moved + cont)
            conts.append(whole[len(context_enc):])
        if any(len(c) == 0 for c in conts):
            raise ValueError(f"{req.benchmark}/{req.item_id}: a continuation encodes to no token")
        return Encoded(context_enc, conts)

    # -- scoring ---------------------------------------------------------------------------------

    def grad_context(self):
        """What every scoring path runs under: inference_mode unless the Scorer was built without
        it. A ZeRO-3 model gathers its parameters during the forward and keeps its small persistent
        ones, which would then be inference tensors that the next training backward refuses."""
        return torch.inference_mode() if self.inference_mode else torch.no_grad()

    def score(self, requests: Sequence[Request]) -> list[Scored]:
        """Scores in the order of `requests`; requests with equal keys are computed once."""
        with self.grad_context():
            return self._score(requests)

    def _score(self, requests: Sequence[Request]) -> list[Scored]:
        unique: dict[str, tuple[Request, Encoded]] = {}
        for r in requests:
            if r.key not in unique:
                unique[r.key] = (r, self.encode(r))
        one_pass, cached, brute = [], [], []
        for key, (r, enc) in unique.items():
            longest = max(len(c) for c in enc.continuations)
            if len(enc.context) + longest - 1 > self.max_length:
                brute.append((key, enc))  # left truncation differs per choice: score as lm-eval does
            elif longest == 1:
                one_pass.append((key, enc))
            else:
                cached.append((key, enc))
        out: dict[str, Scored] = {}
        for batch in self._batches(one_pass, lambda e: len(e.context)):
            out.update(self._score_one_pass(batch))
        for batch in self._batches(cached, lambda e: len(e.context) + sum(len(c) for c in e.continuations)):
            out.update(self._score_prefix_cache(batch))
        for key, enc in brute:
            out[key] = self._score_brute_force(key, enc)
        return [out[r.key] for r in requests]

    def _batches(self, items, cost):
        """Longest first, so each batch pads to similar lengths, under the token budget."""
        items = sorted(items, key=lambda kv: -cost(kv[1]))
        batch, widest = [], 0
        for kv in items:
            widest_if = max(widest, cost(kv[1]))
            if batch and widest_if * (len(batch) + 1) > self.max_batch_tokens:
                yield batch
                batch, widest_if = [], cost(kv[1])
            batch.append(kv)
            widest = widest_if
        if batch:
            yield batch

    def _right_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _last_logits(self, ids, mask, last: torch.Tensor, **kwargs):
        """Logits at position `last[i]` of each row i, and the decoder's output (its KV cache)."""
        out = self._decoder(input_ids=ids, attention_mask=mask, **kwargs)
        hidden = out.last_hidden_state  # on the device of the decoder's last layer
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self._head(hidden[rows, last.to(hidden.device)])  # [B, V]
        if self._softcap:  # models whose causal-LM forward caps the logits (Gemma 2) do it here too
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits, out

    def _score_one_pass(self, batch) -> dict[str, Scored]:
        seqs = [enc.context for _, enc in batch]
        ids, mask = self._right_padded(seqs)
        last = torch.tensor([len(s) - 1 for s in seqs])
        logits, _ = self._last_logits(ids, mask, last, use_cache=False)
        logprobs = F.log_softmax(logits.float(), dim=-1)  # [B, V]
        greedy = logprobs.argmax(dim=-1)
        out = {}
        for i, (key, enc) in enumerate(batch):
            toks = [c[0] for c in enc.continuations]
            lls = logprobs[i, toks].tolist()
            out[key] = Scored(key, lls, [int(greedy[i]) == t for t in toks], [1] * len(toks), "one_pass")
        return out

    def _score_prefix_cache(self, batch) -> dict[str, Scored]:
        contexts = [enc.context for _, enc in batch]
        ids, mask = self._right_padded(contexts)
        ctx_len = torch.tensor([len(c) for c in contexts])
        last_logits, prefix = self._last_logits(ids, mask, ctx_len - 1, use_cache=True)
        first = F.log_softmax(last_logits.float(), dim=-1)  # next-token after each context
        # one row per choice longer than one token: its tokens but the last, on top of its question's cache
        rows = [(q, j) for q, (_, enc) in enumerate(batch) for j, c in enumerate(enc.continuations) if len(c) > 1]
        rest = {}
        if rows:
            row_q = torch.tensor([q for q, _ in rows])
            cache = prefix.get("cache") or prefix.get("past_key_values")
            # A CPU index is valid for a cache layer on any device; one on cuda:0 is not for layers on cuda:3.
            cache.batch_select_indices(row_q)
            cont_ids, cont_mask = self._right_padded([batch[q][1].continuations[j][:-1] for q, j in rows])
            full_mask = torch.cat([mask[row_q.to(mask.device)], cont_mask], dim=1)
            positions = ctx_len[row_q][:, None] + torch.arange(cont_ids.shape[1])[None, :]
            logits = self.model(input_ids=cont_ids, attention_mask=full_mask, position_ids=positions.to(self.device),
                                use_cache=True, **{self._cache_arg: cache}).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)  # [R, T, V]
            for r, (q, j) in enumerate(rows):
                toks = torch.tensor(batch[q][1].continuations[j][1:], device=logprobs.device)
                lp = logprobs[r, : len(toks)]
                rest[(q, j)] = (lp[torch.arange(len(toks), device=lp.device), toks].sum().item(),
                                bool((lp.argmax(dim=-1) == toks).all()))
        out = {}
        for q, (key, enc) in enumerate(batch):
            lls, greedy = [], []
            top = int(first[q].argmax())
            for j, c in enumerate(enc.continuations):
                ll, g = float(first[q, c[0]]), top == c[0]
                if len(c) > 1:
                    ll, g = ll + rest[(q, j)][0], g and rest[(q, j)][1]
                lls.append(ll)
                greedy.append(g)
            out[key] = Scored(key, lls, greedy, [len(c) for c in enc.continuations], "prefix_cache")
        return out

    def _score_brute_force(self, key: str, enc: Encoded) -> Scored:
        lls, greedy = [], []
        for cont in enc.continuations:
            ll, g = brute_force_loglikelihood(self.model, enc.context, cont, self.max_length, self.device)
            lls.append(ll)
            greedy.append(g)
        return Scored(key, lls, greedy, [len(c) for c in enc.continuations], "brute_force")


def brute_force_loglikelihood(model, context_enc: list[int], cont_enc: list[int], max_length: int,
                              device=None) -> tuple[float, bool]:
    """lm-eval's per-pair computation: one sequence, left-truncated to max_length + 1 tokens.

    Runs under the caller's grad context (`Scorer.grad_context`), not one of its own."""
    inp = (context_enc + cont_enc)[-(max_length + 1):][:-1]
    ids = torch.tensor([inp], dtype=torch.long, device=device)
    logits = model(input_ids=ids).logits[0, -len(cont_enc):].float()
    logprobs = F.log_softmax(logits, dim=-1)
    toks = torch.tensor(cont_enc, device=logprobs.device)
    ll = logprobs[torch.arange(len(cont_enc)), toks].sum().item()
    return ll, bool((logprobs.argmax(dim=-1) == toks).all())


def score_brute_force(scorer: Scorer, requests: Sequence[Request]) -> list[Scored]:
    """Reference: every (context, continuation) pair on its own, no batching, no sharing."""
    with scorer.grad_context():
        return [scorer._score_brute_force(r.key, scorer.encode(r)) for r in requests]
