"""Export the trained model in Hugging Face format (safetensors only).

full: ZeRO-3 weights are gathered layer by layer onto rank 0 (DeepSpeed's consolidated state
      dict, so no GPU ever holds the whole model) and saved with save_pretrained -> <out>/model.
lora: the peft adapter -> <out>/adapter, and the adapter merged into a fresh copy of the base
      model -> <out>/merged. Both reload with AutoModelForCausalLM.from_pretrained.
The tokenizer is saved beside each, so every exported directory is self-contained.
"""

from __future__ import annotations

import torch

from med42_ray.layout import EXPORT_ADAPTER, EXPORT_MERGED, EXPORT_MODEL, TrainDir
from med42_ray.train.config import TrainConfig


def gathered_state_dict(engine, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """Full (unpartitioned) state dict on rank 0, None elsewhere. Collective: call on every rank."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():  # ZeRO-3
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)
    if dist.get_rank() != 0:
        return None
    trainable = {n for n, p in engine.module.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()
            if not trainable_only or k in trainable}


def export_model(engine, cfg: TrainConfig, model_path: str, outputs: TrainDir, rank: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    state_dict = gathered_state_dict(engine, trainable_only=cfg.strategy == "lora")
    # Training is over: models loaded from here on are plain, not built under zero.Init.
    unset_hf_deepspeed_config()
    if rank != 0:
        return
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    module = engine.module
    if cfg.strategy == "full":
        out = outputs.export(EXPORT_MODEL)
        _for_inference(module).save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return

    from peft import PeftModel

    adapter = outputs.export(EXPORT_ADAPTER)
    module.save_pretrained(adapter, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=module.base_model.model.dtype,
                                                trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(outputs.export(EXPORT_MERGED), safe_serialization=True)
    tokenizer.save_pretrained(outputs.export(EXPORT_MERGED))


def _for_inference(model):
    """Training switched the KV cache off; a saved model should generate with it."""
    model.config.use_cache = True
    return model
