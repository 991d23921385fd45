"""Zero-shot accuracy on a validation split, scored inside the training loop.

The train loop calls a `Validation` on every worker every `every_steps` optimizer steps and at the
last step (see train/loop.py); its metrics join that step's row, so they reach metrics.jsonl and
`ray.train.report`, from where the sweep forwards them to Tune, whose ASHA scheduler stops the
trials that fall behind. Scoring is `evaluate`'s: the same prompts (eval/prompts.py), the same
log-likelihood scorer (eval/scoring.py) and the same accuracy rule (eval/results.sample_row).

With replicated weights (LoRA on ZeRO-1/2) each rank scores its share of the questions and the
counts are all-reduced. Under ZeRO-3 every forward pass gathers parameters collectively, so every
rank must run the same forwards: each scores all the questions (same batches, same order).

Early stop: when ASHA stops a trial, the sweep records it in its stop registry (stopping.py); the
loop asks `stop_requested` after every step and ends the run normally, without export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.data.template import MED42_SYSTEM_PROMPT
from med42_ray.eval.prompts import Request, build_request

METRICS = ("val_accuracy", "val_gold_prob", "val_questions")


@dataclass
class Validation:
    items: list[BenchmarkItem]
    requests: list[Request]
    every_steps: int
    model: str  # its tokenizer scores the prompts: HF id, local directory or 'tiny-llama'
    max_batch_tokens: int = 8192
    max_length: int | None = None
    stop_registry: Any = None  # the sweep's stopping.StopRegistry actor, and this run's trial id
    trial_id: str | None = None
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, items: list[BenchmarkItem], protocol: str, every_steps: int, model: str,
              max_batch_tokens: int = 8192, max_length: int | None = None,
              system_prompt: str | None = MED42_SYSTEM_PROMPT) -> "Validation":
        """`system_prompt`: the run's `prepare.system_prompt` (the `med42_chat` protocol asks with it)."""
        requests = [build_request(it, protocol, system_prompt) for it in items]
        return cls(list(items), requests, every_steps, model, max_batch_tokens, max_length)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}  # each worker loads its own

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 or step == total_steps

    def __call__(self, model, rank: int, world: int, device, params_partitioned: bool) -> dict:
        import torch.distributed as dist

        from med42_ray.eval.results import sample_row
        from med42_ray.eval.scoring import Scorer

        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from med42_ray.model import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
        mine = range(len(self.requests)) if params_partitioned else range(rank, len(self.requests), world)
        # The model trains on after this: no inference tensors in ZeRO-3's gathered parameters
        scorer = Scorer(model, self._tokenizer, max_length=self.max_length, max_batch_tokens=self.max_batch_tokens,
                        inference_mode=not params_partitioned)
        scored = scorer.score([self.requests[i] for i in mine])
        correct = gold_prob = 0.0
        for i, s in zip(mine, scored):
            correct += sample_row(self.items[i], self.requests[i], s)["acc"]
            gold_prob += gold_probability(s.loglikelihoods, self.items[i].gold)
        totals = torch.tensor([correct, gold_prob, float(len(mine))], dtype=torch.float64, device=device)
        if not params_partitioned and dist.is_initialized():
            dist.all_reduce(totals)
        correct, gold_prob, n = totals.tolist()
        return {"val_accuracy": correct / n, "val_gold_prob": gold_prob / n, "val_questions": int(n)}

    def stop_requested(self, rank: int, device) -> bool:
        """Collective (every rank, every step): has the sweep asked this run to stop? Rank 0 reads
        the flag and every rank gets its answer, so they all leave the loop at the same step."""
        import ray
        import torch.distributed as dist

        if self.stop_registry is None:
            return False
        asked = 0.0
        if rank == 0:
            try:
                asked = float(ray.get(self.stop_registry.is_stopped.remote(self.trial_id), timeout=60))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                asked = 1.0  # the sweep that owns the registry is gone: nobody waits for this run
        flag = torch.tensor([asked], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.broadcast(flag, src=0)
        return bool(flag.item())


def gold_probability(loglikelihoods: list[float], gold: int) -> float:
    """The gold choice's share of the probability over the choices: a smooth companion to accuracy
    (it moves before the argmax does, and breaks ties between equally accurate trials)."""
    ll = np.asarray(loglikelihoods, dtype=np.float64)
    p = np.exp(ll - ll.max())
    return float(p[gold] / p.sum())
