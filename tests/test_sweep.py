"""`med42-ray sweep` end to end: Ray Tune (ASHA) over LoRA r/alpha/lr, each trial a Ray Train run of
the embedded tiny Llama on the prepared sample, scored on the sample MedQA dev split.

HEAVY: four short Train runs, one after another (a 2-CPU cluster holds one at a time).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from med42_ray.config import ConfigError, load_config

STEPS, EVAL_EVERY, TRIALS = 4, 2, 4


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

    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.cli import main
    from med42_ray.config import resolve_path
    from med42_ray.eval.workers import load_model
    from med42_ray.sweep.validation import Validation

    prepared, _ = sample_prepared
    rc = main(["sweep", "--run-dir", str(tmp_path), "--data-dir", str(prepared), "--num-samples", str(TRIALS),
               "--max-steps", str(STEPS), "--eval-every", str(EVAL_EVERY),
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

    # ASHA: its decisions are the rule applied to the recorded accuracies, and it did stop some trial
    expected = _asha_decisions(trials, EVAL_EVERY, 2.0)
    assert {t["trial_id"]: t["stopped_early"] for t in trials} == expected
    stopped = [t for t in trials if t["stopped_early"]]
    assert stopped and all(t["steps"] < STEPS and t["adapter"] is None for t in stopped)

    # the best is the completed trial with the highest final accuracy (ties: gold probability)
    completed = [t for t in trials if t["status"] == "completed"]
    best = max(completed, key=lambda t: (t["val_accuracy"], t["val_gold_prob"]))
    assert summary["best"] == best["trial_id"]
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in completed)

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

    # Scoring the exported adapter offline (one process, evaluate's loader) gives the accuracy the
    # trial measured inside its two DeepSpeed workers at its last step.
    items = load_benchmarks(resolve_path("pkg://sample/data/benchmarks"), ["medqa_4options_dev"])["medqa_4options_dev"]
    _, model = load_model(tiny_model_dir, str(adapter))
    offline = Validation.build(items, "harness", EVAL_EVERY, tiny_model_dir)(
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
