"""The only place the two strategies differ: how the model is built and wrapped for DeepSpeed.

full: every parameter trains, ZeRO-3 by default; the model is created inside DeepSpeed's
      `zero.Init` (via transformers' HfDeepSpeedConfig), so each worker only ever holds its own
      partition of the weights: a 70B model is never materialised whole on one worker.
lora: the base model is frozen and peft adds adapters (train.peft.method: LoRA's rank-r pairs on
      every linear projection by default; rsLoRA, DoRA, IA3, LoHa or LoKr); ZeRO-2 by default (set
      zero_stage 3 for a base that does not fit one GPU). Whatever the method, only the adapters
      require gradients, so checkpoints, restore and export treat them all alike.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from med42_ray.errors import ConfigError
from med42_ray.train.config import LORA_FAMILY, LoraSettings, PeftSettings, TrainConfig


@dataclass
class BuiltModel:
    model: torch.nn.Module
    # transformers only builds under zero.Init while this object is alive; keep it with the model.
    zero3_context: Any = None


def model_dtype(cfg: TrainConfig, use_gpu: bool) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and use_gpu):
        return torch.bfloat16
    return torch.float32


def deepspeed_config(cfg: TrainConfig, world_size: int, use_gpu: bool) -> dict:
    """The DeepSpeed config for this run. Optimizer and schedule are ours (see loop.py) unless the
    optimizer is offloaded, where DeepSpeed's CPU Adam is the only sensible choice."""
    stage = cfg.resolved_zero_stage()
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": use_gpu,
    }
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": model_dtype(cfg, use_gpu) == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds["bf16"]["enabled"] and cfg.grad_accum > 1:
        # DeepSpeed sums the micro-batches' gradients in the model's dtype unless told otherwise, and
        # bf16 keeps 8 significant bits: every addition rounds away the small parts of the gradient.
        # fp32 works with every ZeRO stage, offloaded or not (ZeRO-1 without offload then runs
        # DeepSpeed's BF16_Optimizer, which keeps fp32 gradients itself).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if cfg.offload_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.resolved_lr(), "betas": list(cfg.adam_betas), "eps": cfg.adam_eps,
            "weight_decay": cfg.weight_decay}}
    return ds


def build_model(cfg: TrainConfig, model_path: str, ds_config: dict, use_gpu: bool) -> BuiltModel:
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    check_attention_kernel(cfg.attn_implementation)
    # Must exist before from_pretrained: it is how transformers knows to build under zero.Init.
    zero3 = HfDeepSpeedConfig(ds_config) if cfg.resolved_zero_stage() == 3 else None
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=model_dtype(cfg, use_gpu),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,  # never unpickle weights
    )
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # Non-reentrant: correct with frozen inputs (LoRA) and with ZeRO-3's parameter hooks.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # its older name, still an alias in 5.2x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.strategy == "lora":
        model = wrap_lora(cfg, model)
    return BuiltModel(model, zero3)


def check_attention_kernel(attn: str) -> None:
    """Fail before any weights load when this worker cannot run `attn` (config validation has
    already required GPUs and bf16 for flash attention; the package is only visible here)."""
    packages = {"flash_attention_2": "flash-attn", "flash_attention_3": "flash-attn-3"}
    if attn in packages and not flash_kernel_available(attn):
        raise ConfigError(
            f"train.attn_implementation={attn} needs a CUDA GPU and the {packages[attn]} package on every "
            "training worker (a prebuilt wheel matching its torch and CUDA: building one from source compiles "
            "CUDA kernels); flex_attention keeps packed documents apart as well and needs only torch")


def flash_kernel_available(attn: str) -> bool:
    """Can this process run flash_attention_2 / _3? Where transformers can fetch a prebuilt kernel
    from the Hub instead of the package (`kernels_fallback_ok`, newer 5.x), that counts too."""
    from transformers import utils

    check = {"flash_attention_2": utils.is_flash_attn_2_available,
             "flash_attention_3": utils.is_flash_attn_3_available}[attn]
    if "kernels_fallback_ok" in inspect.signature(check).parameters:
        return check(kernels_fallback_ok=True)
    return check()


def wrap_lora(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The lora strategy's model: `model` frozen, with train.peft.method's adapters (training,
    export and `plan` all wrap through here, so the adapters' names and shapes agree)."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg.lora, cfg.peft))


def peft_config(lora: LoraSettings, settings: PeftSettings):
    """peft's config for the chosen method, from its section of the train config."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    method = settings.method
    if method in LORA_FAMILY:
        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                          use_rslora=method == "rslora", use_dora=method == "dora")
    if method == "ia3":
        ia3 = settings.ia3
        return IA3Config(target_modules=list(ia3.target_modules), feedforward_modules=list(ia3.feedforward_modules),
                         task_type="CAUSAL_LM")
    lycoris = settings.loha if method == "loha" else settings.lokr
    common = dict(r=lycoris.r, alpha=lycoris.alpha, rank_dropout=lycoris.rank_dropout,
                  module_dropout=lycoris.module_dropout, target_modules=list(lycoris.target_modules),
                  task_type="CAUSAL_LM")
    if method == "loha":
        return LoHaConfig(**common)
    return LoKrConfig(**common, decompose_factor=settings.lokr.decompose_factor,
                      decompose_both=settings.lokr.decompose_both)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on norms and biases (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # ZeRO-3 partitions hold a 1-element placeholder; ds_shape is the real shape.
            shape = getattr(p, "ds_shape", p.shape)
            (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, correct under ZeRO-3 partitioning."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
