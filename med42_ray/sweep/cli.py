"""`med42-ray sweep`."""

from __future__ import annotations

import argparse


def cmd_sweep(args: argparse.Namespace) -> int:
    """tune LoRA rank, alpha and learning rate with Ray Tune (ASHA), each trial a Ray Train run

    Sample sweep.num_samples LoRA configurations (sweep.space: r, alpha, log-uniform lr), train
    each as a Ray Train run on the prepared data, score the validation split (default
    medqa_4options_dev, zero-shot like `evaluate`) every sweep.eval_every_steps steps, and let ASHA
    stop the trials that fall behind. Writes <run_dir>/sweep/trials.json, best_config.yaml (use
    with `med42-ray train --config`) and best_adapter/. Trials show in the Ray dashboard.
    """
    from med42_ray.cli import load_from_args
    from med42_ray.sweep.run import run_sweep

    run_sweep(load_from_args(args))
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
