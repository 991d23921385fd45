"""`med42-ray evaluate`: load the benchmarks, build prompts, score every model on Ray, write results."""

from __future__ import annotations

import collections
import json
import logging
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from med42_ray.benchmarks import BENCHMARKS, BenchmarkItem, load_benchmarks
from med42_ray.eval import cost, fewshot, generation, lm_eval_cot, lm_eval_format, permute
from med42_ray.eval import results as res
from med42_ray.eval.config import EvalModel
from med42_ray.eval.generation import build_cot_request
from med42_ray.eval.prompts import Request, build_request
from med42_ray.eval.runner import Event, ModelJob, RunnerSettings, run_jobs
from med42_ray.layout import EvalDir, eval_dir_for
from med42_ray.paths import resolve_path
from med42_ray.ray_metrics import EvalProgressMetrics

if TYPE_CHECKING:  # annotations only: a stage never imports the config composition at run time
    from med42_ray.config import RunConfig

log = logging.getLogger(__name__)

PROTOCOL_DESCRIPTIONS = {
    "harness": "lm-evaluation-harness 0.4.x zero-shot templates; log-likelihood of ' ' + choice",
    "med42_chat": "question and lettered options inside Med42's chat template; log-likelihood of the letter",
    "full_text": "lm-eval prompt; log-likelihood of ' ' + the full answer text (Med42-v2 style)",
    "cot": "lm-eval's flan_cot_zeroshot prompt; greedy generation, answer letter extracted by its "
           "strict-match and flexible-extract filters (acc: flexible-extract)",
}


def _label(path: str) -> str:
    """A directory's name as a model label (EvalModel.name's characters): 'modèle 7B' -> 'modele_7B'."""
    name = unicodedata.normalize("NFKD", Path(path.rstrip("/")).name or path).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.:+-]+", "_", name).strip("_") or "model"


def default_model_name(path: str, adapter: str | None) -> str:
    return f"{_label(path)}+{_label(adapter)}" if adapter else _label(path)


def select_items(benches: dict[str, list[BenchmarkItem]], limit: int | None):
    """Items to score per benchmark and the number excluded because they need an image."""
    scored, excluded = {}, {}
    for name, items in benches.items():
        keep = [it for it in items if not it.needs_image]
        excluded[name] = len(items) - len(keep)
        scored[name] = keep[:limit] if limit else keep
    return scored, excluded


class Progress:
    """One bar per benchmark on a terminal: questions done (over all models). Elsewhere (a job log,
    CI) or with bars off, one line every `every` seconds and one at the end. With `metrics`, the
    same counts go to the dashboard's Prometheus."""

    def __init__(self, totals: dict[str, int], enabled: bool, every: float = 30.0,
                 metrics: EvalProgressMetrics | None = None):
        self.bars, self.totals, self.done = {}, totals, collections.Counter()
        self.metrics = metrics
        self.every, self.last = every, time.monotonic()
        if enabled and sys.stderr.isatty():  # in a log (a job, CI) tqdm's redraws are a wall of lines
            from tqdm.auto import tqdm

            for pos, (name, total) in enumerate(totals.items()):
                self.bars[name] = tqdm(total=total, desc=f"{name:<28}", unit="q", position=pos, leave=True)

    def update(self, counts: collections.Counter) -> None:
        self.done.update(counts)
        if self.metrics is not None:
            self.metrics.record(self.done)
        for name, n in counts.items():
            if name in self.bars:
                self.bars[name].update(n)
        if not self.bars and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        print("questions done: " + ", ".join(f"{n} {self.done[n]}/{t}" for n, t in self.totals.items()), flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if not self.bars:
            self._line()


Pairs = dict[str, list[tuple[BenchmarkItem, Request]]]  # benchmark -> (item, its request) in order
# benchmark -> (original item, permutation j, order, the permuted item's request)
Permuted = dict[str, list[tuple[BenchmarkItem, int, tuple[int, ...], Request]]]
Examples = dict[str, dict[str, tuple[BenchmarkItem, ...]]]  # benchmark -> item id -> few-shot examples


def choose_fewshot(root: Path, benches: dict[str, list[BenchmarkItem]], k: int, seed: int):
    """Few-shot examples per benchmark and item (drawn over every question in file order, as
    lm-eval draws them), each pool's description, and the benchmarks without a pool (why)."""
    examples: Examples = {}
    pools, skipped = {}, {}
    for name, its in benches.items():
        pool = fewshot.fewshot_pool(root, name)
        if isinstance(pool, str):
            skipped[name] = pool
            print(f"skipped {name}: --num-fewshot {k}, but {pool}", flush=True)
            continue
        examples[name] = fewshot.draw_examples(pool, its, k, seed)
        pools[name] = {**pool.describe(), **({"seed": seed} if pool.sampler == "default" else {})}
    return examples, pools, skipped


def build_requests(items: dict[str, list[BenchmarkItem]], protocols: list[str], system_prompt: str | None,
                   examples: Examples | None = None, permutations: int = 0, max_new_tokens: int | None = None):
    """Every item's request under every protocol ({protocol: Pairs}) and, with `permutations`, its
    permuted orders' requests ({protocol: Permuted}); the distinct requests by key (a model computes
    each once: equal prompt and continuations share a key, within a protocol and across protocols,
    e.g. harness and full_text ask PubMedQA alike), and per key how many questions of each
    benchmark it answers (the progress bars)."""
    requests: dict[str, Pairs] = {}
    permuted: dict[str, Permuted] = {}
    unique: dict[str, Request] = {}
    per_key_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(name: str, r: Request) -> None:
        unique.setdefault(r.key, r)
        per_key_counts[r.key][name] += 1

    for protocol in protocols:
        requests[protocol], permuted[protocol] = {}, {}
        for name, its in items.items():
            shots = (examples or {}).get(name, {})
            if protocol == "cot":  # generated, not scored: zero-shot, options in their order
                requests[protocol][name] = [(it, build_cot_request(it, max_new_tokens)) for it in its]
                for _, r in requests[protocol][name]:
                    add(name, r)
                continue
            pairs = [(it, build_request(it, protocol, system_prompt, shots.get(it.id, ()))) for it in its]
            requests[protocol][name] = pairs
            for _, r in pairs:
                add(name, r)
            if permutations and permute.permutable(name):
                permuted[protocol][name] = [
                    (it, j, order, build_request(p, protocol, system_prompt, shots.get(it.id, ())))
                    for it in its for j, order, p in permute.permuted_items(it, permutations)]
                for *_, r in permuted[protocol][name]:
                    add(name, r)
    return requests, permuted, unique, per_key_counts


def run_evaluate(cfg: RunConfig, adapter: str | None = None,
                 on_event: Callable[[Event], None] | None = None) -> dict:
    """Score every model under evaluate.protocol and each of evaluate.also_protocols in one pass
    (one group of actors per model takes the requests of all of them), write each protocol's
    results (the headline's at the output directory, the others' under protocols/<name>/) and
    return the headline protocol's summary."""
    from med42_ray.cluster import connect

    ecfg = cfg.evaluate
    root = resolve_path(ecfg.benchmarks_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmarks directory not found: {root}")
    out = eval_dir_for(cfg)
    benches = load_benchmarks(root, ecfg.benchmarks)
    for name in ecfg.benchmarks or BENCHMARKS:
        if name not in benches:
            print(f"skipped {name}: its files are not under {root}", flush=True)
    if not benches:
        raise FileNotFoundError(f"no benchmark found under {root}")
    fewshot_info: dict = {}
    examples = None
    if ecfg.num_fewshot:
        examples, pools, skipped = choose_fewshot(root, benches, ecfg.num_fewshot, ecfg.fewshot_seed)
        benches = {n: v for n, v in benches.items() if n in examples}
        if not benches:
            raise FileNotFoundError(f"--num-fewshot {ecfg.num_fewshot}: no benchmark under {root} has a few-shot pool")
        fewshot_info = {"pools": pools, "skipped": skipped}
    items, excluded = select_items(benches, ecfg.limit)
    models = ecfg.models or [EvalModel(name=default_model_name(cfg.model, adapter), path=cfg.model, adapter=adapter)]

    protocols = ecfg.protocols  # the headline first
    requests, permuted, unique, per_key_counts = build_requests(items, protocols, cfg.prepare.system_prompt,
                                                                examples, ecfg.permutations,
                                                                ecfg.max_new_tokens)
    n_questions = sum(len(v) for v in items.values())
    # permuted questions per scored protocol (cot, generated, has none), and over all protocols
    n_permuted = max(sum(len(v) for v in permuted[p].values()) for p in protocols)
    n_permuted_all = sum(len(v) for p in protocols for v in permuted[p].values())
    print(f"evaluating {len(models)} model(s) on {len(items)} benchmark(s): {n_questions} questions "
          f"({len(unique)} distinct prompts), {sum(excluded.values())} excluded (need an image); "
          f"protocol {ecfg.protocol}" + (f", also {', '.join(protocols[1:])}" if protocols[1:] else "")
          + (f"; {ecfg.num_fewshot}-shot" if ecfg.num_fewshot else "")
          + (f"; {n_permuted} permuted questions" if n_permuted else ""), flush=True)

    connect(cfg.ray)
    totals = {n: len(models) * sum(len(v) + len(permuted[p].get(n, ())) for p in protocols)
              for n, v in items.items()}
    progress = Progress(totals, ecfg.progress, metrics=EvalProgressMetrics(str(out.root), totals))

    def event(ev: Event) -> None:
        if not ev.retried:
            counts = collections.Counter()
            for r in ev.task.requests:
                counts.update(per_key_counts[r.key])
            progress.update(counts)
        if on_event:
            on_event(ev)

    settings = RunnerSettings(num_actors=ecfg.num_actors, cpus_per_actor=ecfg.cpus_per_actor,
                              gpus_per_actor=ecfg.gpus_per_actor, dtype=ecfg.dtype,
                              questions_per_task=ecfg.questions_per_task, max_batch_tokens=ecfg.max_batch_tokens,
                              max_length=ecfg.max_length, max_task_retries=ecfg.max_task_retries)
    # one job per model for every protocol together: the same actors score all of them
    sample = cost.first_questions(requests[ecfg.protocol], ecfg.cost_questions) if ecfg.cost_questions else []
    jobs = [ModelJob(m.name, m.path, m.adapter, list(unique.values()), cost_requests=sample) for m in models]
    start = time.perf_counter()
    try:
        scored = run_jobs(jobs, settings, on_event=event)
    finally:
        progress.close()
    seconds = time.perf_counter() - start  # the cost measurements included: they are part of the pass
    inference_cost = {j.name: j.cost for j in jobs if j.cost}
    _print_cost(inference_cost)

    # what every protocol's summary shares: `seconds` is the one pass that scored them all
    common = {"benchmarks_dir": str(root), "limit": ecfg.limit, "seconds": round(seconds, 2),
              "questions": n_questions, "distinct_prompts": len(unique), "protocols_in_pass": protocols,
              "num_fewshot": ecfg.num_fewshot, **({"fewshot": fewshot_info} if fewshot_info else {}),
              "permutations": ecfg.permutations, "permuted_questions": n_permuted,
              # every question scored, permuted ones included: what the pass's time bought
              "questions_per_second":
                  round(len(models) * (len(protocols) * n_questions + n_permuted_all) / seconds, 2) if seconds else None,
              "skipped_benchmarks": [n for n in (ecfg.benchmarks or BENCHMARKS) if n not in benches],
              **({"inference_cost": inference_cost} if inference_cost else {}),
              "notes": res.NOTES}
    if "usmle_self_assessment" in benches:
        from med42_ray.benchmarks import usmle

        common["usmle_crosscheck"] = usmle.crosscheck(root)
    earlier = _earlier_results(ecfg.compare_with, protocols)
    summaries = {}
    for protocol in protocols:
        dest = out if protocol == ecfg.protocol else out.protocol(protocol)
        summaries[protocol] = _write_protocol(dest, protocol, common, models, requests[protocol], scored, excluded,
                                              earlier[protocol], permuted[protocol])
    others = "".join(f", {out.protocol(p).root.relative_to(out.root)}/" for p in protocols[1:])
    print(f"wrote {out.summary}, {out.comparison_md.name}, {out.comparison_png.name} and per-model samples/"
          f"{others} ({seconds:.1f} s, {common['questions_per_second']} questions/s)", flush=True)
    return summaries[ecfg.protocol]


def _print_cost(inference_cost: dict) -> None:
    for model, by_variant in inference_cost.items():
        print(f"inference cost of {model}: " + "; ".join(
            f"{v} {f['questions_per_s']:.2f} questions/s, {f['ms_per_question']:.0f} ms/question"
            for v, f in by_variant.items()), flush=True)


def _write_protocol(dest: EvalDir, protocol: str, common: dict, models: list[EvalModel],
                    requests: Pairs, scored: dict, excluded: dict[str, int],
                    earlier: list[tuple[str, dict]], permuted: Permuted | None = None) -> dict:
    """One protocol's results under `dest`: samples and results.json per model (with permutations,
    samples/<benchmark>.permuted.jsonl and each benchmark's `permutations` metrics), the summary
    over models, and the comparison table and chart (with the earlier results of this protocol)."""
    summary = {"protocol": protocol, "protocol_description": PROTOCOL_DESCRIPTIONS[protocol], **common, "models": {}}
    for m in models:
        per_benchmark, samples = {}, {}
        # cot's rows keep every generation and both extraction filters (eval/generation.py)
        row_of, metrics_of = ((generation.sample_row, generation.benchmark_metrics) if protocol == "cot"
                              else (res.sample_row, res.benchmark_metrics))
        for name, pairs in requests.items():
            rows = [row_of(it, r, scored[m.name][r.key]) for it, r in pairs]
            res.write_jsonl(dest.samples(m.name, name), rows)
            samples[name] = rows
            per_benchmark[name] = metrics_of(rows, excluded[name], BENCHMARKS[name].size)
            if permuted and name in permuted:
                perm_rows = [res.permuted_row(it, j, order, r, scored[m.name][r.key])
                             for it, j, order, r in permuted[name]]
                res.write_jsonl(dest.samples(m.name, f"{name}.permuted"), perm_rows)
                per_benchmark[name]["permutations"] = permute.permutation_metrics(rows, perm_rows)
        model_result = {"model": m.path, "adapter": m.adapter, "protocol": protocol,
                         "num_fewshot": common["num_fewshot"],
                        "benchmarks": per_benchmark, "aggregates": res.aggregate(per_benchmark, samples)}
        res.write_json(dest.model_results(m.name), model_result)
        if protocol == "cot":  # lm-eval's generative (flan_cot_zeroshot) files
            lm_eval_cot.write_model(dest, m, summary["protocol_description"], requests, scored[m.name], samples,
                                    model_result, common["limit"], common["seconds"])
        else:  # its multiple-choice (log-likelihood) files
            lm_eval_format.write_model(dest, m, protocol, summary["protocol_description"], requests,
                                       scored[m.name], samples, model_result, common["limit"], common["seconds"])
        summary["models"][m.name] = model_result
    res.write_json(dest.summary, summary)

    table_models = dict(summary["models"])
    for path, earlier_models in earlier:
        for name, m in earlier_models.items():
            table_models.setdefault(name if name not in table_models else f"{name} ({Path(path).parent.name})", m)
    dest.comparison_md.write_text(res.comparison_markdown(table_models, protocol))
    res.comparison_chart(table_models, dest.comparison_png)
    return summary


def _earlier_results(paths: list[str], protocols: list[str]) -> dict[str, list[tuple[str, dict]]]:
    """evaluate.compare_with's files, (path, models), by the protocol whose table they join: their
    own when this run scores it, else the headline's (a file from before protocols were recorded too)."""
    out: dict[str, list[tuple[str, dict]]] = {p: [] for p in protocols}
    for path in paths:
        earlier = json.loads(Path(path).read_text())
        out[earlier["protocol"] if earlier.get("protocol") in out else protocols[0]].append(
            (path, earlier.get("models", {})))
    return out
