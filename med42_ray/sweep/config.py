"""Configuration of `med42-ray sweep`: the adapter search space, the ASHA scheduler, the validation set."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from med42_ray.strict_model import StrictModel, require_unique
from med42_ray.train.config import PeftMethod


class SearchSpace(StrictModel):
    """What each trial samples. The defaults suit a Llama-2 LoRA; the tiny model likes larger lr."""

    methods: list[PeftMethod] = Field(
        default_factory=lambda: ["lora"], min_length=1,
        description="adapter methods to choose from (train.peft.method): lora, rslora, dora, ia3, loha, lokr")
    r: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1,
                         description="ranks to choose from (train.lora.r, or train.peft.loha/lokr.r; IA3 has none)")
    alpha: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1,
                             description="alphas to choose from (scale = alpha / r; rsLoRA alpha / sqrt(r))")
    lr_min: float = Field(1e-4, gt=0, description="learning rate: log-uniform between lr_min and lr_max")
    lr_max: float = Field(3e-3, gt=0)

    @field_validator("r", "alpha")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("every value must be >= 1")
        return v

    @field_validator("methods")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        require_unique(v, "method")
        return v

    @model_validator(mode="after")
    def _lr_range(self) -> "SearchSpace":
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min}) is above lr_max ({self.lr_max})")
        return self


class SweepConfig(StrictModel):
    space: SearchSpace = SearchSpace()
    num_samples: int = Field(4, ge=1, description="trials (configurations sampled from the space)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps per trial (None: train.max_steps, "
                                                         "else the whole LoRA schedule)")
    eval_every_steps: int = Field(20, ge=1, description="score the validation set every N steps (and at the end)")
    benchmark: str = Field("medqa_4options_dev", description="validation benchmark (a registry name)")
    benchmarks_dir: str | None = Field(None, description="root holding it (None: evaluate.benchmarks_dir)")
    limit: int | None = Field(None, ge=1, description="first N validation questions only")
    grace_period: int | None = Field(None, ge=1, description="ASHA: steps before a trial may be stopped "
                                                             "(None: eval_every_steps)")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung")
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: 1 on a CPU-only cluster, "
                                                                      "else GPUs // train workers")
    trial_cpus: float = Field(0.01, gt=0, description="CPU the Tune trial (the Train driver) reserves; it only "
                                                      "waits on its Train run, the workers hold the real resources")
    seed: int | None = Field(None, description="seed of the search (None: the run's seed)")
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$", description="Tune experiment name")
    output_dir: str | None = Field(None, description="where results go (None: <run_dir>/sweep)")

    @field_validator("benchmark")
    @classmethod
    def _known(cls, v: str) -> str:
        from med42_ray.benchmarks import BENCHMARKS, VALIDATION_BENCHMARKS

        if v not in BENCHMARKS and v not in VALIDATION_BENCHMARKS:
            raise ValueError(f"unknown benchmark {v!r}; validation splits: {', '.join(VALIDATION_BENCHMARKS)}")
        return v
