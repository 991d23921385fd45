"""End-to-end training on Ray Train: 2 CPU workers, DeepSpeed, the embedded tiny Llama, `prepare`'s output.

HEAVY: two real training runs (full with a killed worker, and LoRA) plus one `prepare`; about
3 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from med42_ray.config import load_config
from med42_ray.train.faults import KillWorkerOnce
from med42_ray.train.metrics import read_metrics, superseded_path
from med42_ray.train.trainer import run_train

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

STEPS = 6


@pytest.fixture(scope="module")
def prepared(sample_prepared) -> Path:
    """`prepare` on the packaged sample mixture, as `med42-ray prepare` would run it."""
    return sample_prepared[0]


def _config(run_dir: Path, prepared: Path, strategy: str, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"train.data_dir={prepared}", f"train.strategy={strategy}",
        f"train.max_steps={STEPS}", "train.scaling.num_workers=2", "train.scaling.threads_per_worker=1", "train.zero_stage=null",
        "train.peak_tflops=0.1", *extra])


def _generate(model_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # safetensors, no remote code
    enc = tok.apply_chat_template([{"role": "user", "content": "What causes anaemia?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 8
    return tok.decode(out[0, enc["input_ids"].shape[1]:])


def _no_pickles(directory: Path) -> None:
    assert not [p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_full_zero3_trains_survives_a_killed_worker_and_exports(prepared, tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, prepared, "full", "train.lr=1e-3", "train.checkpoint_every_steps=3",
                  "train.micro_batch_size=1")  # one unpadded packed row per worker and step
    assert cfg.train.resolved_zero_stage() == 3
    marker = tmp_path / "killed.txt"
    # Rank 1's process dies after step 5; Ray restarts both workers from the step-3 checkpoint.
    result = run_train(cfg, step_hook=KillWorkerOnce(step=5, rank=1, marker=str(marker)))
    assert marker.read_text().startswith("killed rank 1 after step 5")

    rows = result.metrics
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["lr"] >= 0
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["non_padding_fraction"] > 0.95
        assert r["epoch"] == 0
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.2, [r["loss"] for r in rows]

    # The first attempt ran steps 1-5 uninterrupted; the resumed attempt redid 4 and 5 from the
    # step-3 checkpoint. Same trajectory: same losses and gradient norms.
    first_attempt = {r["step"]: r for r in read_metrics(superseded_path(result.metrics_path))}
    assert sorted(first_attempt) == [4, 5]
    for step in (4, 5):
        assert abs(first_attempt[step]["loss"] - rows[step - 1]["loss"]) < 1e-4
        assert abs(first_attempt[step]["grad_norm"] - rows[step - 1]["grad_norm"]) < 1e-3
        assert first_attempt[step]["tokens"] == rows[step - 1]["tokens"]

    ckpt = Path(result.checkpoint_path)
    for rank in (0, 1):
        marker_json = json.loads((ckpt / f"rank{rank}.complete.json").read_text())
        assert marker_json["step"] == STEPS and marker_json["world_size"] == 2

    model_dir = result.exported["model"]
    _no_pickles(model_dir)
    trained = load_file(str(model_dir / "model.safetensors"))
    initial = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert trained.keys() == initial.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert trained[name].shape == initial[name].shape and not torch.equal(trained[name], initial[name])
    assert isinstance(_generate(model_dir), str)


def reports_to_file(path: Path):
    """A Ray Train callback (it runs in the controller) that appends each report's metrics to a file;
    defined in a function so that it pickles by value."""
    from ray.train import UserCallback

    class ReportsToFile(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with path.open("a") as f:
                f.write(json.dumps(metrics[0]) + "\n")
    return ReportsToFile()


def test_lora_trains_and_exports_adapter_and_merged_model(prepared, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    local = tmp_path / "nvme"  # checkpoints written here first, uploaded while training goes on
    cfg = _config(tmp_path, prepared, "lora", "train.lr=5e-3", f"train.checkpoint_local_dir={local}",
                  "train.checkpoint_upload=async", "train.checkpoint_every_steps=4", "train.report_every_s=3600")
    assert cfg.train.resolved_zero_stage() == 2 and cfg.train.resolved_epochs() == 8
    reports = tmp_path / "reports.jsonl"
    result = run_train(cfg, callbacks=[reports_to_file(reports)])
    # Metrics reach Ray only with checkpoints here (report_every_s is an hour), each report carrying
    # what happened since the previous one; metrics.jsonl still has every step.
    reported = read_metrics(reports)
    assert [(r["step"], r["steps_in_report"]) for r in reported] == [(4, 4), (STEPS, STEPS - 4)]
    # A step's time runs from the end of the previous step to the end of this one: checkpoints
    # and reports in between count, so consecutive steps' wall clocks differ by exactly it.
    for before, row in zip(result.metrics, result.metrics[1:]):
        assert row["step_time_s"] == pytest.approx(row["wall_s"] - before["wall_s"], abs=0.05)
    assert result.metrics[4]["step_time_s"] > result.metrics[4]["compute_s"]  # step 4's checkpoint
    # the last checkpoint was in storage when fit() returned (the export read it), its local copy gone
    assert json.loads((Path(result.checkpoint_path) / "rank0.complete.json").read_text())["step"] == STEPS
    assert not list(local.iterdir())
    rows = result.metrics
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in rows]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses

    adapter, merged = result.exported["adapter"], result.exported["merged"]
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16 and adapter_cfg["lora_dropout"] == 0.05
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"}
    adapter_weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert adapter_weights and all("lora_" in k for k in adapter_weights)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter_weights.items())
    _no_pickles(adapter)
    _no_pickles(merged)

    # The merged model is base + adapter: same logits as the adapter applied on the fly.
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        base_logits = base(ids).logits
        on_the_fly = PeftModel.from_pretrained(base, adapter)(ids).logits
    torch.testing.assert_close(merged_logits, on_the_fly, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)
    assert isinstance(_generate(merged), str)
