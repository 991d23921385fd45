"""Export the trained model in Hugging Face format (sharded safetensors), after training.

Export runs once the Ray Train run has finished, outside its process group, in a Ray task of its
own whose resources come from `train.export_resources` (a node with the CPU memory to hold the
whole model): inside the group, rank 0 gathering or merging a 70B model kept the other ranks
waiting on a collective past the NCCL timeout. The task reads the run's final checkpoint (local
or remote storage) and rebuilds the full weights with DeepSpeed's own `zero_to_fp32`, from each
rank's shard, for any ZeRO stage; cast to the training dtype, they equal the weights the trained
engine held.

full: the weights -> <out>/model, saved through a model built on the meta device (no second copy).
lora: the checkpoint holds only the adapters; they go into the base wrapped with the run's LoRA
      config -> <out>/adapter, then merged into the base -> <out>/merged.
Models are written in shards of at most `train.export_max_shard_size`; the tokenizer is saved
beside each export, so every exported directory is self-contained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from med42_ray.errors import ConfigError
from med42_ray.layout import EXPORT_ADAPTER, EXPORT_MERGED, EXPORT_MODEL, TrainDir
from med42_ray.train import strategies
from med42_ray.train.checkpointing import DS_TAG, CheckpointError, common_step, marker_name
from med42_ray.train.config import TrainConfig

POLL_S = 10.0  # how often the driver looks for a node that fits the export task while none does


def checkpoint_step(checkpoint) -> int:
    """The optimizer step a complete Ray Train checkpoint holds, from its per-rank markers (read
    where the checkpoint is stored, without downloading it)."""
    if checkpoint is None:
        raise CheckpointError("the training run left no checkpoint to export from")
    markers = [_read_marker(checkpoint, 0)]
    markers += [_read_marker(checkpoint, r) for r in range(1, markers[0]["world_size"])]
    return common_step(markers, checkpoint.path)


def _read_marker(checkpoint, rank: int) -> dict:
    path = f"{checkpoint.path}/{marker_name(rank)}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint.path} is incomplete: {marker_name(rank)} is missing") from None


def export_final_checkpoint(checkpoint, cfg: TrainConfig, job) -> None:
    """Write the exports of a finished run from its final checkpoint, in a Ray task sized by
    `cfg.export_resources`. `job` is the run's trainer.TrainJob. Refuses a checkpoint that is not
    the run's last step: its weights are not the trained model."""
    import ray

    step = checkpoint_step(checkpoint)
    if step != job.total_steps:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds step {step}, but the run's last step is "
                              f"{job.total_steps}: refusing to export it as the trained model")
    task = ray.remote(_export_task).options(**task_options(cfg.export_resources))
    ref = task.remote(checkpoint, cfg.model_dump(), job)
    _wait_for_a_node(ref, cfg.export_resources, cfg.export_node_wait_s)
    ray.get(ref)


def task_options(resources: dict[str, float]) -> dict:
    """`ray.remote(...).options` for a resource dict in the form of Ray's node resources."""
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    options = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0), "resources": custom}
    if "memory" in resources:
        options["memory"] = int(resources["memory"])
    return options


def _wait_for_a_node(ref, resources: dict[str, float], wait_s: float) -> None:
    """Return once some node of the cluster could run the task (it is queued meanwhile, so an
    autoscaler sees the demand); cancel it and fail, naming what is missing, after `wait_s`."""
    import ray

    deadline = time.monotonic() + wait_s
    while (short := _shortfall(resources)) and not ray.wait([ref], timeout=0)[0]:
        if time.monotonic() >= deadline:
            ray.cancel(ref, force=True)
            raise ConfigError(
                f"train.export_resources {resources}: no node of the Ray cluster has them all "
                f"(waited {wait_s:g}s; the best node lacks {short}). Lower train.export_resources, or "
                "add a node that has them (or raise train.export_node_wait_s for an autoscaler)")
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.1)))


def _shortfall(resources: dict[str, float]) -> dict[str, float]:
    """What the alive node closest to fitting lacks of `resources` (empty: some node fits)."""
    import ray

    best = None
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        have = node["Resources"]
        short = {k: v - have.get(k, 0.0) for k, v in resources.items() if v > have.get(k, 0.0)}
        if best is None or len(short) < len(best):
            best = short
    return dict(resources) if best is None else best


def _export_task(checkpoint, train_config: dict, job) -> None:
    """The export, in its own Ray task: consolidate the checkpoint and write the exports."""
    from med42_ray.model import resolve_model

    cfg = TrainConfig.model_validate(train_config)
    model_path = resolve_model(job.model)
    t0 = time.perf_counter()
    with checkpoint.as_directory() as ckpt_dir:  # remote storage: downloaded to this node
        weights = consolidated_state_dict(ckpt_dir, _training_dtype(cfg), trainable_only=cfg.strategy == "lora")
    if cfg.strategy == "full":
        save_full(weights, cfg, model_path, job.outputs)
    else:
        save_lora(weights, cfg, model_path, job.outputs)
    print(f"[med42-ray] exported {cfg.strategy} from {checkpoint.path} to {job.outputs.root} in "
          f"{time.perf_counter() - t0:.0f}s", flush=True)


def consolidated_state_dict(ckpt_dir: str | Path, dtype: torch.dtype, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The full weights of a checkpoint written by checkpointing.save, from DeepSpeed's fp32 master
    weights (every rank's optimizer shard), each cast to `dtype` into a tensor of its own.
    `trainable_only`: LoRA, whose checkpoints hold only the adapters."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    lazy = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=DS_TAG, lazy_mode=True,
                                                    exclude_frozen_parameters=trainable_only)
    weights: dict[str, torch.Tensor] = {}
    first_name: dict[int, str] = {}
    for name, tensor in lazy.items():
        if id(tensor) in first_name:  # tied weights stay one tensor
            weights[name] = weights[first_name[id(tensor)]]
            continue
        first_name[id(tensor)] = name
        tensor = tensor.contiguous()
        # A copy either way: under ZeRO-1/2 the tensors are views into one flat buffer, which
        # save_pretrained would take for shared (tied) storage.
        weights[name] = tensor.to(dtype, copy=True) if tensor.is_floating_point() else tensor.clone()
    return weights


def save_full(weights: dict[str, torch.Tensor], cfg: TrainConfig, model_path: str, outputs: TrainDir) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):  # the architecture only: the weights are `weights`
        model = AutoModelForCausalLM.from_config(config, dtype=_training_dtype(cfg),
                                                 trust_remote_code=cfg.trust_remote_code)
    try:  # as from_pretrained does: the base's generation settings travel with the model
        model.generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        pass
    out = outputs.export(EXPORT_MODEL)
    _for_inference(model).save_pretrained(out, state_dict=weights, max_shard_size=cfg.export_max_shard_size)
    _save_tokenizer(cfg, model_path, out)


def save_lora(weights: dict[str, torch.Tensor], cfg: TrainConfig, model_path: str, outputs: TrainDir) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=_training_dtype(cfg), use_safetensors=True,
                                                trust_remote_code=cfg.trust_remote_code)
    model = strategies.wrap_lora(cfg, base)  # the run's adapters, with the names its checkpoint uses
    _, unexpected = model.load_state_dict(weights, strict=False)
    untrained = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if unexpected or untrained:
        raise CheckpointError(f"the checkpoint's adapters do not match train.lora: unexpected "
                              f"{unexpected[:3]}, missing {untrained[:3]}")
    adapter, merged = outputs.export(EXPORT_ADAPTER), outputs.export(EXPORT_MERGED)
    model.save_pretrained(adapter, state_dict=weights)  # in the training dtype, as the engine held them
    _save_tokenizer(cfg, model_path, adapter)
    _for_inference(model.merge_and_unload()).save_pretrained(merged, max_shard_size=cfg.export_max_shard_size)
    _save_tokenizer(cfg, model_path, merged)


def _training_dtype(cfg: TrainConfig) -> torch.dtype:
    return strategies.model_dtype(cfg, cfg.scaling.use_gpu)


def _save_tokenizer(cfg: TrainConfig, model_path: str, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code).save_pretrained(out)


def _for_inference(model):
    """Training switched the KV cache off; a saved model should generate with it."""
    model.config.use_cache = True
    return model
