"""Benchmark of `med42-ray prepare` and of its decontamination, written to BENCHMARKS.md `## Prepare`.

    python bench/bench_prepare.py [--raw ../shared/data/raw] [--out runs/bench_prepare]

Run from the repository root. Two measurements, in one run:

1. Pipeline. `run_prepare` on the public training sources of med42_ray/configs/public_raw.yaml
   (MedAlpaca, Alpaca, Dolly, HEAD-QA train; MED42_DATA set to --raw; every benchmark under --raw
   indexed) on a local 2-CPU Ray cluster, at 1x and at --scale x the input. The scaled input is
   written under --out: --scale copies of every source, each row's text suffixed " (variant k)" so
   no copy is an exact duplicate. Each scale runs in its own fresh process and Ray cluster, so
   neither sees the other's memory. Reported: input rows/s over the whole `run_prepare` call, rows
   per CPU-second (CPU of the driver and every process under it: Ray's raylet, GCS and workers; it
   does not grow when other work shares the machine, as wall time does), and peak memory, the
   summed RSS of the same processes sampled every 0.2 s with psutil. RSS counts shared pages (the
   object store) once per process that maps them, so it is an upper bound.

2. Decontamination, ours (`ContaminationIndex`) vs lm-evaluation-harness's `Janitor`, 13-grams,
   both indexed from the same benchmark items (the registry, `load_benchmarks`) and run on the
   same rows in this one process: clean training rows (MedAlpaca + Alpaca + Dolly) plus planted
   benchmark items in six forms (verbatim, upper-cased, punctuation swapped, punctuation spaced
   out as tokenised text is, embedded in a longer prompt, options shuffled), a separate group
   of short MMLU items (question under 13 words, with their options), and a group of partial
   copies (issue 13): the first 40%, 60% and 80% of a question, a 25-word run from its middle,
   and that run embedded between two unrelated training rows, planted for items whose 40%
   prefix is at least 25 words (FRAGMENT_WORDS, the issue's "long verbatim fragment"). How many
   MedQA dev questions each run length would flag, and how many shorter middle runs (13 to 24
   words) it would catch, is swept to show why the run rule stops at 25. Reported: index build
   time, single-process throughput (rows per CPU-second, best of --repeats passes; clean and
   planted rows timed apart, since a hit costs more than a miss), recall on planted rows, false positives on the clean rows
   and on MedQA dev questions (a hard negative set: same exam style as the MedQA test items in
   the index, different questions).

A partial run (--parts) writes <out>/results.json; BENCHMARKS.md's whole `## Prepare` section is
written when both parts run, its decontamination subsection alone with --parts decontam.
--smoke runs both parts at tiny sizes (a minute or two) into <out>/smoke and prints the section
instead of writing it: a check that the benchmark still runs, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from med42_ray.config import load_config  # noqa: E402
from med42_ray.paths import CONFIG_DIR  # noqa: E402
from med42_ray.records import format_mc_answer, format_multiple_choice  # noqa: E402

PUBLIC_RAW = CONFIG_DIR / "public_raw.yaml"
DATA_VAR = "MED42_DATA"  # public_raw.yaml's paths are ${MED42_DATA:-../shared/data/raw}/...
NGRAM = 13
MMLU_CLINICAL = ("mmlu_anatomy", "mmlu_clinical_knowledge", "mmlu_college_biology", "mmlu_college_medicine",
                 "mmlu_medical_genetics", "mmlu_professional_medicine")
REPRODUCE = "python bench/bench_prepare.py --raw ../shared/data/raw --out runs/bench_prepare"
# --smoke: every part at a size that runs in a minute or so on 2 cores (these replace the flags).
# Two benchmarks keep the index small; MedQA for the dev-question negatives, MMLU anatomy for short items.
SMOKE_SIZES = {"scale": 2, "repeats": 1, "per_benchmark": 2, "short_items": 5, "fragment_items": 5,
               "rows_per_source": 40, "clean_rows": 400, "benchmarks": "medqa_4options,mmlu_anatomy"}
FRAGMENT_WORDS = 25  # a planted partial copy is at least this many words: issue 13's "long verbatim fragment"
RUN_SWEEP = (13, 17, 20, 25)  # run lengths tried on MedQA dev and on shorter fragments


# ---------------------------------------------------------------------------------------------
# Part 1: the pipeline at 1x and Nx
# ---------------------------------------------------------------------------------------------

class ProcessTreeMonitor:
    """Background thread sampling this process and all its descendants (Ray's raylet, GCS and
    workers when Ray was started here): peak summed RSS, and CPU seconds used (user + system,
    last value seen per process, so a worker that exits still counts up to its last sample)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.peak_driver, self.samples = interval, 0, 0, 0
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                with p.oneshot():
                    total += p.memory_info().rss
                    cpu = p.cpu_times()
                    with self._lock:
                        self._cpu[(p.pid, p.create_time())] = cpu.user + cpu.system
        self.peak = max(self.peak, total)
        self.peak_driver = max(self.peak_driver, me.memory_info().rss)
        self.samples += 1

    def cpu_snapshot(self) -> dict:
        self.sample()
        with self._lock:
            return dict(self._cpu)

    @staticmethod
    def cpu_between(start: dict, end: dict) -> float:
        return sum(v - start.get(k, 0.0) for k, v in end.items())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcessTreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _vary_alpaca(rows: list[dict], suffix: str) -> list[dict]:
    return [{**r, "output": f"{r['output']}{suffix}"} for r in rows]


def _vary_prompt_response(rows: list[dict], suffix: str) -> list[dict]:
    # The answer, not the prompt: the prompt is wrapped in the Alpaca template the reader unwraps.
    return [{**r, "response": f"{r['response']}{suffix}"} for r in rows]


def _vary_headqa(doc: dict, suffix: str) -> dict:
    doc = json.loads(json.dumps(doc))
    for exam in doc["exams"].values():
        for q in exam["data"]:
            q["qtext"] = f"{q['qtext']}{suffix}"
    return doc


VARY = {"alpaca": _vary_alpaca, "headqa": _vary_headqa, "prompt_response": _vary_prompt_response}


def _read_source(path: Path, fmt: str):
    if fmt == "prompt_response":  # JSON lines
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _write_source(path: Path, fmt: str, rows) -> None:
    if fmt == "prompt_response":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False))


def _head(rows, fmt: str, n: int):
    """The first `n` rows of a source (HEAD-QA: the first `n` questions, exam after exam)."""
    if fmt != "headqa":
        return rows[:n]
    exams = {}
    for name, exam in rows["exams"].items():
        if n <= 0:
            break
        exams[name] = {**exam, "data": exam["data"][:n]}
        n -= len(exams[name]["data"])
    return {**rows, "exams": exams}


def write_source_heads(sources: list[dict], n: int, out: Path) -> list[dict]:
    """The first `n` rows of every source under `out`; returns the sources pointing at them."""
    heads = []
    for src in sources:
        path, fmt = Path(src["path"]), src["format"]
        target = out / src["name"] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_source(target, fmt, _head(_read_source(path, fmt), fmt, n))
        heads.append({**src, "path": str(target)})
    return heads


def write_scaled_sources(sources: list[dict], scale: int, out: Path) -> list[dict]:
    """`scale` varied copies of every source under `out`; returns the sources pointing at them."""
    scaled = []
    for src in sources:
        path, fmt = Path(src["path"]), src["format"]
        if fmt not in VARY:
            raise ValueError(f"source {src['name']}: no variant writer for format {fmt!r}")
        folder = out / src["name"]
        folder.mkdir(parents=True, exist_ok=True)
        rows = _read_source(path, fmt)
        for k in range(1, scale + 1):
            _write_source(folder / f"{path.stem}.v{k}{path.suffix}", fmt, VARY[fmt](rows, f" (variant {k})"))
        scaled.append({**src, "path": str(folder / f"{path.stem}.v*{path.suffix}")})
    return scaled


def public_raw_sources(raw: Path) -> list[str]:
    """public_raw.yaml's source paths as `prepare` reads them with MED42_DATA=--raw."""
    before = os.environ.get(DATA_VAR)
    os.environ[DATA_VAR] = str(raw)
    try:
        paths = [src.path for src in load_config(PUBLIC_RAW).prepare.sources]
    finally:
        if before is None:
            del os.environ[DATA_VAR]
        else:
            os.environ[DATA_VAR] = before
    for path in paths:  # a source read from anywhere else would not be the data measured
        if not Path(path).is_relative_to(raw):
            raise ValueError(f"{PUBLIC_RAW}: source {path} is not under --raw {raw} "
                             f"(its path must start with ${{{DATA_VAR}:-...}})")
    return paths


def write_prepare_configs(raw: Path, out: Path, scale: int, model: str | None, rows_per_source: int | None = None,
                          benchmarks: list[str] | None = None) -> dict[str, Path]:
    """public_raw.yaml pointed at --raw (its first `rows_per_source` rows of every source and only
    `benchmarks` indexed, if given), and its --scale x copy; returns {label: config path}."""
    tree = yaml.safe_load(PUBLIC_RAW.read_text())
    for src, path in zip(tree["prepare"]["sources"], public_raw_sources(raw), strict=True):
        src["path"] = path
    if rows_per_source is not None:
        tree["prepare"]["sources"] = write_source_heads(tree["prepare"]["sources"], rows_per_source, out / "data_1x")
    tree["prepare"]["benchmarks_dir"] = tree.setdefault("evaluate", {})["benchmarks_dir"] = str(raw)
    if benchmarks is not None:
        tree["prepare"]["benchmarks"] = benchmarks
    tree["ray"] = {"num_cpus": 2, "dashboard": False}
    if model:
        tree["model"] = model
    configs = {}
    for label, sources in (("1x", tree["prepare"]["sources"]),
                           (f"{scale}x", None)):
        if sources is None:
            sources = write_scaled_sources(tree["prepare"]["sources"], scale, out / f"data_{label}")
        t = {**tree, "run_dir": str(out / f"prepare_{label}"), "prepare": {**tree["prepare"], "sources": sources}}
        path = out / f"prepare_{label}.yaml"
        path.write_text(yaml.safe_dump(t, sort_keys=False))
        configs[label] = path
    return configs


def _prepare_child(config_path: str, result_file: str, stats_file: str) -> None:
    """One `run_prepare` in a fresh process with a fresh Ray cluster (spawned by `bench_pipeline`)."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    import logging

    import ray

    from med42_ray.data.pipeline import run_prepare

    # Ray Data's per-operator time and CPU summary of each stage, to see where the time goes.
    ray.data.DataContext.get_current().enable_auto_log_stats = True
    logging.getLogger("ray.data").addHandler(logging.FileHandler(stats_file, mode="w"))
    cfg = load_config(config_path)
    with ProcessTreeMonitor() as mon:
        ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        cpu_start, load_start = mon.cpu_snapshot(), os.getloadavg()
        started = time.perf_counter()
        manifest = run_prepare(cfg)
        seconds = time.perf_counter() - started
        cpu_s = mon.cpu_between(cpu_start, mon.cpu_snapshot())
        load_end = os.getloadavg()
        ray.shutdown()
    rows = sum(s["read"] for s in manifest["sources"].values())
    Path(result_file).write_text(json.dumps({
        "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
        "cpu_s": cpu_s, "rows_per_cpu_s": rows / cpu_s, "load_avg": [load_start[0], load_end[0]],
        "kept": sum(s["kept"] for s in manifest["sources"].values()),
        "contaminated": sum(sum(s["contaminated"].values()) for s in manifest["sources"].values()),
        "tokens": manifest["tokens"], "sequences": manifest["sequences"],
        "peak_rss": mon.peak, "peak_rss_driver": mon.peak_driver, "samples": mon.samples,
    }))


def bench_pipeline(raw: Path, out: Path, scale: int, model: str | None, rows_per_source: int | None = None,
                   benchmarks: list[str] | None = None) -> dict:
    from med42_ray.model import resolve_model

    configs = write_prepare_configs(raw, out, scale, model, rows_per_source, benchmarks)
    resolve_model(load_config(configs["1x"]).model)  # build the tiny model now, not in the first timed run
    results = {}
    ctx = mp.get_context("spawn")
    for label, path in configs.items():
        print(f"\n=== prepare {label}: {path}", flush=True)
        result_file = out / f"prepare_{label}.result.json"
        result_file.unlink(missing_ok=True)
        child = ctx.Process(target=_prepare_child,
                            args=(str(path), str(result_file), str(out / f"prepare_{label}.ray_data_stats.log")))
        child.start()
        child.join()
        if child.exitcode != 0 or not result_file.is_file():
            raise RuntimeError(f"prepare {label} failed (exit code {child.exitcode}); see the output above")
        results[label] = json.loads(result_file.read_text())
        r = results[label]
        print(f"prepare {label}: {r['rows']} rows in {r['seconds']:.1f}s = {r['rows_per_s']:.0f} rows/s "
              f"({r['cpu_s']:.0f} CPU s = {r['rows_per_cpu_s']:.0f} rows per CPU-second), "
              f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB", flush=True)
    one, big = results["1x"], results[f"{scale}x"]
    return {"scale": scale, "model": load_config(configs["1x"]).model, "benchmarks": benchmarks, "runs": results,
            "throughput_ratio": big["rows_per_s"] / one["rows_per_s"],
            "cpu_throughput_ratio": big["rows_per_cpu_s"] / one["rows_per_cpu_s"],
            "peak_rss_ratio": big["peak_rss"] / one["peak_rss"],
            "marginal_rows_per_s": (big["rows"] - one["rows"]) / (big["seconds"] - one["seconds"])}


# ---------------------------------------------------------------------------------------------
# Part 2: decontamination, ours vs the Janitor
# ---------------------------------------------------------------------------------------------

def load_janitor():
    """lm-eval's Janitor; quiet, since without its optional C++ extension it warns on import."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from lm_eval.decontamination import janitor as module
    return module


class JanitorDetector:
    """A row is contaminated when `Janitor.clean` would cut anything out of it.

    minimum_slice_length=0 so that `clean` returns exactly [text] for a row with no registered
    n-gram (with the default 200, a clean row shorter than 200 characters comes back as [] too,
    indistinguishable from "too dirty"). It changes which chunks are kept, not what is detected.
    """

    def __init__(self, n: int = NGRAM):
        module = load_janitor()
        self.cpp = module.JANITOR_CPP
        self.janitor = module.Janitor(ngram_n=n, minimum_slice_length=0)
        # register_contaminant/clean print a warning per call in Python mode; call what they call.
        self._register = self.janitor.register_contaminant if self.cpp else self.janitor.register_contaminant_python
        self._clean = self.janitor.clean if self.cpp else self.janitor.clean_python

    def register(self, text: str) -> None:
        self._register(text)

    def find(self, texts: list[str]) -> list[bool]:
        return [self._clean(t) != [t] for t in texts]


def item_parts(item) -> list[str]:
    """What each index is built from: the question, question + options, the context."""
    parts = [item.question, format_multiple_choice(item.question, item.choices)]
    return parts + ([item.context] if item.context else [])


def item_text(item, choices=None, gold=None) -> str:
    """A benchmark item as a training row would hold it: context, question, options, answer."""
    choices = list(item.choices if choices is None else choices)
    gold = item.gold if gold is None else gold
    text = format_multiple_choice(item.question, choices)
    if gold >= 0:
        text += "\n" + format_mc_answer(choices, gold)
    return f"{item.context}\n\n{text}" if item.context else text


_SWAP = str.maketrans({".": "!", ",": ";", ";": ",", ":": ";", "?": ".", "!": "."})
_PUNCT = re.compile(r"([^\w\s])")
LEAD_IN = ("I am revising for my exams. Can you work through this question step by step, say which "
           "option is right, and explain why each of the others is wrong?")
TRAILER = ("Please keep the explanation short, name the key principle involved, and mention one "
           "common misconception students have about it.")


def variants(item, rng: random.Random) -> dict[str, str]:
    text = item_text(item)
    order = list(range(len(item.choices)))
    if len(set(item.choices)) > 1:
        while order == sorted(order):
            rng.shuffle(order)
    shuffled = [item.choices[i] for i in order]
    return {
        "verbatim": text,
        "recased": text.upper(),
        "punct_swapped": text.translate(_SWAP),
        "punct_spaced": re.sub(r"[ \t]+", " ", _PUNCT.sub(r" \1 ", text)),  # "word , word ( x )"
        "embedded": f"{LEAD_IN}\n\n{text}\n\n{TRAILER}",
        "shuffled": item_text(item, shuffled, order.index(item.gold) if item.gold >= 0 else -1),
    }


_WORD = re.compile(r"\w+")  # the word breaks of decontam.normalise_words


def _words_span(text: str, first: int, last: int) -> str:
    """The raw text from word `first` to word `last` (exclusive), punctuation inside kept."""
    spans = [m.span() for m in _WORD.finditer(text)]
    return text[spans[first][0]:spans[last - 1][1]]


def _n_words(text: str) -> int:
    return sum(1 for _ in _WORD.finditer(text))


def fragment_eligible(item) -> bool:
    """Every partial form of the item is a long fragment: its 40% prefix has FRAGMENT_WORDS words."""
    return math.ceil(0.4 * _n_words(item.question)) >= FRAGMENT_WORDS


def middle_run(question: str, k: int) -> str:
    w = _n_words(question)
    return _words_span(question, (w - k) // 2, (w - k) // 2 + k)


def fragment_variants(item, rng: random.Random, unrelated: list[str]) -> dict[str, str]:
    """Partial verbatim copies of the question (issue 13); the embedded one sits between two
    unrelated training rows."""
    q, w = item.question, _n_words(item.question)
    run = middle_run(q, FRAGMENT_WORDS)
    before, after = rng.sample(unrelated, 2)
    return {**{f"prefix{p}": _words_span(q, 0, math.ceil(w * p / 100)) for p in (40, 60, 80)},
            "middle_run": run, "embedded_fragment": f"{before}\n\n{run}\n\n{after}"}


def clean_rows(raw: Path) -> list[str]:
    from med42_ray.data.readers import iter_rows

    files = [("medalpaca/medical_meadow_small.json", "alpaca"), ("alpaca/alpaca_en_demo.json", "alpaca"),
             ("alpaca/alpaca_tiny.json", "alpaca"), ("dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl", "prompt_response")]
    texts = []
    for rel, fmt in files:
        for r in iter_rows(raw / rel, fmt, Path(rel).parts[0]):
            if r["reject"] is None:  # the same text `prepare` checks: every message's content
                texts.append("\n".join(m["content"] for m in r["messages"]))
    return texts


def medqa_dev_rows(raw: Path) -> list[str]:
    from med42_ray.data.readers import iter_rows

    rows = iter_rows(raw / "medqa/US/4_options/phrases_no_exclude_dev.jsonl", "medqa", "medqa_dev")
    return ["\n".join(m["content"] for m in r["messages"]) for r in rows if r["reject"] is None]


def planted_rows(benchmarks: dict[str, list], per_benchmark: int, short_items: int, seed: int,
                 fragment_items: int = 0, unrelated: list[str] | None = None):
    """(benchmark, item id, group, variant, text) for the planted rows: `per_benchmark` random
    items of every benchmark ("main"), and `short_items` MMLU clinical items whose question is
    under 13 words ("short"), each in every variant; `fragment_items` random items of any
    benchmark that are long enough, each in every partial form ("fragment")."""
    rng = random.Random(seed)
    planted = []
    for name, items in benchmarks.items():
        for item in rng.sample(items, min(per_benchmark, len(items))):
            planted += [(name, item.id, "main", v, t) for v, t in variants(item, rng).items()]
    short = [it for name in MMLU_CLINICAL for it in benchmarks.get(name, []) if len(it.question.split()) < NGRAM]
    for item in rng.sample(short, min(short_items, len(short))):
        planted += [(item.benchmark, item.id, "short", v, t) for v, t in variants(item, rng).items()]
    long = [it for its in benchmarks.values() for it in its if fragment_eligible(it)]
    for item in rng.sample(long, min(fragment_items, len(long))):
        planted += [(item.benchmark, item.id, "fragment", v, t)
                    for v, t in fragment_variants(item, rng, unrelated).items()]
    return planted, {"short": len(short), "fragment": len(long)}


def _time(fn, rows: list[str]) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    flags = fn(rows)
    return time.perf_counter() - wall, time.process_time() - cpu, flags


def run_sweep(items: list, dev: list[str], benchmarks: dict[str, list], seed: int, per_length: int) -> list[dict]:
    """Per run length: the share of MedQA dev questions flagged, and of middle runs of 13 to 24
    words (each length from `per_length` random long items) caught, by an index with that min_run."""
    from med42_ray.data.decontam import ContaminationIndex

    long = [it for its in benchmarks.values() for it in its if fragment_eligible(it)]
    long = random.Random(seed).sample(long, min(per_length, len(long)))
    short_runs = [middle_run(it.question, k) for k in range(NGRAM, FRAGMENT_WORDS) for it in long]
    rows = []
    for min_run in RUN_SWEEP:
        index = ContaminationIndex.build(items, n=NGRAM, min_run=min_run)
        flagged = lambda texts: sum(m is not None for i in range(0, len(texts), 1024)  # noqa: E731
                                    for m in index.find(texts[i:i + 1024]))
        rows.append({"min_run": min_run, "fp_medqa_dev": _ratio(flagged(dev), len(dev)),
                     "recall_runs_13_24": _ratio(flagged(short_runs), len(short_runs))})
    return rows


def bench_decontam(raw: Path, out: Path, repeats: int, per_benchmark: int, short_items: int, seed: int,
                   clean_rows_limit: int | None = None, names: list[str] | None = None,
                   fragment_items: int = 0) -> dict:
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.data.decontam import ContaminationIndex

    benchmarks = load_benchmarks(raw, names)
    items = [it for its in benchmarks.values() for it in its]
    print(f"\n=== decontamination: {len(items)} items from {len(benchmarks)} benchmarks", flush=True)

    wall, cpu = time.perf_counter(), time.process_time()
    ours = ContaminationIndex.build(items, n=NGRAM)
    ours_build = (time.perf_counter() - wall, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    janitor = JanitorDetector(NGRAM)
    for it in items:
        for part in item_parts(it):
            janitor.register(part)
    janitor_build = (time.perf_counter() - wall, time.process_time() - cpu)
    print(f"build (wall, CPU s): ours {ours_build} ({ours.stats['ngrams']} n-grams, {ours.stats['short_items']} short items), "
          f"Janitor {janitor_build} ({len(janitor.janitor.dirt_ngrams)} n-grams, "
          f"{'C++' if janitor.cpp else 'Python'} mode)", flush=True)

    clean = clean_rows(raw)[:clean_rows_limit]
    planted, pools = planted_rows(benchmarks, per_benchmark, short_items, seed, fragment_items, clean)
    dev = medqa_dev_rows(raw)[:clean_rows_limit]
    subsets = {"clean": clean, "planted": [p[4] for p in planted]}  # timed; dev rows are scored, not timed
    rows = clean + subsets["planted"]

    def ours_find(texts: list[str], batch: int = 1024) -> list[bool]:  # Ray Data's default batch size
        return [m is not None for i in range(0, len(texts), batch) for m in ours.find(texts[i:i + batch])]

    detectors = {"ours": ours_find, "janitor": janitor.find}
    # Clean and planted rows are timed apart: a hit costs more than a miss, and real training data
    # is nearly all misses, while the planted set is all hits.
    timings: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    flags: dict[str, list[bool]] = {}
    load_before = os.getloadavg()
    for rep in range(repeats):  # alternate, so neither always runs on a colder or warmer machine
        for name, fn in detectors.items():
            f = []
            for subset, texts in subsets.items():
                wall, cpu, sub_flags = _time(fn, texts)
                timings[name][subset].append((wall, cpu))
                f += sub_flags
            if name in flags and flags[name] != f:
                raise RuntimeError(f"{name} gave different answers on repeat {rep}")
            flags[name] = f
            cpu = sum(timings[name][s][-1][1] for s in subsets)
            print(f"  {name} pass {rep + 1}: {len(rows)} rows in {cpu:.2f} CPU s ({len(rows) / cpu:.0f} rows "
                  "per CPU-second)", flush=True)
    load_after = os.getloadavg()
    dev_flags = {name: fn(dev) for name, fn in detectors.items()}

    n_clean = len(clean)
    res: dict = {"items": len(items), "benchmarks": {k: len(v) for k, v in benchmarks.items()},
                 "rows_timed": len(rows), "clean_rows": n_clean, "planted_rows": len(planted),
                 "medqa_dev_rows": len(dev), "short_pool": pools["short"], "fragment_pool": pools["fragment"],
                 "fragment_items": fragment_items, "fragment_words": FRAGMENT_WORDS,
                 "janitor_mode": "C++" if janitor.cpp else "Python",
                 "janitor_ngrams": len(janitor.janitor.dirt_ngrams), "ours_stats": ours.stats,
                 "load_avg_before": load_before, "load_avg_after": load_after, "per_benchmark": per_benchmark, "short_items": short_items, "seed": seed, "repeats": repeats}
    for name in detectors:
        # Best of the passes: the machine may be shared, and other work only ever slows a pass down.
        best = {s: (min(w for w, _ in timings[name][s]), min(c for _, c in timings[name][s])) for s in subsets}
        f = flags[name]
        planted_f = f[n_clean:]
        by = lambda key: _recall(planted, planted_f, key)  # noqa: E731
        build = ours_build if name == "ours" else janitor_build
        res[name] = {
            "build_s": build[0], "build_cpu_s": build[1], "timings": timings[name],
            "rows_per_s": len(rows) / sum(w for w, _ in best.values()),
            "rows_per_cpu_s": len(rows) / sum(c for _, c in best.values()),
            **{f"{s}_rows_per_cpu_s": len(subsets[s]) / best[s][1] for s in subsets},
            "recall_all": _ratio(sum(planted_f), len(planted)),
            "recall_by_group": by(lambda p: p[2]),
            "recall_by_group_variant": by(lambda p: f"{p[2]}/{p[3]}"),
            "recall_main_by_benchmark": _recall([p for p in planted if p[2] == "main"],
                                                [x for p, x in zip(planted, planted_f) if p[2] == "main"],
                                                lambda p: p[0]),
            "fp_clean": _ratio(sum(f[:n_clean]), n_clean),
            "fp_medqa_dev": _ratio(sum(dev_flags[name]), len(dev)),
        }
    res["throughput_ratio"] = res["ours"]["rows_per_s"] / res["janitor"]["rows_per_s"]
    res["cpu_throughput_ratio"] = res["ours"]["rows_per_cpu_s"] / res["janitor"]["rows_per_cpu_s"]
    res["build_ratio"] = res["ours"]["build_cpu_s"] / res["janitor"]["build_cpu_s"]
    res["run_sweep"] = run_sweep(items, dev, benchmarks, seed, fragment_items)
    _write_examples(out, clean, dev, planted, flags, dev_flags, ours)
    return res


def _ratio(k: int, n: int) -> dict:
    return {"hits": k, "n": n, "rate": k / n if n else 0.0}


def _recall(planted, flags, key) -> dict:
    hits, totals = Counter(), Counter()
    for p, f in zip(planted, flags):
        totals[key(p)] += 1
        hits[key(p)] += bool(f)
    return {k: _ratio(hits[k], totals[k]) for k in totals}


def _write_examples(out: Path, clean, dev, planted, flags, dev_flags, ours) -> None:
    """Rows the two disagree on or flag as clean-set positives, for a person to read."""
    n_clean = len(clean)
    with (out / "decontam_examples.jsonl").open("w") as f:
        for i, text in enumerate(clean):
            if flags["ours"][i] or flags["janitor"][i]:
                m = ours.find([text])[0]
                f.write(json.dumps({"set": "clean", "ours": flags["ours"][i], "janitor": flags["janitor"][i],
                                    "ours_match": m and [m.benchmark, m.item_id, m.rule, m.part, m.text],
                                    "text": text[:600]}, ensure_ascii=False) + "\n")
        for i, text in enumerate(dev):
            if dev_flags["ours"][i] or dev_flags["janitor"][i]:
                m = ours.find([text])[0]
                f.write(json.dumps({"set": "medqa_dev", "ours": dev_flags["ours"][i],
                                    "janitor": dev_flags["janitor"][i],
                                    "ours_match": m and [m.benchmark, m.item_id, m.rule, m.part, m.text],
                                    "text": text[:600]}, ensure_ascii=False) + "\n")
        for j, p in enumerate(planted):
            o, jn = flags["ours"][n_clean + j], flags["janitor"][n_clean + j]
            if not (o and jn):
                f.write(json.dumps({"set": f"planted/{p[2]}/{p[3]}", "benchmark": p[0], "item": p[1], "ours": o,
                                    "janitor": jn, "text": p[4][:600]}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def machine() -> dict:
    import lm_eval
    import ray

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu or platform.machine(), "processor": platform.processor(), "machine": platform.machine(),
            "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "ray": ray.__version__, "lm_eval": lm_eval.__version__,
            "os": platform.platform()}


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% ({r['hits']}/{r['n']})"


def render(results: dict) -> str:
    m, pipe = results["machine"], results["pipeline"]
    one, big = pipe["runs"]["1x"], pipe["runs"][f"{pipe['scale']}x"]
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = [
        "## Prepare",
        "",
        f"Measured {results['date']} on {m['cores']} CPU cores ({m['cpu']}; `platform.processor()` = "
        f"{m['processor']!r}, {m['machine']}), {m['ram_gib']} GiB RAM, no GPU; Python {m['python']}, "
        f"Ray {m['ray']}, lm-eval {m['lm_eval']}. Reproduce from the repository root (about "
        f"{results['seconds'] / 60:.0f} min):",
        "",
        f"    {REPRODUCE}",
        "",
        "### `med42-ray prepare` throughput and memory",
        "",
        "Sources of `med42_ray/configs/public_raw.yaml` (MedAlpaca, Alpaca x2, Dolly, HEAD-QA train), "
        f"{', '.join(pipe.get('benchmarks') or ['every benchmark'])} indexed, tokenizer `{pipe['model']}`, "
        f"`run_prepare` on a local Ray cluster with 2 CPUs. {pipe['scale']}x = {pipe['scale']} copies "
        "of every source, each row suffixed \" (variant k)\". Time is the whole call (planning, index build, "
        "both Ray Data stages, reports). CPU is user + system seconds of the driver and every Ray process "
        "(raylet, GCS, workers) over that call: unlike wall time it does not grow when other work shares the "
        "machine (load average at start and end shown). Memory is the peak of the summed RSS of the same "
        "processes, sampled every 0.2 s. Each scale runs in a fresh process and Ray cluster.",
        "",
        "| input | rows read | contaminated | kept | seconds | rows/s | CPU s | rows per CPU-second | "
        "load avg | peak RSS, all processes (GiB) | peak RSS, driver (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in pipe["runs"].items():
        lines.append(f"| {label} | {r['rows']} | {r['contaminated']} | {r['kept']} | {r['seconds']:.1f} | "
                     f"{r['rows_per_s']:.0f} | {r['cpu_s']:.0f} | {r['rows_per_cpu_s']:.0f} | "
                     f"{r['load_avg'][0]:.1f}-{r['load_avg'][1]:.1f} | {gib(r['peak_rss'])} | "
                     f"{gib(r['peak_rss_driver'])} |")
    lines += [
        "",
        f"Scaling {pipe['scale']}x vs 1x (same run), for x{big['rows'] / one['rows']:.1f} the rows: "
        f"throughput x{pipe['throughput_ratio']:.2f} in rows/s ({big['rows_per_s']:.0f} vs "
        f"{one['rows_per_s']:.0f}; the extra rows went through at {pipe['marginal_rows_per_s']:.0f} rows/s), "
        f"x{pipe['cpu_throughput_ratio']:.2f} in rows per CPU-second; peak RSS x{pipe['peak_rss_ratio']:.2f}.",
        "",
    ]
    return "\n".join(lines) + "\n" + render_decontam(results)


DECONTAM_HEADING = "### Decontamination: ours vs lm-evaluation-harness `Janitor`"


def render_decontam(results: dict) -> str:
    """The decontamination subsection; `--parts decontam` rewrites only this one."""
    m, dec = results["machine"], results["decontam"]
    o, j = dec["ours"], dec["janitor"]
    stats = dec["ours_stats"]
    lines = [
        DECONTAM_HEADING,
        "",
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores), lm-eval {m['lm_eval']} "
        "(`--parts decontam` runs this part alone). "
        f"Both index the same {dec['items']} items of {len(dec['benchmarks'])} benchmarks (registry "
        f"`load_benchmarks`) as 13-grams: question, question + options, context. Janitor: "
        f"`lm_eval.decontamination.janitor.Janitor` as installed ({dec['janitor_mode']} mode: the optional "
        "`janitor_util` C++ extension is not part of the lm-eval wheel); a row counts as flagged when "
        "`clean()` would cut anything from it. Ours: `ContaminationIndex.find`, batches of 1024 rows, rules "
        f"coverage (>= {stats['min_coverage']:.0%} of a part's 13-grams), run (>= {stats['min_run']} consecutive "
        "words shared with one item part) and short_item. "
        f"Timed rows: {dec['clean_rows']} clean training rows (MedAlpaca, Alpaca, Dolly) + "
        f"{dec['planted_rows']} planted rows, one process, each subset timed apart, best of {dec['repeats']} "
        f"alternating passes (the "
        f"machine was shared: load average {dec['load_avg_before'][0]:.1f} before the passes, "
        f"{dec['load_avg_after'][0]:.1f} after; CPU time is the per-core figure, wall time is also shown). Planted "
        f"(seed {dec['seed']}): {dec['per_benchmark']} random items per benchmark (main) and "
        f"{dec['short_items']} MMLU clinical items with a question under 13 words (short, from "
        f"{dec['short_pool']}), each in 6 forms; and {dec['fragment_items']} items (fragment, from the "
        f"{dec['fragment_pool']} whose question's first 40% is at least {dec['fragment_words']} words) as partial "
        f"copies: the question's first 40%, 60%, 80%; a {dec['fragment_words']}-word run from its middle; that "
        "run between two unrelated training rows.",
        "",
        "| | ours | Janitor | ours / Janitor |",
        "|---|---:|---:|---:|",
        f"| index build, CPU s (wall s) | {o['build_cpu_s']:.2f} ({o['build_s']:.2f}) | "
        f"{j['build_cpu_s']:.2f} ({j['build_s']:.2f}) | {dec['build_ratio']:.2f} |",
        f"| per-core throughput, all {dec['rows_timed']} rows, rows per CPU-second | {o['rows_per_cpu_s']:.0f} | "
        f"{j['rows_per_cpu_s']:.0f} | {dec['cpu_throughput_ratio']:.2f} |",
        f"| - of which the {dec['clean_rows']} clean rows (nearly all real training data) | "
        f"{o['clean_rows_per_cpu_s']:.0f} | {j['clean_rows_per_cpu_s']:.0f} | "
        f"{o['clean_rows_per_cpu_s'] / j['clean_rows_per_cpu_s']:.2f} |",
        f"| - of which the {dec['planted_rows']} planted rows (every row a hit) | "
        f"{o['planted_rows_per_cpu_s']:.0f} | {j['planted_rows_per_cpu_s']:.0f} | "
        f"{o['planted_rows_per_cpu_s'] / j['planted_rows_per_cpu_s']:.2f} |",
        f"| throughput, all rows, 1 process, rows per wall-second | {o['rows_per_s']:.0f} | {j['rows_per_s']:.0f} | "
        f"{dec['throughput_ratio']:.2f} |",
        f"| recall, all planted rows | {_pct(o['recall_all'])} | {_pct(j['recall_all'])} | |",
    ]
    for group in o["recall_by_group"]:
        lines.append(f"| recall, {group} group | {_pct(o['recall_by_group'][group])} | "
                     f"{_pct(j['recall_by_group'][group])} | |")
    lines += [
        f"| false positives, clean training rows | {_pct(o['fp_clean'])} | {_pct(j['fp_clean'])} | |",
        f"| false positives, MedQA dev questions (hard negatives) | {_pct(o['fp_medqa_dev'])} | "
        f"{_pct(j['fp_medqa_dev'])} | |",
        "",
        "Recall by form of the planted item:",
        "",
        "| group / form | ours | Janitor |",
        "|---|---:|---:|",
    ]
    for key in o["recall_by_group_variant"]:
        lines.append(f"| {key} | {_pct(o['recall_by_group_variant'][key])} | "
                     f"{_pct(j['recall_by_group_variant'][key])} |")
    lines += ["", "Recall on the main group by benchmark (all forms):", "",
              "| benchmark | ours | Janitor |", "|---|---:|---:|"]
    for key in o["recall_main_by_benchmark"]:
        lines.append(f"| {key} | {_pct(o['recall_main_by_benchmark'][key])} | "
                     f"{_pct(j['recall_main_by_benchmark'][key])} |")
    lines += ["", "Why the run rule stops at 25 words: the same index with a shorter minimum run, on the MedQA dev "
              f"questions and on middle runs of 13 to 24 words (each length from {dec['fragment_items']} random items "
              "as long as the fragment group's). Exam "
              "vignettes share templated stretches (vital signs, lab panels, closing questions) with each other:",
              "", "| minimum run (words) | MedQA dev questions flagged | middle runs of 13-24 words caught |",
              "|---:|---:|---:|"]
    for row in dec["run_sweep"]:
        lines.append(f"| {row['min_run']} | {_pct(row['fp_medqa_dev'])} | {_pct(row['recall_runs_13_24'])} |")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    forms = o["recall_by_group_variant"]
    worst = min(forms, key=lambda k: forms[k]["rate"])
    lines += [
        "",
        "Targets (issue 13): recall >= 99% on all planted rows: "
        f"{met(o['recall_all']['rate'] >= 0.99)}; on every form: {met(forms[worst]['rate'] >= 0.99)} (lowest: "
        f"{worst}, {_pct(forms[worst])}); clean training rows flagged <= 0.5%: {met(o['fp_clean']['rate'] <= 0.005)}; "
        f"MedQA dev questions flagged <= 1%: {met(o['fp_medqa_dev']['rate'] <= 0.01)}; per-core throughput above "
        f"Janitor's: {met(dec['cpu_throughput_ratio'] > 1)} on all timed rows, "
        f"{met(o['clean_rows_per_cpu_s'] > j['clean_rows_per_cpu_s'])} on the clean rows.",
        "Rows flagged on the clean sets (with the rule and matched run) and planted rows either one missed are "
        "listed in `<out>/decontam_examples.jsonl`.",
        "",
    ]
    return "\n".join(lines)


def write_section(md: Path, section: str) -> None:
    """Replace (or append) the `## Prepare` section of BENCHMARKS.md, leaving the others alone."""
    text = md.read_text() if md.is_file() else "# Benchmarks\n\nPerformance of med42-ray, measured by the scripts in bench/.\n"
    start = re.search(r"^## Prepare[ \t]*$", text, flags=re.M)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = re.search(r"^## ", text[start.end():], flags=re.M)
        end = start.end() + nxt.start() if nxt else len(text)
        text = text[:start.start()] + section + ("\n" if nxt else "") + text[end:]
    md.write_text(text.rstrip("\n") + "\n")


def write_decontam_subsection(md: Path, subsection: str) -> None:
    """Replace the decontamination subsection of `## Prepare` in BENCHMARKS.md, nothing else."""
    text = md.read_text()
    start = text.find(DECONTAM_HEADING)
    if start < 0:
        raise SystemExit(f"{md}: no '{DECONTAM_HEADING}' to replace; run both parts to write the whole section")
    nxt = re.search(r"^##+ ", text[start + len(DECONTAM_HEADING):], flags=re.M)
    end = start + len(DECONTAM_HEADING) + nxt.start() if nxt else len(text)
    md.write_text(text[:start] + subsection.rstrip("\n") + "\n" + ("\n" if nxt else "") + text[end:].lstrip("\n"))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=Path("../shared/data/raw"), help="shared/data/raw layout")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_prepare"), help="scratch and results")
    ap.add_argument("--scale", type=int, default=10, help="the larger input, as a multiple of the sources")
    ap.add_argument("--parts", default="pipeline,decontam", help="comma list: pipeline, decontam")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per detector (the best one counts)")
    ap.add_argument("--per-benchmark", type=int, default=25, help="planted items per benchmark")
    ap.add_argument("--short-items", type=int, default=100, help="planted short MMLU items")
    ap.add_argument("--fragment-items", type=int, default=200,
                    help="items planted as partial copies (prefixes, middle runs), each in every partial form")
    ap.add_argument("--rows-per-source", type=int, help="prepare only the first N rows of each source (default: all)")
    ap.add_argument("--clean-rows", type=int, help="decontaminate only the first N clean and MedQA dev rows")
    ap.add_argument("--benchmarks", help="comma list of the benchmarks to index (default: every one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="tokenizer for prepare (default: public_raw.yaml's, the embedded tiny Llama)")
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--smoke", action="store_true",
                    help=f"tiny sizes ({', '.join(f'{k}={v}' for k, v in SMOKE_SIZES.items())}), output under "
                         "<out>/smoke, BENCHMARKS.md untouched: checks that the benchmark runs")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"pipeline", "decontam"}:
        ap.error(f"--parts: unknown part(s) {', '.join(sorted(parts - {'pipeline', 'decontam'}))}")
    args.parts = parts
    if not args.raw.is_dir():
        ap.error(f"--raw {args.raw}: not a directory")
    args.raw, args.out = args.raw.resolve(), args.out.resolve()
    if args.out == REPO or REPO in args.out.parents and not args.out.is_relative_to(REPO / "runs"):
        ap.error(f"--out {args.out}: scratch data must not go into the repository (use runs/ or elsewhere)")
    if args.smoke:
        vars(args).update(SMOKE_SIZES, out=args.out / "smoke")
    args.benchmarks = args.benchmarks.split(",") if args.benchmarks else None
    return args


def main() -> None:
    args = parse_args()
    raw, out, parts = args.raw, args.out, args.parts
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "command": " ".join(sys.argv)}
    # Decontamination first: one process, no Ray running beside it.
    if "decontam" in parts:
        results["decontam"] = bench_decontam(raw, out, args.repeats, args.per_benchmark, args.short_items, args.seed,
                                             args.clean_rows, args.benchmarks, args.fragment_items)
    if "pipeline" in parts:
        results["pipeline"] = bench_pipeline(raw, out, args.scale, args.model, args.rows_per_source, args.benchmarks)
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out / 'results.json'} ({results['seconds']:.0f}s)")
    if parts == {"decontam"}:
        publish(args, render_decontam(results), write_decontam_subsection, DECONTAM_HEADING, "subsection")
    if parts == {"pipeline", "decontam"}:
        publish(args, render(results), write_section, "## Prepare", "section")


def publish(args, section: str, write, heading: str, what: str) -> None:
    """Write `section` into BENCHMARKS.md with `write`; with --smoke only print what it would get."""
    if args.smoke:
        print(f"--smoke: {args.benchmarks_md} left alone; the {what} it would get:\n\n{section}")
    else:
        write(args.benchmarks_md, section)
        print(f"updated {args.benchmarks_md} ({heading})\n\n{section}")


if __name__ == "__main__":
    main()
