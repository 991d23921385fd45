"""One run layout: every stage and every reader of a run directory agree on where things are."""

from __future__ import annotations

import json

from med42_ray.config import load_config
from med42_ray.layout import (EXPORT_ADAPTER, EXPORT_MERGED, EXPORT_MODEL, RunLayout, TrainDir, eval_dir_for,
                              export_names, prepared_dir_for, storage_path_for, sweep_dir_for, train_data_dir_for,
                              train_dir_for)
from med42_ray.pipeline.run import Pipeline
from med42_ray.report.inputs import load_training


def test_standalone_train_writes_where_the_pipeline_stage_does(tmp_path):
    layout = RunLayout(tmp_path)
    for strategy in ("full", "lora"):
        alone = load_config(None, [f"run_dir={tmp_path}", f"train.strategy={strategy}"])
        assert train_dir_for(alone) == layout.train(strategy) == TrainDir(tmp_path / "train" / strategy)
        stage = next(s for s, _ in Pipeline(alone).plan() if s.name == f"train_{strategy}")
        assert stage.inputs["train"]["output_dir"] == str(layout.train(strategy).root)


def test_pipeline_evaluates_the_exports_the_layout_names(tmp_path):
    plan = {s.name: s for s, _ in Pipeline(load_config(None, [f"run_dir={tmp_path}"])).plan()}
    layout = RunLayout(tmp_path)
    assert plan["evaluate_full"].inputs["model"] == str(layout.train("full").export(EXPORT_MODEL))
    assert plan["evaluate_lora"].inputs["adapter"] == str(layout.train("lora").export(EXPORT_ADAPTER))
    assert plan["evaluate_lora"].inputs["model"] == str(layout.pretrain_train.export(EXPORT_MODEL))
    assert export_names("full") == (EXPORT_MODEL,) and export_names("lora") == (EXPORT_ADAPTER, EXPORT_MERGED)


def test_defaults_and_config_overrides(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    layout = RunLayout(tmp_path)
    assert prepared_dir_for(cfg) == train_data_dir_for(cfg) == layout.prepared
    assert eval_dir_for(cfg) == layout.eval_root and sweep_dir_for(cfg) == layout.sweep
    assert storage_path_for(cfg) == str(tmp_path / "ray_results")
    moved = load_config(None, [f"run_dir={tmp_path}", f"prepare.output_dir={tmp_path}/p",
                               f"train.output_dir={tmp_path}/t", f"evaluate.output_dir={tmp_path}/e",
                               f"sweep.output_dir={tmp_path}/s", "train.storage_path=s3://bucket/ckpt"])
    assert prepared_dir_for(moved).root == train_data_dir_for(moved).root == tmp_path / "p"
    assert train_dir_for(moved).root == tmp_path / "t"
    assert eval_dir_for(moved).root == tmp_path / "e" and sweep_dir_for(moved).root == tmp_path / "s"
    assert storage_path_for(moved) == "s3://bucket/ckpt"
    # a relative directory resolves against where the user runs from, as every CLI path does
    relative = load_config(None, ["run_dir=runs/x", "train.data_dir=data/prep"])
    assert train_data_dir_for(relative).root.is_absolute()


def test_report_reads_a_standalone_train_run(tmp_path):
    outputs = train_dir_for(load_config(None, [f"run_dir={tmp_path}", "train.strategy=lora"]))
    outputs.root.mkdir(parents=True)
    outputs.metrics.write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    runs = load_training(tmp_path)
    assert list(runs) == ["lora"] and runs["lora"].outputs == outputs and runs["lora"].metrics[0]["loss"] == 2.5
