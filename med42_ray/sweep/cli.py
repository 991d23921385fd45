"""`med42-ray sweep`."""

from __future__ import annotations

import argparse


def cmd_sweep(args: argparse.Namespace) -> int:
    """tune LoRA rank, alpha and learning rate with Ray Tune (ASHA), each trial a Ray Train run

    Sample sweep.num_samples adapter configurations (sweep.space: method, default LoRA only; r,
    alpha, log-uniform lr), train
    each as a Ray Train run on the prepared data, score the validation split (default
    medqa_4options_dev, zero-shot like `evaluate`) every sweep.eval_every_steps steps, and let ASHA
    stop the trials that fall behind. Writes <run_dir>/sweep/trials.json, best_config.yaml (use
    with `med42-ray train --config`) and best_adapter/. Trials show in the Ray dashboard.
    """
    from med42_ray.cli import load_from_args, require_dir, require_model
    from med42_ray.layout import sweep_dir_for, train_data_dir_for
    from med42_ray.sweep.run import run_sweep
    from med42_ray.train.trainer import read_manifest
    from med42_ray.upload import upload_outputs

    cfg = load_from_args(args)
    # Before Ray starts: what the trials read.
    require_model(cfg.model, "model")
    read_manifest(train_data_dir_for(cfg))
    key = "sweep.benchmarks_dir" if cfg.sweep.benchmarks_dir else "evaluate.benchmarks_dir"
    require_dir(cfg.sweep.benchmarks_dir or cfg.evaluate.benchmarks_dir, key)
    run_sweep(cfg)
    upload_outputs(cfg, sweep_dir_for(cfg).root)
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command, add_config_flag

    p = add_command(sub, "sweep", cmd_sweep)
    add_config_flag(p, "--num-samples", "sweep.num_samples", type=int, help="trials (sweep.num_samples)")
    add_config_flag(p, "--max-steps", "sweep.max_steps", type=int, help="optimizer steps per trial (sweep.max_steps)")
    add_config_flag(p, "--eval-every", "sweep.eval_every_steps", type=int,
                    help="validate every N steps (sweep.eval_every_steps)")
    add_config_flag(p, "--max-concurrent", "sweep.max_concurrent_trials", type=int,
                    help="trials at once (sweep.max_concurrent_trials; default 1 on CPU)")
    add_config_flag(p, "--num-workers", "train.scaling.num_workers", type=int, help="Ray Train workers per trial")
    add_config_flag(p, "--data-dir", "train.data_dir", help="prepared data (default: <run_dir>/prepared)")
