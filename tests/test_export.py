"""Export after training, from the final checkpoint, in a Ray task of its own (train/export.py).

The oracle is the export as it ran inside the training group until issue 11: the engine the loop
builds, restored from the run's final checkpoint, its weights gathered by DeepSpeed in the engine
(ZeRO-3: `_zero3_consolidated_16bit_state_dict`; LoRA: the module's trainable state) and saved by
rank 0 the way that export saved them. The exports must hold identical tensors.

HEAVY: two training runs (full ZeRO-3 and LoRA, 2 CPU workers each) and one Ray Train run for the
oracle; about 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from med42_ray.config import load_config
from med42_ray.errors import ConfigError
from med42_ray.layout import train_data_dir_for
from med42_ray.train import export
from med42_ray.train.checkpointing import CheckpointError
from med42_ray.train.trainer import count_rows, plan_job, read_manifest, run_train

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

STEPS = 2
SHARD = "1MB"  # the tiny Llama is ~3.8 MB in fp32: several shards


def _config(run_dir: Path, prepared: Path, strategy: str, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"train.data_dir={prepared}", f"train.strategy={strategy}",
        f"train.max_steps={STEPS}", "train.scaling.num_workers=2", "train.scaling.threads_per_worker=1", "train.zero_stage=null",
        "train.peak_tflops=0.1", *extra])


def _job(cfg):
    manifest, shards = read_manifest(train_data_dir_for(cfg))
    return plan_job(cfg, manifest, count_rows(shards))


def _manifest(cfg) -> dict:
    return read_manifest(train_data_dir_for(cfg))[0]


@pytest.fixture(scope="module")
def full_run(sample_prepared, tmp_path_factory):
    """Full-parameter ZeRO-3, a checkpoint at every step, exported in small shards."""
    cfg = _config(tmp_path_factory.mktemp("export_full"), sample_prepared[0], "full", "train.lr=1e-3",
                  "train.checkpoint_every_steps=1", f"train.export_max_shard_size={SHARD}")
    assert cfg.train.resolved_zero_stage() == 3
    return cfg, run_train(cfg)


@pytest.fixture(scope="module")
def lora_run(sample_prepared, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("export_lora"), sample_prepared[0], "lora", "train.lr=5e-3")
    return cfg, run_train(cfg)


def _final_checkpoint(result):
    from ray.train import Checkpoint

    return Checkpoint.from_directory(result.checkpoint_path)


def _gather_like_the_loop(config: dict) -> None:
    """Ray Train worker: for each run, the engine as loop.py builds it, restored from the run's
    final checkpoint, exported as the in-loop export did (rank 0 writes)."""
    import ray.train
    import torch.distributed as dist
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from med42_ray.train import checkpointing, loop
    from med42_ray.train.config import TrainConfig

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    for train, job, checkpoint, out in config["runs"]:
        cfg = TrainConfig.model_validate(train)
        lora = cfg.strategy == "lora"
        engine, built = loop._setup_engine(cfg, job, rank, world)
        with checkpoint.as_directory() as ckpt_dir:
            checkpointing.restore(engine, ckpt_dir, rank, world, lora=lora)
        if engine.zero_optimization_partition_weights():  # collective
            state_dict = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=lora)
        else:
            trainable = {n for n, p in engine.module.named_parameters() if p.requires_grad}
            state_dict = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()
                          if not lora or k in trainable}
        unset_hf_deepspeed_config()
        if rank == 0:
            _save_like_the_loop(engine.module, state_dict, job.model, Path(out), lora)
        dist.barrier()
        del engine, built


def _save_like_the_loop(module, state_dict: dict, model: str, out: Path, lora: bool) -> None:
    """The body of the in-loop export (rank 0), as it was."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from med42_ray.model import resolve_model

    if not lora:
        module.config.use_cache = True
        module.save_pretrained(out / "model", state_dict=state_dict, safe_serialization=True)
        return
    module.save_pretrained(out / "adapter", state_dict=state_dict, safe_serialization=True)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(model), dtype=module.base_model.model.dtype,
                                                use_safetensors=True)
    merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    merged.save_pretrained(out / "merged", safe_serialization=True)


@pytest.fixture(scope="module")
def oracle(full_run, lora_run, tmp_path_factory) -> Path:
    """<dir>/full/model, <dir>/lora/{adapter,merged}: what the in-loop export wrote for each run."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers
    out = tmp_path_factory.mktemp("in_loop_export")
    runs = [(cfg.train.model_dump(), _job(cfg), _final_checkpoint(result), str(out / cfg.train.strategy))
            for cfg, result in (full_run, lora_run)]
    trainer = TorchTrainer(_gather_like_the_loop, train_loop_config={"runs": runs},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name="in_loop_export", storage_path=str(out / "ray")))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return out


def _weights(directory: Path, name: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors export."""
    files = sorted(directory.glob(f"{name}*.safetensors"))
    assert files, f"no {name}*.safetensors in {directory}"
    weights = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k, tensor in want.items():
        assert got[k].dtype == tensor.dtype and torch.equal(got[k], tensor), k


def test_full_export_equals_the_in_loop_export(full_run, oracle, tiny_model_dir):
    _, result = full_run
    exported = result.exported["model"]
    want = _weights(oracle / "full" / "model")
    _assert_identical(_weights(exported), want)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(want[name], load_file(str(Path(tiny_model_dir) / "model.safetensors"))[name])
    assert (json.loads((exported / "config.json").read_text())
            == json.loads((oracle / "full" / "model" / "config.json").read_text()))
    assert (exported / "tokenizer.json").is_file()


def test_full_export_is_sharded_and_reloads(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = full_run[1].exported["model"]
    shards = sorted(exported.glob("model-*-of-*.safetensors"))
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and not (exported / "model.safetensors").exists()
    assert all(f.stat().st_size <= 5_000_000 for f in shards)
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    weights = _weights(exported)
    assert set(index["weight_map"]) == set(weights)
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.config.use_cache
    state = model.state_dict()
    for k, v in weights.items():
        assert torch.equal(state[k], v), k
    AutoTokenizer.from_pretrained(exported)


def test_lora_export_equals_the_in_loop_export(lora_run, oracle):
    _, result = lora_run
    adapter, merged = result.exported["adapter"], result.exported["merged"]
    want_adapter = _weights(oracle / "lora" / "adapter", "adapter_model")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in want_adapter.items())
    _assert_identical(_weights(adapter, "adapter_model"), want_adapter)
    assert _adapter_config(adapter) == _adapter_config(oracle / "lora" / "adapter")
    _assert_identical(_weights(merged), _weights(oracle / "lora" / "merged"))
    assert (adapter / "tokenizer.json").is_file() and (merged / "tokenizer.json").is_file()


def _adapter_config(directory: Path) -> dict:
    config = json.loads((directory / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])  # peft writes a set, in any order
    return config


def test_export_refuses_a_checkpoint_that_is_not_the_last_step(full_run):
    from ray.train import Checkpoint

    cfg, result = full_run
    earlier = Path(result.checkpoint_path).parent / "step_00000001"
    assert export.checkpoint_step(Checkpoint.from_directory(str(earlier))) == 1
    with pytest.raises(CheckpointError, match="holds step 1, but the run's last step is 2"):
        export.export_final_checkpoint(Checkpoint.from_directory(str(earlier)), cfg.train, _job(cfg), _manifest(cfg))
    with pytest.raises(CheckpointError, match="left no checkpoint"):
        export.export_final_checkpoint(None, cfg.train, _job(cfg), _manifest(cfg))


def test_export_fails_when_no_node_has_its_resources(full_run):
    cfg, result = full_run
    tcfg = cfg.train.model_copy(update={"export_resources": {"CPU": 1, "large_cpu_mem": 1},
                                        "export_node_wait_s": 0})
    with pytest.raises(ConfigError, match=r"export_resources .*lacks \{'large_cpu_mem': 1\.0\}"):
        export.export_final_checkpoint(_final_checkpoint(result), tcfg, _job(cfg), _manifest(cfg))
