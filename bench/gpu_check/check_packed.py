"""Part (a): a packed micro batch gives each document the losses it has alone, for every attention
kernel, at micro batch 1 and 2 (rows of different lengths, so the shorter one is padded).

The rows are `prepare`'s packed rows; each document is cut out where its positions restart and run
alone as the reference. The training code computes both sides (`collate_packed`, `token_losses`,
which runs a flash-attention micro batch as one padding-free row). A control runs the same packed
batch with a plain 2-D attention mask, so the documents of a row DO see each other: its distance
from the reference is what a leak would look like, next to the distance measured.

flex_attention runs compiled (transformers torch.compiles it) and is given one sequence length, as
training gives it (`packing.fixed_width`): every batch here, each document alone included, is padded
to the prepared row length (the padding comes after the document, so a causal kernel keeps it out
of the document's losses), and dynamo's automatic dynamic shapes are off, so the one other shape
(micro batch 2) compiles statically instead of as the dynamic kernel Inductor could not lower on the
first GPU run (NoValidChoicesError).
"""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from check_model import timed

from med42_ray.layout import PreparedDir
from med42_ray.train.packing import COLUMNS, IGNORE_INDEX, collate_packed, fixed_width, loss_sum, token_losses
from med42_ray.train.strategies import flash_kernel_available
from med42_ray.train.trainer import read_manifest

KERNELS = ("eager", "sdpa", "flex_attention", "flash_attention_2")
# Largest per-token |packed - alone| that passes, by dtype: fp32 is exact up to summation order;
# bf16 runs different kernels for the two shapes (masked vs causal) and rounds every layer.
TOLERANCE = {torch.float32: {"max": 1e-4, "mean": 1e-5}, torch.bfloat16: {"max": 0.25, "mean": 0.02}}


def packed_rows(prepared, n: int) -> list[dict]:
    """The first `n` packed rows of the prepared shards that hold several documents, as lists (a row
    of one long document has nothing to keep apart)."""
    _, shards = read_manifest(PreparedDir(prepared))
    rows = []
    for shard in shards:
        table = pq.read_table(shard, columns=list(COLUMNS))
        rows += [row for row in (dict(zip(COLUMNS, r)) for r in zip(*(table.column(c).to_pylist() for c in COLUMNS)))
                 if len(documents(row)) > 1]
        if len(rows) >= n:
            return rows[:n]
    raise ValueError(f"{prepared}: {len(rows)} packed rows of several documents, the check needs {n}")


def documents(row: dict) -> list[dict]:
    """The documents of a packed row, split where the positions restart."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [{c: row[c][a:b] for c in COLUMNS} for a, b in zip(starts, starts[1:])]


def first_documents(row: dict, share: float) -> dict:
    """The row cut after its first documents (at least one) holding at most `share` of its tokens."""
    docs, kept, limit = documents(row), [], share * len(row["input_ids"])
    for d in docs:
        if kept and sum(len(k["input_ids"]) for k in kept) + len(d["input_ids"]) > limit:
            break
        kept.append(d)
    return {c: [t for d in kept for t in d[c]] for c in COLUMNS}


def layouts(rows: list[dict]) -> dict[int, list[dict]]:
    """Micro batch 1: one packed row; micro batch 2: a full row and a shorter one (padded)."""
    return {1: [rows[0]], 2: [rows[1], first_documents(rows[2], 0.6)]}


def collate(rows: list[dict], vocab: int, width: int | None = None):
    return collate_packed({c: [np.asarray(r[c], dtype=np.int64) for r in rows] for c in COLUMNS},
                          pad_id=0, vocab_size=vocab, width=width)


def unavailable(kernel: str, device: str) -> str | None:
    """Why this attention kernel is not measured here (None: it is)."""
    if kernel == "flash_attention_2":
        if not device.startswith("cuda"):
            return "CUDA only"
        if not flash_kernel_available(kernel):  # what the trainer checks before it builds the model
            return ("the flash-attn package is not installed (PyPI has no prebuilt wheel for this torch and "
                    "CUDA; none is carried)")
    if kernel == "flex_attention" and not device.startswith("cuda"):
        return "on CPU inductor compiles it (minutes on 2 cores): measured by the GPU run"
    return None


def check_kernels(model_dir: str, rows: list[dict], seq_len: int, device: str, dtype: torch.dtype, reps: int) -> dict:
    """Every kernel at micro batch 1 and 2; one kernel's error is reported and the others still run."""
    import traceback

    out = {}
    for kernel in KERNELS:
        why = unavailable(kernel, device)
        if why:
            out[kernel] = {"status": "skipped", "reason": why}
            continue
        try:
            with static_shapes(kernel):
                out[kernel] = check_kernel(model_dir, kernel, rows, fixed_width(kernel, seq_len), device, dtype, reps)
        except Exception as e:  # noqa: BLE001 - reported, and the next kernel runs
            out[kernel] = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def static_shapes(kernel: str):
    """For flex_attention: dynamo compiles each new shape statically (see the module doc). Micro
    batch 1 and 2, no-grad and grad, the packed mask and the control's make 6 compiled variants;
    dynamo's default limit of 8 per function is raised so that none falls back to eager."""
    import contextlib

    if kernel != "flex_attention":
        return contextlib.nullcontext()
    settings = {"automatic_dynamic_shapes": False, "recompile_limit": 32}  # the limit's name since torch 2.7
    return torch._dynamo.config.patch(**{k: v for k, v in settings.items() if hasattr(torch._dynamo.config, k)})


def check_kernel(model_dir: str, kernel: str, rows: list[dict], width: int | None, device: str, dtype: torch.dtype,
                 reps: int) -> dict:
    """`width`: every batch padded to it (flex_attention), else each to its longest row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=kernel).to(device)
    model.eval()
    vocab, tol = model.config.vocab_size, TOLERANCE[dtype]
    result = {"status": "ok", "width": width or "longest row"}
    for mb, layout in layouts(rows).items():
        with torch.no_grad():
            figures = compare_layout(model, layout, device, vocab, width)
        figures["fwd_bwd_tokens_per_s"] = None if kernel == "eager" and device.startswith("cuda") else \
            fwd_bwd_rate(model, collate(layout, vocab, width).to(device), device, reps)  # eager: the reference only; its
        # backward would keep every layer's (heads x 4096 x 4096) fp32 attention matrix, ~100 GB at 1.1B
        figures["ok"] = figures["max_abs_diff"] <= tol["max"] and figures["mean_abs_diff"] <= tol["mean"]
        result[f"mb{mb}"] = figures
        if not figures["ok"]:
            result["status"] = "fail"
    result["tolerance"] = tol
    del model
    return result


def compare_layout(model, layout: list[dict], device: str, vocab: int, width: int | None = None) -> dict:
    """Per-token losses of the packed batch, of each document alone (padded to `width` if given), and
    of the leaking control."""
    batch = collate(layout, vocab, width).to(device)
    packed = split_by_document(token_losses(model, batch), layout)
    leaked = split_by_document(leaking_losses(model, batch, layout), layout)
    alone, scored = [], []
    for doc in (d for row in layout for d in documents(row)):
        n = len(doc["input_ids"])
        single = collate([doc], vocab, width).to(device)
        alone.append(token_losses(model, single)[0, :n])
        scored.append(single.target_ids[0, :n] != IGNORE_INDEX)
    diff = torch.cat([(p - a).abs()[m] for p, a, m in zip(packed, alone, scored)])
    leak = torch.cat([(p - a).abs()[m] for p, a, m in zip(leaked, alone, scored)])
    total_alone = float(sum(a[m].sum() for a, m in zip(alone, scored)))
    total_packed = float(sum(p[m].sum() for p, m in zip(packed, scored)))
    return {"rows": len(layout), "row_tokens": [len(r["input_ids"]) for r in layout], "documents": len(alone),
            "loss_tokens": int(diff.numel()), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "sum_rel_diff": abs(total_packed - total_alone) / total_alone,
            "leak_max_abs_diff": float(leak.max()), "leak_mean_abs_diff": float(leak.mean())}


def leaking_losses(model, batch, layout: list[dict]) -> torch.Tensor:
    """The control: the same rows and positions with a plain padding mask, which lets every token
    attend to the earlier documents of its row."""
    lengths = torch.tensor([len(r["input_ids"]) for r in layout], device=batch.input_ids.device)
    mask = (torch.arange(batch.input_ids.shape[1], device=lengths.device)[None, :] < lengths[:, None]).long()
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask,
                   use_cache=False).logits.float()
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.target_ids.view(-1), ignore_index=IGNORE_INDEX,
                           reduction="none")
    return loss.view_as(batch.target_ids)


def split_by_document(losses: torch.Tensor, layout: list[dict]) -> list[torch.Tensor]:
    out = []
    for r, row in enumerate(layout):
        start = 0
        for doc in documents(row):
            out.append(losses[r, start:start + len(doc["input_ids"])])
            start += len(doc["input_ids"])
    return out


def fwd_bwd_rate(model, batch, device: str, reps: int) -> float:
    """Real tokens per second of forward + backward of the packed batch (median of `reps` after one
    warm-up, which also compiles flex_attention's kernels)."""
    def step():
        loss_sum(model, batch).backward()
        model.zero_grad(set_to_none=True)

    step()
    times = [timed(step, device)[1] for _ in range(reps)]
    return batch.real_tokens / statistics.median(times)
