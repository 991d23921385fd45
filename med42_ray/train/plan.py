"""`med42-ray plan`: parameters, memory per GPU and training time for a model and a strategy.

Parameter counts come from the real module tree: the model is built on PyTorch's meta device
(no memory, no download: a preset config.json is enough) and, for the lora strategy, wrapped by
peft exactly as training wraps it (train.peft.method: LoRA, rsLoRA, DoRA, IA3, LoHa, LoKr).
Nothing is counted by formula.

Memory per GPU (bytes; bf16 weights, fp32 AdamW; Ψ all parameters, Ψt trainable, N GPUs,
ℓ the largest layer's parameters), DeepSpeed's accounting:

    stage 1:  2Ψ + 2Ψt + 16Ψt/N          (bf16 weights and grads replicated; fp32 master,
                                          fp32 grads and Adam m, v partitioned)
    stage 2:  2Ψ + 18Ψt/N                (grads partitioned too)
    stage 3:  4ℓ + 2Ψ/N + 16Ψt/N         (weights partitioned; one layer gathered at a time)
    optimizer offload:   the Ψt terms move to CPU (16Ψt per node's share)
    parameter offload:   stage 3 only; GPU keeps the gathered layer, 4ℓ

For full fine-tuning (Ψt = Ψ) these are DeepSpeed's `estimate_zero2/3_model_states_mem_needs`
with buffer factor 1; the table shows DeepSpeed's own numbers beside ours. Activations (with
gradient checkpointing, flash/SDPA attention that never materialises the s×s scores): one bf16
hidden state per layer, 2·s·b·h·L, plus one layer's recomputation, ~34·s·b·h (Korthikanti et al.
2022), plus the logits in bf16 and fp32, 6·s·b·V.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from med42_ray.train.config import LoraSettings, PeftSettings, Strategy
from med42_ray.train.metrics import flops_per_token

GiB = 1024**3
DEFAULT_MFU = 0.4  # what plan assumes unless told (--mfu), and what the report's plan column uses


@dataclass
class MemoryRow:
    zero_stage: int
    offload: str                 # none | optimizer | optimizer+params
    gpu_bytes: int               # model states per GPU (ours)
    cpu_bytes_per_node: int      # offloaded states per node (ours)
    deepspeed_gpu_bytes: int | None = None  # DeepSpeed's estimator, where its assumptions hold
    deepspeed_cpu_bytes: int | None = None


@dataclass
class Plan:
    model: str
    strategy: str
    peft_method: str | None      # the lora strategy's adapters (train.peft.method); None for full
    total_params: int
    trainable_params: int
    largest_layer_params: int
    gpus: int
    gpus_per_node: int
    seq_len: int
    micro_batch_size: int
    activation_bytes_per_gpu: int
    memory: list[MemoryRow] = field(default_factory=list)
    flops_per_token: float = 0.0
    peak_tflops: float = 0.0
    mfu: float = 0.0
    tokens: int = 0
    tokens_per_s: float = 0.0
    wall_time_s: float = 0.0
    checkpoint: dict[str, int] = field(default_factory=dict)  # bytes in storage, by kind (checkpoint_bytes)

    def to_dict(self) -> dict:
        return asdict(self)


def build_meta_model(model: str, strategy: Strategy, lora: LoraSettings | None = None,
                     trust_remote_code: bool = False, peft: PeftSettings | None = None) -> torch.nn.Module:
    """The model (with the adapters of `peft.method` for 'lora') on the meta device: exact shapes, no memory."""
    from transformers import AutoModelForCausalLM

    from med42_ray.model.presets import load_model_config

    config = load_model_config(model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        module = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    if strategy == "lora":
        from peft import get_peft_model

        from med42_ray.train.strategies import peft_config

        module = get_peft_model(module, peft_config(lora or LoraSettings(), peft or PeftSettings()))
    return module


def count_parameters(module: torch.nn.Module) -> tuple[int, int, int]:
    """(total, trainable, largest layer) over distinct parameters."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())
    return total, trainable, largest


def model_state_bytes(total: int, trainable: int, largest: int, stage: int, gpus: int, gpus_per_node: int,
                      offload_optimizer: bool, offload_params: bool) -> tuple[int, int]:
    """(GPU bytes, CPU bytes per node) for weights, gradients and optimizer states."""
    nodes = math.ceil(gpus / gpus_per_node)
    if stage == 3:
        weights = 4 * largest + (0 if offload_params else 2 * total // gpus)
        states = 16 * trainable // gpus
    elif stage == 2:
        weights, states = 2 * total, 18 * trainable // gpus
    else:
        weights, states = 2 * total + 2 * trainable, 16 * trainable // gpus
    cpu = 0
    if offload_optimizer:
        cpu += 16 * trainable // nodes
        states = 0
    if offload_params:
        cpu += 2 * total // nodes
    return weights + states, cpu


def deepspeed_estimate(total: int, largest: int, stage: int, gpus: int, gpus_per_node: int,
                       offload_optimizer: bool, offload_params: bool) -> tuple[int, int] | None:
    """DeepSpeed's own (GPU, CPU) model-state estimate for full fine-tuning; None for stage 1."""
    nodes = math.ceil(gpus / gpus_per_node)
    per_node = min(gpus, gpus_per_node)
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload_optimizer,
            additional_buffer_factor=1.0)
        return gpu, cpu
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload_optimizer,
            cpu_offload_params=offload_params, zero_init=True, additional_buffer_factor=1.0)
        return gpu, cpu
    return None


def activation_bytes(config, seq_len: int, micro_batch_size: int) -> int:
    s, b, h = seq_len, micro_batch_size, config.hidden_size
    return 2 * s * b * h * config.num_hidden_layers + 34 * s * b * h + 6 * s * b * config.vocab_size


def checkpoint_bytes(trainable: int, stage: int) -> dict[str, int]:
    """One checkpoint in storage, all workers together (train/checkpointing.py). Under ZeRO-3 the
    model states are only partition placeholders: fp32 master weights (4 bytes/param) and Adam's two
    moments (8); below it DeepSpeed also writes the trainable weights in bf16 (2). The weights-only
    kind (train.checkpoint_optimizer: epoch_end) exists under ZeRO-3 alone."""
    kinds = {"complete": (12 if stage == 3 else 14) * trainable}
    if stage == 3:
        kinds["weights_only"] = 4 * trainable
    return kinds


def weight_bytes(params: int, dtype_bytes: int) -> int:
    """Weights alone, as exported or loaded for inference."""
    return params * dtype_bytes


def export_bytes(total: int, trainable: int, strategy: Strategy, dtype_bytes: int, merged: bool = True) -> dict[str, int]:
    """What `train.export` writes, by export name (layout.export_names), weights only: the model;
    or the adapter and the base with it merged in (whose size is the base's: merging adds nothing)."""
    from med42_ray.layout import EXPORT_ADAPTER, EXPORT_MERGED, EXPORT_MODEL

    if strategy == "full":
        return {EXPORT_MODEL: weight_bytes(total, dtype_bytes)}
    out = {EXPORT_ADAPTER: weight_bytes(trainable, dtype_bytes)}
    if merged:
        out[EXPORT_MERGED] = weight_bytes(total - trainable, dtype_bytes)
    return out


def make_plan(model: str, strategy: Strategy, gpus: int, tokens: int, mfu: float, peak_tflops: float,
              seq_len: int = 4096, micro_batch_size: int = 1, gpus_per_node: int = 8,
              lora: LoraSettings | None = None, trust_remote_code: bool = False, zero_stage: int = 3,
              peft: PeftSettings | None = None) -> Plan:
    module = build_meta_model(model, strategy, lora, trust_remote_code, peft)
    total, trainable, largest = count_parameters(module)
    config = module.config if strategy == "full" else module.base_model.model.config
    rows = []
    for stage in (1, 2, 3):
        for offload_opt, offload_par in ((False, False), (True, False), (True, True)):
            if offload_par and stage != 3:
                continue
            gpu, cpu = model_state_bytes(total, trainable, largest, stage, gpus, gpus_per_node, offload_opt, offload_par)
            row = MemoryRow(stage, "optimizer+params" if offload_par else "optimizer" if offload_opt else "none", gpu, cpu)
            if strategy == "full":
                est = deepspeed_estimate(total, largest, stage, gpus, gpus_per_node, offload_opt, offload_par)
                if est is not None:
                    row.deepspeed_gpu_bytes, row.deepspeed_cpu_bytes = est
            rows.append(row)
    fpt = flops_per_token(module, config.num_hidden_layers, config.hidden_size, seq_len)
    tokens_per_s = mfu * peak_tflops * 1e12 * gpus / fpt
    method = (peft or PeftSettings()).method if strategy == "lora" else None
    return Plan(model=model, strategy=strategy, peft_method=method, total_params=total, trainable_params=trainable,
                largest_layer_params=largest, gpus=gpus, gpus_per_node=gpus_per_node, seq_len=seq_len,
                micro_batch_size=micro_batch_size,
                activation_bytes_per_gpu=activation_bytes(config, seq_len, micro_batch_size),
                memory=rows, flops_per_token=fpt, peak_tflops=peak_tflops, mfu=mfu, tokens=tokens,
                tokens_per_s=tokens_per_s, wall_time_s=tokens / tokens_per_s if tokens and tokens_per_s else 0.0,
                checkpoint=checkpoint_bytes(trainable, zero_stage))


def format_plan(plan: Plan) -> str:
    def gib(n: int | None) -> str:
        return "-" if n is None else f"{n / GiB:,.1f}"

    lines = [
        f"model {plan.model}, strategy {plan.strategy}" + (f" ({plan.peft_method})" if plan.peft_method else ""),
        f"  total parameters:      {plan.total_params:,}",
        f"  trainable parameters:  {plan.trainable_params:,} "
        f"({100 * plan.trainable_params / plan.total_params:.3f}%)",
        f"  largest layer:         {plan.largest_layer_params:,}",
        "",
        f"memory per GPU, model states, {plan.gpus} GPUs ({plan.gpus_per_node} per node), GiB:",
        f"  {'ZeRO':>4}  {'offload':<17} {'GPU':>9} {'CPU/node':>9}   {'DeepSpeed GPU':>13} {'DeepSpeed CPU':>13}",
    ]
    for r in plan.memory:
        lines.append(f"  {r.zero_stage:>4}  {r.offload:<17} {gib(r.gpu_bytes):>9} {gib(r.cpu_bytes_per_node):>9}   "
                     f"{gib(r.deepspeed_gpu_bytes):>13} {gib(r.deepspeed_cpu_bytes):>13}")
    lines += [
        f"  + activations (gradient checkpointing, seq {plan.seq_len}, micro-batch {plan.micro_batch_size}): "
        f"{gib(plan.activation_bytes_per_gpu)} GiB per GPU",
        "",
        f"throughput at MFU {plan.mfu:.0%} of {plan.peak_tflops:g} TFLOP/s per GPU:",
        f"  model FLOPs per token: {plan.flops_per_token:.4g}",
        f"  tokens/s (all GPUs):   {plan.tokens_per_s:,.0f}",
    ]
    if plan.tokens:
        lines.append(f"  {plan.tokens:,} tokens: {plan.wall_time_s / 3600:,.1f} h")
    lines += ["", "one checkpoint in storage (all workers), GiB:"]
    lines += [f"  {kind.replace('_', '-'):<13} {gib(n):>9}" for kind, n in plan.checkpoint.items()]
    return "\n".join(lines)

