"""`med42-ray sweep` end to end: Ray Tune (ASHA) over LoRA r/alpha/lr, each trial a Ray Train run of
the embedded tiny Llama on the prepared sample, scored on the sample MedQA dev split.

HEAVY: four short Train runs, one after another (a 2-CPU cluster holds one at a time), with one
worker each to keep the start-up cost down; the two-rank validation is checked on its own below.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from safetensors.torch import load_file

from med42_ray.config import ConfigError, load_config
from med42_ray.layout import SweepDir

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

STEPS, EVAL_EVERY, TRIALS = 4, 2, 4


def _dev_items():
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.paths import resolve_path

    return load_benchmarks(resolve_path("pkg://sample/data/benchmarks"), ["medqa_4options_dev"])["medqa_4options_dev"]


def _asha_decisions(trials: list[dict], grace: int, rf: float) -> dict[str, bool]:
    """Replay ASHA's rule on the recorded accuracies: trials ran one at a time in id order, and a
    trial is stopped at the grace rung when it is below the (1 - 1/rf) quantile of the earlier
    trials' accuracies there."""
    recorded, stop = [], {}
    for t in sorted(trials, key=lambda t: t["trial_id"]):
        at_rung = next(h["val_accuracy"] for h in t["history"] if h["step"] >= grace)
        stop[t["trial_id"]] = bool(recorded) and at_rung < np.nanpercentile(recorded, (1 - 1 / rf) * 100)
        recorded.append(at_rung)
    return stop


def test_sweep_runs_asha_over_lora_and_exports_the_best(ray_cluster, sample_prepared, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from med42_ray.cli import main
    from med42_ray.eval.workers import load_model
    from med42_ray.sweep.validation import Validation

    prepared, _ = sample_prepared
    rc = main(["sweep", "--run-dir", str(tmp_path), "--data-dir", str(prepared), "--num-samples", str(TRIALS),
               "--max-steps", str(STEPS), "--eval-every", str(EVAL_EVERY), "--num-workers", "1",
               "-o", "sweep.space.lr_min=1e-4", "-o", "sweep.space.lr_max=5e-2", "-o", "train.peak_tflops=0.1"])
    assert rc == 0
    out = tmp_path / "sweep"
    summary = json.loads((out / "trials.json").read_text())
    trials = summary["trials"]
    assert len(trials) == TRIALS and summary["benchmark"] == "medqa_4options_dev" and summary["questions"] == 36
    assert summary["scheduler"] == {"name": "ASHA", "time_attr": "step", "max_t": STEPS, "grace_period": EVAL_EVERY,
                                    "reduction_factor": 2.0}
    for t in trials:
        assert t["status"] in ("completed", "stopped"), t
        assert 0.0 <= t["val_accuracy"] <= 1.0 and 0.0 < t["val_gold_prob"] < 1.0
        assert t["params"]["r"] in (4, 8, 16) and t["params"]["alpha"] in (8, 16, 32)
        assert 1e-4 <= t["params"]["lr"] <= 5e-2
        assert [h["step"] for h in t["history"]] == list(range(EVAL_EVERY, t["steps"] + 1, EVAL_EVERY))
        # the trial's own train metrics carry the same validation scores
        rows = [json.loads(line) for line in open(f"{t['output_dir']}/metrics.jsonl")]
        scored = {r["step"]: r["val_accuracy"] for r in rows if "val_accuracy" in r}
        assert all(scored[h["step"]] == h["val_accuracy"] for h in t["history"])
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == TRIALS  # seeded, distinct draws

    # ASHA's decisions are its rule applied to the recorded accuracies. (Whether the rule stops any
    # of these four depends on the trained weights, which vary with prepare's row order, so the
    # test does not require a stop; with the sample it usually stops one or two.)
    expected = _asha_decisions(trials, EVAL_EVERY, 2.0)
    assert {t["trial_id"]: t["stopped_early"] for t in trials} == expected
    for t in trials:
        assert (t["status"] == "stopped") == (t["steps"] < STEPS)

    # the best is the completed trial with the highest final accuracy (ties: gold probability)
    completed = [t for t in trials if t["status"] == "completed"]
    best = max(completed, key=lambda t: (t["val_accuracy"], t["val_gold_prob"]))
    assert summary["best"] == best["trial_id"]
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in completed)
    # trials train without exporting; the best alone is exported afterwards, from its last checkpoint
    assert [t["trial_id"] for t in trials if t["adapter"]] == [best["trial_id"]]

    cfg = load_config(out / "best_config.yaml")
    assert cfg.train.strategy == "lora"
    assert (cfg.train.lora.r, cfg.train.lora.alpha) == (best["params"]["r"], best["params"]["alpha"])
    assert cfg.train.lr == pytest.approx(best["params"]["lr"])
    assert cfg.train.data_dir == str(prepared) and cfg.run_dir == str(tmp_path)

    adapter = out / "best_adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == best["params"]["r"]
    assert load_file(str(adapter / "adapter_model.safetensors")).keys() == \
        load_file(f"{best['adapter']}/adapter_model.safetensors").keys()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert model.peft_config["default"].lora_alpha == best["params"]["alpha"]

    # Scoring the exported adapter offline (evaluate's loader, no DeepSpeed) gives the accuracy the
    # trial measured inside its Train worker at its last step.
    _, model = load_model(tiny_model_dir, str(adapter))
    offline = Validation.build(_dev_items(), "harness", EVAL_EVERY, tiny_model_dir)(
        model, rank=0, world=1, device="cpu", params_partitioned=False)
    assert offline["val_questions"] == 36
    assert offline["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert offline["val_gold_prob"] == pytest.approx(best["val_gold_prob"], abs=1e-4)


def test_sweep_config_is_validated():
    with pytest.raises(ConfigError, match="sweep.bogus"):
        load_config(None, ["sweep.bogus=1"])
    with pytest.raises(ConfigError, match="unknown benchmark 'mmlu_astrology'"):
        load_config(None, ["sweep.benchmark=mmlu_astrology"])
    with pytest.raises(ConfigError, match="lr_min"):
        load_config(None, ["sweep.space.lr_min=0.1", "sweep.space.lr_max=0.01"])
    with pytest.raises(ConfigError, match="sweep.space.r"):
        load_config(None, ["sweep.space.r=[0, 8]"])


def test_trials_leave_room_for_data_reads_and_use_absolute_paths(tmp_path, monkeypatch):
    from med42_ray.sweep.run import _default_concurrency, trial_base_config

    monkeypatch.chdir(tmp_path)  # a Tune trial runs in its own directory: relative paths must go
    cfg = load_config(None, ["run_dir=rel/run", "train.data_dir=rel/prepared", "sweep.max_steps=7"])
    base = trial_base_config(cfg, SweepDir(tmp_path / "sw"), cluster_cpus=2)
    assert base.train.strategy == "lora" and base.train.max_steps == 7
    # two workers, the trial's own reservation, and one whole CPU left for Ray Data's read tasks
    assert base.train.scaling.cpus_per_worker == 0.49
    assert 2 * 0.49 + cfg.sweep.trial_cpus + 1 <= 2
    assert base.run_dir == str(tmp_path / "rel/run") and base.train.data_dir == str(tmp_path / "rel/prepared")
    assert base.train.storage_path == str(tmp_path / "sw" / "tune")
    with pytest.raises(ConfigError, match="not enough"):
        trial_base_config(cfg, SweepDir(tmp_path), cluster_cpus=1)
    assert _default_concurrency(base, {"CPU": 64}) == 1  # CPU trials one at a time
    gpu = load_config(None, ["train.scaling.use_gpu=true", "train.scaling.num_workers=2"])
    assert _default_concurrency(gpu, {"CPU": 64, "GPU": 8}) == 4


def _score_on_rank(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    from med42_ray.eval.workers import load_model
    from med42_ray.sweep.validation import Validation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, model = load_model(model_dir)
        got = Validation.build(_dev_items(), "harness", 1, model_dir)(
            model, rank=rank, world=world, device="cpu", params_partitioned=False)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


def test_validation_shards_questions_over_ranks(tmp_path, tiny_model_dir):
    """Two ranks each score half the questions and all-reduce the counts: both get the numbers one
    process scoring everything gets."""
    import torch.multiprocessing as mp

    from med42_ray.eval.workers import load_model
    from med42_ray.sweep.validation import Validation

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_score_on_rank, args=(2, port, tiny_model_dir, str(tmp_path)), nprocs=2, join=True)
    _, model = load_model(tiny_model_dir)
    whole = Validation.build(_dev_items(), "harness", 1, tiny_model_dir)(
        model, rank=0, world=1, device="cpu", params_partitioned=False)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["val_questions"] == whole["val_questions"] == 36
        assert got["val_accuracy"] == pytest.approx(whole["val_accuracy"])
        assert got["val_gold_prob"] == pytest.approx(whole["val_gold_prob"], abs=1e-6)
