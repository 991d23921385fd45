"""The GPU check's parts, in order, each catching and reporting its own failure.

A part returns its figures (with "status": "fail" when a figure is outside its tolerance) or raises
Skip (status "skipped" with the reason); any other exception is recorded with its traceback as
status "error" and the next part runs. A part whose inputs came from a part that did not succeed
raises, naming it. A part that overruns its time limit is interrupted (SIGALRM) and Ray is shut
down, so a hung training run cannot hold the GPU for the parts after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class Skip(Exception):
    """This part does not apply here (the reason is reported)."""


class PartTimeout(Exception):
    pass


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke."""

    seq_len: int             # prepare's packed row length
    sample_repeat: float     # the sample mixture's weights x this: rows enough for the steps
    matmul_n: int
    matmul_reps: int
    fwd_bwd_reps: int        # part (a)'s timing of each kernel
    train_steps: int
    warmup_steps: int        # excluded from tokens/s
    micro_batch: int
    questions: int | None    # part (d) (None: all of the sample's MedQA questions)
    split_questions: int     # part (e) runs part of the model on the CPU
    lm_eval_batch: int
    time_limits: dict = field(default_factory=dict)


GPU = Sizes(seq_len=4096, sample_repeat=4.0, matmul_n=8192, matmul_reps=20, fwd_bwd_reps=3, train_steps=12,
            warmup_steps=2, micro_batch=4, questions=None, split_questions=8, lm_eval_batch=32,
            time_limits={"model": 120, "matmul": 60, "prepare": 180, "packed_loss": 240, "train_full": 300,
                         "train_lora": 240, "eval": 180, "eval_split": 180})
SMOKE = Sizes(seq_len=512, sample_repeat=1.0, matmul_n=512, matmul_reps=5, fwd_bwd_reps=1, train_steps=3,
              warmup_steps=1, micro_batch=1, questions=6, split_questions=4, lm_eval_batch=8)
MIN_PART_S = 20  # a part is not started with less of the budget left
SPLIT_GPU_SHARE = 0.8  # part (e): cuda:0 holds at most this share of the weights, the CPU the rest


@dataclass
class Run:
    """What the parts share: settings, and what earlier parts produced."""

    args: argparse.Namespace
    sizes: Sizes
    device: str
    dtype: torch.dtype
    results: dict
    model_dir: str | None = None
    prepared: Path | None = None
    manifest: dict | None = None
    matmul_flops: float | None = None
    single_device_lls: dict | None = None

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def eval_dtype(self) -> str:
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"

    def need(self, value, part: str):
        """An input from an earlier part, or an error naming that part."""
        if value is None:
            status = self.results.get(part, {}).get("status", "not run")
            raise RuntimeError(f"needs part {part!r}, whose status is {status!r}")
        return value


def ray_up() -> None:
    """A local Ray cluster of this check's own (address="local": never a cluster already running)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=True)


def ray_down() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def package_versions(site: str | None) -> dict:
    """Version of each package the check imports, and whether it came from the bundle or the image."""
    import importlib

    out = {}
    for name in ("torch", "transformers", "tokenizers", "huggingface_hub", "accelerate", "peft", "safetensors",
                 "numpy", "pyarrow", "pydantic", "ray", "deepspeed", "lm_eval"):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - recorded; the part that needs it reports the failure
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        origin = "bundle" if site and str(getattr(module, "__file__", "")).startswith(site) else "machine"
        out[name] = {"version": getattr(module, "__version__", "?"), "from": origin}
    return out


def part_environment(run: Run) -> dict:
    site = run.args.bundle_site
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "device": run.device,
            "dtype": str(run.dtype).removeprefix("torch."), "packages": package_versions(site), "bundle": None,
            "argv": sys.argv[1:]}
    if run.gpu:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
                       "cuda": torch.version.cuda}
    if site and run.args.bundle is not None and (run.args.bundle / "bundle.json").is_file():
        manifest = json.loads((run.args.bundle / "bundle.json").read_text())
        info["bundle"] = {k: manifest[k] for k in ("archive", "bytes", "unpacked_bytes", "python")}
    return info


def part_matmul(run: Run) -> dict:
    import check_model

    dtype = torch.bfloat16 if run.gpu else torch.float32
    figures = check_model.matmul_rate(run.device, dtype, run.sizes.matmul_n, warmup=5, reps=run.sizes.matmul_reps)
    run.matmul_flops = figures["flops_per_s"]
    return figures


def part_model(run: Run) -> dict:
    import check_model
    from med42_ray.model import resolve_model

    if run.gpu:
        figures = check_model.build_model_dir(run.args.work / "model-1.1b", run.device)
    else:
        figures = check_model.describe_model_dir(resolve_model("tiny-llama"))
    run.model_dir = figures["path"]
    return figures


def part_prepare(run: Run) -> dict:
    import check_train

    ray_up()
    run.prepared, run.manifest = check_train.prepare_sample(run.args.work / "prepare", run.sizes.seq_len,
                                                            run.sizes.sample_repeat)
    m = run.manifest
    return {"rows": m["sequences"], "tokens": m["tokens"], "seq_len": m["seq_len"],
            "packing_efficiency": m.get("packing_efficiency"), "sample_repeat": run.sizes.sample_repeat}


def part_packed_loss(run: Run) -> dict:
    import check_packed

    rows = check_packed.packed_rows(run.need(run.prepared, "prepare"), 3)
    seq_len = run.need(run.manifest, "prepare")["seq_len"]  # flex_attention's one width (packing.fixed_width)
    kernels = check_packed.check_kernels(run.need(run.model_dir, "model"), rows, seq_len, run.device, run.dtype,
                                         run.sizes.fwd_bwd_reps)
    figures = {"status": "ok", "dtype": str(run.dtype).removeprefix("torch."), "kernels": kernels}
    erred = [f"{name}: {k['error']}" for name, k in kernels.items() if k["status"] == "error"]
    failed = [name for name, k in kernels.items() if k["status"] == "fail"]
    if erred:  # the part's error is its first kernel's (each kernel's traceback is under kernels)
        figures.update(status="error", error=erred[0])
    elif failed:
        figures.update(status="fail", failed=", ".join(failed))
    return figures


def part_train(run: Run, strategy: str) -> dict:
    import check_packed
    import check_train

    attn, note = "sdpa", None
    if run.gpu:
        attn = check_train.paper_attention()
        why = check_packed.unavailable(attn, run.device)
        if why:
            attn, note = "sdpa", f"the paper configs' {attn} is not available here ({why}); sdpa instead"
    ray_up()
    s = run.sizes
    figures = check_train.train(run.args.work / f"train_{strategy}", run.need(run.model_dir, "model"),
                                run.need(run.prepared, "prepare"), run.manifest, strategy, s.train_steps,
                                s.warmup_steps, s.micro_batch, run.gpu, attn, run.matmul_flops)
    return figures | ({"attn_note": note} if note else {})


def part_eval(run: Run) -> dict:
    import check_eval

    figures, lls = check_eval.ours_vs_lm_eval(run.need(run.model_dir, "model"), run.sizes.questions,
                                              run.eval_dtype, run.device, run.sizes.lm_eval_batch)
    run.single_device_lls = lls
    return figures


def part_eval_split(run: Run) -> dict:
    import check_eval

    if not run.gpu:
        raise Skip("needs CUDA: the model is split between cuda:0 and the CPU (defect 1's device mismatch)")
    return check_eval.split_device(run.need(run.model_dir, "model"), run.sizes.split_questions,
                                   run.need(run.single_device_lls, "eval"), run.eval_dtype, SPLIT_GPU_SHARE)


# In this order: the parts that need no Ray first, the longest (training) last, so that a run that
# meets the deadline still has the most figures.
PARTS: dict[str, Callable[[Run], dict]] = {
    "environment": part_environment,
    "matmul": part_matmul,
    "model": part_model,
    "eval": part_eval,
    "eval_split": part_eval_split,
    "prepare": part_prepare,
    "train_full": lambda run: part_train(run, "full"),
    "packed_loss": part_packed_loss,
    "train_lora": lambda run: part_train(run, "lora"),
}
REQUIRES = {"packed_loss": ("model", "prepare"), "train_full": ("model", "prepare", "matmul"),
            "train_lora": ("model", "prepare", "matmul"), "eval": ("model",), "eval_split": ("model", "eval")}


def selected_parts(spec: str | None) -> set[str]:
    """--parts with the parts they need; all by default; the environment always."""
    if spec is None:
        return set(PARTS)
    chosen = {p.strip() for p in spec.split(",") if p.strip()}
    unknown = chosen - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))} (parts: {', '.join(PARTS)})")
    return chosen | {"environment"} | {r for p in chosen for r in REQUIRES.get(p, ())}


class time_limit:
    """Raise PartTimeout in the main thread after `seconds` (None: no limit)."""

    def __init__(self, seconds: int | None):
        self.seconds = seconds

    def _expired(self, signum, frame):
        raise PartTimeout(f"still running after {self.seconds}s, the part's time limit")

    def __enter__(self):
        if self.seconds:
            self.previous = signal.signal(signal.SIGALRM, self._expired)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.seconds:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.previous)


def run_part(run: Run, name: str, seconds_left: float) -> dict:
    """Run one part under its time limit, cut to what is left of the check's budget."""
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    limit = run.sizes.time_limits.get(name)
    limit = int(min(limit, seconds_left)) if limit else None  # no limit of its own: none (the smoke)
    try:
        with time_limit(limit):
            figures = dict(PARTS[name](run))
        figures.setdefault("status", "ok")
    except Skip as e:
        figures = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - the part's failure is its result; the next part runs
        figures = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(figures["traceback"], flush=True)
        if isinstance(e, PartTimeout):
            ray_down()  # a hung Ray Train run must not keep the GPU from the next parts
    if run.gpu:
        torch.cuda.empty_cache()
    figures["seconds"] = time.perf_counter() - started
    print(f"== {name}: {figures['status']} ({figures['seconds']:.0f}s)", flush=True)
    return figures


def run_all(args: argparse.Namespace, on_update: Callable[[dict], None]) -> dict:
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one (on a CPU machine run it with --smoke)")
    results: dict = {"meta": {"smoke": args.smoke, "date": time.strftime("%Y-%m-%d"), "budget_s": args.budget_s}}
    run = Run(args, SMOKE if args.smoke else GPU, "cpu" if args.smoke else "cuda",
              torch.float32 if args.smoke else torch.bfloat16, results)
    args.work.mkdir(parents=True, exist_ok=True)
    chosen = selected_parts(args.parts)
    for name in PARTS:
        if name not in chosen:
            continue
        left = float("inf") if args.budget_s is None else args.budget_s - (time.time() - args.started)
        if left < MIN_PART_S:
            results[name] = {"status": "skipped", "reason": f"the check's {args.budget_s:.0f}s budget was spent"}
        else:
            results[name] = run_part(run, name, left)
        on_update(results)
    ray_down()
    results["meta"]["seconds"] = time.time() - args.started
    return results
