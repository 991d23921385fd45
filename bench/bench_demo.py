"""The demo as a new user runs it, once per seed: wall time, the pooled comparison, and where a
Train run's time goes.

Each seed runs `med42-ray demo --seed N` in a fresh process (its own local Ray cluster, the tiny
model already built: install and first build excluded), timed by the wall clock from start to
exit. From the run dir it reads `report/report.json` (pooled accuracy of base / full / LoRA per
protocol, the differences with their standard errors, the ordering verdict), the stage markers'
seconds, and each training stage's `metrics.jsonl`: time to first step (`wall_s` of step 1, from
`run_train`'s start; Ray is already up) and wall over compute per step (summed `step_time_s`
over summed `compute_s`, steps after the first).

    python bench/bench_demo.py                       # seeds 42 1 2 3, about 35 minutes on 2 cores
    python bench/bench_demo.py --seeds 7 --full-budget  # the paper's epochs, one seed

Writes the `## Demo` section of BENCHMARKS.md (`## Demo, full budget` with --full-budget), prints
the README's per-seed table, and <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from benchmarks_md import write_section  # noqa: E402  (bench/ is this script's directory)

REPO = Path(__file__).resolve().parents[1]
TRAIN_STAGES = {"pretrain": "pretrain/train", "train_full": "train/full", "train_lora": "train/lora"}
LIMIT_S = 600  # issue 12: the default demo within 10 minutes on 2 CPU cores


def run_seed(seed: int, run_dir: Path, full_budget: bool) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("med42-ray")), "demo", "--seed", str(seed), "--run-dir", str(run_dir)]
    if full_budget:
        cmd.append("--full-budget")
    started = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return {"seed": seed, "wall_s": time.perf_counter() - started, **read_run(run_dir)}


def read_run(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report" / "report.json").read_text())
    stages = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((run_dir / "stages").glob("*.json"))}
    return {"pooled": report["pooled"], "headline": report["headline_protocol"], "stages": stages,
            "training": {stage: training_times(run_dir / sub / "metrics.jsonl")
                         for stage, sub in TRAIN_STAGES.items() if (run_dir / sub / "metrics.jsonl").is_file()}}


def training_times(metrics: Path) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steady = rows[1:] or rows
    return {"steps": len(rows), "first_step_s": rows[0]["wall_s"],
            "wall_over_compute": sum(r["step_time_s"] for r in steady) / sum(r["compute_s"] for r in steady),
            "tokens_per_s": sum(r["tokens"] for r in steady) / sum(r["step_time_s"] for r in steady),
            "final_loss": rows[-1]["loss"]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _minutes(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:02.0f}s"


def seed_table(results: list[dict], protocol: str) -> str:
    """Per seed: pooled accuracy of each model and the differences in standard errors."""
    lines = ["| seed | wall time | n | base | full | LoRA | full − base | LoRA − base | full − LoRA | ordering |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        block = r["pooled"][protocol]
        m, d = block["models"], block["differences"]
        diff = lambda k: f"{100 * d[k]['diff']:+.1f} ± {100 * d[k]['se']:.1f} ({d[k]['z']:+.1f} se)"  # noqa: E731
        lines.append(f"| {r['seed']} | {_minutes(r['wall_s'])} | {m['base']['n']} | {_pct(m['base']['acc'])} | "
                     f"{_pct(m['full']['acc'])} | {_pct(m['lora']['acc'])} | {diff('full-base')} | "
                     f"{diff('lora-base')} | {diff('full-lora')} | {'holds' if block['ordering']['holds'] else 'FAILS'} |")
    return "\n".join(lines)


def timing_table(results: list[dict]) -> str:
    lines = ["| seed | stage | steps | time to first step | wall / compute per step | tokens/s (wall) | stage time |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for stage, t in r["training"].items():
            lines.append(f"| {r['seed']} | {stage} | {t['steps']} | {t['first_step_s']:.1f} s | "
                         f"{t['wall_over_compute']:.3f} | {t['tokens_per_s']:,.0f} | {r['stages'][stage]:.0f} s |")
    return "\n".join(lines)


def render(results: list[dict], args: argparse.Namespace, load: list[float]) -> str:
    headline = results[0]["headline"]
    protocols = list(results[0]["pooled"])
    flag = " --full-budget" if args.full_budget else ""
    limit = "" if args.full_budget else (
        f"\nLongest run {_minutes(max(r['wall_s'] for r in results))} (target: within {LIMIT_S // 60} minutes).")
    tables = "\n\n".join(f"Protocol `{p}`{' (headline)' if p == headline else ''}, pooled over every benchmark's "
                         f"questions:\n\n{seed_table(results, p)}" for p in protocols)
    return f"""{args.section}

Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU;
load average {load[0]:.1f} before, {load[1]:.1f} after. Reproduce from the repository root:

    python bench/bench_demo.py --seeds {' '.join(str(r['seed']) for r in results)}{flag}

`med42-ray demo --seed N{flag}` per seed in a fresh process (install and the tiny model's first
build excluded), wall clock from start to exit. Accuracy in %, differences with their standard
error sqrt(se1² + se2²), se = sqrt(p(1 − p)/n); "ordering" is the paper's: full > base and LoRA >
base each by >= 2 standard errors, and full >= LoRA.{limit}

{tables}

Where the training stages' time goes (time to first step from `run_train`'s start, Ray already
up; wall / compute over the steps after the first):

{timing_table(results)}
"""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    ap.add_argument("--full-budget", action="store_true", help="the paper's epochs (med42-ray demo --full-budget)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_demo"))
    ap.add_argument("--benchmarks-md", default=str(REPO / "BENCHMARKS.md"))
    args = ap.parse_args()
    args.section = "## Demo, full budget" if args.full_budget else "## Demo"
    args.out = args.out.resolve()
    return args


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    results = []
    for seed in args.seeds:
        run_dir = args.out / f"seed-{seed}{'-full-budget' if args.full_budget else ''}"
        results.append(run_seed(seed, run_dir, args.full_budget))
        print(f"seed {seed}: {_minutes(results[-1]['wall_s'])}", flush=True)
    load.append(os.getloadavg()[0])
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results, args, load)
    write_section(Path(args.benchmarks_md), text, args.section)
    print(text)
    print("README table (headline protocol):\n")
    print(seed_table(results, results[0]["headline"]))
    print(f"\nmedian wall {_minutes(statistics.median(r['wall_s'] for r in results))}; results: "
          f"{args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
