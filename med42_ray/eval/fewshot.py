"""Few-shot examples chosen as lm-evaluation-harness 0.4.13 chooses them.

lm-eval (api/task.py ConfigurableTask.fewshot_docs/fewshot_context, api/samplers.py) takes a task's
examples from its `fewshot_split`, else its training split, else its validation split, and draws them
with the task's `fewshot_config.sampler`:

  first_n   the first k of the pool, in file order (MMLU: `fewshot_split: dev`)
  default   one random.Random(fewshot_random_seed, 1234 by default) per task, and for each question,
            in the order of the test split, rnd.sample(pool, k): the i-th question gets the i-th draw

The eval question is removed from the draw only when the pool is the test split itself, which
never happens here. Per benchmark:

  mmlu_<subject>   mmlu/dev/<subject>_dev.csv, first_n (cais/mmlu's dev split)
  medqa_4options   MedQA train (GBaker/MedQA-USMLE-4-options-hf's training_split) when its file is
                   under the root, else MedQA dev (lm-eval's next choice, its validation_split); default
  usmle_*          no lm-eval task; prompted with medqa_4options' template, so MedQA's pool and sampler
  headqa_en        HEAD-QA's train_HEAD_EN.json (EleutherAI/headqa's training_split, in its order:
                   exams, then questions), default
  others           no pool in the raw files lm-eval would draw from (medmcqa's train split,
                   pubmedqa's fold0 train split), or not implemented yet (medqa_4options_dev):
                   skipped with that reason when --num-fewshot > 0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Sequence

from med42_ray.benchmarks import BenchmarkItem, formats

DEFAULT_SEED = 1234  # lm-eval's DEFAULT_OTHER_SEED, its evaluator's fewshot_random_seed


@dataclass(frozen=True)
class FewshotPool:
    """Where a benchmark's examples come from and how lm-eval draws them."""

    split: str  # "dev" / "train": recorded in results
    source: str  # the file, relative to the benchmarks root
    sampler: str  # "first_n" or "default"
    items: tuple[BenchmarkItem, ...]

    def describe(self) -> dict:
        return {"split": self.split, "source": self.source, "sampler": self.sampler, "pool_size": len(self.items)}


def fewshot_pool(root: Path, benchmark: str) -> FewshotPool | str:
    """The benchmark's pool under `root`, or why there is none (a sentence)."""
    if benchmark.startswith("mmlu_"):
        subject = benchmark.removeprefix("mmlu_")
        source = formats.mmlu_test_file(subject, "dev")
        if not (root / source).is_file():
            return f"its few-shot split {source} is not under {root}"
        return FewshotPool("dev", source, "first_n", tuple(formats.load_mmlu(root, subject, split="dev")))
    if benchmark == "medqa_4options" or benchmark.startswith("usmle_"):
        for split, source in (("train", formats.MEDQA_TRAIN), ("dev", formats.MEDQA_DEV)):
            if (root / source).is_file():
                return FewshotPool(split, source, "default", tuple(formats.load_medqa(root, split=split)))
        return f"neither MedQA's train ({formats.MEDQA_TRAIN}) nor dev split ({formats.MEDQA_DEV}) is under {root}"
    if benchmark == "headqa_en":  # lm-eval's headqa_en: its training split, the default sampler
        if not (root / formats.HEADQA_TRAIN).is_file():
            return f"its few-shot split, HEAD-QA's train ({formats.HEADQA_TRAIN}), is not under {root}"
        return FewshotPool("train", formats.HEADQA_TRAIN, "default", tuple(formats.load_headqa(root, split="train")))
    reasons = {"medmcqa": "lm-eval draws from MedMCQA's train split, which is not among the raw files",
               "pubmedqa": "lm-eval draws from bigbio's pqa-l fold0 train split, which the raw files do not define",
               "medqa_4options_dev": "few-shot for the validation split is not implemented yet"}
    return reasons.get(benchmark, f"no few-shot rule for {benchmark}")


def draw_examples(pool: FewshotPool, items: Sequence[BenchmarkItem], k: int,
                  seed: int = DEFAULT_SEED) -> dict[str, tuple[BenchmarkItem, ...]]:
    """Each item's k examples by item id. `items` must be the benchmark's every question in file
    order (before image exclusion or --limit): the default sampler's i-th draw is the i-th question's."""
    if k > len(pool.items):
        raise ValueError(f"--num-fewshot {k}: the few-shot pool {pool.source} has only {len(pool.items)} examples")
    if pool.sampler == "first_n":
        return {it.id: pool.items[:k] for it in items}
    rnd = Random(seed)
    return {it.id: tuple(rnd.sample(pool.items, k)) for it in items}
