"""Typed run configuration: one YAML file plus `key.path=value` overrides, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt or unknown key fails at
the edge, naming the key and the file, before Ray starts. Each stage owns its section model in
its own package (`med42_ray/data/config.py`, ...); this module only composes and loads them.
Nothing below imports this module back: stages take `ConfigError` and `resolve_path` from the
leaves `errors.py` and `paths.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from med42_ray.data.config import PrepareConfig
from med42_ray.errors import ConfigError
from med42_ray.eval.config import EvalConfig
from med42_ray.merge import deep_merge
from med42_ray.paths import DEFAULT_CONFIG, PACKAGE_SCHEME, resolve_path
from med42_ray.pipeline.config import (RUN_NAMES, PipelineConfig, merged_eval_config, merged_train_config,
                                       run_settings)
from med42_ray.strict_model import StrictModel
from med42_ray.sweep.config import SweepConfig
from med42_ray.train.config import TrainConfig


class RayConfig(StrictModel):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto' inside `ray job submit`); None starts a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster (None: all)")
    dashboard: bool = Field(True, description="start the dashboard with a local cluster")


class RunConfig(StrictModel):
    run_dir: str = Field("runs/default", description="where this run writes its outputs")
    upload_to: str | None = Field(
        None, description="a URI (s3://bucket/runs/x, gs://..., any pyarrow filesystem) each stage's outputs "
                          "are uploaded to when it ends, laid out as under run_dir (None: local only)")
    seed: int = Field(42, description="seed for sampling, shuffling and model init")
    model: str = Field("tiny-llama", description="HF model id, local HF directory, or 'tiny-llama' (embedded)")
    ray: RayConfig = RayConfig()
    prepare: PrepareConfig = PrepareConfig()
    evaluate: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    pipeline: PipelineConfig = PipelineConfig()
    sweep: SweepConfig = SweepConfig()

    @field_validator("upload_to")
    @classmethod
    def _upload_uri(cls, v: str | None) -> str | None:
        from med42_ray.upload import check_uri

        return v if v is None else check_uri(v)

    @model_validator(mode="after")
    def _pipeline_train_configs_valid(self) -> "RunConfig":
        # Fail at load, not an hour into the pipeline when the LoRA stage starts. Each problem names
        # its whole key (pipeline.full.lr), as a mistake in any other section does.
        def merged(section: str, merge, *args, **fixed):
            try:
                return merge(*args, **fixed)
            except ValidationError as e:
                raise ValueError("\n  ".join(_describe(err, section) for err in e.errors())) from None

        merged("pipeline.evaluate", merged_eval_config, self.evaluate, self.pipeline.evaluate)
        shared = merged("pipeline.train", merged_train_config, self.train, self.pipeline.train)
        # The runs the pipeline trains, and any other section set (a mistake there is still one).
        sections = {run: self.pipeline.overrides(run) for run in RUN_NAMES
                    if run in self.pipeline.strategies or self.pipeline.overrides(run)}
        if self.pipeline.pretrain is not None:
            sections["pretrain.train"] = self.pipeline.pretrain.train
        for name, overrides in sections.items():
            fixed = run_settings({"pretrain.train": "full"}.get(name, name))
            strategy, method = fixed["strategy"], fixed.get("peft", {}).get("method")
            if overrides.get("strategy", strategy) != strategy:  # it would be overwritten unseen
                raise ValueError(f"pipeline.{name}.strategy: this section configures the {strategy} run; "
                                 f"remove the key (got {_shown(overrides['strategy'])})")
            peft = overrides.get("peft")
            if method and isinstance(peft, dict) and peft.get("method", method) != method:
                raise ValueError(f"pipeline.{name}.peft.method: this section configures the {method} run; "
                                 f"remove the key (got {_shown(peft['method'])})")
            merged(f"pipeline.{name}", merged_train_config, shared, overrides, **fixed)
        return self


def _set_path(tree: dict, dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{origin}: cannot set {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


# The pipeline's layers that refine a section for its stages (pipeline/config.py), most general first.
PIPELINE_LAYERS = {"train": ("pipeline.train", "pipeline.pretrain.train", *(f"pipeline.{r}" for r in RUN_NAMES)),
                   "evaluate": ("pipeline.evaluate",)}


def _unshadow(tree: dict, key: str, overridden: dict[str, str]) -> None:
    """A command-line `train.K` (or `evaluate.K`) must reach the pipeline's stages too: drop the
    file's `pipeline.*.K` that would otherwise win over it unseen. One the command line set itself
    stays, being the more specific of the two."""
    section, _, rest = key.partition(".")
    for layer in PIPELINE_LAYERS.get(section, ()) if rest else ():
        shadow = f"{layer}.{rest}"
        if shadow in overridden:
            continue
        *parents, last = shadow.split(".")
        node = tree
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)


# An override: 'key.path=value' text, its value read as YAML (`-o`), or an already-typed
# (key, value, origin) triple (a CLI flag), origin naming it in error messages ('flag --max-steps').
Override = str | tuple[str, Any, str]


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


def _typed_override(item: Override) -> tuple[str, Any, str, str]:
    """(key, value, origin, how the override reads in the list of overrides)."""
    if isinstance(item, str):
        key, value = parse_override(item)
        return key, value, f"override {item!r}", item
    key, value, origin = item
    return key, value, origin, f"{key}={value!r}"


def _shown(value: Any, limit: int = 80) -> str:
    """A value as the user wrote it, cut short: a mistyped field may hold a whole pasted document."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _describe(e: dict, section: str = "", came_from: str = "") -> str:
    """One pydantic error as '<dotted key>: <what is wrong> (got <value>)', in the file's terms.
    `section` prefixes the key of an error from validating a part of the config on its own."""
    key = ".".join(str(p) for p in (*([section] if section else []), *e["loc"]))
    msg = e["msg"].removeprefix("Value error, ")
    if not key:  # a whole-config rule: its message already names the keys
        return msg
    if e["type"] == "extra_forbidden":
        return f"unknown key {key!r}{came_from}"
    if e["type"] == "missing":  # its input is the enclosing section, not a value of this key
        return f"{key}: required, but not given{came_from}"
    if not e["loc"]:  # a rule over a whole section: its input is the section
        return f"{key}: {msg}"
    if e["type"] in ("model_type", "model_attributes_type"):  # pydantic's words name our class
        msg = "should be a section (a mapping of keys)"
    return f"{key}: {msg} (got {_shown(e.get('input'))}{came_from})"


def _format_errors(err: ValidationError, origin: str, sources: dict[str, str]) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        came_from = "".join(f", from {s}" for k, s in sources.items()
                            if key and (key == k or key.startswith(f"{k}.")))
        lines.append(f"  {_describe(e, came_from=came_from)}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[Override] | None = None) -> RunConfig:
    """Load a YAML run config (the packaged default when `path` is None) and apply overrides.

    A file may start from another with `extends: <file>` (relative to itself, or `pkg://configs/...`)
    and change only what differs. String values may use `${VAR}` or `${VAR:-default}`, so one file
    serves a laptop and a cluster whose data lives elsewhere. Relative paths inside the file stay
    relative to the working directory the user runs from, like every other CLI.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    tree = _read_tree(cfg_path, ())
    origin = str(cfg_path)
    sources, shown = {}, []  # key -> where its value came from, for the error that names the key
    for item in overrides or []:
        key, value, source, text = _typed_override(item)
        _set_path(tree, key, value, source)
        sources[key] = source
        shown.append(text)
    for key in sources:
        _unshadow(tree, key, sources)
    if shown:
        origin += f" (with overrides {' '.join(shown)})"
    tree = _expand_env(tree, origin, "")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin, sources)) from None


def _read_tree(cfg_path: Path, chain: tuple[Path, ...]) -> dict:
    if not cfg_path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {cfg_path}{where}")
    if cfg_path.resolve() in chain:
        raise ConfigError(f"{cfg_path}: `extends` loops back to itself")
    try:
        tree = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {cfg_path}: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of sections")
    base = tree.pop("extends", None)
    if base is None:
        return tree
    base_path = resolve_path(base) if str(base).startswith(PACKAGE_SCHEME) else cfg_path.parent / str(base)
    return deep_merge(_read_tree(base_path, (*chain, cfg_path.resolve())), tree)


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, origin: str, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, origin, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, origin, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def value(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{origin}: {key} uses ${{{name}}}, which is not set (or write ${{{name}:-default}})")
        return default

    return _ENV_VAR.sub(value, node)
