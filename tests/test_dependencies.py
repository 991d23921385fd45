"""The installed dependencies are new enough for the code: each distribution meets its floor in
pyproject.toml, and each API the code relies on, beyond what every release of the package has, is
there with the arguments we pass. A floor that is not true fails here, naming the API, the
installed version and the floor, instead of at a cluster's first training step.

When the code starts calling another such API (or stops), this table changes with it; when a check
fails on a version pyproject allows, raise that floor (README, "Dependencies").
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _floor(dist: str) -> str:
    req = _requirements().get(canonicalize_name(dist))
    return str(req.specifier) if req else "none"


def _attr(path: str):
    """`module:attr.attr` -> the object."""
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split(".") if qualname else []:
        obj = getattr(obj, part)
    return obj


def _takes(path: str, *names: str) -> Callable[[], bool]:
    """The callable at `path` exists and accepts each keyword in `names`."""
    return lambda: set(names) <= set(inspect.signature(_attr(path)).parameters)


def _exists(path: str) -> Callable[[], bool]:
    return lambda: _attr(path) is not None


def _either(*checks: Callable[[], bool]) -> Callable[[], bool]:
    def check() -> bool:
        for c in checks:
            try:
                if c():
                    return True
            except (ImportError, AttributeError):
                pass
        return False
    return check


def _ray_train_v2() -> bool:
    from ray.train.v2._internal.constants import is_v2_enabled

    return is_v2_enabled()


# (distribution, the API as the code uses it, a check that it is there); where the code uses it: the comment.
APIS: list[tuple[str, str, Callable[[], bool]]] = [
    # train/loop.py: warmup + cosine to a floor
    ("transformers", "get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=)",
     _takes("transformers:get_cosine_with_min_lr_schedule_with_warmup", "min_lr_rate", "num_warmup_steps")),
    # train/strategies.py: ZeRO-3 models built under zero.Init; train/export.py: and no longer after training
    ("transformers", "integrations.HfDeepSpeedConfig", _exists("transformers.integrations:HfDeepSpeedConfig")),
    ("transformers", "integrations.deepspeed.unset_hf_deepspeed_config",
     _exists("transformers.integrations.deepspeed:unset_hf_deepspeed_config")),
    # train/strategies.py: non-reentrant activation checkpointing (the newer name, or the older one
    # with its kwargs; transformers >= 5.23 keeps the older as a deprecated alias)
    ("transformers", ("PreTrainedModel.activation_checkpointing_enable(activation_checkpointing_kwargs=) "
                      "or gradient_checkpointing_enable(gradient_checkpointing_kwargs=)"),
     _either(_takes("transformers:PreTrainedModel.activation_checkpointing_enable", "activation_checkpointing_kwargs"),
             _takes("transformers:PreTrainedModel.gradient_checkpointing_enable", "gradient_checkpointing_kwargs"))),
    # eval/scoring.py: a KV cache shared by a batch's choices (its argument's name changed in 5.24)
    ("transformers", "LlamaModel.forward(cache=) or (past_key_values=)",
     _either(_takes("transformers:LlamaModel.forward", "cache"),
             _takes("transformers:LlamaModel.forward", "past_key_values"))),
    ("transformers", "DynamicCache.batch_select_indices", _exists("transformers:DynamicCache.batch_select_indices")),
    # eval/workers.py, train/*: dtype= (torch_dtype= before transformers 4.56)
    ("transformers", "PreTrainedModel.from_pretrained(dtype=)",
     lambda: "dtype" in inspect.getsource(_attr("transformers:PreTrainedModel.from_pretrained"))),
    # eval/workers.py: a model spread over devices (device_map) goes through transformers' accelerate
    # integration, which imports this (accelerate < 1.2 lacks it, though transformers 5 asks for 1.1)
    ("accelerate", "accelerate.utils.modeling.get_module_size_with_ties",
     _exists("accelerate.utils.modeling:get_module_size_with_ties")),
    # train/strategies.py, train/plan.py: LoRA adapters; train/export.py, eval/workers.py: saved, reloaded, merged
    ("peft", "LoraConfig(r=, lora_alpha=, lora_dropout=, target_modules=, task_type=)",
     _takes("peft:LoraConfig", "r", "lora_alpha", "lora_dropout", "target_modules", "task_type")),
    ("peft", "get_peft_model", _exists("peft:get_peft_model")),
    ("peft", "PeftModel.from_pretrained", _exists("peft:PeftModel.from_pretrained")),
    ("peft", "PeftModel.save_pretrained(safe_serialization=)",
     _takes("peft:PeftModel.save_pretrained", "safe_serialization")),
    ("peft", "PeftModel.get_base_model", _exists("peft:PeftModel.get_base_model")),
    ("peft", "LoraModel.merge_and_unload", _exists("peft.tuners.lora:LoraModel.merge_and_unload")),
    # train/loop.py: DeepSpeed adopts Ray Train's process group and takes our optimizer and schedule
    ("deepspeed", "init_distributed(dist_backend=, auto_mpi_discovery=)",
     _takes("deepspeed:init_distributed", "dist_backend", "auto_mpi_discovery")),
    ("deepspeed", "initialize(model=, model_parameters=, optimizer=, lr_scheduler=, config=)",
     _takes("deepspeed:initialize", "model", "model_parameters", "optimizer", "lr_scheduler", "config")),
    ("deepspeed", "ops.__compatible_ops__ (a dict the CPU backend consults)",
     lambda: isinstance(_attr("deepspeed.ops:__compatible_ops__"), dict)),
    # train/checkpointing.py: each rank's shard; LoRA saves only what trains
    ("deepspeed", "DeepSpeedEngine.save_checkpoint(tag=, save_latest=, exclude_frozen_parameters=)",
     _takes("deepspeed.runtime.engine:DeepSpeedEngine.save_checkpoint", "tag", "save_latest",
            "exclude_frozen_parameters")),
    ("deepspeed", ("DeepSpeedEngine.load_checkpoint(load_module_strict=, load_optimizer_states=, "
                   "load_lr_scheduler_states=)"),
     _takes("deepspeed.runtime.engine:DeepSpeedEngine.load_checkpoint", "load_module_strict",
            "load_optimizer_states", "load_lr_scheduler_states")),
    # train/export.py: the full weights rebuilt from a checkpoint's shards, outside the training group
    ("deepspeed", "zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(tag=, lazy_mode=, exclude_frozen_parameters=)",
     _takes("deepspeed.utils.zero_to_fp32:get_fp32_state_dict_from_zero_checkpoint", "tag", "lazy_mode",
            "exclude_frozen_parameters")),
    # train/checkpointing.py: weights-only checkpoints read and write ZeRO-3's own partitions
    ("deepspeed", "DeepSpeedZeroOptimizer_Stage3 checkpoint_event_prologue/epilogue, refresh of fp32 partitions",
     lambda: all(hasattr(_attr("deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3"), n)
                 for n in ("checkpoint_event_prologue", "checkpoint_event_epilogue", "_restore_from_bit16_weights"))),
    # train/plan.py
    ("deepspeed", "estimate_zero2_model_states_mem_needs / estimate_zero3_model_states_mem_needs",
     lambda: bool(_attr("deepspeed.runtime.zero.stage_1_and_2:estimate_zero2_model_states_mem_needs")
                  and _attr("deepspeed.runtime.zero.stage3:estimate_zero3_model_states_mem_needs"))),
    # train/loop.py, sweep/run.py: Ray Train V2 (the default since Ray 2.51)
    ("ray", "Ray Train V2 enabled by default", _ray_train_v2),
    ("ray", "ray.train.report(checkpoint_dir_name=, checkpoint_upload_mode=)",
     _takes("ray.train:report", "checkpoint", "checkpoint_dir_name", "checkpoint_upload_mode")),
    ("ray", "ray.train.CheckpointUploadMode.ASYNC", _exists("ray.train:CheckpointUploadMode.ASYNC")),
    # train/trainer.py: order-preserving split, the same rows to each worker on every (re)start
    ("ray", "ray.train.DataConfig(execution_options=, enable_shard_locality=)",
     _takes("ray.train:DataConfig", "execution_options", "enable_shard_locality")),
    ("ray", "Dataset.iter_torch_batches(collate_fn=, local_shuffle_seed=)",
     _takes("ray.data:Dataset.iter_torch_batches", "collate_fn", "local_shuffle_buffer_size", "local_shuffle_seed")),
    ("ray", "ray.data.collate_fn.NumpyBatchCollateFn", _exists("ray.data.collate_fn:NumpyBatchCollateFn")),
    ("ray", "ray.data.expressions.col", _exists("ray.data.expressions:col")),
    # sweep/run.py, sweep/stopping.py
    ("ray", "ray.tune.integration.ray_train.TuneReportCallback",
     _exists("ray.tune.integration.ray_train:TuneReportCallback")),
    ("ray", "ray.tune.trainable.function_trainable.wrap_function",
     _exists("ray.tune.trainable.function_trainable:wrap_function")),
    # eval/runner.py: an actor Ray is restarting
    ("ray", "ray.exceptions.ActorUnavailableError", _exists("ray.exceptions:ActorUnavailableError")),
    # config: pydantic 2
    ("pydantic", "ConfigDict, field_validator, model_validator",
     lambda: all(_attr(f"pydantic:{n}") for n in ("ConfigDict", "field_validator", "model_validator"))),
]


@pytest.mark.parametrize("name", sorted(_requirements()))
def test_installed_version_meets_the_floor_in_pyproject(name):
    installed = _installed(name)
    floor = _requirements()[name].specifier
    assert installed != "not installed", f"{name} is not installed (pyproject.toml: {name}{floor})"
    assert floor.contains(Version(installed), prereleases=True), \
        f"{name} {installed} is installed; pyproject.toml requires {name}{floor}"


@pytest.mark.parametrize("dist, api, present", APIS, ids=[f"{d}:{a.split('(')[0]}" for d, a, _ in APIS])
def test_api_the_code_calls_is_in_the_installed_version(dist, api, present):
    try:
        ok, why = present(), ""
    except Exception as e:  # noqa: BLE001 - an import that fails (deepspeed < 0.17 without a GPU) fails here too
        ok, why = False, f": {type(e).__name__}: {e}"
    assert ok, (f"{dist} {_installed(dist)} (pyproject.toml floor: {_floor(dist)}) lacks {api}{why}; "
                "raise the floor or change the call")


def test_every_api_checked_belongs_to_a_dependency_with_a_floor():
    names = _requirements()
    assert {canonicalize_name(d) for d, _, _ in APIS} <= set(names)
