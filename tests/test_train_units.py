"""Train config, schedule sizing, checkpoint validation and the FLOPs formula (no Ray)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from med42_ray.config import ConfigError, load_config
from med42_ray.layout import TrainDir
from med42_ray.train.checkpointing import CheckpointError, marker_name, restore
from med42_ray.train.config import TrainConfig
from med42_ray.train.metrics import MetricsLog, flops_per_token, read_metrics, superseded_path
from med42_ray.train.trainer import cpus_per_worker, plan_job


def test_defaults_follow_the_paper_and_the_strategy():
    full, lora = TrainConfig(strategy="full"), TrainConfig(strategy="lora")
    assert (full.resolved_epochs(), lora.resolved_epochs()) == (3, 8)
    assert (full.resolved_zero_stage(), lora.resolved_zero_stage()) == (3, 2)
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout) == (8, 16, 0.05)
    assert lora.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert TrainConfig(strategy="lora", epochs=2, zero_stage=3).resolved_epochs() == 2


def test_bad_train_config_is_rejected_at_load():
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(None, ["train.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        load_config(None, ["train.offload_params=true", "train.zero_stage=2"])
    with pytest.raises(ConfigError, match="train.strategy"):
        load_config(None, ["train.strategy=qlora"])


def _run_config(*overrides: str):
    return load_config(None, ["train.strategy=full", "train.micro_batch_size=2", "train.grad_accum=3",
                              "train.scaling.num_workers=2", *overrides])


def test_job_plan_drops_the_uneven_remainder_identically_on_every_worker(tmp_path):
    cfg = _run_config(f"run_dir={tmp_path}", "seed=7")
    job = plan_job(cfg, {"seq_len": 512}, num_rows=101)  # 50 rows each -> 25 micro-batches -> 8 steps
    assert (job.micro_per_epoch, job.steps_per_epoch, job.epochs, job.total_steps) == (25, 8, 3, 24)
    assert (job.model, job.seed, job.seq_len, job.pad_id) == ("tiny-llama", 7, 512, 0)
    assert job.outputs == TrainDir(tmp_path.resolve() / "train" / "full")
    assert plan_job(_run_config("train.max_steps=5"), {"seq_len": 512}, 101).total_steps == 5
    with pytest.raises(ConfigError, match="not enough data for one optimizer step: 11 packed rows over 2 workers"):
        plan_job(cfg, {"seq_len": 512}, num_rows=11)


def test_the_job_is_frozen_and_travels_to_the_workers_intact(tmp_path):
    job = plan_job(_run_config(f"train.output_dir={tmp_path / 'out'}"), {"seq_len": 64}, num_rows=12)
    assert pickle.loads(pickle.dumps(job)) == job  # Ray pickles train_loop_config to every worker
    assert job.outputs.metrics == tmp_path / "out" / "metrics.jsonl"
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.total_steps = 1


def test_cpu_workers_leave_a_core_for_data_loading():
    cfg = TrainConfig()
    assert cpus_per_worker(cfg, 2) == 0.5  # the test and demo shape: 2 CPUs, 2 workers
    assert cpus_per_worker(cfg, 16) == 1.0
    with pytest.raises(ConfigError, match="not enough for 2 training workers plus data loading"):
        cpus_per_worker(cfg, 1)


def test_worker_cpus_are_floored_so_workers_never_ask_for_more_than_there_is():
    three = TrainConfig(scaling={"num_workers": 3})
    assert cpus_per_worker(three, 3) == 0.66  # 2 spare CPUs / 3; rounding would ask for 3 x 0.67
    one = TrainConfig(scaling={"num_workers": 1})
    assert cpus_per_worker(one, 1.13) == 0.13  # 100 * (1.13 - 1) is 12.99999999999999 in floats
    # the sweep's trial holds some CPU itself: 2 CPUs - 1 for data - 0.01 for the trial, over 2 workers
    assert cpus_per_worker(TrainConfig(), 2, reserved_cpus=0.01) == 0.49
    with pytest.raises(ConfigError, match="not enough for 2 training workers, data loading and 0.01 reserved"):
        cpus_per_worker(TrainConfig(), 1, reserved_cpus=0.01)
    assert cpus_per_worker(TrainConfig(scaling={"cpus_per_worker": 0.25}), 1, reserved_cpus=0.5) == 0.25
    assert cpus_per_worker(TrainConfig(scaling={"use_gpu": True}), 1) == 1.0


def _fake_checkpoint(path, world, present, step=3):
    for r in present:
        (path / marker_name(r)).write_text(json.dumps({"world_size": world, "rank": r, "step": step,
                                                       "epoch": 0, "micro_in_epoch": 3, "tokens_seen": 9}))


def test_partly_written_or_mismatched_checkpoints_are_refused(tmp_path):
    _fake_checkpoint(tmp_path, world=2, present=[0])
    with pytest.raises(CheckpointError, match="incomplete: rank1.complete.json is missing"):
        restore(None, tmp_path, rank=0, world_size=2, lora=False)
    _fake_checkpoint(tmp_path, world=2, present=[0, 1])
    with pytest.raises(CheckpointError, match="written by 2 workers; this run has 1"):
        restore(None, tmp_path, rank=0, world_size=1, lora=False)


def test_flops_per_token_is_6n_plus_attention():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert flops_per_token(model, 2, 32, seq_len=128) == 6 * n + 12 * 2 * 32 * 128
    for p in model.parameters():  # frozen weights: no weight gradient, 4 FLOPs per parameter
        p.requires_grad_(False)
    assert flops_per_token(model, 2, 32, seq_len=128) == 4 * n + 12 * 2 * 32 * 128


def test_metrics_log_supersedes_steps_redone_after_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, resume_step=0)
    for step in range(1, 6):
        log.write({"step": step, "loss": float(step)})
    log = MetricsLog(path, resume_step=3)  # restarted from the step-3 checkpoint
    log.write({"step": 4, "loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert [r["step"] for r in read_metrics(superseded_path(path))] == [4, 5]


@pytest.fixture
def single_process_group(monkeypatch):
    """torch.distributed over gloo with this process as the only rank, as DeepSpeed needs it."""
    import socket

    import deepspeed
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as loop.py: no JIT build on CPU
    dist.init_process_group("gloo", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    yield
    dist.destroy_process_group()


def _deepspeed_engine(model_dir, cfg: TrainConfig):
    """The engine as loop.py builds it, with our optimizer, on one CPU process."""
    import deepspeed
    import torch

    from med42_ray.train import strategies

    ds = strategies.deepspeed_config(cfg, world_size=1, use_gpu=False)
    built = strategies.build_model(cfg, str(model_dir), ds, use_gpu=False)
    groups = strategies.optimizer_groups(built.model, cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=built.model, model_parameters=groups, config=ds,
                                           optimizer=torch.optim.AdamW(groups, lr=1e-3))
    return engine, built


def test_bf16_gradients_accumulate_in_fp32(tmp_path, single_process_group):
    import numpy as np
    import torch
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from med42_ray.train.packing import collate_packed, loss_sum

    LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    for stage in (2, 3):  # LoRA's and full's default ZeRO stages
        cfg = TrainConfig(strategy="full", zero_stage=stage, precision="bf16", grad_accum=2,
                          gradient_checkpointing=False)
        engine, built = _deepspeed_engine(tmp_path, cfg)
        assert engine.get_data_types() == (torch.bfloat16, torch.float32)
        assert engine.optimizer.gradient_accumulation_dtype == torch.float32
        if stage == 3:  # the buffer the micro-batches' gradient partitions are summed into
            assert engine.optimizer.grad_partitions_flat_buffer.dtype == torch.float32
        for _ in range(cfg.grad_accum):  # one optimizer step, through the accumulation path, as loop.py
            ids = torch.randint(0, 97, (2, 16)).numpy()
            batch = collate_packed({"input_ids": ids, "labels": ids, "position_ids": np.tile(np.arange(16), (2, 1))})
            engine.backward(loss_sum(engine, batch) / batch.loss_tokens)
            engine.step()
        assert engine.global_steps == 1 and torch.isfinite(torch.as_tensor(engine.get_global_grad_norm()))
        unset_hf_deepspeed_config()
        del engine, built


def test_grad_accum_dtype_is_set_only_for_bf16_with_accumulation():
    from med42_ray.train.strategies import deepspeed_config

    def data_types(use_gpu=False, **train):
        return deepspeed_config(TrainConfig(**train), world_size=2, use_gpu=use_gpu).get("data_types")

    assert data_types(precision="bf16", grad_accum=4) == {"grad_accum_dtype": "fp32"}
    assert data_types(use_gpu=True, grad_accum=2) == {"grad_accum_dtype": "fp32"}  # auto is bf16 on GPU
    for zero_stage, offload in ((1, False), (1, True), (2, True), (3, True)):
        assert data_types(precision="bf16", grad_accum=2, zero_stage=zero_stage,
                          offload_optimizer=offload) == {"grad_accum_dtype": "fp32"}
    assert data_types(precision="bf16", grad_accum=1) is None     # nothing accumulates
    assert data_types(precision="fp32", grad_accum=4) is None     # already fp32
    assert data_types(grad_accum=4) is None                       # auto on CPU is fp32


def test_peak_flops_match_exact_gpu_names():
    import warnings

    from med42_ray.train.metrics import GPU_PEAK_FLOPS, datasheet_peak_flops

    # Names that share a prefix are different GPUs with different peaks.
    assert datasheet_peak_flops("NVIDIA A10G") == 70e12 and datasheet_peak_flops("NVIDIA A10") == 125e12
    assert [datasheet_peak_flops(f"NVIDIA {n}") for n in ("L4", "L40", "L40S")] == [121e12, 181.05e12, 362.05e12]
    assert datasheet_peak_flops("NVIDIA H100 NVL") == 835.5e12 != datasheet_peak_flops("NVIDIA H100 80GB HBM3")
    assert datasheet_peak_flops("NVIDIA H100 PCIe") == 756.5e12
    assert datasheet_peak_flops("NVIDIA H800") == datasheet_peak_flops("NVIDIA H200") == 989.5e12
    assert datasheet_peak_flops("NVIDIA B200") == 2250e12
    assert {datasheet_peak_flops(n) for n in GPU_PEAK_FLOPS if "A100" in n} == {312e12}
    # Unknown: no MFU, and one warning that says how to get it.
    with pytest.warns(UserWarning, match=r"'NVIDIA H100 96GB HBM3'.*set train\.peak_tflops"):
        assert datasheet_peak_flops("NVIDIA H100 96GB HBM3") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert datasheet_peak_flops("NVIDIA H100 96GB HBM3") is None  # warned once already


def test_a_missing_flash_attention_package_fails_before_the_model_loads():
    from med42_ray.train.strategies import check_attention_kernel, flash_kernel_available

    if flash_kernel_available("flash_attention_2"):
        pytest.skip("flash-attn is installed here: nothing is missing")
    with pytest.raises(ConfigError, match="attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn"):
        check_attention_kernel("flash_attention_2")
    for attn in ("sdpa", "eager", "flex_attention"):
        check_attention_kernel(attn)  # torch alone runs them
