"""The GPU check's model and its compute ceiling: a random ~1.1B Llama in a local HF directory, and
the bf16 matrix-product rate measured on the same GPU in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

# TinyLlama-1.1B's shape (Llama-2's architecture with grouped-query attention): 1.10B parameters
# with Llama-2's 32000-token vocabulary.
ONE_B_SPEC = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
}
INIT_SEED = 0


def build_model_dir(target: Path, device: str) -> dict:
    """Save a randomly initialised 1.1B Llama (bf16 safetensors) with the embedded tiny model's
    tokenizer (its ids are all below the vocabulary size), so every loader of ours and lm-eval's
    reads it like a downloaded checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from med42_ray.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
    if len(tokenizer) > ONE_B_SPEC["vocab_size"]:
        raise ValueError(f"the tiny tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary")
    config = LlamaConfig(**ONE_B_SPEC, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(INIT_SEED)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"path": str(target), "params": params, "spec": "TinyLlama-1.1B shape, random init", **ONE_B_SPEC,
            "saved_dtype": "bfloat16", "tokenizer": "the embedded tiny model's"}


def describe_model_dir(path: str) -> dict:
    """The smoke's model: the embedded tiny Llama as it is."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    c = model.config
    return {"path": path, "params": sum(p.numel() for p in model.parameters()), "spec": "the embedded tiny-llama",
            "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers, "vocab_size": c.vocab_size,
            "saved_dtype": "float32"}


def matmul_rate(device: str, dtype: torch.dtype, n: int, warmup: int, reps: int) -> dict:
    """FLOP/s of an n x n x n product on random data: median of `reps` timed runs after `warmup`
    (CUDA events on a GPU, wall clock on CPU). Fresh inputs for every run would measure the
    allocator; the operands (2 n^2 elements) are far larger than the GPU's L2 at n = 8192."""
    gen = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(warmup):
        torch.matmul(a, b)
    times = [_timed(lambda: torch.matmul(a, b), device) for _ in range(reps)]
    median = statistics.median(times)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "device": device, "runs": reps,
            "median_s": median, "min_s": min(times), "max_s": max(times), "flops_per_s": 2 * n**3 / median}


def timed(fn, device: str):
    """`fn()`'s value and the wall-clock seconds it took, its GPU work finished (what a user waits)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - t0


def _timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
