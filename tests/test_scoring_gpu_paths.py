"""What keeps the Scorer fast on a GPU, checked on the CPU: per batch, a fixed handful of host
reads and glue kernels whatever the number of questions, a context pass without an attention mask,
and bf16 scores of the prefix-cache path that equal one full-sequence forward's up to rounding
(the first GPU run's 1.23 difference from lm-eval was lm-eval's bf16 log-softmax, not ours)."""

from __future__ import annotations

import collections

import pytest
import torch

from med42_ray.benchmarks import load_benchmarks
from med42_ray.eval.prompts import build_request
from med42_ray.eval.scoring import Scorer, score_brute_force, upload
from med42_ray.eval.workers import load_model
from med42_ray.paths import resolve_path

# Tensor methods that hand a value to Python: on a GPU each waits for all the work queued before it.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.fixture(scope="module")
def requests() -> dict[str, list]:
    items = load_benchmarks(resolve_path("pkg://sample/data/benchmarks"), ["medqa_4options"])["medqa_4options"]
    items = [it for it in items if not it.needs_image][:12]
    return {p: [build_request(it, p) for it in items] for p in ("harness", "full_text")}


def _tiny(tiny_model_dir, dtype: str):
    tokenizer, model = load_model(tiny_model_dir, dtype=dtype, device="cpu")
    return model, tokenizer


def _watch(monkeypatch, scorer: Scorer):
    """Count host reads made by the scoring code (not inside the decoder), and record each decoder
    call's keyword arguments."""
    reads, calls, depth = collections.Counter(), [], [0]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            if depth[0] == 0:
                reads[_name] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    forward = scorer._decoder.forward

    def decoder(*a, **k):
        calls.append(k)
        depth[0] += 1
        try:
            return forward(*a, **k)
        finally:
            depth[0] -= 1
    monkeypatch.setattr(scorer, "_decoder", type("Decoder", (), {"__call__": staticmethod(decoder),
                                                                   "forward": staticmethod(decoder)})())
    return reads, calls


@pytest.mark.parametrize("protocol", ["harness", "full_text"])
def test_one_host_read_per_batch(tiny_model_dir, requests, protocol, monkeypatch):
    model, tokenizer = _tiny(tiny_model_dir, "float32")
    reference = Scorer(model, tokenizer).score(requests[protocol])
    for budget, batches in ((100_000, 1), (1_000, None)):
        scorer = Scorer(model, tokenizer, max_batch_tokens=budget)
        reads, calls = _watch(monkeypatch, scorer)
        scored = scorer.score(requests[protocol])
        monkeypatch.undo()
        context_passes = [k for k in calls if "position_ids" not in k]
        batches = batches or len(context_passes)
        assert len(context_passes) == batches and (batches == 1) == (budget == 100_000)
        assert sum(reads.values()) == batches == reads["tolist"], reads  # one transfer per batch, nothing else
        # the context pass runs causal with no mask; the continuation pass masks the cache's padding
        assert all("attention_mask" not in k for k in context_passes)
        assert all(k["attention_mask"] is not None for k in calls if "position_ids" in k)
        assert [ll for s in scored for ll in s.loglikelihoods] == \
            pytest.approx([ll for s in reference for ll in s.loglikelihoods], abs=1e-4)
        assert [s.is_greedy for s in scored] == [s.is_greedy for s in reference]


@pytest.mark.parametrize("protocol", ["harness", "full_text"])
def test_bf16_prefix_cache_equals_a_full_sequence_forward(tiny_model_dir, requests, protocol):
    """Positions, masks and the cache are right in bf16 too: each choice's log-likelihood is within
    rounding of lm-eval's recipe (one sequence per choice), far below the 1/32 per token that a bf16
    log-softmax (lm-eval's default in bf16) rounds by near -10."""
    model, tokenizer = _tiny(tiny_model_dir, "bfloat16")
    scorer = Scorer(model, tokenizer)
    fast, brute = scorer.score(requests[protocol]), score_brute_force(scorer, requests[protocol])
    assert {s.method for s in fast} == {"prefix_cache"}  # the embedded tokenizer spells " B" in two tokens
    for a, b in zip(fast, brute):
        for x, y, n in zip(a.loglikelihoods, b.loglikelihoods, a.num_tokens):
            assert abs(x - y) / n < 0.01, (a.key, x, y, n)


def test_upload_keeps_values_shapes_and_dtypes():
    ids, mask = torch.tensor([[3, 4], [5, 6]]), torch.tensor([True, False])
    got = upload(torch.device("cpu"), ids, mask)
    assert [t.dtype for t in got] == [torch.long, torch.bool]
    assert torch.equal(got[0], ids) and torch.equal(got[1], mask)
    if torch.cuda.is_available():  # the pinned, non-blocking path
        on_gpu = upload(torch.device("cuda"), ids, mask)
        assert all(t.is_cuda for t in on_gpu)
        assert torch.equal(on_gpu[0].cpu(), ids) and torch.equal(on_gpu[1].cpu(), mask)


def test_a_flex_attention_model_is_scored_with_sdpa_and_gets_flex_back(tiny_model_dir, requests):
    """Training's kernel is flex_attention (compiled; one shape per run): a sweep's validation scores
    that model, whose scoring shapes change with every batch, so the Scorer switches it to sdpa."""
    from transformers import AutoModelForCausalLM

    flex = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="flex_attention").eval()
    sdpa_model, tokenizer = _tiny(tiny_model_dir, "float32")
    seen = []
    flex.get_decoder().register_forward_pre_hook(lambda module, args: seen.append(flex.config._attn_implementation))
    got = Scorer(flex, tokenizer).score(requests["full_text"][:3])
    assert set(seen) == {"sdpa"} and flex.config._attn_implementation == "flex_attention"
    want = Scorer(sdpa_model, tokenizer).score(requests["full_text"][:3])
    assert [ll for s in got for ll in s.loglikelihoods] == \
        pytest.approx([ll for s in want for ll in s.loglikelihoods], abs=1e-4)
