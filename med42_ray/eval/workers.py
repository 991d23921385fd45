"""The scoring actor: one model (base, full fine-tune, or base + LoRA adapter) on one GPU or CPU slot."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Sequence

import torch

from med42_ray.eval import generation
from med42_ray.eval.generation import Generated, GenerationRequest
from med42_ray.eval.prompts import Request
from med42_ray.eval.scoring import Scored, Scorer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str, adapter: str | None = None, dtype: str = "auto", device: str | None = None,
               max_memory: dict | None = None):
    """Tokenizer and model in eval mode. A LoRA adapter is applied with peft, not merged (so the
    base weights stay shared and the adapter's numbers are exactly what training produced).
    `max_memory` ({0: "20GiB", "cpu": "64GiB"}) spreads the layers over those devices with
    accelerate's device map, as an actor with several GPUs does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from med42_ray.model import resolve_model

    path = resolve_model(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    # an adapter directory may carry its own tokenizer (e.g. added tokens); prefer it when present
    tok_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    # safetensors only: a pickled checkpoint can run code when loaded
    # An actor given several GPUs (evaluate.gpus_per_actor, e.g. 4 for a 70B model in bf16) splits
    # the layers over them with accelerate's device map; otherwise the model sits on one device.
    sharded = max_memory is not None or (device.startswith("cuda") and torch.cuda.device_count() > 1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], use_safetensors=True,
                                                 device_map="auto" if sharded else None, max_memory=max_memory)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, use_safetensors=True)
    if not sharded:
        model.to(device)
    model.eval()
    return tokenizer, model


class ScoringActor:
    """Loads its model once and scores tasks (lists of Requests) sent by the runner."""

    def __init__(self, path: str, adapter: str | None, dtype: str, max_batch_tokens: int,
                 max_length: int | None, threads: int | None = None):
        from transformers.utils import logging as hf_logging

        if threads:
            torch.set_num_threads(threads)  # one actor per CPU slot: do not oversubscribe
        hf_logging.disable_progress_bar()  # an actor's output is a job log: no "Loading weights" bar redraws
        started = time.perf_counter()
        tokenizer, model = load_model(path, adapter, dtype)
        self.load_s = time.perf_counter() - started
        self.scorer = Scorer(model, tokenizer, max_length=max_length, max_batch_tokens=max_batch_tokens)

    def ready(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.scorer.device), "max_length": self.scorer.max_length}

    def score(self, task_id: int, requests: Sequence[Request]) -> tuple[int, list[Scored]]:
        return task_id, self.scorer.score(requests)

    def generate(self, task_id: int, requests: Sequence[GenerationRequest]) -> tuple[int, list[Generated]]:
        """Greedy chain-of-thought answers (`evaluate --protocol cot`) from the same loaded model."""
        return task_id, generation.generate(self.scorer, requests)

    def measure(self, tasks: Sequence[Sequence[Request | GenerationRequest]], merge: bool = False) -> dict:
        """Time answering `tasks` (after the first, answered once untimed: allocator and kernel
        warm-up), as the evaluation sends them, and this process's peak memory (eval/cost.py).
        `merge`: first merge the adapter into the base (for good: the evaluation is over)."""
        if merge:
            self.scorer.model = self.scorer.model.merge_and_unload()
        answer = self.generate if isinstance(tasks[0][0], GenerationRequest) else self.score
        answer(-1, tasks[0])
        device = self.scorer.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)  # the peak from here: weights + what scoring adds
        started = time.perf_counter()
        for task in tasks:
            answer(0, task)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        params = {id(p): p for p in self.scorer.model.parameters()}.values()
        return {"questions": sum(len(t) for t in tasks), "seconds": seconds, "load_s": self.load_s,
                "device": str(device), "dtype": str(next(iter(params)).dtype).removeprefix("torch."),
                "params": sum(p.numel() for p in params),
                "peak_device_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                # ru_maxrss is in KiB on Linux: the process's peak, loading and evaluation included
                "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
