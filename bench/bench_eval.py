"""Questions/s of `med42-ray evaluate` vs lm-evaluation-harness on the same model and MedQA questions.

Both run in this process, one after the other, on the same model directory and the same MedQA
4-option test questions. lm-eval runs its own `medqa_4options` task YAML (HF backend) on a local
copy of the questions (bench/harness_tasks.py); ours runs the registry's items on a Ray actor pool.
Reported: wall seconds and questions/s for each (model loading included for both; the Ray cluster
is started before the clock), both accuracies, how many predictions agree, and the largest
per-question log-likelihood difference. Writes the `## Evaluation` section of BENCHMARKS.md and
<out>/results.json.

    python bench/bench_eval.py                                   # tiny-llama, all 1,273 questions
    python bench/bench_eval.py --model <hf dir> --limit 200 --num-actors 2
    python bench/bench_eval.py --smoke    # the first questions of the packaged sample, BENCHMARKS.md untouched
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCHMARK = "medqa_4options"
RAW_DIR = str(REPO.parent / "shared" / "data" / "raw")
SAMPLE_DIR = "pkg://sample/data/benchmarks"
SMOKE_LIMIT = 8
SECTION = "Evaluation"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import ProcessTreeMonitor  # noqa: E402  (same CPU accounting as the Prepare section)
from benchmarks_md import write_section  # noqa: E402

MONITOR = ProcessTreeMonitor()


def run_lm_eval(model_dir: str, items, batch_size: int, workdir: Path) -> tuple[float, dict, list]:
    import lm_eval
    from harness_tasks import write_local_task
    from lm_eval.tasks import TaskManager

    task = write_local_task(workdir, BENCHMARK, items, task_name="bench_medqa_4options")
    start = time.perf_counter()
    cpu0 = MONITOR.cpu_snapshot()
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[task],
        task_manager=TaskManager(include_path=str(workdir), include_defaults=False),
        batch_size=batch_size, device="cpu", log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - start
    cpu = MONITOR.cpu_between(cpu0, MONITOR.cpu_snapshot())
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return seconds, cpu, out["results"][task], lls


def timed_evaluate(model_dir: str, overrides: list[str]) -> tuple[dict, float, float]:
    """`run_evaluate` of `model_dir` (named "model") with `overrides`: its summary, and the wall and
    CPU seconds around it. The Ray cluster starts before the clock: start-up is paid once per
    cluster, not per evaluation."""
    from med42_ray.cluster import connect
    from med42_ray.config import load_config
    from med42_ray.eval.run import run_evaluate

    cfg = load_config(None, overrides)
    cfg.evaluate.models = [{"name": "model", "path": model_dir}]
    connect(cfg.ray)
    start = time.perf_counter()
    cpu0 = MONITOR.cpu_snapshot()
    summary = run_evaluate(cfg)
    seconds = time.perf_counter() - start
    return summary, seconds, MONITOR.cpu_between(cpu0, MONITOR.cpu_snapshot())


def run_ours(model_dir: str, n: int, num_actors: int, root: str, workdir: Path) -> tuple[float, dict, list]:
    summary, seconds, cpu = timed_evaluate(model_dir, our_overrides(workdir, root, [BENCHMARK], num_actors, n))
    rows = [json.loads(line) for line in (workdir / "eval" / "model" / "samples" / f"{BENCHMARK}.jsonl").open()]
    return seconds, cpu, summary["models"]["model"]["benchmarks"][BENCHMARK], [r["loglikelihoods"] for r in rows]


def our_overrides(workdir: Path, benchmarks_dir: str, benchmarks: list[str], num_actors: int, limit: int) -> list[str]:
    """`evaluate` on `benchmarks` as every evaluation benchmark runs it: the local cluster on every
    core, no dashboard, no progress bars, no separate inference-cost timing (eval/cost.py: what
    lm-eval does not do, and not a mode's cost)."""
    return [f"run_dir={workdir}", f"evaluate.benchmarks_dir={benchmarks_dir}",
            f"evaluate.benchmarks=[{','.join(benchmarks)}]", f"evaluate.num_actors={num_actors}",
            f"evaluate.limit={limit}", "evaluate.progress=false", "evaluate.cost_questions=0",
            f"ray.num_cpus={os.cpu_count()}", "ray.dashboard=false"]


def add_common_args(p: argparse.ArgumentParser, out: str) -> None:
    """The options every evaluation benchmark takes (its own --limit and --smoke help apart)."""
    p.add_argument("--model", default="tiny-llama", help="HF model directory (or 'tiny-llama')")
    p.add_argument("--benchmarks-dir", help=f"default: {RAW_DIR} (--smoke: the packaged sample, {SAMPLE_DIR})")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(out), help="where results.json goes")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")


def settle_smoke(args: argparse.Namespace, smoke_limit: int) -> argparse.Namespace:
    """--smoke: `smoke_limit` questions, results under <out>/smoke, BENCHMARKS.md untouched, the
    packaged sample unless --benchmarks-dir says otherwise."""
    if args.smoke:
        args.limit, args.no_write, args.out = smoke_limit, True, args.out / "smoke"
    args.benchmarks_dir = args.benchmarks_dir or (SAMPLE_DIR if args.smoke else RAW_DIR)
    return args


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "runs/bench_eval")
    p.add_argument("--limit", type=int, default=None, help="first N MedQA test questions (default: all)")
    p.add_argument("--lm-eval-batch-size", type=int, default=16)
    p.add_argument("--smoke", action="store_true",
                   help=f"the first {SMOKE_LIMIT} questions (overrides --limit), results under <out>/smoke, "
                        "BENCHMARKS.md untouched: checks that the benchmark runs")
    return settle_smoke(p.parse_args(), SMOKE_LIMIT)


def measure(args: argparse.Namespace) -> dict:
    """Both sides on the same questions: their timings, accuracies and per-choice log-likelihoods."""
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.model import resolve_model
    from med42_ray.paths import resolve_path

    model_dir = resolve_model(args.model)
    items = load_benchmarks(resolve_path(args.benchmarks_dir), [BENCHMARK])[BENCHMARK]
    items = [it for it in items if not it.needs_image][: args.limit]
    n = len(items)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with MONITOR:
            theirs_s, theirs_cpu, theirs, their_lls = run_lm_eval(model_dir, items, args.lm_eval_batch_size,
                                                                  tmp / "lm_eval")
            ours_s, ours_cpu, ours, our_lls = run_ours(model_dir, n, args.num_actors, args.benchmarks_dir,
                                                       tmp / "ours")
    assert len(their_lls) == len(our_lls) == n
    argmax = [max(range(len(v)), key=v.__getitem__) for v in their_lls]
    our_argmax = [max(range(len(v)), key=v.__getitem__) for v in our_lls]
    return {
        "n": n, "model": args.model, "benchmarks_dir": str(args.benchmarks_dir),
        "lm_eval": {"seconds": theirs_s, "cpu_s": theirs_cpu, "questions_per_s": n / theirs_s,
                    "acc": theirs["acc,none"], "acc_norm": theirs["acc_norm,none"]},
        "ours": {"seconds": ours_s, "cpu_s": ours_cpu, "questions_per_s": n / ours_s,
                 "acc": ours["acc"], "acc_norm": ours["acc_norm"]},
        "agree": sum(a == b for a, b in zip(argmax, our_argmax)),
        "max_ll_diff": max(abs(a - b) for u, v in zip(their_lls, our_lls) for a, b in zip(u, v)),
    }


def render(r: dict, args: argparse.Namespace) -> str:
    n, theirs, ours = r["n"], r["lm_eval"], r["ours"]
    their_cpu, our_cpu = theirs["cpu_s"], ours["cpu_s"]
    ratio = ours["questions_per_s"] / theirs["questions_per_s"]
    cpu = platform.processor() or platform.machine()
    notes = ""
    if ratio < 4:
        notes = ("\nThe 4x target is not met here. Both sides run the same forward passes: lm-eval 0.4's "
                 "logits cache already scores all one-token choices of a question from one forward pass, and "
                 "on CPU cores the transformer layers over the prompt dominate. What is left to gain is the "
                 "actor pool (one single-threaded process per core instead of one multi-threaded process), "
                 "projecting only the last position onto the vocabulary instead of every position, and "
                 "length-sorted batching. On a cluster the actor pool scales with the GPUs/nodes "
                 "(one actor per GPU), which lm-eval's single process does not.\n")
    limit = f" --limit {args.limit}" if args.limit else ""
    return f"""
`med42-ray evaluate` vs lm-evaluation-harness {__import__('lm_eval').__version__} (HF backend), same model
directory (`{args.model}`), same {n} MedQA 4-option test questions, one process, CPU only
({os.cpu_count()} cores, {cpu}); lm-eval batch size {args.lm_eval_batch_size}, ours {args.num_actors} Ray actors.
Wall time includes model loading for both (Ray cluster started before the clock). CPU seconds sum
this process and all its descendants (Ray's raylet, GCS, dashboard and actors for ours), sampled
with psutil (bench_prepare's ProcessTreeMonitor): unlike wall time they do not grow when other work
shares the machine.

| | lm-eval | med42-ray | ratio |
|---|---:|---:|---:|
| wall seconds | {theirs['seconds']:.1f} | {ours['seconds']:.1f} | |
| questions/s | {theirs['questions_per_s']:.1f} | {ours['questions_per_s']:.1f} | **{ratio:.2f}x** |
| CPU seconds (user + system, all processes) | {their_cpu:.0f} | {our_cpu:.0f} | |
| questions per CPU-second | {n / their_cpu:.2f} | {n / our_cpu:.2f} | {their_cpu / our_cpu:.2f}x |
| acc | {theirs['acc']:.4f} | {ours['acc']:.4f} | |
| acc_norm | {theirs['acc_norm']:.4f} | {ours['acc_norm']:.4f} | |

Identical predictions: {r['agree']}/{n}. Largest per-question log-likelihood difference: {r['max_ll_diff']:.2e}.
Machine load while measuring (1-minute load average at the end): {os.getloadavg()[0]:.1f}.
{notes}

Reproduce: `python bench/bench_eval.py --model {args.model} --num-actors {args.num_actors}{limit}`
"""


def measure_and_publish(args: argparse.Namespace, measure, render, section: str, after: str | None = None) -> dict:
    """An evaluation benchmark's run, shared by bench_eval and bench_eval_modes: measure(args), its
    results.json under --out, its BENCHMARKS.md section printed and (unless --no-write or --smoke)
    written, placed after `after` when new. Returns the results."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    results = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    body = render(results, args)
    if args.smoke:
        print(f"--smoke: {REPO / 'BENCHMARKS.md'} left alone; the section it would get:")
    print(f"## {section}\n{body}")
    print(f"results: {args.out / 'results.json'}")
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", f"## {section}\n\n{body.strip()}\n\n", f"## {section}", after=after)
        print(f"updated {REPO / 'BENCHMARKS.md'}")
    return results


def main() -> int:
    results = measure_and_publish(parse_args(), measure, render, SECTION)
    return 0 if results["agree"] == results["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
