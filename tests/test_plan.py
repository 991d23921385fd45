"""`med42-ray plan`: parameter counts from the real (meta-device) module tree, memory, throughput."""

from __future__ import annotations

import json

import pytest

from med42_ray.cli import main
from med42_ray.train.plan import deepspeed_estimate, make_plan, model_state_bytes


def test_plan_prints_the_papers_lora_parameter_count_for_llama2_70b(capsys):
    assert main(["plan", "--model", "llama-2-70b", "--strategy", "lora", "--gpus", "16",
                 "--tokens", "1000000000", "--mfu", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters:  103,546,880" in out  # the paper's "104M"
    assert "total parameters:      69,080,195,072" in out  # 68,976,648,192 base + the adapters


@pytest.mark.parametrize("preset,total", [("llama-2-7b", 6_738_415_616), ("llama-2-13b", 13_015_864_320),
                                          ("llama-2-70b", 68_976_648_192)])
def test_full_parameter_counts_match_the_published_sizes(preset, total):
    plan = make_plan(preset, "full", gpus=8, tokens=0, mfu=0.4, peak_tflops=989)
    assert plan.total_params == plan.trainable_params == total


def test_memory_matches_deepspeed_estimators_for_full_finetuning():
    plan = make_plan("llama-2-70b", "full", gpus=32, tokens=10**9, mfu=0.5, peak_tflops=989)
    checked = 0
    for row in plan.memory:
        if row.deepspeed_gpu_bytes is None:
            continue
        assert abs(row.gpu_bytes - row.deepspeed_gpu_bytes) <= 32, row
        if row.zero_stage == 3 and row.offload != "none":  # without offload DS adds its load-time staging
            assert abs(row.cpu_bytes_per_node - row.deepspeed_cpu_bytes) <= 32, row
        checked += 1
    assert checked == 5  # stage 2 x2, stage 3 x3
    by = {(r.zero_stage, r.offload): r.gpu_bytes for r in plan.memory}
    # More partitioning, less memory per GPU; 70B full ZeRO-3 on 32 GPUs fits an 80 GB card.
    assert by[(1, "none")] > by[(2, "none")] > by[(3, "none")] > by[(3, "optimizer")] > by[(3, "optimizer+params")]
    assert by[(3, "none")] < 80e9
    # Throughput and time follow from MFU: tokens/s = mfu * peak * gpus / flops_per_token.
    assert plan.tokens_per_s == pytest.approx(0.5 * 989e12 * 32 / plan.flops_per_token)
    assert plan.wall_time_s == pytest.approx(1e9 / plan.tokens_per_s)
    assert 6 * plan.total_params < plan.flops_per_token < 6.5 * plan.total_params


def test_lora_states_are_a_small_share_and_json_output(capsys):
    assert main(["plan", "--model", "llama-2-7b", "--strategy", "lora", "--gpus", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["trainable_params"] == 19_988_480  # r=8 on all 7 projections of 32 layers
    stage2 = next(r for r in plan["memory"] if r["zero_stage"] == 2 and r["offload"] == "none")
    assert stage2["gpu_bytes"] == 2 * plan["total_params"] + 18 * plan["trainable_params"]
    # LoRA's default ZeRO-2: adapters in bf16 + their fp32 master weights and Adam moments
    assert plan["checkpoint"] == {"complete": 14 * 19_988_480}


def test_plan_prices_complete_and_weights_only_checkpoints(capsys):
    assert main(["plan", "--model", "llama-2-70b", "--strategy", "full", "--gpus", "32", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = plan["total_params"]
    assert plan["checkpoint"] == {"complete": 12 * n, "weights_only": 4 * n}
    assert 0.8e12 < plan["checkpoint"]["complete"] < 0.85e12  # the ~0.8 TB a 70B ZeRO-3 checkpoint takes


def test_model_state_formula_is_deepspeeds_for_zero2_and_zero3():
    total, largest = 1_000_000_000, 50_000_000
    for stage, opt, par in ((2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)):
        ours, _ = model_state_bytes(total, total, largest, stage, 8, 8, opt, par)
        ds_gpu, _ = deepspeed_estimate(total, largest, stage, 8, 8, opt, par)
        assert abs(ours - ds_gpu) <= 8, (stage, opt, par)
