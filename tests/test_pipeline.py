"""The pipeline's plan, fingerprints and markers, and its configuration (no Ray: the end-to-end run,
failure and resume are in test_jobs.py)."""

from __future__ import annotations

import pytest

from med42_ray.cli import main
from med42_ray.config import ConfigError, load_config
from med42_ray.layout import RunLayout
from med42_ray.pipeline.markers import StageMarkers
from med42_ray.pipeline.run import Pipeline


def _plan(tmp_path, *overrides: str) -> dict[str, tuple]:
    cfg = load_config(None, [f"run_dir={tmp_path}", *overrides])
    return {stage.name: (stage, fp) for stage, fp in Pipeline(cfg).plan()}


def test_demo_plan_runs_the_papers_comparison_in_order(tmp_path):
    plan = _plan(tmp_path)
    assert list(plan) == ["prepare", "pretrain_prepare", "pretrain", "evaluate_base", "train_full", "train_lora",
                          "evaluate_full", "evaluate_lora", "report"]
    # the LoRA adapter is evaluated on the pre-trained base, not on the random-init tiny model
    lora_eval = plan["evaluate_lora"][0].inputs
    assert lora_eval["model"] == str(tmp_path / "pretrain" / "train" / "model")
    assert lora_eval["adapter"] == str(tmp_path / "train" / "lora" / "adapter")
    assert plan["evaluate_full"][0].inputs == {**plan["evaluate_full"][0].inputs,
                                               "model": str(tmp_path / "train" / "full" / "model"), "adapter": None}
    full, lora = plan["train_full"][0].inputs["train"], plan["train_lora"][0].inputs["train"]
    assert (full["strategy"], full["max_steps"], full["lr"]) == ("full", 900, 5e-3)  # pipeline.train.lr shared
    assert (lora["strategy"], lora["max_steps"], lora["lr"]) == ("lora", 900, 1e-2)  # pipeline.lora on top
    # pipeline.train and pipeline.evaluate apply to every stage, on top of train: and evaluate:
    assert full["zero_stage"] == lora["zero_stage"] == 2 and full["shuffle_buffer_rows"] == 4096
    assert plan["evaluate_base"][0].inputs["evaluate"]["protocol"] == "full_text"


def test_plan_without_pretrain_and_with_one_strategy(tmp_path):
    plan = _plan(tmp_path, "pipeline.pretrain=null", "pipeline.strategies=[lora]", "pipeline.evaluate_base=false")
    assert list(plan) == ["prepare", "train_lora", "evaluate_lora", "report"]
    assert plan["evaluate_lora"][0].inputs["model"] == "tiny-llama"


def test_fingerprints_follow_what_a_stage_computes_from(tmp_path):
    before = {name: fp for name, (_, fp) in _plan(tmp_path).items()}
    # how a stage runs (workers, actors) does not make it a different stage: a job resubmitted on
    # another cluster shape still finds its finished stages
    same = _plan(tmp_path, "train.scaling.num_workers=8", "evaluate.num_actors=4", "train.max_failures=0",
                 "pipeline.kill_worker={stage: train_full, step: 2}")
    assert {name: fp for name, (_, fp) in same.items()} == before
    # a LoRA setting changes the LoRA stages and what reads them, nothing else
    after = {name: fp for name, (_, fp) in _plan(tmp_path, "pipeline.lora.lr=0.02").items()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"train_lora", "evaluate_lora", "report"}


def test_also_protocols_change_the_evaluate_stages_and_the_report(tmp_path):
    def fingerprints(*also: str) -> dict[str, str]:
        plan = _plan(tmp_path, "pipeline.evaluate.protocol=full_text", f"pipeline.evaluate.also_protocols=[{', '.join(also)}]")
        return {name: fp for name, (_, fp) in plan.items()}

    alone = fingerprints()
    assert fingerprints("full_text") == alone  # the headline listed again scores nothing more
    changed = {name for name, fp in fingerprints("harness").items() if fp != alone[name]}
    assert changed == {"evaluate_base", "evaluate_full", "evaluate_lora", "report"}
    assert fingerprints("harness", "med42_chat") != fingerprints("med42_chat", "harness")  # order: the files' order
    plan = _plan(tmp_path, "pipeline.evaluate.protocol=full_text", "pipeline.evaluate.also_protocols=[harness]")
    assert plan["evaluate_lora"][0].inputs["evaluate"]["also_protocols"] == ["harness"]
    # none: the inputs read as before the key existed, so earlier run dirs keep their markers
    assert "also_protocols" not in _plan(tmp_path, "pipeline.evaluate.also_protocols=[]")["evaluate_base"][0].inputs["evaluate"]


def test_a_marker_for_other_inputs_is_an_error_not_a_silent_rerun(tmp_path):
    markers = StageMarkers(RunLayout(tmp_path).stages)
    assert markers.finished("prepare", "abc") is None
    markers.write("prepare", "abc", 1.5, {"sequences": 3})
    assert markers.finished("prepare", "abc")["outputs"] == {"sequences": 3}
    with pytest.raises(ConfigError, match=r"stage 'prepare' .* different configuration.*prepare\.json"):
        markers.finished("prepare", "def")
    markers.path("prepare").write_text("{not json")
    with pytest.raises(ConfigError, match="not a stage marker"):
        markers.finished("prepare", "abc")


def test_pipeline_sections_are_validated_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'pipeline\.lora\.lorra'"):
        load_config(None, ["pipeline.lora={lorra: 4}"])
    with pytest.raises(ConfigError, match=r"pipeline\.pretrain\.train\.max_steps: Input should be greater than or equal to 1"):
        load_config(None, ["pipeline.pretrain.train.max_steps=0"])
    with pytest.raises(ConfigError, match="strategies"):
        load_config(None, ["pipeline.strategies=[full, full]"])
    with pytest.raises(ConfigError, match="no source has domain 'general'"):
        Pipeline(load_config(None, [f"run_dir={tmp_path}", "prepare.sources=[{name: a, path: x.json, format: alpaca}]"])).plan()


def test_demo_runs_only_the_embedded_default(capsys):
    assert main(["demo", "--config", "med42_ray/configs/public_raw.yaml"]) == 2
    assert "demo always runs the embedded default" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["train.resume", "pipeline.train.resume"])
def test_a_shared_resume_checkpoint_is_refused_and_one_run_s_is_taken(tmp_path, key):
    with pytest.raises(ConfigError, match=r"train.resume .*= '/ckpt/step_00000004'.*pipeline.full.resume, pipeline.lora.resume"):
        _plan(tmp_path, f"{key}=/ckpt/step_00000004")
    assert "train_lora" in _plan(tmp_path, "pipeline.lora.resume=/ckpt/step_00000004")  # one run's: taken
