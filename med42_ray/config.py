"""Typed run configuration: one YAML file plus `key.path=value` overrides, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt or unknown key fails at
the edge, naming the key and the file, before Ray starts. Each stage owns its section model in
its own package (`med42_ray/data/config.py`, ...); this module only composes and loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from med42_ray.data.config import PrepareConfig
from med42_ray.eval.config import EvalConfig
from med42_ray.strict_model import StrictModel
from med42_ray.train.config import TrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class RayConfig(StrictModel):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto' inside `ray job submit`); None starts a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster (None: all)")
    dashboard: bool = Field(True, description="start the dashboard with a local cluster")


class RunConfig(StrictModel):
    run_dir: str = Field("runs/default", description="where this run writes its outputs")
    seed: int = Field(42, description="seed for sampling, shuffling and model init")
    model: str = Field("tiny-llama", description="HF model id, local HF directory, or 'tiny-llama' (embedded)")
    ray: RayConfig = RayConfig()
    prepare: PrepareConfig = PrepareConfig()
    evaluate: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the file and the key)."""


def _set_path(tree: dict, dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{origin}: cannot set {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'prepare.seq_len=2048' -> ('prepare.seq_len', 2048). The value is read as YAML, so numbers,
    booleans, lists and null work; anything else stays a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. prepare.seq_len=2048")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key {key!r}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (the packaged default when `path` is None) and apply overrides.

    Relative paths inside the file stay relative to the working directory the user runs from,
    like every other CLI; the packaged configs use `pkg://` for files shipped in the package.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    if not cfg_path.is_file():
        raise ConfigError(f"config file not found: {cfg_path}")
    try:
        tree = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {cfg_path}: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of sections")
    origin = str(cfg_path)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(tree, key, value, f"override {text!r}")
    if overrides:
        origin += f" (with overrides {' '.join(overrides)})"
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None


def resolve_path(value: str) -> Path:
    """Resolve 'pkg://sample/data' to a file shipped in the package; other paths unchanged."""
    if value.startswith("pkg://"):
        return PACKAGE_DIR / value[len("pkg://"):]
    return Path(value).expanduser()
