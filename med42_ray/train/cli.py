"""`med42-ray train` and `med42-ray plan`."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> int:
    """fine-tune the model on prepared data: full-parameter (DeepSpeed ZeRO) or LoRA, on Ray Train

    Train on the Parquet shards written by `prepare`, with Ray Train workers running DeepSpeed.
    Logs per-step metrics to <run_dir>/train/<strategy>/metrics.jsonl and Ray, checkpoints to
    the Ray Train storage (rerunning resumes), and exports a Hugging Face model beside them
    (full: model/; lora: adapter/ and merged/). With no --model it trains the embedded tiny
    Llama on CPU.
    """
    from med42_ray.cli import load_from_args
    from med42_ray.train.trainer import run_train

    cfg = load_from_args(args)
    result = run_train(cfg)
    if result.metrics:
        first, last = result.metrics[0], result.metrics[-1]
        print(f"trained {last['step']} steps: loss {first['loss']:.4f} -> {last['loss']:.4f}, "
              f"{last['tokens_seen']:,} tokens")
    print(f"metrics: {result.metrics_path}")
    for name, path in result.exported.items():
        print(f"{name}: {path}")
    if result.checkpoint_path:
        print(f"last checkpoint: {result.checkpoint_path}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """parameters, memory per GPU per ZeRO stage, and training time for a model and strategy

    Build the model on the meta device (presets llama-2-7b/13b/70b need no download), count total
    and trainable parameters, estimate model-state memory per GPU for each ZeRO stage and offload
    choice (beside DeepSpeed's own estimators), and tokens/s and wall time.
    """
    from med42_ray.cli import load_from_args
    from med42_ray.train.plan import format_plan, make_plan

    cfg = load_from_args(args)
    plan = make_plan(cfg.model, cfg.train.strategy, gpus=args.gpus, tokens=args.tokens, mfu=args.mfu,
                     peak_tflops=args.peak_tflops, seq_len=args.seq_len, micro_batch_size=cfg.train.micro_batch_size,
                     gpus_per_node=args.gpus_per_node, lora=cfg.train.lora,
                     trust_remote_code=cfg.train.trust_remote_code, zero_stage=cfg.train.resolved_zero_stage())
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
    return 0


def register(sub) -> None:
    from med42_ray.cli import add_command, add_config_flag

    p = add_command(sub, "train", cmd_train)
    add_config_flag(p, "--strategy", "train.strategy", choices=["full", "lora"], help="overrides train.strategy")
    add_config_flag(p, "--num-workers", "train.scaling.num_workers", type=int,
                    help="Ray Train workers (train.scaling.num_workers)")
    add_config_flag(p, "--use-gpu", "train.scaling.use_gpu", action="store_true",
                    help="one GPU per worker (train.scaling.use_gpu)")
    add_config_flag(p, "--max-steps", "train.max_steps", type=int, help="stop after N optimizer steps")
    add_config_flag(p, "--data-dir", "train.data_dir", help="prepared data (default: <run_dir>/prepared)")

    q = add_command(sub, "plan", cmd_plan)
    add_config_flag(q, "--strategy", "train.strategy", choices=["full", "lora"], help="overrides train.strategy")
    # the job to plan for, not config keys
    q.add_argument("--gpus", type=int, default=8, help="GPUs in the job")
    q.add_argument("--gpus-per-node", type=int, default=8)
    q.add_argument("--tokens", type=lambda v: int(float(v)), default=0, help="tokens to train on (all epochs), for wall time")
    q.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    q.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 TFLOP/s per GPU (H100 SXM: 989)")
    q.add_argument("--seq-len", type=int, default=4096)
    q.add_argument("--json", action="store_true", help="print the plan as JSON")
