"""Packed rows -> model inputs, and the loss over answer tokens that never crosses a document boundary.

A prepared row holds several documents back to back; `position_ids` restart at 0 for each one.
We pass `position_ids` and no 2-D attention mask, and transformers keeps the documents apart:

- eager, sdpa and flex_attention build a mask per row from the position restarts
  (`masking_utils.find_packed_sequence_indices`, indexed by row), so a micro-batch of several
  padded rows is correct as it is;
- flash attention (flash_attention_2/3/4 and the Hub's flash kernels) reads the restarts as
  varlen boundaries only when the batch has ONE row (`_is_packed_sequence`); with several rows it
  would let the documents of a row attend to each other. For these kernels the micro-batch runs as
  one padding-free row (the rows' real tokens back to back), as TRL and Axolotl do.

Rows in a micro-batch are right-padded to the longest one, or for flex_attention to the prepared
row length (`fixed_width`). Padding gets its own position run (0, 1, ...), so it forms a separate
block that no real token attends to, and label -100.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
COLUMNS = ("input_ids", "labels", "position_ids")
# flex_attention's block size (torch.nn.attention.flex_attention._DEFAULT_SPARSE_BLOCK_SIZE): its
# block masks cover the sequence in blocks of this many tokens.
FLEX_BLOCK = 128


@dataclass
class PackedBatch:
    input_ids: torch.Tensor     # [B, L] int64
    position_ids: torch.Tensor  # [B, L] int64
    target_ids: torch.Tensor    # [B, L] int64: the label of the *next* token, -100 where no loss
    real_tokens: int            # non-padding tokens
    padded_tokens: int          # B * L
    row_lengths: torch.Tensor   # [B] int64: each row's real tokens (the rest of the row is padding)

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device),
                           self.target_ids.to(device), self.real_tokens, self.padded_tokens,
                           self.row_lengths.to(device))

    @property
    def loss_tokens(self) -> int:
        return int((self.target_ids != IGNORE_INDEX).sum())

    def real_mask(self) -> torch.Tensor:
        """[B, L] bool: True on real tokens, False on padding."""
        columns = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return columns.unsqueeze(0) < self.row_lengths.unsqueeze(1)

    def as_one_row(self) -> "PackedBatch":
        """The micro-batch as one padding-free row: each row's real tokens, back to back. Positions
        restart at every document, and so at every row; no target crosses a document's (or a row's)
        end. The documents, and their losses, are the same as in the padded batch."""
        real = self.real_mask()
        return PackedBatch(self.input_ids[real].unsqueeze(0), self.position_ids[real].unsqueeze(0),
                           self.target_ids[real].unsqueeze(0), self.real_tokens, self.real_tokens,
                           self.row_lengths.sum().view(1))


def next_token_targets(labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Shift labels left by one so position t is scored on token t+1, except where t+1 starts a new
    document (its position does not follow t's): the last token of one document must not be
    trained to predict the first token of the next."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    same_doc = position_ids[:, 1:] == position_ids[:, :-1] + 1
    targets[:, :-1] = torch.where(same_doc, targets[:, :-1], IGNORE_INDEX)
    return targets


def fixed_width(attn_implementation: str | None, seq_len: int) -> int | None:
    """The width every micro-batch of a run is padded to (None: each to its longest row).

    transformers runs flex_attention through `torch.compile` (one compiled function per process,
    default shapes: `integrations/flex_attention.py`). The first call of a new length makes dynamo
    recompile it with dynamic shapes: 12.6 s of one step on an H200 (torch 2.11), and in eval mode
    Inductor could not lower that dynamic kernel at all (NoValidChoicesError). So with flex_attention
    every micro-batch has the same shape: the prepared row length, rounded up to whole flex blocks;
    the padding it adds is a block of its own that no real token attends to, and carries no loss."""
    if attn_implementation != "flex_attention":
        return None
    return -(-seq_len // FLEX_BLOCK) * FLEX_BLOCK


def collate_packed(batch: Mapping[str, np.ndarray], pad_id: int = 0, vocab_size: int | None = None,
                   width: int | None = None) -> PackedBatch:
    """Collate rows of prepare's Parquet (variable-length lists) into one padded PackedBatch: to the
    longest row, or to `width` tokens (`fixed_width`)."""
    for col in COLUMNS:
        if col not in batch:
            raise KeyError(f"prepared data has no column {col!r} (have: {', '.join(batch)})")
    rows = [tuple(np.asarray(batch[c][i], dtype=np.int64) for c in COLUMNS) for i in range(len(batch["input_ids"]))]
    longest = max(len(r[0]) for r in rows)
    if width is not None and longest > width:
        i = max(range(len(rows)), key=lambda j: len(rows[j][0]))
        raise ValueError(f"packed row {i} of the batch has {longest} tokens, more than the fixed width {width} "
                         "(the prepared data's seq_len is larger than the run's)")
    width = longest if width is None else width
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
    real = 0
    for i, (ids, lab, pos) in enumerate(rows):
        n = len(ids)
        if not (len(lab) == n == len(pos)):
            raise ValueError(f"packed row {i} of the batch: input_ids, labels and position_ids differ in length "
                             f"({n}, {len(lab)}, {len(pos)})")
        input_ids[i, :n] = torch.from_numpy(ids)
        labels[i, :n] = torch.from_numpy(lab)
        position_ids[i, :n] = torch.from_numpy(pos)
        position_ids[i, n:] = torch.arange(width - n)  # padding: its own block, starting at 0
        real += n
    if vocab_size is not None and real and int(input_ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(input_ids.max())} is outside the model's vocabulary ({vocab_size}); "
                         "the data was prepared with a different tokenizer than the model's")
    row_lengths = torch.tensor([len(r[0]) for r in rows], dtype=torch.long)
    return PackedBatch(input_ids, position_ids, next_token_targets(labels, position_ids), real, input_ids.numel(),
                       row_lengths)


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The transformers attention kernel of `model`: a bare or peft-wrapped model, or a DeepSpeed
    engine around one."""
    inner = getattr(model, "module", model)  # DeepSpeed's engine keeps the model as .module
    return inner.config._attn_implementation


def needs_one_row(attn_implementation: str | None) -> bool:
    """Does this kernel keep packed documents apart only in a single-row batch? True for flash
    attention in every form transformers routes through its varlen path (flash_attention_2/3/4,
    "kernels-community/flash-attn2", ...): the same test transformers applies
    (`is_flash_attention_requested`)."""
    return attn_implementation is not None and "flash" in attn_implementation


def token_losses(model: torch.nn.Module, batch: PackedBatch, one_row: bool | None = None) -> torch.Tensor:
    """Per-position cross-entropy (0 where there is no target), shape [B, L], in fp32.

    one_row: run the micro-batch as one padding-free row (`PackedBatch.as_one_row`); None decides
    by the model's attention kernel (`needs_one_row`). The losses come back in the batch's shape
    either way, 0 on padding.
    """
    if one_row is None:
        one_row = needs_one_row(attention_implementation(model))
    if not one_row or batch.input_ids.shape[0] == 1:  # one row (of any kernel) has no padding
        return _forward_losses(model, batch)
    flat = _forward_losses(model, batch.as_one_row())
    losses = flat.new_zeros(batch.target_ids.shape)
    losses[batch.real_mask()] = flat[0]
    return losses


def _forward_losses(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    logits = out.logits.float()
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.target_ids.view(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view_as(batch.target_ids)


def loss_sum(model: torch.nn.Module, batch: PackedBatch, one_row: bool | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's answer tokens; the caller divides by the global count so
    gradient accumulation and data parallelism give the exact per-token mean. `one_row` as in
    `token_losses`."""
    return token_losses(model, batch, one_row).sum()
