"""Packing correctness: a packed batch gives exactly the loss of its documents run one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from med42_ray.train.packing import IGNORE_INDEX, collate_packed, loss_sum, next_token_targets, token_losses


def _model(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def _doc(rng, n: int, prompt: int):
    ids = rng.integers(4, 97, size=n).astype(np.int32)
    labels = ids.copy()
    labels[:prompt] = IGNORE_INDEX  # loss only on the answer
    return ids, labels


def _rows(docs_per_row):
    """Concatenate documents into packed rows the way `prepare` writes them."""
    out = {"input_ids": [], "labels": [], "position_ids": []}
    for docs in docs_per_row:
        out["input_ids"].append(np.concatenate([d[0] for d in docs]))
        out["labels"].append(np.concatenate([d[1] for d in docs]))
        out["position_ids"].append(np.concatenate([np.arange(len(d[0]), dtype=np.int32) for d in docs]))
    return {k: np.array(v, dtype=object) for k, v in out.items()}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_per_document_loss(attn):
    rng = np.random.default_rng(0)
    # Two rows of different lengths (so the shorter one is padded); the second document of row 0
    # starts with answer tokens, as a split overlong document would, to catch cross-document targets.
    d = [_doc(rng, 23, 9), _doc(rng, 17, 0), _doc(rng, 11, 4), _doc(rng, 30, 12), _doc(rng, 8, 3)]
    model = _model(attn)
    with torch.no_grad():
        packed = collate_packed(_rows([[d[0], d[1], d[2]], [d[3], d[4]]]))
        assert packed.real_tokens == sum(len(x[0]) for x in d)
        packed_sum = loss_sum(model, packed)
        packed_tokens = packed.loss_tokens

        single_sums, single_tokens = [], 0
        for doc in d:
            one = collate_packed(_rows([[doc]]))
            single_sums.append(loss_sum(model, one))
            single_tokens += one.loss_tokens
    assert packed_tokens == single_tokens == sum(int((x[1][1:] != IGNORE_INDEX).sum()) for x in d)
    torch.testing.assert_close(packed_sum, torch.stack(single_sums).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed_sum / packed_tokens, torch.stack(single_sums).sum() / single_tokens,
                               rtol=1e-5, atol=1e-6)


def test_packing_changes_loss_without_the_block_mask():
    """Guard that the equality above is not vacuous: with one continuous position run (documents
    allowed to attend to each other) the same tokens give a different loss."""
    rng = np.random.default_rng(1)
    d = [_doc(rng, 20, 5), _doc(rng, 20, 5)]
    model = _model("sdpa")
    with torch.no_grad():
        packed = collate_packed(_rows([d]))
        leaky = collate_packed(_rows([d]))
        leaky.position_ids = torch.arange(leaky.input_ids.shape[1]).unsqueeze(0)
        masked = token_losses(model, packed)
        unmasked = token_losses(model, leaky)
    second = slice(20, 39)
    assert not torch.allclose(masked[0, second], unmasked[0, second], atol=1e-4)
    torch.testing.assert_close(masked[0, :19], unmasked[0, :19])


def test_targets_stop_at_document_boundaries():
    labels = torch.tensor([[5, 6, 7, 8, 9, 10]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    assert next_token_targets(labels, positions).tolist() == [[6, 7, IGNORE_INDEX, 9, 10, IGNORE_INDEX]]


def test_collate_rejects_tokens_outside_the_vocabulary():
    rows = _rows([[(np.array([1, 2, 300], dtype=np.int32), np.array([1, 2, 300], dtype=np.int32))]])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        collate_packed(rows, vocab_size=97)
