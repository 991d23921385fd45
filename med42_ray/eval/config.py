"""Configuration of `med42-ray evaluate`: which models, which benchmarks, which protocols, how wide."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from med42_ray.layout import PROTOCOLS_DIR
from med42_ray.strict_model import StrictModel, require_unique

PROTOCOLS = ("harness", "med42_chat", "full_text", "cot")
Protocol = Literal["harness", "med42_chat", "full_text", "cot"]


class EvalModel(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.:+-]+$", description="label in results and tables")
    path: str = Field(..., description="HF model id, local HF directory, or 'tiny-llama'")
    adapter: str | None = Field(None, description="LoRA adapter directory (peft), applied without merging")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == PROTOCOLS_DIR:  # results go to <output_dir>/<name>/, beside <output_dir>/protocols/
            raise ValueError(f"{v!r} is reserved for the other protocols' results; choose another model name")
        return v


class EvalConfig(StrictModel):
    benchmarks_dir: str = Field("pkg://sample/data/benchmarks",
                                description="root laid out like shared/data/raw")
    benchmarks: list[str] | None = Field(None, description="benchmark names (None: every one found)")
    protocol: Protocol = Field(
        "harness", description="the headline protocol (results.json, the report's table). harness: "
                               "lm-evaluation-harness 0.4 templates; med42_chat: the same question inside "
                               "Med42's chat template; full_text: score the answer text, not its letter; "
                               "cot: greedy chain-of-thought generation, answer letter extracted "
                               "(eval/generation.py)")
    also_protocols: list[Protocol] = Field(
        default_factory=list, description="protocols scored besides `protocol`, in the same pass on the same "
                                          "actors, each written to <output_dir>/protocols/<name>/ (`protocol` "
                                          "itself listed here is scored once, as the headline)")
    models: list[EvalModel] = Field(default_factory=list,
                                    description="models to compare (empty: the run's `model`, plus --adapter)")
    num_actors: int = Field(2, ge=1, description="scoring actors per model (one per GPU; on CPU one per slot)")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float | None = Field(None, ge=0, description="None: 1 when the cluster has GPUs, else 0")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU")
    questions_per_task: int = Field(32, ge=1, description="questions sent to an actor at once (the retry unit)")
    max_batch_tokens: int = Field(8192, ge=64, description="padded tokens per forward pass")
    max_length: int | None = Field(None, ge=16, description="left-truncate prompts to this many tokens "
                                                             "(None: the model's max_position_embeddings)")
    limit: int | None = Field(None, ge=1, description="first N questions of each benchmark (smoke runs)")
    max_new_tokens: int = Field(256, ge=1, description="tokens the cot protocol may generate per answer "
                                                       "(lm-eval's max_gen_toks default)")
    num_fewshot: int = Field(0, ge=0, description="examples before each question, chosen and rendered as "
                                                  "lm-evaluation-harness 0.4 does (eval/fewshot.py); harness and "
                                                  "full_text protocols only")
    fewshot_seed: int = Field(1234, description="seed of lm-eval's default few-shot sampler (its "
                                                "fewshot_random_seed); MMLU's first_n sampler uses none")
    permutations: int = Field(0, ge=0, le=3, description="score each multiple-choice question also with its "
                                                         "options rotated 1..k places (eval/permute.py)")
    cost_questions: int = Field(32, ge=0, description="after the pass, time each model alone on this many "
                                                      "questions, and an adapter also merged (eval/cost.py; "
                                                      "0: not measured)")
    max_task_retries: int = Field(3, ge=0, description="times a task is re-sent after its actor died")
    output_dir: str | None = Field(None, description="where results go (None: <run_dir>/eval)")
    compare_with: list[str] = Field(default_factory=list,
                                    description="earlier results.json files to put in the comparison table")
    progress: bool = Field(True, description="progress bar of questions done per benchmark")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        from med42_ray.benchmarks import BENCHMARKS

        if v is not None:
            unknown = [n for n in v if n not in BENCHMARKS]
            if unknown:
                raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return v

    @field_validator("also_protocols")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        require_unique(v, "protocol")
        return v

    @property
    def protocols(self) -> list[str]:
        """Every protocol a run scores, the headline first, each once."""
        return [self.protocol, *(p for p in self.also_protocols if p != self.protocol)]

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        require_unique([m.name for m in self.models], "model")
        return self

    @model_validator(mode="after")
    def _fewshot_protocols(self) -> "EvalConfig":
        # lm-eval's text few-shot has no chat form here, and cot is lm-eval's zero-shot CoT template
        if self.num_fewshot and {"med42_chat", "cot"} & set(self.protocols):
            raise ValueError("num_fewshot > 0 applies to the harness and full_text protocols; "
                             "remove med42_chat and cot from protocol/also_protocols or set num_fewshot to 0")
        return self
