"""`med42-ray prepare`."""

from __future__ import annotations

import argparse


def cmd_prepare(args: argparse.Namespace) -> int:
    """build the decontaminated, tokenised, packed training mixture (Ray Data)

    Read every source of the mixture, normalise it to one chat schema, drop rows that repeat
    another row or overlap an evaluation benchmark, sample by weight, apply the chat template,
    tokenise with the loss masked to the answers, pack, and write Parquet shards, manifest.json,
    contamination.jsonl and rejects/. With no --config it runs the embedded sample mixture offline.
    """
    from med42_ray.cli import load_from_args, require_model
    from med42_ray.data.pipeline import run_prepare
    from med42_ray.layout import prepared_dir_for
    from med42_ray.upload import upload_outputs

    cfg = load_from_args(args)
    tokenizer = cfg.prepare.tokenizer
    require_model(tokenizer or cfg.model, "prepare.tokenizer" if tokenizer else "model")
    run_prepare(cfg)
    upload_outputs(cfg, prepared_dir_for(cfg).root)
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command

    add_command(sub, "prepare", cmd_prepare)
