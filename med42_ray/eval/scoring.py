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

Log-softmax is taken in float32 whatever the model dtype (lm-eval's HFLM takes it in the model's
dtype unless given `softmax_dtype`: in bf16 its log-probabilities sit on a grid of 1/16 near -10,
which differs from ours by up to ~0.03 per token; bench/gpu_check compares with lm-eval in float32).

On a GPU the forwards are cheap and what remains is launches and host syncs, so a batch is scored
with a fixed number of each whatever its size: the context pass runs without an attention mask
(right padding cannot reach a real token through a causal mask; the cache's padded slots are
masked in the continuation pass), only the positions that score a token reach the output head,
every choice's log-likelihood is gathered on the device, and one transfer brings a batch's scores
to the host. Tokenisation is one batched call per `score`.

A model too large for one GPU is spread over several devices (accelerate's device map): its last
hidden state lives on the last GPU, its KV cache layers on theirs. Every index here follows the
device of the tensor it indexes, and the one-pass path picks the last position of each row itself
(decoder, then the output head on those rows only) instead of handing transformers a 2-D
`logits_to_keep` tensor, which it indexes on the hidden state's device in recent versions and
mis-shapes in older ones.
"""

from __future__ import annotations

import contextlib
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
        # The causal LM's own forward is decoder -> output head; scoring runs the two itself so that
        # only the positions that score a token reach the head (peft's adapters sit inside both, so
        # an unmerged LoRA model scores the same way).
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._base = base
        self._decoder = base.get_decoder()
        self._head = base.get_output_embeddings()
        self._softcap = getattr(base.config, "final_logit_softcapping", None)
        # transformers >= 5.2x names the KV cache argument `cache`; earlier ones `past_key_values`
        params = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- tokenisation: lm-eval's _encode_pair / tok_encode ---------------------------------------

    def tok_encode(self, text: str) -> list[int]:
        return self._tok_encode_all([text])[0]

    def _tok_encode_all(self, texts: list[str]) -> list[list[int]]:
        """lm-eval's tok_encode of each text, in one batched tokenizer call per kind of text: the
        tokenizer's default special tokens, unless the text already starts with BOS."""
        out: list[list[int] | None] = [None] * len(texts)
        for add_special in (True, False):
            idx = [i for i, t in enumerate(texts)
                   if add_special != bool(self._bos_text and t.startswith(self._bos_text))]
            if idx:
                ids = self.tokenizer([texts[i] for i in idx], add_special_tokens=add_special)["input_ids"]
                for i, enc in zip(idx, ids):
                    out[i] = list(enc)
        return out

    def encode(self, req: Request) -> Encoded:
        return self.encode_all([req])[0]

    def encode_all(self, requests: Sequence[Request]) -> list[Encoded]:
        """Each request's context and continuation tokens, as lm-eval's _encode_pair makes them."""
        texts, spans = [], []
        for req in requests:
            context = req.context
            n_spaces = len(context) - len(context.rstrip())
            moved = context[len(context) - n_spaces:] if n_spaces else ""
            context = context[: len(context) - n_spaces]
            spans.append((len(texts), len(req.continuations)))
            texts += [context] + [context + moved + cont for cont in req.continuations]
        ids = self._tok_encode_all(texts)
        out = []
        for req, (start, n) in zip(requests, spans):
            context_enc = ids[start]
            conts = [whole[len(context_enc):] for whole in ids[start + 1: start + 1 + n]]
            if any(len(c) == 0 for c in conts):
                raise ValueError(f"{req.benchmark}/{req.item_id}: a continuation encodes to no token")
            out.append(Encoded(context_enc, conts))
        return out

    # -- scoring ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def scoring_context(self):
        """What every scoring path runs under: inference_mode unless the Scorer was built without
        it (a ZeRO-3 model gathers its parameters during the forward and keeps its small persistent
        ones, which would then be inference tensors that the next training backward refuses), and
        sdpa in place of flex_attention. transformers runs flex_attention compiled, and scoring's
        shapes change with every batch: each new one would make dynamo recompile it, the second
        with dynamic shapes, which Inductor could not lower on the first GPU run (NoValidChoicesError)
        and which the training steps after a sweep's validation would then get too. Both kernels
        compute exact attention; the model gets its own back afterwards."""
        kernel = getattr(self._base.config, "_attn_implementation", None)
        switch = kernel == "flex_attention" and hasattr(self._base, "set_attn_implementation")
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            if not switch:
                yield
                return
            self._base.set_attn_implementation("sdpa")
            try:
                yield
            finally:
                self._base.set_attn_implementation(kernel)

    def score(self, requests: Sequence[Request]) -> list[Scored]:
        """Scores in the order of `requests`; requests with equal keys are computed once."""
        with self.scoring_context():
            return self._score(requests)

    def _score(self, requests: Sequence[Request]) -> list[Scored]:
        first: dict[str, Request] = {}
        for r in requests:
            first.setdefault(r.key, r)
        unique = dict(zip(first, self.encode_all(list(first.values()))))
        one_pass, cached, brute = [], [], []
        for key, enc in unique.items():
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

    @staticmethod
    def _right_padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, longest] ids padded with `pad` and the [N, longest] bool mask of real tokens, on the CPU."""
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in seqs])
        return ids, torch.arange(width)[None, :] < lengths[:, None]

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 log-probabilities over the vocabulary of the hidden states [N, H] -> [N, V]."""
        logits = self._head(hidden)
        if self._softcap:  # models whose causal-LM forward caps the logits (Gemma 2) do it here too
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return F.log_softmax(logits.float(), dim=-1)

    def _context_pass(self, contexts: list[list[int]], use_cache: bool):
        """The contexts right-padded in one batch, with no attention mask (see the module doc): the
        log-probabilities after each context's last token [B, V], the decoder's output (its KV
        cache) and the contexts' real-token mask [B, W] (CPU)."""
        ids, mask = self._right_padded(contexts, self.pad_id)
        (ids,) = upload(self.device, ids)
        out = self._decoder(input_ids=ids, use_cache=use_cache)
        hidden = out.last_hidden_state  # on the device of the decoder's last layer
        rows, last = upload(hidden.device, torch.arange(len(contexts)), mask.sum(dim=1) - 1)
        return self._project(hidden[rows, last]), out, mask

    @staticmethod
    def _gather_first(first: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every choice's first-token log-probability (float64) and whether that token is the
        argmax, flat in (question, choice) order, on first's device."""
        q, tok = upload(first.device, torch.tensor([i for i, (_, enc) in enumerate(batch) for _ in enc.continuations]),
                        torch.tensor([c[0] for _, enc in batch for c in enc.continuations]))
        return first[q, tok].double(), first.argmax(dim=-1)[q] == tok

    @staticmethod
    def _to_host(batch, lls: torch.Tensor, greedy: torch.Tensor, method: str) -> dict[str, Scored]:
        """The batch's one device -> host transfer, cut into each question's Scored."""
        values, hits = torch.stack([lls, greedy.double()]).cpu().tolist()
        out, i = {}, 0
        for key, enc in batch:
            n = len(enc.continuations)
            out[key] = Scored(key, values[i:i + n], [h == 1.0 for h in hits[i:i + n]],
                              [len(c) for c in enc.continuations], method)
            i += n
        return out

    def _score_one_pass(self, batch) -> dict[str, Scored]:
        first, _, _ = self._context_pass([enc.context for _, enc in batch], use_cache=False)
        return self._to_host(batch, *self._gather_first(first, batch), "one_pass")

    def _score_prefix_cache(self, batch) -> dict[str, Scored]:
        first, prefix, ctx_mask = self._context_pass([enc.context for _, enc in batch], use_cache=True)
        lls, greedy = self._gather_first(first, batch)
        conts = [c for _, enc in batch for c in enc.continuations]
        question = [q for q, (_, enc) in enumerate(batch) for _ in enc.continuations]
        # one row per choice longer than one token: its tokens but the last, on top of its question's cache
        multi = [i for i, c in enumerate(conts) if len(c) > 1]
        if multi:
            rest_ll, rest_greedy = self._continuation_pass(prefix, ctx_mask, torch.tensor([question[i] for i in multi]),
                                                           [conts[i] for i in multi])
            (at,) = upload(lls.device, torch.tensor(multi))
            lls = lls.index_add(0, at, rest_ll.to(lls.device))
            greedy = greedy.index_put((at,), greedy[at] & rest_greedy.to(greedy.device))
        return self._to_host(batch, lls, greedy, "prefix_cache")

    def _continuation_pass(self, prefix, ctx_mask: torch.Tensor, row_q: torch.Tensor, conts: list[list[int]]):
        """Each continuation's tokens after the first, scored on top of its question's KV cache in
        one forward: their summed log-probability (float64) and whether each was the argmax, [R]."""
        cache = prefix.get("cache") or prefix.get("past_key_values")
        select_rows(cache, row_q)
        inputs, real = self._right_padded([c[:-1] for c in conts], self.pad_id)
        positions = ctx_mask.sum(dim=1)[row_q][:, None] + torch.arange(inputs.shape[1])[None, :]
        mask = torch.cat([ctx_mask[row_q], real], dim=1).long()
        inputs, positions, mask = upload(self.device, inputs, positions, mask)
        out = self._decoder(input_ids=inputs, position_ids=positions, attention_mask=mask, use_cache=True,
                            **{self._cache_arg: cache})
        hidden = out.last_hidden_state  # [R, T, H]
        # the N positions that score a token, as flat indices made here (a boolean index on the
        # device would wait for it to count them)
        scoring = real.reshape(-1).nonzero()[:, 0]
        targets = torch.tensor([t for c in conts for t in c[1:]])
        row = torch.arange(len(conts)).repeat_interleave(torch.tensor([len(c) - 1 for c in conts]))
        (scoring,) = upload(hidden.device, scoring)
        logprobs = self._project(hidden.reshape(-1, hidden.shape[-1]).index_select(0, scoring))  # [N, V]
        targets, row = upload(logprobs.device, targets, row)
        token_ll = logprobs.gather(1, targets[:, None])[:, 0].double()
        missed = (logprobs.argmax(dim=-1) != targets).double()
        zeros = torch.zeros(len(conts), dtype=torch.float64, device=logprobs.device)
        return zeros.index_add(0, row, token_ll), zeros.index_add(0, row, missed) == 0

    def _score_brute_force(self, key: str, enc: Encoded) -> Scored:
        lls, greedy = [], []
        for cont in enc.continuations:
            ll, g = brute_force_loglikelihood(self.model, enc.context, cont, self.max_length, self.device)
            lls.append(ll)
            greedy.append(g)
        return Scored(key, lls, greedy, [len(c) for c in enc.continuations], "brute_force")


def upload(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """CPU tensors on `device`. To a GPU in one copy from pinned memory that does not wait for the
    work already queued there: a plain `.to(cuda)` of a CPU tensor synchronises the stream, and each
    such wait leaves the GPU idle while Python queues the next kernels."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    flat = torch.cat([t.reshape(-1).long() for t in tensors]).pin_memory().to(device, non_blocking=True)
    pieces = flat.split([t.numel() for t in tensors])
    return [p.view(t.shape).to(t.dtype) for p, t in zip(pieces, tensors)]


def select_rows(cache, rows: torch.Tensor) -> None:
    """Keep (and repeat) the cache's batch rows `rows` (CPU): each layer indexed on its own device
    (layers spread by a device map sit on several), with one upload per device instead of one
    synchronising copy per layer."""
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        cache.batch_select_indices(rows)  # another cache layout: a CPU index is valid on any device
        return
    on_device: dict[torch.device, torch.Tensor] = {}
    for layer in layers:
        device = layer.keys.device
        if device not in on_device:
            (on_device[device],) = upload(device, rows)
        layer.batch_select_indices(on_device[device])


def brute_force_loglikelihood(model, context_enc: list[int], cont_enc: list[int], max_length: int,
                              device=None) -> tuple[float, bool]:
    """lm-eval's per-pair computation: one sequence, left-truncated to max_length + 1 tokens.

    Runs under the caller's context (`Scorer.scoring_context`), not one of its own."""
    inp = (context_enc + cont_enc)[-(max_length + 1):][:-1]
    ids = torch.tensor([inp], dtype=torch.long, device=device)
    logits = model(input_ids=ids).logits[0, -len(cont_enc):].float()
    logprobs = F.log_softmax(logits, dim=-1)
    toks = torch.tensor(cont_enc, device=logprobs.device)
    ll = logprobs[torch.arange(len(cont_enc)), toks].sum().item()
    return ll, bool((logprobs.argmax(dim=-1) == toks).all())


def score_brute_force(scorer: Scorer, requests: Sequence[Request]) -> list[Scored]:
    """Reference: every (context, continuation) pair on its own, no batching, no sharing."""
    with scorer.scoring_context():
        return [scorer._score_brute_force(r.key, scorer.encode(r)) for r in requests]
