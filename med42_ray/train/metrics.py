"""Per-step metrics: model FLOPs per token, MFU, and the metrics.jsonl log.

Model FLOPs per token (the PaLM appendix-B convention, no recomputation counted):

    full:  6 * N                      + 12 * n_layers * d_model * seq_len
    lora:  4 * N_frozen + 6 * N_train + 12 * n_layers * d_model * seq_len

N counts every weight a token multiplies through (all parameters except the input embedding
table, which is a lookup). 6 = 2 (forward multiply-add) + 4 (backward: input and weight
gradients). Frozen LoRA base weights need no weight gradient, hence 4. The attention term is the
QK^T and AV products at full row length `seq_len`, forward and backward, as PaLM counts it
(an upper bound when packed documents are masked from each other).

MFU = FLOPs per token * non-padding tokens per second / (peak FLOP/s per worker * workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (NVIDIA datasheets), FLOP/s; matched against the device name.
GPU_PEAK_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),
]


def flops_per_token(model: torch.nn.Module, n_layers: int, d_model: int, seq_len: int) -> float:
    frozen = trainable = 0
    embed = model.get_input_embeddings().weight
    embed_numel = getattr(embed, "ds_numel", embed.numel())
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    # The embedding table is a lookup, not a matmul, whether it trains or not.
    if embed.requires_grad:
        trainable -= embed_numel
    else:
        frozen -= embed_numel
    return 4.0 * frozen + 6.0 * trainable + 12.0 * n_layers * d_model * seq_len


def peak_flops(configured_tflops: float | None) -> float | None:
    """Peak FLOP/s of one worker: configured, else looked up from the GPU name; None on CPU."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_FLOPS:
            if key in name:
                return flops
    return None


class MetricsLog:
    """metrics.jsonl, one JSON object per optimizer step, written by rank 0.

    On resume, lines past the checkpoint's step move to metrics.superseded.jsonl: those steps are
    trained again, so metrics.jsonl keeps exactly one line per step of the trajectory that produced
    the model, and the superseded lines stay available to compare the two trajectories.
    """

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept, superseded = [], []
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    (kept if json.loads(line).get("step", 0) <= resume_step else superseded).append(line)
        path.write_text("".join(f"{line}\n" for line in kept))
        if superseded:
            with superseded_path(path).open("a") as f:
                f.write("".join(f"{line}\n" for line in superseded))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def superseded_path(path: Path) -> Path:
    return path.with_name(path.stem + ".superseded.jsonl")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
