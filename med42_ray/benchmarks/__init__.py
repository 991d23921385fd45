"""Benchmark registry: the zero-shot medical benchmarks, read from their public files.

    from med42_ray.benchmarks import BenchmarkItem, BENCHMARKS, load_benchmarks
    items = load_benchmarks("../shared/data/raw")          # {name: [BenchmarkItem, ...]}
    BENCHMARKS["medqa_4options"].available(root)           # are its files there?
"""

from med42_ray.benchmarks.item import BenchmarkFormatError, BenchmarkItem
from med42_ray.benchmarks.registry import (BENCHMARKS, MMLU_CLINICAL, VALIDATION_BENCHMARKS, BenchmarkSpec,
                                           load_benchmarks)

__all__ = ["BENCHMARKS", "MMLU_CLINICAL", "VALIDATION_BENCHMARKS", "BenchmarkFormatError", "BenchmarkItem",
           "BenchmarkSpec", "load_benchmarks"]
