"""Configuration of `med42-ray train`: strategy, optimisation, DeepSpeed, LoRA, Ray scaling and storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from med42_ray.strict_model import StrictModel

Strategy = Literal["full", "lora"]

# Llama's linear projections: attention (q, k, v, o) and MLP (gate, up, down).
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Defaults that depend on the strategy. Epochs are the paper's (full 3, LoRA 8).
STRATEGY_DEFAULTS = {
    "full": {"epochs": 3, "lr": 2e-5, "zero_stage": 3},
    "lora": {"epochs": 8, "lr": 2e-4, "zero_stage": 2},
}


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR),
                                      description="module names LoRA wraps (default: every linear projection)")


class ScalingSettings(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on a GPU cluster)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL, bf16 by default")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="None: 1 with GPUs; on CPU, what leaves one core free for Ray Data reads")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="extra custom resources per worker, e.g. {'accelerator_type:A100': 0.01}")


class TrainConfig(StrictModel):
    strategy: Strategy = Field("full", description="full-parameter (DeepSpeed ZeRO) or LoRA (peft)")
    data_dir: str | None = Field(None, description="`prepare` output (None: prepare.output_dir, else <run_dir>/prepared)")
    output_dir: str | None = Field(None, description="metrics.jsonl and the exported model (None: <run_dir>/train/<strategy>)")

    # Schedule. None means "the strategy's default" (see STRATEGY_DEFAULTS).
    epochs: int | None = Field(None, ge=1, description="passes over the data (None: full 3, lora 8)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (None: all epochs)")
    micro_batch_size: int = Field(1, ge=1, description="packed rows per worker per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float | None = Field(None, gt=0, description="peak learning rate (None: full 2e-5, lora 2e-4)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warmup, as a fraction of all steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine decays to this fraction of the peak")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay (not on norms/biases)")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 disables)")
    gradient_checkpointing: bool = True
    shuffle_buffer_rows: int = Field(64, ge=0, description="per-worker shuffle buffer (rows); 0 keeps file order")

    # DeepSpeed.
    zero_stage: Literal[1, 2, 3] | None = Field(None, description="ZeRO stage (None: full 3, lora 2)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer states to CPU")
    offload_params: bool = Field(False, description="ZeRO-3 parameter offload to CPU")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    attn_implementation: str = Field("sdpa", description="transformers attention kernel (sdpa, eager, flash_attention_2)")
    trust_remote_code: bool = Field(False, description="allow model code from the hub (off unless you trust it)")

    lora: LoraSettings = LoraSettings()

    # Checkpointing, fault tolerance, storage.
    checkpoint_every_steps: int | None = Field(200, ge=1, description="also checkpoint every N steps (None: epoch ends only)")
    keep_checkpoints: int | None = Field(2, ge=1, description="checkpoints to keep in storage (None: all)")
    max_failures: int = Field(2, ge=-1, description="restarts from the last checkpoint after a worker dies (-1: forever)")
    storage_path: str | None = Field(None, description="local dir or s3:// / gs:// URI (None: <run_dir>/ray_results)")
    run_name: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$",
                          description="Ray Train run name; rerunning the same name in the same storage resumes it")

    scaling: ScalingSettings = ScalingSettings()
    peak_tflops: float | None = Field(None, gt=0, description="peak FLOP/s per worker for MFU (None: detect the GPU)")
    export: bool = Field(True, description="save the trained model (full: weights; lora: adapter + merged)")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "TrainConfig":
        stage = self.resolved_zero_stage()
        if self.offload_params and stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else STRATEGY_DEFAULTS[self.strategy]["epochs"]

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else STRATEGY_DEFAULTS[self.strategy]["lr"]

    def resolved_zero_stage(self) -> int:
        return self.zero_stage if self.zero_stage is not None else STRATEGY_DEFAULTS[self.strategy]["zero_stage"]
