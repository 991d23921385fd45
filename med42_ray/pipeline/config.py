"""Configuration of `med42-ray pipeline` / `demo`: which stages run, and how each trainer differs.

The `train:` section of the run config is shared by every training run; `pipeline.full`,
`pipeline.lora`, `pipeline.dora`, ... hold only what differs for that run (e.g. `lr`, `max_steps`),
so the runs cannot drift apart by accident. They are merged and validated as full `TrainConfig`s
when the file loads.

A run's name is its strategy (`full`) or its adapter method (`lora`, `rslora`, `dora`, `ia3`,
`loha`, `lokr`: the lora strategy with that train.peft.method). The name is the run's stage
(train_<name>, evaluate_<name>), its output folder (train/<name>) and its column in the report.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from med42_ray.merge import deep_merge
from med42_ray.strict_model import StrictModel, require_unique
from med42_ray.eval.config import EvalConfig
from med42_ray.train.config import PEFT_METHODS, TrainConfig

# The training runs a pipeline can compare (PipelineConfig.strategies), in report order: full, then
# each adapter method (spelt out for pydantic's error message; RUN_NAMES checks it follows them).
RunName = Literal["full", "lora", "rslora", "dora", "ia3", "loha", "lokr"]
RUN_NAMES: tuple[str, ...] = get_args(RunName)
assert RUN_NAMES == ("full", *PEFT_METHODS), "RunName must list full and then train.peft's methods"


class PretrainSettings(StrictModel):
    """A short full-parameter pre-training of a from-scratch base (the embedded tiny Llama) on the
    general-domain sources, so the LoRA run adapts a model that already knows some language, as
    Med42's LoRA adapts Llama-2. Leave unset for a real pre-trained base."""

    domain: Literal["general", "medical"] = Field("general", description="sources of this domain form its data")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for pre-training")


class KillWorker(StrictModel):
    """Rehearse recovery: a training worker exits abruptly after `step`, once per run dir."""

    stage: Literal["pretrain", "train_full", "train_lora", "train_rslora", "train_dora", "train_ia3", "train_loha",
                   "train_lokr"]
    step: int = Field(..., ge=1)
    rank: int = Field(0, ge=0)


class PipelineConfig(StrictModel):
    strategies: list[RunName] = Field(
        default_factory=lambda: ["full", "lora"], min_length=1,
        description="fine-tuning runs to compare: full and any adapter methods (lora, rslora, dora, ia3, loha, "
                    "lokr), each a column of the report")
    evaluate_base: bool = Field(True, description="evaluate the base model too (the table's first column)")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings of every training stage of "
                                  "the pipeline (pretrain, full, LoRA), on top of `train:`")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="evaluate settings of the pipeline's "
                                     "evaluate stages, on top of `evaluate:`")
    full: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for full-parameter")
    lora: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for LoRA")
    rslora: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for rsLoRA")
    dora: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for DoRA")
    ia3: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for IA3")
    loha: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for LoHa")
    lokr: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for LoKr")
    pretrain: PretrainSettings | None = Field(None, description="pre-train the base first (the demo does)")
    kill_worker: KillWorker | None = Field(None, description="inject one worker failure (recovery drills, tests)")

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        require_unique(v, "strategy")
        return v

    def overrides(self, run: str) -> dict[str, Any]:
        """pipeline.<run>: the train settings of that run that differ from `train:`."""
        return getattr(self, run)


def run_settings(run: str) -> dict[str, Any]:
    """What names the run `run` in its train config: its strategy and, for an adapter run, its method."""
    return {"strategy": "full"} if run == "full" else {"strategy": "lora", "peft": {"method": run}}


def pipeline_train_config(base: TrainConfig, pipeline: PipelineConfig, run: str, **fixed: Any) -> TrainConfig:
    """The train config of the pipeline's run `run`: `base` with pipeline.<run> merged in, its
    strategy and method fixed, and `fixed` on top."""
    return merged_train_config(base, pipeline.overrides(run), **run_settings(run), **fixed)


def merged_train_config(base: TrainConfig, overrides: dict[str, Any], **fixed: Any) -> TrainConfig:
    """`base` with `overrides` merged in, and `fixed` on top (nested sections key by key)."""
    return TrainConfig.model_validate(deep_merge(deep_merge(base.model_dump(), overrides), fixed))


def merged_eval_config(base: EvalConfig, overrides: dict[str, Any]) -> EvalConfig:
    return EvalConfig.model_validate(deep_merge(base.model_dump(), overrides))
