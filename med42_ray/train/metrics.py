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

import functools
import json
import warnings
from pathlib import Path

import torch

# Dense (no sparsity) bf16 tensor-core peak of one GPU, FLOP/s, by the exact name
# torch.cuda.get_device_name() reports: a substring match would give the A10G the A10's peak, the L40
# the L4's and the H100 NVL the SXM's. NVIDIA's datasheets print the sparse figure (marked "*", "with
# sparsity"); the dense peak is half of it unless the datasheet states it.
GPU_PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.5e12,   # H100 SXM5; NVIDIA H100 datasheet: BF16 Tensor Core 1,979*
    "NVIDIA H100 PCIe": 756.5e12,        # NVIDIA H100 datasheet, PCIe: 1,513*
    "NVIDIA H100 NVL": 835.5e12,         # NVIDIA H100 datasheet, NVL: 1,671*
    "NVIDIA H200": 989.5e12,             # H200 SXM; NVIDIA H200 datasheet: BF16 Tensor Core 1,979*
    "NVIDIA H200 NVL": 835.5e12,         # NVIDIA H200 datasheet, NVL: 1,671*
    "NVIDIA H800": 989.5e12,             # H800 SXM; NVIDIA H800 datasheet: 1,979* (H100's tensor cores)
    "NVIDIA H800 PCIe": 756.5e12,        # NVIDIA H800 datasheet, PCIe: 1,513*
    "NVIDIA GH200 480GB": 989.5e12,      # NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 1,979*
    "NVIDIA B200": 2250e12,              # NVIDIA HGX B200 (Blackwell datasheet): FP16/BF16 4.5 PFLOPS* per GPU
    "NVIDIA A100-SXM4-80GB": 312e12,     # NVIDIA A100 datasheet: BF16 Tensor Core 312 (624*), all variants
    "NVIDIA A100-SXM4-40GB": 312e12,     # NVIDIA A100 datasheet
    "NVIDIA A100-PCIE-40GB": 312e12,     # NVIDIA A100 datasheet
    "NVIDIA A100 80GB PCIe": 312e12,     # NVIDIA A100 datasheet
    "NVIDIA A10": 125e12,                # NVIDIA A10 datasheet: BF16 Tensor Core 125 (250*)
    "NVIDIA A10G": 70e12,                # AWS G5 only, no public datasheet: 70 in Baseten's "A10 vs A10G" specs
    "NVIDIA L4": 121e12,                 # NVIDIA L4 datasheet: BF16 Tensor Core 242*
    "NVIDIA L40": 181.05e12,             # NVIDIA L40 datasheet: BF16 Tensor Core 181.05 (362.1*)
    "NVIDIA L40S": 362.05e12,            # NVIDIA L40S datasheet: BF16 Tensor Core 362.05 (733*)
}


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
    """Peak FLOP/s of one worker: configured, else looked up from the GPU's name; None on CPU."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        return datasheet_peak_flops(torch.cuda.get_device_name())
    return None


def datasheet_peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU named `device_name` (as torch.cuda.get_device_name() spells it), or
    None for a GPU not in GPU_PEAK_FLOPS, with a warning (once per name): then no MFU is reported."""
    flops = GPU_PEAK_FLOPS.get(device_name.strip())
    if flops is None:
        _warn_unknown_gpu(device_name)
    return flops


@functools.cache
def _warn_unknown_gpu(device_name: str) -> None:
    warnings.warn(f"no datasheet peak FLOP/s for GPU {device_name!r}, so MFU is not reported; set "
                  "train.peak_tflops to its dense bf16 tensor-core TFLOP/s (no sparsity) to get it",
                  stacklevel=3)


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
