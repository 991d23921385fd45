"""What `med42-ray evaluate`'s evaluation modes cost against its zero-shot path, in one run.

Same model, same questions (the first --limit of MedQA 4-option test and of MMLU clinical
knowledge), same Ray cluster (started before the clocks), one `run_evaluate` per mode:

  zero-shot        the `evaluate` defaults: harness protocol, log-likelihood, no examples (the baseline)
  few-shot 3       evaluate.num_fewshot=3 (examples drawn as lm-eval draws them, eval/fewshot.py)
  chain of thought evaluate.protocol=cot, greedy generation of up to evaluate.max_new_tokens tokens
                   (32 here unless --cot-max-new-tokens; the config's default is 256)
  permutations 3   evaluate.permutations=3: each question also asked with its options rotated 1..3 places

Zero-shot runs first and again last; the baseline is the mean of the two runs' wall seconds, and
both are reported, so drift on a shared machine shows. Reported per mode: wall seconds (model
loading on the actors included, as for every mode), CPU seconds of this process and all its
descendants (bench_prepare's ProcessTreeMonitor), questions scored (for permutations the original
questions; the forward requests are counted apart), questions/s and its ratio to the baseline,
accuracy, and for CoT the share of answers no filter could parse. Writes <out>/results.json and
the `## Evaluation modes` section of BENCHMARKS.md.

    python bench/bench_eval_modes.py                          # tiny-llama, 100 questions per benchmark
    python bench/bench_eval_modes.py --model <hf dir> --limit 200 --num-actors 2
    python bench/bench_eval_modes.py --smoke    # 4 questions each of the packaged sample, BENCHMARKS.md untouched
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# the evaluation benchmarks' options, config and clocks (one home: bench_eval; CPU accounting: bench_prepare's)
from bench_eval import MONITOR, add_common_args, measure_and_publish, our_overrides, settle_smoke, timed_evaluate

BENCHMARKS = ("medqa_4options", "mmlu_clinical_knowledge")
DEFAULT_LIMIT, SMOKE_LIMIT = 100, 4
COT_MAX_NEW_TOKENS = 32  # the config's 256 would make CoT a generation-length benchmark on CPU
SECTION = "Evaluation modes"



def modes(cot_tokens: int) -> list[tuple[str, str, list[str]]]:
    """(key, label, config overrides) in run order: zero-shot first and last."""
    return [("zero_shot_first", "zero-shot (first run)", []),
            ("fewshot_3", "few-shot 3", ["evaluate.num_fewshot=3"]),
            ("cot", f"chain of thought ({cot_tokens} new tokens)",
             ["evaluate.protocol=cot", f"evaluate.max_new_tokens={cot_tokens}"]),
            ("permutations_3", "permutations 3", ["evaluate.permutations=3"]),
            ("zero_shot_last", "zero-shot (last run)", [])]


def run_mode(model_dir: str, args: argparse.Namespace, extra: list[str], workdir: Path,
             limit: int | None = None) -> dict:
    """One `run_evaluate` on its own run directory: wall and CPU seconds around it, and its summary.
    The first mode starts the cluster, before its clock; the others reuse it."""
    summary, seconds, cpu = timed_evaluate(model_dir, [*our_overrides(
        workdir, args.benchmarks_dir, list(BENCHMARKS), args.num_actors, limit or args.limit), *extra])
    return {"overrides": extra, **figures(summary, seconds, cpu)}


def figures(summary: dict, seconds: float, cpu: float) -> dict:
    """A mode's row from its summary: counts, speed, accuracy over both benchmarks (weighted by questions)."""
    per = summary["models"]["model"]["benchmarks"]
    n = summary["questions"]
    out = {"wall_s": seconds, "cpu_s": cpu, "pass_s": summary["seconds"], "questions": n,
           "forward_requests": n + summary["permuted_questions"], "permuted_questions": summary["permuted_questions"],
           "distinct_prompts": summary["distinct_prompts"], "questions_per_s": n / seconds,
           "questions_per_cpu_s": n / cpu, "summary_questions_per_second": summary["questions_per_second"],
           "acc": _weighted(per, "acc"), "benchmarks": per, "skipped_benchmarks": summary["skipped_benchmarks"]}
    if summary["protocol"] == "cot":
        out["unparsed"] = _weighted(per, "unparsed")
        out["hit_max_new_tokens"] = _weighted(per, "hit_max_new_tokens")
    if "fewshot" in summary:  # which split each benchmark's examples came from, and what had none
        out["fewshot"] = summary["fewshot"]
    if summary["permutations"]:
        out["acc_permuted"] = _weighted(per, "acc_permuted", "permutations")
        out["consistency"] = _weighted(per, "consistency", "permutations")
    return out


def _weighted(per: dict, key: str, sub: str | None = None) -> float:
    rows = [(b[sub] if sub else b)[key] * b["n"] for b in per.values() if not sub or sub in b]
    total = sum(b["n"] for b in per.values() if not sub or sub in b)
    return sum(rows) / total if total else float("nan")


def measure(args: argparse.Namespace) -> dict:
    from med42_ray.model import resolve_model

    model_dir = resolve_model(args.model)
    load_start = os.getloadavg()[0]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp, MONITOR:
        # untimed: the driver's one-time imports (transformers, matplotlib for the charts) and Ray's
        # first worker start-up would otherwise fall on the first zero-shot run alone
        run_mode(model_dir, args, [], Path(tmp) / "warm_up", limit=1)
        for key, label, extra in modes(args.cot_max_new_tokens):
            runs[key] = {"label": label, **run_mode(model_dir, args, extra, Path(tmp) / key)}
            print(f"{label}: {runs[key]['wall_s']:.1f} s, {runs[key]['questions']} questions", flush=True)
    first, last = runs["zero_shot_first"], runs["zero_shot_last"]
    # the baseline: both zero-shot runs' seconds averaged (same questions, so same counts)
    baseline = {"wall_s": (first["wall_s"] + last["wall_s"]) / 2, "cpu_s": (first["cpu_s"] + last["cpu_s"]) / 2,
                "questions": first["questions"]}
    baseline.update(questions_per_s=baseline["questions"] / baseline["wall_s"],
                    questions_per_cpu_s=baseline["questions"] / baseline["cpu_s"])
    for r in runs.values():
        r["ratio"] = r["questions_per_s"] / baseline["questions_per_s"]
        r["ratio_cpu"] = r["questions_per_cpu_s"] / baseline["questions_per_cpu_s"]
    return {"model": args.model, "benchmarks": list(BENCHMARKS), "benchmarks_dir": str(args.benchmarks_dir),
            "limit": args.limit, "num_actors": args.num_actors, "cot_max_new_tokens": args.cot_max_new_tokens,
            "zero_shot_runs_agree": _same_acc(first, last), "baseline": baseline, "modes": runs,
            "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0],
            "cpus": os.cpu_count(), "date": datetime.date.today().isoformat()}


def _same_acc(a: dict, b: dict) -> bool:
    return all(a["benchmarks"][n]["acc"] == b["benchmarks"][n]["acc"] for n in a["benchmarks"])


def _notes(r: dict) -> str:
    """What sets a mode apart beyond speed: its few-shot splits, CoT's parse rate, permutation metrics."""
    parts = []
    for name, pool in r.get("fewshot", {}).get("pools", {}).items():
        parts.append(f"{name}: {pool['split']} split ({pool['sampler']})")
    for name in r.get("fewshot", {}).get("skipped", {}):
        parts.append(f"{name} skipped (no few-shot pool)")
    if "unparsed" in r:
        parts.append(f"unparsed {r['unparsed']:.0%}, cut at the token limit {r['hit_max_new_tokens']:.0%}")
    if "consistency" in r:
        parts.append(f"acc over permuted orders {r['acc_permuted']:.3f}, consistency {r['consistency']:.3f}")
    return "; ".join(parts)


def render(res: dict, args: argparse.Namespace) -> str:
    b = res["baseline"]
    rows = [f"| {r['label']} | {r['wall_s']:.1f} | {r['pass_s']:.1f} | {r['cpu_s']:.0f} | {r['questions']} | {r['forward_requests']} "
            f"| {r['questions_per_s']:.2f} | **{r['ratio']:.2f}x** | {r['ratio_cpu']:.2f}x | {r['acc']:.3f} "
            f"| {_notes(r)} |" for r in res["modes"].values()]
    first, last = res["modes"]["zero_shot_first"], res["modes"]["zero_shot_last"]
    drift = last["wall_s"] / first["wall_s"] - 1
    limit = "" if args.limit == DEFAULT_LIMIT else f" --limit {args.limit}"
    cot = "" if args.cot_max_new_tokens == COT_MAX_NEW_TOKENS else f" --cot-max-new-tokens {args.cot_max_new_tokens}"
    return f"""
Measured {res['date']} on {res['cpus']} CPU cores ({platform.processor() or platform.machine()}), no GPU;
model `{args.model}`, {args.num_actors} Ray actors, the first {args.limit} questions of each of
{', '.join(f'`{n}`' for n in BENCHMARKS)} ({first['questions']} in all). One `run_evaluate` per mode,
one after another on one Ray cluster started before the clocks, after an untimed one-question
warm-up run (the driver's one-time imports). Wall time is the whole `run_evaluate`: each mode's
actors starting and loading the model, scoring, writing results; "pass s" is the part from the
actors' start to the last answer (the summary's `seconds`). Baseline: zero-shot, run first and again last, **the mean of the two
runs' wall (and CPU) seconds** ({first['wall_s']:.1f} s and {last['wall_s']:.1f} s: the last run
took {drift:+.0%}). "vs zero-shot" is questions/s over the baseline's; "CPU" the same per CPU-second
(this process and all its descendants, bench_prepare's ProcessTreeMonitor), which does not grow
when other work shares the machine. Chain of thought generates up to {args.cot_max_new_tokens} new
tokens per question (`evaluate.max_new_tokens={args.cot_max_new_tokens}`; the config's default is
256, which costs about proportionally more); its acc is flexible-extract's. Permutations count the
original questions; "forward requests" includes the 3 rotated orders of each.

| mode | wall s | pass s | CPU s | questions | forward requests | questions/s | vs zero-shot | vs zero-shot (CPU) | acc | notes |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}
| zero-shot baseline (mean of both runs) | {b['wall_s']:.1f} | | {b['cpu_s']:.0f} | {b['questions']} | {b['questions']} | {b['questions_per_s']:.2f} | 1.00x | 1.00x | | |

Both zero-shot runs give the same accuracies: {'yes' if res['zero_shot_runs_agree'] else '**no**'}.
Machine load while measuring (1-minute load average): {res['loadavg_1min_start']:.1f} at the start,
{res['loadavg_1min_end']:.1f} at the end, this benchmark's own {args.num_actors} actors included{_loaded(res)}.

Reproduce: `python bench/bench_eval_modes.py --model {args.model} --num-actors {args.num_actors}{limit}{cot}`
"""


def _loaded(res: dict) -> str:
    """Other work at the start, or more runnable processes than cores at the end: say so."""
    if res["loadavg_1min_start"] > res["cpus"] / 2 or res["loadavg_1min_end"] > res["cpus"]:
        return " (a loaded machine: the wall-clock ratios are noisy, the CPU-second ones less so)"
    return ""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "runs/bench_eval_modes")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N questions of each benchmark")
    p.add_argument("--cot-max-new-tokens", type=int, default=COT_MAX_NEW_TOKENS,
                   help="evaluate.max_new_tokens for the chain-of-thought mode (config default 256)")
    p.add_argument("--smoke", action="store_true",
                   help=f"the first {SMOKE_LIMIT} questions of each benchmark (overrides --limit), results "
                        "under <out>/smoke, BENCHMARKS.md untouched: checks that the benchmark runs")
    return settle_smoke(p.parse_args(), SMOKE_LIMIT)


def main() -> int:
    args = parse_args()
    results = measure_and_publish(args, measure, render, SECTION, after="## Evaluation")
    print(f"1-minute load average at the end: {results['loadavg_1min_end']:.1f} ({results['cpus']} cores)")
    return 0 if results["zero_shot_runs_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
