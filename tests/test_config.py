"""The run config is validated at the edge: unknown or mistyped keys name the key and the file."""

from __future__ import annotations

import pytest

from med42_ray.cli import main
from med42_ray.config import ConfigError, load_config
from med42_ray.paths import PACKAGE_DIR


def test_packaged_default_loads():
    cfg = load_config()
    assert cfg.model == "tiny-llama" and cfg.prepare.sources
    assert cfg.prepare.ngram == 13


def test_overrides_are_typed():
    cfg = load_config(None, ["prepare.seq_len=1024", "seed=7", "prepare.overlong=reject"])
    assert (cfg.prepare.seq_len, cfg.seed, cfg.prepare.overlong) == (1024, 7, "reject")


def test_typed_overrides_are_taken_as_given_and_errors_name_their_origin():
    cfg = load_config(None, [("model", "123", "flag --model"), "seed=7", ("evaluate.benchmarks", ["pubmedqa"], "x")])
    assert (cfg.model, cfg.seed, cfg.evaluate.benchmarks) == ("123", 7, ["pubmedqa"])
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*\(got 0, from flag --max-steps\)"):
        load_config(None, [("train.max_steps", 0, "flag --max-steps")])
    with pytest.raises(ConfigError, match=r"prepare\.seq_len: .*from override 'prepare\.seq_len=lots'"):
        load_config(None, ["prepare.seq_len=lots"])


def test_also_protocols_name_the_key_and_the_headline_comes_first():
    cfg = load_config(None, ["evaluate.protocol=full_text", "evaluate.also_protocols=[harness, full_text]"])
    assert cfg.evaluate.protocols == ["full_text", "harness"]  # the headline is scored once, first
    with pytest.raises(ConfigError, match=r"evaluate\.also_protocols\.0: Input should be 'harness', 'med42_chat', "
                                          r"'full_text' or 'cot' \(got 'letters'"):
        load_config(None, ["evaluate.also_protocols=[letters]"])
    with pytest.raises(ConfigError, match=r"evaluate\.also_protocols: .*repeated: harness"):
        load_config(None, ["evaluate.also_protocols=[harness, harness]"])
    with pytest.raises(ConfigError, match=r"evaluate\.models\.0\.name: .*'protocols' is reserved"):
        load_config(None, ["evaluate.models=[{name: protocols, path: tiny-llama}]"])


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  seq_lenn: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "prepare.seq_lenn" in str(e.value) and str(bad) in str(e.value)


def test_mistyped_value_names_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  seq_len: lots\n")
    with pytest.raises(ConfigError, match=r"prepare\.seq_len"):
        load_config(bad)


def test_unknown_source_format_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  sources:\n    - {name: a, path: x.json, format: parquetish}\n")
    with pytest.raises(ConfigError, match="unknown format 'parquetish'"):
        load_config(bad)


def test_unreadable_or_missing_config_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["prepare", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("prepare: [unclosed\n")
    assert main(["prepare", "--config", str(broken)]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_missing_source_file_fails_before_ray_starts(tmp_path, capsys):
    import ray

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path}/run\nprepare:\n  sources:\n"
                   f"    - {{name: a, path: {tmp_path}/missing.jsonl, format: alpaca}}\n")
    was_running = ray.is_initialized()
    assert main(["prepare", "--config", str(cfg)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert ray.is_initialized() == was_running


def test_extends_merges_sections_and_env_vars_expand(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text("run_dir: ${RUNS:-runs}/base\nprepare: {seq_len: 1024, ngram: 8}\ntrain: {lr: 0.5}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nprepare: {seq_len: 2048}\n")
    cfg = load_config(child)
    assert (cfg.run_dir, cfg.prepare.seq_len, cfg.prepare.ngram, cfg.train.lr) == ("runs/base", 2048, 8, 0.5)
    monkeypatch.setenv("RUNS", "/mnt/shared")
    assert load_config(child).run_dir == "/mnt/shared/base"
    child.write_text("extends: base.yaml\nmodel: ${NO_SUCH_VAR}\n")
    with pytest.raises(ConfigError, match=r"model uses \$\{NO_SUCH_VAR\}, which is not set"):
        load_config(child)
    child.write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml \(extended by .*child\.yaml\)"):
        load_config(child)
    base.write_text("extends: child.yaml\n")
    child.write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(child)


def test_paper_configs_load_with_the_papers_settings():
    from med42_ray.pipeline.config import merged_train_config

    for name, workers in (("llama-2-7b", 8), ("llama-2-70b", 32)):
        cfg = load_config(PACKAGE_DIR / "configs" / f"{name}.yaml")
        assert cfg.model == f"meta-llama/{name.replace('llama', 'Llama', 1)}-hf"
        assert cfg.train.scaling.use_gpu and cfg.train.scaling.num_workers == workers
        assert cfg.pipeline.pretrain is None and cfg.pipeline.strategies == ["full", "lora"]
        full = merged_train_config(cfg.train, cfg.pipeline.full, strategy="full")
        lora = merged_train_config(cfg.train, cfg.pipeline.lora, strategy="lora")
        assert (full.resolved_epochs(), lora.resolved_epochs(), lora.lora.r) == (3, 8, 8)
        assert len(lora.lora.target_modules) == 7  # every linear layer
        assert cfg.prepare.benchmarks_dir == cfg.evaluate.benchmarks_dir


def test_paper_configs_train_with_flex_attention():
    """Packed documents kept apart by a kernel that needs nothing beyond torch (train/packing.py)."""
    for name in ("llama-2-7b", "llama-2-70b"):
        assert load_config(PACKAGE_DIR / "configs" / f"{name}.yaml").train.attn_implementation == "flex_attention"


def test_attention_kernel_is_validated():
    with pytest.raises(ConfigError, match=r"train\.attn_implementation: Input should be 'sdpa', 'eager', "
                                          r"'flex_attention', 'flash_attention_2' or 'flash_attention_3'"):
        load_config(None, ["train.attn_implementation=flash2"])
    with pytest.raises(ConfigError, match="flash_attention_2 runs on NVIDIA GPUs only: set scaling.use_gpu"):
        load_config(None, ["train.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="flash_attention_2 computes in bf16/fp16 only"):
        load_config(None, ["train.attn_implementation=flash_attention_2", "train.scaling.use_gpu=true",
                           "train.precision=fp32"])
    gpu = load_config(None, ["train.attn_implementation=flash_attention_2", "train.scaling.use_gpu=true"])
    assert gpu.train.attn_implementation == "flash_attention_2"
    assert load_config(None, ["train.attn_implementation=flex_attention"]).train.attn_implementation == "flex_attention"


def test_command_line_train_settings_reach_every_pipeline_stage():
    """`-o train.K=v` on the pipeline must not be shadowed by the file's `pipeline.*` layers (the
    default sets `pipeline.train.checkpoint_every_steps: 300`, `pipeline.full.max_steps`, ...);
    a `pipeline.*` key the command line sets itself stays the more specific one."""
    from med42_ray.pipeline.run import Pipeline

    plain = Pipeline(load_config(None)).cfg
    assert plain.train.checkpoint_every_steps == 300 and plain.evaluate.protocol == "full_text"

    cfg = load_config(None, ["train.checkpoint_every_steps=2", "train.max_steps=5", "pipeline.lora.max_steps=3",
                             "train.scaling.num_workers=2", "evaluate.protocol=harness"])
    assert cfg.pipeline.train["scaling"] == {"threads_per_worker": 2}  # only the key set is dropped
    pipe = Pipeline(cfg)
    assert pipe.cfg.train.checkpoint_every_steps == 2 and pipe.cfg.train.scaling.num_workers == 2
    assert pipe.cfg.evaluate.protocol == "harness"
    assert "max_steps" not in cfg.pipeline.full and "max_steps" not in cfg.pipeline.pretrain.train
    assert cfg.pipeline.lora["max_steps"] == 3
