"""`med42-ray sweep`."""

from __future__ import annotations

import argparse


def _shortcuts(args: argparse.Namespace) -> list[str]:
    pairs = (("num_samples", "sweep.num_samples"), ("max_steps", "sweep.max_steps"),
             ("eval_every", "sweep.eval_every_steps"), ("max_concurrent", "sweep.max_concurrent_trials"),
             ("num_workers", "train.scaling.num_workers"), ("data_dir", "train.data_dir"))
    return [f"{key}={getattr(args, flag)}" for flag, key in pairs if getattr(args, flag, None) is not None]


def cmd_sweep(args: argparse.Namespace) -> int:
    from med42_ray.cli import load_from_args
    from med42_ray.sweep.run import run_sweep

    run_sweep(load_from_args(args, _shortcuts(args)))
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command

    p = add_command(
        sub, "sweep", cmd_sweep,
        help="tune LoRA rank, alpha and learning rate with Ray Tune (ASHA), each trial a Ray Train run",
        description=(
            "Sample sweep.num_samples LoRA configurations (sweep.space: r, alpha, log-uniform lr), train "
            "each as a Ray Train run on the prepared data, score the validation split (default "
            "medqa_4options_dev, zero-shot like `evaluate`) every sweep.eval_every_steps steps, and let "
            "ASHA stop the trials that fall behind. Writes <run_dir>/sweep/trials.json, best_config.yaml "
            "(use with `med42-ray train --config`) and best_adapter/. Trials show in the Ray dashboard."
        ),
    )
    p.add_argument("--num-samples", type=int, default=None, help="trials (sweep.num_samples)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per trial (sweep.max_steps)")
    p.add_argument("--eval-every", type=int, default=None, help="validate every N steps (sweep.eval_every_steps)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (sweep.max_concurrent_trials; default 1 on CPU)")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers per trial")
    p.add_argument("--data-dir", default=None, help="prepared data (default: <run_dir>/prepared)")
