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
import sys

from med42_ray.config import RunConfig, load_config
from med42_ray.errors import ConfigError, RunError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="med42-ray",
        description="The Med42 recipe on Ray: prepare the instruction mixture, train (full or LoRA), "
                    "evaluate zero-shot. Every command reads one run config (YAML) plus -o overrides.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
