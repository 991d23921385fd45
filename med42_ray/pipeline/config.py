"""Configuration of `med42-ray pipeline` / `demo`: which stages run, and how each trainer differs.

The `train:` section of the run config is shared by both strategies; `pipeline.full` and
`pipeline.lora` hold only what differs (e.g. `lr`, `max_steps`), so the two runs cannot drift
apart by accident. They are merged and validated as full `TrainConfig`s when the file loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from med42_ray.merge import deep_merge
from med42_ray.strict_model import StrictModel
from med42_ray.eval.config import EvalConfig
from med42_ray.train.config import TrainConfig


class PretrainSettings(StrictModel):
    """A short full-parameter pre-training of a from-scratch base (the embedded tiny Llama) on the
    general-domain sources, so the LoRA run adapts a model that already knows some language, as
    Med42's LoRA adapts Llama-2. Leave unset for a real pre-trained base."""

    domain: Literal["general", "medical"] = Field("general", description="sources of this domain form its data")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for pre-training")


class KillWorker(StrictModel):
    """Rehearse recovery: a training worker exits abruptly after `step`, once per run dir."""

    stage: Literal["pretrain", "train_full", "train_lora"]
    step: int = Field(..., ge=1)
    rank: int = Field(0, ge=0)


class PipelineConfig(StrictModel):
    strategies: list[Literal["full", "lora"]] = Field(
        default_factory=lambda: ["full", "lora"], min_length=1, description="fine-tuning runs to compare")
    evaluate_base: bool = Field(True, description="evaluate the base model too (the table's first column)")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings of every training stage of "
                                  "the pipeline (pretrain, full, LoRA), on top of `train:`")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="evaluate settings of the pipeline's "
                                     "evaluate stages, on top of `evaluate:`")
    full: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for full-parameter")
    lora: dict[str, Any] = Field(default_factory=dict, description="train settings that differ for LoRA")
    pretrain: PretrainSettings | None = Field(None, description="pre-train the base first (the demo does)")
    kill_worker: KillWorker | None = Field(None, description="inject one worker failure (recovery drills, tests)")

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"strategies repeat: {v}")
        return v


def merged_train_config(base: TrainConfig, overrides: dict[str, Any], **fixed: Any) -> TrainConfig:
    """`base` with `overrides` merged in (nested sections key by key) and `fixed` on top."""
    tree = deep_merge(base.model_dump(), overrides)
    tree.update(fixed)
    return TrainConfig.model_validate(tree)


def merged_eval_config(base: EvalConfig, overrides: dict[str, Any]) -> EvalConfig:
    return EvalConfig.model_validate(deep_merge(base.model_dump(), overrides))
