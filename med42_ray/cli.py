"""`med42-ray` command line: one sub-command per stage, all driven by the same run config.

Each stage registers its own sub-commands (`register(subparsers)` in `<stage>/cli.py`), so a
stage's options live next to its code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from med42_ray.config import ConfigError, RunConfig, load_config

# Stage modules that add sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "med42_ray.data.cli",
    "med42_ray.train.cli",
    "med42_ray.eval.cli",
    "med42_ray.sweep.cli",
    "med42_ray.report.cli",
    "med42_ray.pipeline.cli",
]


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every sub-command shares: which config, overrides, where to run."""
    p.add_argument("--config", "-c", default=None,
                   help="run config YAML (default: the packaged embedded-default config)")
    p.add_argument("--set", "-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o prepare.seq_len=2048 (repeatable)")
    p.add_argument("--run-dir", default=None, help="where outputs go (overrides run_dir)")
    p.add_argument("--model", default=None,
                   help="HF model id or local directory (overrides model; default: the embedded tiny Llama)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else start a local one on 127.0.0.1)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray cluster")


def add_command(sub, name: str, func, help: str, description: str) -> argparse.ArgumentParser:
    """A sub-command with the shared options; the caller adds its own."""
    p = sub.add_parser(name, help=help, description=description)
    add_common(p)
    p.set_defaults(func=func)
    return p


def load_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> RunConfig:
    """The run config named by --config, with --set overrides and the shortcut flags applied."""
    overrides = list(args.overrides) + list(extra or [])
    for flag, key in (("run_dir", "run_dir"), ("model", "model"), ("ray_address", "ray.address"),
                      ("num_cpus", "ray.num_cpus")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
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


if __name__ == "__main__":
    sys.exit(main())
