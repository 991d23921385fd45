"""`med42-ray config`, `--version`, and one clear line from every command given a missing model,
adapter, benchmark directory or data directory (no Ray: each is refused before a cluster starts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from med42_ray.cli import main
from med42_ray.config import load_config
from med42_ray.paths import CONFIG_DIR
from med42_ray.train.strategies import deepspeed_config

MED42_RAY = Path(sys.executable).parent / "med42-ray"


def _derived(text: str) -> dict:
    """The commented block of `config`'s output, read back as YAML."""
    block = text[text.index("# training_runs:"):]
    return yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))["training_runs"]


@pytest.mark.parametrize("name", ["default.yaml", "llama-2-70b.yaml", "public_raw.yaml"])
def test_config_prints_a_config_that_reads_back_to_the_same_run(name, capsys, tmp_path):
    assert main(["config", "--config", str(CONFIG_DIR / name), "-o", "train.lr=3e-4"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(text)
    expected = load_config(CONFIG_DIR / name, ["train.lr=3e-4"])
    assert load_config(tmp_path / "resolved.yaml") == expected
    assert yaml.safe_load(text)["train"]["lr"] == 3e-4  # every key written out, defaults included
    assert "micro_batch_size" in yaml.safe_load(text)["train"]


def test_config_shows_the_deepspeed_config_each_training_run_uses(capsys):
    assert main(["config", "-o", "train.scaling.use_gpu=true", "-o", "pipeline.lora.grad_accum=4",
                 "-o", "train.offload_optimizer=true"]) == 0
    runs = _derived(capsys.readouterr().out)
    cfg = load_config(None, ["train.scaling.use_gpu=true", "pipeline.lora.grad_accum=4", "train.offload_optimizer=true"])
    assert set(runs) == {"train", "pipeline.pretrain", "pipeline.full", "pipeline.lora"}  # the default has a pretrain
    # The pipeline's runs as the pipeline derives them: the default's pipeline.train gives them one worker.
    assert runs["train"]["num_workers"] == 2 and runs["pipeline.full"]["num_workers"] == 1
    lora = runs["pipeline.lora"]
    assert (lora["strategy"], lora["zero_stage"], lora["use_gpu"]) == ("lora", 2, True)
    assert lora["lr"] == cfg.pipeline.lora["lr"]
    ds = lora["deepspeed"]
    assert ds["gradient_accumulation_steps"] == 4 and ds["bf16"] == {"enabled": True}
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}  # bf16 with accumulation
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and ds["optimizer"]["type"] == "AdamW"
    assert runs["train"]["deepspeed"] == json.loads(json.dumps(deepspeed_config(cfg.train, 2, True)))


def test_config_deepspeed_prints_one_runs_json(capsys):
    assert main(["config", "--deepspeed", "pipeline.full", "-o", "pipeline.full.micro_batch_size=3"]) == 0
    ds = json.loads(capsys.readouterr().out)
    # pipeline.train (zero_stage 2 in the default), then pipeline.full, as the pipeline derives it
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["zero_optimization"]["stage"] == 2
    assert main(["config", "--deepspeed", "pipeline.nothing"]) == 2
    assert "--deepspeed pipeline.nothing: this config has no such training run (it has train," in capsys.readouterr().err


def test_version():
    out = subprocess.run([str(MED42_RAY), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"med42-ray {version('med42-ray')}"


NOWHERE = "/nonexistent/med42"
MODEL_LINE = f"model: no model at {NOWHERE} (a local Hugging Face model directory, a Hub id such as org/name"


@pytest.mark.parametrize("argv, expected", [
    (["prepare", "--model", NOWHERE], MODEL_LINE),
    (["prepare", "-o", f"prepare.benchmarks_dir={NOWHERE}"], f"prepare.benchmarks_dir not found: {NOWHERE}"),
    (["train", "--model", NOWHERE], MODEL_LINE),
    (["train", "--data-dir", NOWHERE], f"no prepared data at {NOWHERE}: manifest.json not found"),
    (["evaluate", "--model", NOWHERE], MODEL_LINE),
    (["evaluate", "--adapter", NOWHERE], f"--adapter: {NOWHERE}: no such directory"),
    (["evaluate", "--benchmarks-dir", NOWHERE], f"evaluate.benchmarks_dir not found: {NOWHERE}"),
    (["evaluate", "-o", f"evaluate.models=[{{name: a, path: {NOWHERE}}}]"], f"evaluate.models[0].path: no model at {NOWHERE}"),
    (["sweep", "--model", NOWHERE], MODEL_LINE),
    (["sweep", "--data-dir", NOWHERE], f"no prepared data at {NOWHERE}: manifest.json not found"),
    (["pipeline", "--model", NOWHERE], MODEL_LINE),
    (["pipeline", "--benchmarks-dir", NOWHERE], f"prepare.benchmarks_dir not found: {NOWHERE}"),
    (["demo", "--model", NOWHERE], MODEL_LINE),
    (["report"], "run directory not found"),
    (["plan", "--model", NOWHERE], MODEL_LINE),
    (["merge", NOWHERE], f"{NOWHERE}: no adapter_config.json; not a LoRA adapter directory"),
    (["merge", NOWHERE, "--base", NOWHERE], f"--base: no model at {NOWHERE}"),
    (["push", NOWHERE, "--repo-id", "a/b"], f"{NOWHERE}: no med42_ray_training.json"),
])
def test_a_missing_input_is_one_clear_line(argv, expected, tmp_path, capsys):
    code = main([*argv, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("med42-ray"), err
    assert expected in lines[0], err


def test_a_missing_input_is_one_line_from_the_installed_command_too(tmp_path):
    done = subprocess.run([str(MED42_RAY), "evaluate", "--model", NOWHERE, "--run-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"med42-ray: {MODEL_LINE}, or tiny-llama)", done.stderr
