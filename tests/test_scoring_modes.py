"""Every scoring path runs under the grad context the Scorer was built with: inference_mode by
default, plain no_grad for a model that trains on after scoring (the sweep validating a ZeRO-3
model, whose gathered parameters must not become inference tensors)."""

from __future__ import annotations

import pytest
import torch

from med42_ray.eval.prompts import Request
from med42_ray.eval.scoring import Scorer, score_brute_force
from med42_ray.eval.workers import load_model

# Shorter than the context, so each choice is left-truncated on its own: lm-eval's brute-force recipe.
MAX_LENGTH = 8
CHOICES = (" the heart", " the liver", " both lungs")
REQUEST = Request(benchmark="unit", item_id="q1", context="Question: which organ pumps blood around the body?\nAnswer:",
                  continuations=CHOICES, gold=0, choice_texts=CHOICES)
ENTRY_POINTS = {"score": Scorer.score, "score_brute_force": score_brute_force}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer, model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    return model, tokenizer


def score_watching_forwards(model, tokenizer, inference_mode: bool, entry_point: str):
    """The scores, and for each model forward: (inference mode on?, its logits)."""
    forwards = []
    hook = model.register_forward_hook(
        lambda module, inputs, out: forwards.append((torch.is_inference_mode_enabled(), out.logits)))
    try:
        scorer = Scorer(model, tokenizer, max_length=MAX_LENGTH, inference_mode=inference_mode)
        scored = ENTRY_POINTS[entry_point](scorer, [REQUEST])
    finally:
        hook.remove()
    return scored, forwards


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_brute_force_honours_inference_mode_off(tiny, entry_point):
    model, tokenizer = tiny
    scored, forwards = score_watching_forwards(model, tokenizer, inference_mode=False, entry_point=entry_point)
    assert [s.method for s in scored] == ["brute_force"]
    assert len(forwards) == len(CHOICES)
    assert not any(mode for mode, _ in forwards)
    # what a model that trains on does with a tensor made while scoring: save it for a backward
    weight = torch.ones((), requires_grad=True)
    for _, logits in forwards:
        assert not torch.is_inference(logits)
        (logits * weight).sum().backward()
    assert weight.grad is not None

    reference, on = score_watching_forwards(model, tokenizer, inference_mode=True, entry_point=entry_point)
    assert all(mode for mode, _ in on) and all(torch.is_inference(logits) for _, logits in on)
    assert [s.loglikelihoods for s in scored] == [s.loglikelihoods for s in reference]
    assert [s.is_greedy for s in scored] == [s.is_greedy for s in reference]
