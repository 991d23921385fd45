"""Configuration of `med42-ray train`: strategy, optimisation, DeepSpeed, LoRA, Ray scaling and storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from med42_ray.strict_model import StrictModel

Strategy = Literal["full", "lora"]

# transformers' attention kernels that keep packed documents apart (train/packing.py): eager and sdpa
# (any device), flex_attention (torch's compiled kernel with a block-sparse document mask: fast on
# GPU, no extra package) and flash attention (NVIDIA GPUs, bf16/fp16, its own package).
AttnImplementation = Literal["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"]

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
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch CPU threads per worker (None: Ray's choice, the worker's whole CPUs, at "
                                "least 1); on a CPU-only machine, one worker with every core beats several "
                                "with one core each, which spend their time in gloo collectives")


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
    report_every_s: float = Field(
        5.0, ge=0, description="send metrics to Ray Train at most this often (0: every step); steps in between "
                               "go to metrics.jsonl at once and into the next report. Each report is a barrier "
                               "of every worker through Ray, so reporting each short step idles the workers. "
                               "Checkpoints, validation, epoch ends and the last step always report")
    gradient_checkpointing: bool = True
    driver_read_max_mb: float = Field(
        256, ge=0, description="prepared data up to this size (MB on disk) is read by the driver and handed to "
                               "Ray Data as tables; larger data streams from the files through Ray Data read "
                               "tasks, so no node holds all of it (0: always stream). A distributed read costs "
                               "seconds of task and actor start-up before the first row, and again each epoch")
    shuffle_buffer_rows: int = Field(64, ge=0, description="per-worker shuffle buffer (rows); 0 keeps file order")

    # DeepSpeed.
    zero_stage: Literal[1, 2, 3] | None = Field(None, description="ZeRO stage (None: full 3, lora 2)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer states to CPU")
    offload_params: bool = Field(False, description="ZeRO-3 parameter offload to CPU")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    attn_implementation: AttnImplementation = Field(
        "sdpa", description="transformers attention kernel: sdpa, eager, flex_attention (GPU: the fast one with "
                            "no extra package), flash_attention_2/3 (GPU only, needs the flash-attn package)")
    trust_remote_code: bool = Field(False, description="allow model code from the hub (off unless you trust it)")

    lora: LoraSettings = LoraSettings()

    # Checkpointing, fault tolerance, storage.
    checkpoint_every_steps: int | None = Field(200, ge=1, description="also checkpoint every N steps (None: epoch ends only)")
    keep_checkpoints: int | None = Field(2, ge=1, description="checkpoints to keep in storage (None: all)")
    checkpoint_optimizer: Literal["every", "epoch_end"] = Field(
        "every", description="every: each checkpoint holds the optimizer, so a resume repeats the run exactly "
                             "(ZeRO-3 full: ~12 bytes/param); epoch_end: under ZeRO-3 the every-N-steps ones hold "
                             "the fp32 master weights alone (4 bytes/param; a resume from one restarts Adam's "
                             "moments), epoch ends and the last step everything; below ZeRO-3 (LoRA's default, "
                             "whose checkpoints are the adapters and their optimizer) every checkpoint is complete")
    checkpoint_local_dir: str | None = Field(
        None, description="where each worker writes its part of a checkpoint before it is uploaded to "
                          "storage: a fast local disk (NVMe) with room for that part of one checkpoint, of two "
                          "with checkpoint_upload async (None: the temp dir)")
    checkpoint_upload: Literal["sync", "async"] = Field(
        "sync", description="sync: training waits until a checkpoint is in storage; async: it goes on while "
                            "Ray uploads (the local copy is deleted after upload)")
    max_failures: int = Field(2, ge=-1, description="restarts from the last checkpoint after a worker dies (-1: forever)")
    storage_path: str | None = Field(None, description="local dir or s3:// / gs:// URI (None: <run_dir>/ray_results)")
    log_every_steps: int = Field(10, ge=0, description="rank 0 prints a progress line (step, epoch, loss, lr, "
                                                       "tokens/s, elapsed, ETA) every N steps and at the last "
                                                       "step (0: never)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers rank 0 logs each step and the config to "
                                          "(train/trackers.py); mlflow and wandb need the 'trackers' extra")
    tracking_experiment: str = Field("med42-ray", min_length=1,
                                     description="MLflow experiment and W&B project the runs are logged under")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (None: MLFLOW_TRACKING_URI, else <run_dir>/mlruns)")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="W&B mode (None: WANDB_MODE, else online); offline writes run files without an account")
    run_name: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$",
                          description="Ray Train run name; rerunning the same name in the same storage resumes it")

    scaling: ScalingSettings = ScalingSettings()
    peak_tflops: float | None = Field(None, gt=0, description="peak FLOP/s per worker for MFU (None: detect the GPU)")
    export: bool = Field(True, description="save the trained model, Hub-ready (full: model/; lora: adapter/ "
                                           "and, with export_merged, merged/)")
    export_merged: bool = Field(
        True, description="LoRA: also write the adapter merged into the base (merged/, a full copy of the model); "
                          "false: the adapter alone (`med42-ray merge` merges it later)")
    export_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1},
        description="Ray resources of the export task, which runs after training (outside the training "
                    "group) and rebuilds the full weights from the final checkpoint in CPU memory: CPU, "
                    "GPU, memory (bytes) and custom resources, e.g. {'CPU': 16, 'memory': 600e9, "
                    "'large_cpu_mem': 1} for 70B. It holds the whole model in the training dtype (bf16: 2 "
                    "bytes per parameter, ~140 GB at 70B) and reads the fp32 weights memory-mapped from "
                    "the checkpoint, which remote storage first downloads to the node's disk")
    export_max_shard_size: str = Field("5GB", pattern=r"^[0-9]+(KB|MB|GB|KiB|MiB|GiB)$",
                                       description="largest safetensors file of an exported model: an "
                                                   "integer and a unit, e.g. 5GB, 500MB, 4GiB")
    export_node_wait_s: float = Field(
        600, ge=0, description="how long the export waits for a node that has export_resources (an "
                               "autoscaler starting one) before failing; 0: fail at once if none is up")

    @field_validator("export_resources")
    @classmethod
    def _ray_resource_names(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name.lower() in ("cpu", "gpu") and name not in ("CPU", "GPU"):
                raise ValueError(f"resource {name!r}: Ray spells it {name.upper()!r}")
            if amount < 0:
                raise ValueError(f"resource {name!r}: {amount:g} is negative")
        return v

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "TrainConfig":
        stage = self.resolved_zero_stage()
        if self.offload_params and stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self

    @model_validator(mode="after")
    def _flash_attention_needs_gpu_and_half_precision(self) -> "TrainConfig":
        attn = self.attn_implementation
        if attn.startswith("flash_attention") and not self.scaling.use_gpu:
            raise ValueError(f"attn_implementation {attn} runs on NVIDIA GPUs only: set scaling.use_gpu "
                             "true, or use sdpa, eager or flex_attention")
        if attn.startswith("flash_attention") and self.precision == "fp32":
            raise ValueError(f"attn_implementation {attn} computes in bf16/fp16 only: set precision bf16 "
                             "(or auto), or use sdpa or flex_attention for fp32")
        return self

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else STRATEGY_DEFAULTS[self.strategy]["epochs"]

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else STRATEGY_DEFAULTS[self.strategy]["lr"]

    def resolved_zero_stage(self) -> int:
        return self.zero_stage if self.zero_stage is not None else STRATEGY_DEFAULTS[self.strategy]["zero_stage"]
