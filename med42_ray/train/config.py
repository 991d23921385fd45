"""Configuration of `med42-ray train`: strategy, optimisation, DeepSpeed, LoRA, Ray scaling and storage."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from med42_ray.strict_model import StrictModel

# full: every parameter trains. lora: the base is frozen and peft adapters train; which adapters,
# train.peft.method says (LoRA itself by default).
Strategy = Literal["full", "lora"]

# The adapter methods of the lora strategy (peft). rslora and dora are LoRA with another scale
# (alpha / sqrt(r)) or a learned magnitude per output column, so they share train.lora's settings;
# ia3, loha and lokr have sections of their own under train.peft.
PeftMethod = Literal["lora", "rslora", "dora", "ia3", "loha", "lokr"]
PEFT_METHODS: tuple[str, ...] = get_args(PeftMethod)
LORA_FAMILY = ("lora", "rslora", "dora")

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


def _targets_named(v: list[str]) -> list[str]:
    if not v or any(not m for m in v):
        raise ValueError("name at least one module, none of them empty")
    return v


class IA3Settings(StrictModel):
    """(IA)^3 (Liu et al. 2022): a learned vector rescales each target's activations (output
    features; the input features of a feed-forward one). Defaults: peft's for Llama."""

    target_modules: list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
                                      description="module names IA3 rescales")
    feedforward_modules: list[str] = Field(default_factory=lambda: ["down_proj"],
                                           description="those of target_modules whose input IA3 rescales")

    _named = field_validator("target_modules")(_targets_named)

    @model_validator(mode="after")
    def _feedforward_are_targets(self) -> "IA3Settings":
        stray = [m for m in self.feedforward_modules if m not in self.target_modules]
        if stray:
            raise ValueError(f"feedforward_modules {stray} are not in target_modules {self.target_modules}")
        return self


class LycorisSettings(StrictModel):
    """LoHa / LoKr (LyCORIS): the weight update is a Hadamard / Kronecker product of low-rank
    factors. Defaults: peft's (r 8, alpha 8: scale alpha / r)."""

    r: int = Field(8, ge=1, description="rank of the factors")
    alpha: int = Field(8, ge=1, description="scaling numerator (scale = alpha / r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="dropout of each rank during training")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a module's update in a step")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR),
                                      description="module names wrapped (default: every linear projection)")

    _named = field_validator("target_modules")(_targets_named)


class LoKrSettings(LycorisSettings):
    decompose_factor: int = Field(-1, ge=-1, description="Kronecker factor size (-1: as square as possible)")
    decompose_both: bool = Field(False, description="also factor the left Kronecker matrix into rank r")

    @field_validator("decompose_factor")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("0 is no factor: use -1 (automatic) or a positive size")
        return v


class PeftSettings(StrictModel):
    method: PeftMethod = Field("lora", description="the lora strategy's adapters: lora, rslora (scale alpha/sqrt(r)), "
                                                  "dora (weight-decomposed), ia3, loha, lokr; lora, rslora and dora "
                                                  "take train.lora's settings, the others their section here")
    ia3: IA3Settings = IA3Settings()
    loha: LycorisSettings = LycorisSettings()
    lokr: LoKrSettings = LoKrSettings()


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
    peft: PeftSettings = PeftSettings()

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
    resume: str = Field(
        "auto", min_length=1,
        description="auto: a rerun of the same run_name continues its newest intact checkpoint; never: refuse "
                    "to start a run that already has checkpoints; a checkpoint directory (a step_* of a run, "
                    "local or a URI): start this run from it (once the run has checkpoints of its own, a rerun "
                    "continues those)")

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
    def _loha_below_zero3(self) -> "TrainConfig":
        # peft 0.21's LoHa sizes its factors from the base weight's shape when it wraps a layer, and
        # under ZeRO-3 each worker holds only an empty placeholder of it (IndexError in peft). The
        # other methods read the layer's in/out features and train on a fully partitioned model.
        if self.strategy == "lora" and self.peft.method == "loha" and self.resolved_zero_stage() == 3:
            raise ValueError("peft.method loha does not work with zero_stage 3 (peft sizes its factors from the "
                             "base weights, which ZeRO-3 partitions away before they are wrapped): set zero_stage "
                             "1 or 2, or use lora, rslora, dora, ia3 or lokr")
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

    def label(self) -> str:
        """What this run is called in outputs and reports: full, or its adapter method (lora, dora, ...)."""
        return "full" if self.strategy == "full" else self.peft.method

    def adapter_settings(self) -> dict | None:
        """What the adapters were trained with, for records and model cards: the method and its
        section's settings (None for full)."""
        if self.strategy == "full":
            return None
        method = self.peft.method
        section = self.lora if method in LORA_FAMILY else getattr(self.peft, method)
        return {"method": method, **section.model_dump()}

    def rank_settings(self) -> LoraSettings | LycorisSettings | None:
        """The section holding the adapters' r and alpha for train.peft.method (IA3 has none)."""
        method = self.peft.method
        if method in LORA_FAMILY:
            return self.lora
        return {"loha": self.peft.loha, "lokr": self.peft.lokr}.get(method)

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else STRATEGY_DEFAULTS[self.strategy]["epochs"]

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else STRATEGY_DEFAULTS[self.strategy]["lr"]

    def resolved_zero_stage(self) -> int:
        return self.zero_stage if self.zero_stage is not None else STRATEGY_DEFAULTS[self.strategy]["zero_stage"]
