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
      config -> <out>/adapter, then (`train.export_merged`) merged into the base -> <out>/merged.
      `med42-ray merge` (merge_adapter) merges an adapter exported earlier the same way.
Models are written in shards of at most `train.export_max_shard_size`. Every exported directory is
self-contained and Hub-ready: the tokenizer that prepared the data, with the chat template the
model was trained with, a generation_config.json (hub_files.py), what it was made from
(med42_ray_training.json) and a model card README.md (model_card.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from med42_ray import hub_files, model_card
from med42_ray.errors import ConfigError
from med42_ray.layout import EXPORT_ADAPTER, EXPORT_MERGED, EXPORT_MODEL, TrainDir
from med42_ray.train import strategies
from med42_ray.train.checkpointing import (
    DS_TAG,
    CheckpointError,
    common_step,
    marker_name,
)
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


@dataclass(frozen=True)
class Provenance:
    """What the exports carry besides weights: how the data was rendered, and the card's facts."""

    tokenizer: str              # the tokenizer that prepared the data (manifest.json)
    template: str               # prepare.template it rendered with
    system_prompt: str | None   # prepare.system_prompt
    facts: dict                 # model_card.training_facts

    @classmethod
    def of(cls, cfg: TrainConfig, job, manifest: dict) -> Provenance:
        try:
            prepare = manifest["config"]["prepare"]
            tokenizer, template, system_prompt = manifest["tokenizer"], manifest["template"], prepare["system_prompt"]
        except (KeyError, TypeError) as e:
            raise ConfigError(f"the prepared data's manifest.json lacks {e}, which the export needs for "
                              "the chat template: run `med42-ray prepare` again") from None
        facts = model_card.training_facts(cfg, job, manifest, str(_training_dtype(cfg)).removeprefix("torch."))
        return cls(tokenizer, template, system_prompt, facts)


def export_final_checkpoint(checkpoint, cfg: TrainConfig, job, manifest: dict) -> None:
    """Write the exports of a finished run from its final checkpoint, in a Ray task sized by
    `cfg.export_resources`. `job` is the run's trainer.TrainJob, `manifest` the manifest.json of
    the data it trained on. Refuses a checkpoint that is not the run's last step: its weights are
    not the trained model."""
    import ray

    step = checkpoint_step(checkpoint)
    if step != job.total_steps:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds step {step}, but the run's last step is "
                              f"{job.total_steps}: refusing to export it as the trained model")
    provenance = Provenance.of(cfg, job, manifest)  # here: a manifest without what it needs fails before the task
    task = ray.remote(_export_task).options(**task_options(cfg.export_resources))
    ref = task.remote(checkpoint, cfg.model_dump(), job, provenance)
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


def _export_task(checkpoint, train_config: dict, job, provenance: Provenance) -> None:
    """The export, in its own Ray task: consolidate the checkpoint and write the exports."""
    from med42_ray.model import resolve_model

    cfg = TrainConfig.model_validate(train_config)
    model_path = resolve_model(job.model)
    t0 = time.perf_counter()
    with checkpoint.as_directory() as ckpt_dir:  # remote storage: downloaded to this node
        weights = consolidated_state_dict(ckpt_dir, _training_dtype(cfg), trainable_only=cfg.strategy == "lora")
    if cfg.strategy == "full":
        save_full(weights, cfg, model_path, job.outputs, provenance)
    else:
        save_lora(weights, cfg, model_path, job.outputs, provenance)
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


def save_full(weights: dict[str, torch.Tensor], cfg: TrainConfig, model_path: str, outputs: TrainDir,
              provenance: Provenance) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):  # the architecture only: the weights are `weights`
        model = AutoModelForCausalLM.from_config(config, dtype=_training_dtype(cfg),
                                                 trust_remote_code=cfg.trust_remote_code)
    out = outputs.export(EXPORT_MODEL)
    tokenizer = _save_tokenizer(cfg, provenance, out)  # first: a template that is not the trained one fails early
    model.generation_config = hub_files.generation_config(model_path, model.config, tokenizer)
    _for_inference(model).save_pretrained(out, state_dict=weights, max_shard_size=cfg.export_max_shard_size)
    _describe(out, EXPORT_MODEL, provenance.facts)


def save_lora(weights: dict[str, torch.Tensor], cfg: TrainConfig, model_path: str, outputs: TrainDir,
              provenance: Provenance) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=_training_dtype(cfg), use_safetensors=True,
                                                trust_remote_code=cfg.trust_remote_code)
    model = strategies.wrap_lora(cfg, base)  # the run's adapters, with the names its checkpoint uses
    _, unexpected = model.load_state_dict(weights, strict=False)
    untrained = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if unexpected or untrained:
        raise CheckpointError(f"the checkpoint's adapters do not match train.lora: unexpected "
                              f"{unexpected[:3]}, missing {untrained[:3]}")
    adapter = outputs.export(EXPORT_ADAPTER)
    tokenizer = _save_tokenizer(cfg, provenance, adapter)
    model.save_pretrained(adapter, state_dict=weights)  # in the training dtype, as the engine held them
    _describe(adapter, EXPORT_ADAPTER, provenance.facts)  # after peft, which writes a README.md of its own
    if cfg.export_merged:
        save_merged(model.merge_and_unload(), model_path, tokenizer, provenance.facts,
                    outputs.export(EXPORT_MERGED), cfg.export_max_shard_size)


def save_merged(model, model_path: str, tokenizer, facts: dict | None, out: Path, max_shard_size: str) -> None:
    """A LoRA model merged into its base (peft's merge_and_unload), with the adapter's tokenizer."""
    tokenizer.save_pretrained(out)
    model.generation_config = hub_files.generation_config(model_path, model.config, tokenizer)
    _for_inference(model).save_pretrained(out, max_shard_size=max_shard_size)
    if facts is not None:
        _describe(out, EXPORT_MERGED, facts)


def merge_adapter(adapter_dir: Path, out: Path, base: str | None = None, max_shard_size: str = "5GB",
                  trust_remote_code: bool = False) -> Path:
    """`med42-ray merge`: merge an exported adapter into its base (the one peft recorded in
    adapter_config.json, or `base`), in the dtype the adapter was saved in, as the export merges."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from med42_ray.model import resolve_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json; not a LoRA adapter directory")
    base = base or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path: pass --base")
    base_path = resolve_model(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=_adapter_dtype(adapter_dir), use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"base model {base!r} of {adapter_dir} cannot be loaded ({e}); pass --base") from None
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    has_facts = (adapter_dir / model_card.FACTS_FILE).is_file()
    facts = model_card.read_facts(adapter_dir) if has_facts else None
    save_merged(merged, base_path, tokenizer, facts, Path(out), max_shard_size)
    return Path(out)


def _adapter_dtype(adapter_dir: Path) -> torch.dtype:
    """The dtype of the adapter's weights: the training dtype, which the export merged in."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        return f.get_tensor(next(iter(f.keys()))).dtype


def _training_dtype(cfg: TrainConfig) -> torch.dtype:
    return strategies.model_dtype(cfg, cfg.scaling.use_gpu)


def _save_tokenizer(cfg: TrainConfig, provenance: Provenance, out: Path):
    return hub_files.save_tokenizer(out, provenance.tokenizer, provenance.template, provenance.system_prompt,
                                    cfg.trust_remote_code)


def _describe(out: Path, name: str, facts: dict) -> None:
    """The export's facts file and model card (no evaluation exists yet: `med42-ray push` adds them)."""
    model_card.write_facts(out, {**facts, "export": name})
    model_card.write_card(out, name, eval_roots=[])


def _for_inference(model):
    """Training switched the KV cache off; a saved model should generate with it."""
    model.config.use_cache = True
    return model
