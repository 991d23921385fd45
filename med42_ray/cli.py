"""`med42-ray` command line: one sub-command per stage, all driven by the same run config.

Each stage registers its own sub-commands (`register(subparsers)` in `<stage>/cli.py`), so a
stage's options live next to its code. A sub-command's help is its function's docstring, and an
option that sets config keys says which where it is added (`add_config_flag`), so one function,
`load_from_args`, turns every option given into a typed config override.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from functools import partial
from pathlib import Path

from med42_ray.config import RunConfig, load_config
from med42_ray.errors import ConfigError, RunError
from med42_ray.train.config import TrainConfig

# Stage modules that add sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "med42_ray.data.cli",
    "med42_ray.train.cli",
    "med42_ray.eval.cli",
    "med42_ray.sweep.cli",
    "med42_ray.report.cli",
    "med42_ray.pipeline.cli",
]

# Parser default naming the options that set config keys: {dest: (flag, (key, ...))}.
CONFIG_FLAGS = "config_flags"


def comma_list(text: str) -> list[str] | None:
    """'medqa, pubmedqa' -> ['medqa', 'pubmedqa']; an empty text leaves the config's own list."""
    return [item.strip() for item in text.split(",") if item.strip()] or None


def add_config_flag(parser: argparse.ArgumentParser, flag: str, *keys: str, **kwargs) -> argparse.Action:
    """An option that sets the config keys `keys` to its parsed value (typed by `type`/`action`).

    Its default is None, meaning "not given": the config's own value stands."""
    action = parser.add_argument(flag, default=None, **kwargs)
    flags = {**(parser.get_default(CONFIG_FLAGS) or {}), action.dest: (flag, keys)}
    parser.set_defaults(**{CONFIG_FLAGS: flags})
    return action


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every sub-command shares: which config, overrides, where to run."""
    p.add_argument("--config", "-c", default=None,
                   help="run config YAML (default: the packaged embedded-default config)")
    p.add_argument("--set", "-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o prepare.seq_len=2048 (repeatable)")
    add_config_flag(p, "--run-dir", "run_dir", help="where outputs go (overrides run_dir)")
    add_config_flag(p, "--model", "model",
                    help="HF model id or local directory (overrides model; default: the embedded tiny Llama)")
    add_config_flag(p, "--ray-address", "ray.address",
                    help="Ray cluster to join (default: RAY_ADDRESS, else start a local one on 127.0.0.1)")
    add_config_flag(p, "--num-cpus", "ray.num_cpus", type=int, help="CPUs for a local Ray cluster")


def add_command(sub, name: str, func, **doc_fields) -> argparse.ArgumentParser:
    """A sub-command with the shared options; the caller adds its own.

    Its one-line help is the first paragraph of `func`'s docstring, its description the rest,
    with `{field}`s filled from `doc_fields` (so a value named in the text has one home)."""
    doc = inspect.cleandoc(func.__doc__ or "")  # no docstrings under `python -OO`
    summary, _, details = doc.partition("\n\n")
    details = details.format(**doc_fields) if doc_fields else details
    p = sub.add_parser(name, help=" ".join(summary.split()), description=" ".join(details.split()))
    add_common(p)
    p.set_defaults(func=func)
    return p


def load_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config named by --config, with the --set overrides, then every config option given."""
    overrides: list = list(args.overrides)
    for dest, (flag, keys) in getattr(args, CONFIG_FLAGS, {}).items():
        value = getattr(args, dest)
        if value is not None:
            overrides += [(key, value, f"flag {flag}") for key in keys]
    return load_config(args.config, overrides)


# What a model may be besides a local directory, for the message that says a path is none of them.
MODEL_FORMS = "a local Hugging Face model directory, a Hub id such as org/name, or tiny-llama"


def _local(value: str) -> Path | None:
    """The local path `value` names, or None where it may be a Hub id ('name', 'org/name'), a URI
    or the embedded model: a path is a name that exists, or that no Hub id can be (absolute,
    ./ ../ ~ pkg://, or more than one '/')."""
    from med42_ray.data.filesystems import is_uri
    from med42_ray.model import TINY_LLAMA
    from med42_ray.paths import PACKAGE_SCHEME, resolve_path

    if value == TINY_LLAMA or is_uri(value):
        return None
    path = resolve_path(value)
    if path.exists() or value.startswith(("/", ".", "~", PACKAGE_SCHEME)) or value.count("/") > 1:
        return path
    return None


def require_model(value: str, key: str) -> None:
    """A model named by a local path must be a model directory: one clear line now, rather than the
    Hub client's complaint about repo ids from deep inside a Ray worker."""
    path = _local(value)
    if path is None:
        return
    if not path.is_dir():
        raise ConfigError(f"{key}: no model at {path.resolve()} ({MODEL_FORMS})")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {path.resolve()} is not a Hugging Face model directory (no config.json)")


def require_adapter(value: str, key: str) -> None:
    from med42_ray.paths import resolve_path

    path = resolve_path(value)
    if not (path / "adapter_config.json").is_file():
        what = "no adapter_config.json; not a LoRA adapter directory" if path.is_dir() else "no such directory"
        raise ConfigError(f"{key}: {path.resolve()}: {what}")


def require_dir(value: str, key: str) -> None:
    """A configured local directory that must exist (a URI is its reader's to check)."""
    from med42_ray.data.filesystems import is_uri
    from med42_ray.paths import resolve_path

    if not is_uri(value) and not resolve_path(value).is_dir():
        raise ConfigError(f"{key} not found: {resolve_path(value).resolve()}")


def cmd_config(args: argparse.Namespace) -> int:
    """print the run config as every command resolves it, and the DeepSpeed config of each training run

    The run config after `extends`, ${VAR} expansion, -o overrides and the options given, with
    every default filled in: YAML that `--config` reads back to the same run. Then, as comments,
    for `train` and each of the pipeline's training runs (pipeline.<strategy> over train), the
    schedule's resolved values and the DeepSpeed config the trainer hands DeepSpeed. With
    --deepspeed RUN, that run's DeepSpeed config alone, as JSON. Nothing runs.
    """
    cfg = load_from_args(args)
    if args.deepspeed is None:
        print(config_text(cfg), end="")
        return 0
    runs = training_runs(cfg)
    if args.deepspeed not in runs:
        raise ConfigError(f"--deepspeed {args.deepspeed}: this config has no such training run "
                          f"(it has {', '.join(runs)})")
    print(json.dumps(derived_settings(runs[args.deepspeed])["deepspeed"], indent=2))
    return 0


def training_runs(cfg: RunConfig) -> dict[str, TrainConfig]:
    """Each training run the config describes: `train`'s own, then the pipeline's, by name, each as
    the pipeline derives it (pipeline.train over train:, then pipeline.<run>; pipeline/run.py)."""
    from med42_ray.pipeline.config import merged_train_config, pipeline_train_config

    runs = {"train": cfg.train}
    shared = merged_train_config(cfg.train, cfg.pipeline.train)
    if cfg.pipeline.pretrain is not None:
        runs["pipeline.pretrain"] = merged_train_config(shared, cfg.pipeline.pretrain.train, strategy="full")
    for run in cfg.pipeline.strategies:
        runs[f"pipeline.{run}"] = pipeline_train_config(shared, cfg.pipeline, run)
    return runs


def derived_settings(t: TrainConfig) -> dict:
    """What a training run derives from its config: the strategy's defaults applied, and DeepSpeed's config."""
    from med42_ray.train.strategies import deepspeed_config

    return {"strategy": t.strategy, "epochs": t.resolved_epochs(), "lr": t.resolved_lr(),
            "zero_stage": t.resolved_zero_stage(), "num_workers": t.scaling.num_workers,
            "use_gpu": t.scaling.use_gpu, "deepspeed": deepspeed_config(t, t.scaling.num_workers, t.scaling.use_gpu)}


def config_text(cfg: RunConfig) -> str:
    """The resolved run config (YAML), then, as comments, what each training run derives from it."""
    import yaml

    dump = partial(yaml.safe_dump, sort_keys=False, allow_unicode=True)
    derived = {name: derived_settings(t) for name, t in training_runs(cfg).items()}
    # Comments, so that the whole text is still a config `--config` reads.
    comments = "".join(f"# {line}\n" for line in dump({"training_runs": derived}).splitlines())
    return ("# the run config, resolved: `--config` reads this file back to the same run\n"
            + dump(cfg.model_dump(mode="json"))
            + "\n# what each training run derives from it (not config keys): the strategy's defaults "
              "applied, and the DeepSpeed config\n"
            + comments)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("med42-ray")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="med42-ray",
        description="The Med42 recipe on Ray: prepare the instruction mixture, train (full or LoRA), "
                    "evaluate zero-shot. Every command reads one run config (YAML) plus -o overrides.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    p = add_command(sub, "config", cmd_config)
    p.add_argument("--deepspeed", default=None, metavar="RUN",
                   help="print only the DeepSpeed config (JSON) of RUN: train, pipeline.full, pipeline.lora "
                        "(or pipeline.pretrain)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"med42-ray: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"med42-ray: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
