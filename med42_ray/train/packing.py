"""Packed rows -> model inputs, and the loss over answer tokens that never crosses a document boundary.

A prepared row holds several documents back to back; `position_ids` restart at 0 for each one.
We pass `position_ids` and no 2-D attention mask: transformers (>= 4.53) then derives a
block-diagonal causal mask from the position restarts for eager/SDPA attention, and flash-attention
uses the same restarts as varlen boundaries, so packed documents never attend to each other.

Rows in a micro-batch are right-padded to the longest one. Padding gets its own position run
(0, 1, ...), so it forms a separate block that no real token attends to, and label -100.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
COLUMNS = ("input_ids", "labels", "position_ids")


@dataclass
class PackedBatch:
    input_ids: torch.Tensor     # [B, L] int64
    position_ids: torch.Tensor  # [B, L] int64
    target_ids: torch.Tensor    # [B, L] int64: the label of the *next* token, -100 where no loss
    real_tokens: int            # non-padding tokens
    padded_tokens: int          # B * L

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device),
                           self.target_ids.to(device), self.real_tokens, self.padded_tokens)

    @property
    def loss_tokens(self) -> int:
        return int((self.target_ids != IGNORE_INDEX).sum())


def next_token_targets(labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Shift labels left by one so position t is scored on token t+1, except where t+1 starts a new
    document (its position does not follow t's): the last token of one document must not be
    trained to predict the first token of the next."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    same_doc = position_ids[:, 1:] == position_ids[:, :-1] + 1
    targets[:, :-1] = torch.where(same_doc, targets[:, :-1], IGNORE_INDEX)
    return targets


def collate_packed(batch: Mapping[str, np.ndarray], pad_id: int = 0, vocab_size: int | None = None) -> PackedBatch:
    """Collate rows of prepare's Parquet (variable-length lists) into one padded PackedBatch."""
    for col in COLUMNS:
        if col not in batch:
            raise KeyError(f"prepared data has no column {col!r} (have: {', '.join(batch)})")
    rows = [tuple(np.asarray(batch[c][i], dtype=np.int64) for c in COLUMNS) for i in range(len(batch["input_ids"]))]
    width = max(len(r[0]) for r in rows)
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
    return PackedBatch(input_ids, position_ids, next_token_targets(labels, position_ids), real, input_ids.numel())


def token_losses(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Per-position cross-entropy (0 where there is no target), shape [B, L], in fp32."""
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    logits = out.logits.float()
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.target_ids.view(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view_as(batch.target_ids)


def loss_sum(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Summed cross-entropy over the batch's answer tokens; the caller divides by the global count so
    gradient accumulation and data parallelism give the exact per-token mean."""
    return token_losses(model, batch).sum()
