"""`med42-ray train`, `plan`, `merge` and `push`."""

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
    from med42_ray.cli import load_from_args, require_model
    from med42_ray.train.trainer import run_train
    from med42_ray.upload import upload_outputs

    cfg = load_from_args(args)
    require_model(cfg.model, "model")
    result = run_train(cfg)
    upload_outputs(cfg, result.output_dir)
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
    from med42_ray.cli import load_from_args, require_model
    from med42_ray.train.plan import DEFAULT_MFU, format_plan, make_plan

    cfg = load_from_args(args)
    require_model(cfg.model, "model")
    plan = make_plan(cfg.model, cfg.train.strategy, peft=cfg.train.peft, gpus=args.gpus, tokens=args.tokens,
                     mfu=DEFAULT_MFU if args.mfu is None else args.mfu,
                     peak_tflops=args.peak_tflops, seq_len=args.seq_len, micro_batch_size=cfg.train.micro_batch_size,
                     gpus_per_node=args.gpus_per_node, lora=cfg.train.lora,
                     trust_remote_code=cfg.train.trust_remote_code, zero_stage=cfg.train.resolved_zero_stage())
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """merge a LoRA adapter exported earlier into its base model (peft's merge_and_unload)

    For an adapter trained with train.export_merged false, or copied from elsewhere: loads the base
    peft recorded in the adapter's adapter_config.json (or --base), in the dtype the adapter was
    saved in, merges, and writes the model as the export's merged/ is written (shards of
    train.export_max_shard_size, the adapter's tokenizer and chat template, generation_config.json,
    and the model card when the adapter is a med42-ray export).
    """
    from pathlib import Path

    from med42_ray.cli import load_from_args, require_model
    from med42_ray.layout import EXPORT_MERGED
    from med42_ray.train.export import merge_adapter

    cfg = load_from_args(args)
    if args.base is not None:
        require_model(args.base, "--base")
    adapter = Path(args.adapter)
    out = Path(args.out) if args.out else adapter.parent / EXPORT_MERGED
    merge_adapter(adapter, out, base=args.base, max_shard_size=cfg.train.export_max_shard_size,
                  trust_remote_code=cfg.train.trust_remote_code)
    print(f"merged: {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """upload an exported model (model/, adapter/ or merged/) to the Hugging Face Hub

    Writes the export's model card (README.md) again with the evaluations of that export found
    under the run's evaluation directories (as model-index), then creates the repository if it is
    new and uploads the folder with huggingface_hub. Token and endpoint are huggingface_hub's:
    HF_TOKEN (or `hf auth login`) and HF_ENDPOINT.
    """
    from pathlib import Path

    from med42_ray.cli import load_from_args
    from med42_ray.hub import push
    from med42_ray.layout import eval_dir_for, layout_for

    cfg = load_from_args(args)
    roots = list(dict.fromkeys([eval_dir_for(cfg).root, layout_for(cfg).eval_root.root]))
    url = push(Path(args.export), args.repo_id, roots, private=args.private, revision=args.revision,
               commit_message=args.message)
    print(f"pushed {args.export} to {args.repo_id}: {url}")
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
    q.add_argument("--mfu", type=float, default=None,
                   help="assumed model FLOPs utilisation (default: train/plan.py's DEFAULT_MFU, 0.4)")
    q.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 TFLOP/s per GPU (H100 SXM: 989)")
    q.add_argument("--seq-len", type=int, default=4096)
    q.add_argument("--json", action="store_true", help="print the plan as JSON")

    m = add_command(sub, "merge", cmd_merge)
    m.add_argument("adapter", help="the adapter directory (an export's adapter/)")
    m.add_argument("--out", default=None, help="where the merged model goes (default: merged/ beside the adapter)")
    m.add_argument("--base", default=None, help="the base model (default: the one adapter_config.json names)")

    u = add_command(sub, "push", cmd_push)
    u.add_argument("export", help="the exported model directory (model/, adapter/ or merged/)")
    u.add_argument("--repo-id", required=True, help="the Hub repository, e.g. my-org/med42-lora")
    u.add_argument("--private", action="store_true", help="create the repository private")
    u.add_argument("--revision", default=None, help="branch to push to (default: main)")
    u.add_argument("--message", default=None, help="commit message")
