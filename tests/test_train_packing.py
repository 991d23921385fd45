"""Packing correctness: a packed batch gives exactly the loss of its documents run one by one."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import is_flash_attn_2_available

from med42_ray.train.packing import (FLEX_BLOCK, IGNORE_INDEX, attention_implementation, collate_packed,
                                     fixed_width, loss_sum, needs_one_row, next_token_targets, token_losses)


def _model(attn: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def _missing(attn: str, device: str) -> str | None:
    """Why this attention implementation cannot run on this machine (None: it can)."""
    if device == "cuda" and not torch.cuda.is_available():
        return f"{attn} on CUDA needs a CUDA GPU; torch {torch.__version__} sees none"
    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        return "flash_attention_2 needs the flash-attn package (a prebuilt wheel for this torch and CUDA)"
    if attn == "flex_attention" and device == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        return "flex_attention on CPU is compiled by inductor, which needs a C++ compiler (g++ or $CXX)"
    return None


# (attention, device): CPU runs in fp32; CUDA in bf16, the dtype training uses there (and the only
# one flash attention takes).
ATTENTION_CASES = [("eager", "cpu"), ("sdpa", "cpu"), ("flex_attention", "cpu"),
                   ("sdpa", "cuda"), ("flex_attention", "cuda"), ("flash_attention_2", "cuda")]


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


def _documents():
    rng = np.random.default_rng(0)
    # The second document of the first row starts with answer tokens, as a split overlong document
    # would, to catch cross-document targets.
    return [_doc(rng, 23, 9), _doc(rng, 17, 0), _doc(rng, 11, 4), _doc(rng, 30, 12), _doc(rng, 8, 3)]


# Rows of documents (indices into _documents()) per micro batch size: micro batch 1 is one packed
# row; micro batch 2 two rows of different lengths, so the shorter one is padded.
LAYOUTS = {1: [[0, 1, 2, 3, 4]], 2: [[0, 1, 2], [3, 4]]}


def _per_document(losses: torch.Tensor, docs, layout) -> list[torch.Tensor]:
    """Cut a packed batch's [B, L] losses into each document's own."""
    out = {}
    for r, row in enumerate(layout):
        start = 0
        for i in row:
            out[i] = losses[r, start:start + len(docs[i][0])]
            start += len(docs[i][0])
        assert not losses[r, start:].any()  # padding has no loss
    return [out[i] for i in sorted(out)]


@pytest.mark.parametrize("micro_batch", [1, 2])
@pytest.mark.parametrize("attn,device", ATTENTION_CASES)
def test_packed_loss_equals_per_document_loss(attn, device, micro_batch):
    if (missing := _missing(attn, device)) is not None:
        pytest.skip(missing)
    if attn == "flex_attention":
        # Start from a fresh compile: after earlier shapes made the batch dimension dynamic, torch
        # 2.13's CPU inductor emits flex-attention C++ that does not compile (cur_qSplitSize4 ...).
        torch._dynamo.reset()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # bf16: per token within 0.02 (rounding is ~1e-3 here; documents that see each other move the
    # loss by ~0.1), sums within 0.2%. fp32: equal up to summation order.
    tol, sum_tol = ((dict(rtol=0, atol=2e-2), dict(rtol=2e-3, atol=0)) if dtype == torch.bfloat16
                    else (dict(rtol=1e-5, atol=1e-4), dict(rtol=1e-5, atol=1e-4)))
    d, layout = _documents(), LAYOUTS[micro_batch]
    model = _model(attn, device, dtype)
    with torch.no_grad():
        packed = collate_packed(_rows([[d[i] for i in row] for row in layout])).to(device)
        assert packed.real_tokens == sum(len(x[0]) for x in d)
        packed_losses = token_losses(model, packed)
        packed_sum, packed_tokens = loss_sum(model, packed), packed.loss_tokens

        single_losses, single_tokens = [], 0
        for doc in d:
            one = collate_packed(_rows([[doc]])).to(device)
            single_losses.append(token_losses(model, one)[0])
            single_tokens += one.loss_tokens
    assert packed_tokens == single_tokens == sum(int((x[1][1:] != IGNORE_INDEX).sum()) for x in d)
    for mine, alone in zip(_per_document(packed_losses, d, layout), single_losses):
        torch.testing.assert_close(mine, alone, **tol)
    single_sum = torch.stack([x.sum() for x in single_losses]).sum()
    torch.testing.assert_close(packed_sum, single_sum, **sum_tol)
    torch.testing.assert_close(packed_sum / packed_tokens, single_sum / single_tokens, **sum_tol)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_row_path_gives_the_losses_and_gradients_of_the_padded_batch(attn):
    """Flash attention runs a micro-batch as one padding-free row; forced here on kernels that can
    run both ways, it must give every document the same losses and the model the same gradients."""
    d, layout = _documents(), LAYOUTS[2]
    batch = collate_packed(_rows([[d[i] for i in row] for row in layout]))
    one_row = batch.as_one_row()
    assert one_row.input_ids.shape == (1, batch.real_tokens) and one_row.loss_tokens == batch.loss_tokens
    results = []
    for flatten in (False, True):
        model = _model(attn)
        losses = token_losses(model, batch, one_row=flatten)
        losses.sum().backward()
        results.append((losses.detach(), [p.grad for p in model.parameters()]))
    (padded, padded_grads), (flat, flat_grads) = results
    assert flat.shape == padded.shape
    torch.testing.assert_close(flat, padded, rtol=1e-5, atol=1e-5)
    for a, b in zip(flat_grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_only_flash_kernels_run_the_micro_batch_as_one_row():
    for attn in ("flash_attention_2", "flash_attention_3", "flash_attention_4", "kernels-community/flash-attn2"):
        assert needs_one_row(attn), attn
    for attn in ("eager", "sdpa", "flex_attention", None):
        assert not needs_one_row(attn), attn
    assert attention_implementation(_model("eager")) == "eager"


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


def test_flex_attention_gets_one_width_per_run():
    """The prepared row length rounded up to whole flex blocks; other kernels pad to each batch's longest row."""
    assert fixed_width("flex_attention", 4096) == 4096
    assert fixed_width("flex_attention", 4095) == 4096 and fixed_width("flex_attention", 4097) == 4096 + FLEX_BLOCK
    for attn in ("sdpa", "eager", "flash_attention_2", None):
        assert fixed_width(attn, 4095) is None


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_batch_padded_to_the_fixed_width_gives_the_same_losses(attn):
    d, layout = _documents(), LAYOUTS[2]
    rows = _rows([[d[i] for i in row] for row in layout])
    tight, wide = collate_packed(rows), collate_packed(rows, width=128)
    assert wide.input_ids.shape == (2, 128) and tight.input_ids.shape[1] < 128
    assert (wide.real_tokens, wide.loss_tokens) == (tight.real_tokens, tight.loss_tokens)
    assert wide.padded_tokens == 256
    model = _model(attn)
    with torch.no_grad():
        a, b = token_losses(model, tight), token_losses(model, wide)
    torch.testing.assert_close(b[:, :a.shape[1]], a, rtol=1e-5, atol=1e-5)
    assert not b[:, a.shape[1]:].any()


def test_collate_rejects_a_row_longer_than_the_fixed_width():
    d = _documents()
    with pytest.raises(ValueError, match=r"packed row 0 of the batch has 51 tokens, more than the fixed width 48"):
        collate_packed(_rows([[d[0], d[1], d[2]], [d[4]]]), width=48)


def test_flex_attention_compiles_once_for_micro_batches_of_different_lengths():
    """The first GPU run: a micro-batch shorter than the others made dynamo recompile flex_attention
    with dynamic shapes (12.6 s of a step; in eval mode Inductor failed). At the fixed width there
    is nothing to recompile: dynamo raises if it tries."""
    if (missing := _missing("flex_attention", "cpu")) is not None:
        pytest.skip(missing)
    torch._dynamo.reset()
    d, model = _documents(), _model("flex_attention")
    width = fixed_width("flex_attention", 81)  # the longest row below
    assert width == FLEX_BLOCK
    batches = [[[d[0], d[1], d[2], d[3]]], [[d[4], d[0]]], [[d[3]]]]  # 81, 31 and 30 real tokens
    with torch.no_grad():
        token_losses(model, collate_packed(_rows(batches[0]), width=width))  # compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            for docs in batches[1:]:
                padded = token_losses(model, collate_packed(_rows(docs), width=width))
                alone = token_losses(_model("sdpa"), collate_packed(_rows(docs)))
                torch.testing.assert_close(padded[:, :alone.shape[1]], alone, rtol=1e-4, atol=1e-4)

