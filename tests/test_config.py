"""The run config is validated at the edge: unknown or mistyped keys name the key and the file."""

from __future__ import annotations

import pytest

from med42_ray.cli import main
from med42_ray.config import ConfigError, load_config


def test_packaged_default_loads():
    cfg = load_config()
    assert cfg.model == "tiny-llama" and cfg.prepare.sources
    assert cfg.prepare.ngram == 13


def test_overrides_are_typed():
    cfg = load_config(None, ["prepare.seq_len=1024", "seed=7", "prepare.overlong=reject"])
    assert (cfg.prepare.seq_len, cfg.seed, cfg.prepare.overlong) == (1024, 7, "reject")


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
