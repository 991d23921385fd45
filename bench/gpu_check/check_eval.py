"""Parts (d) and (e): our evaluator against lm-evaluation-harness's HF backend, and on a model split
between the GPU and the CPU.

Both sides score the same (context, continuation) pairs of the embedded sample's MedQA questions,
built as `med42-ray evaluate` builds them (benchmark registry, eval/prompts.py), with two protocols:
`harness` (one-token letters: the Scorer's one-pass path) and `full_text` (whole answer texts: its
prefix-cache path).

Timing: each side first scores the whole question list once untimed (its cold time is reported:
CUDA loads kernels lazily per process, cuBLAS and the caching allocator meet each new shape once,
and a real evaluation pays that once per actor, not per batch), then `TIMED_PASSES` more, timed;
the median counts. Model loading is excluded. lm-eval runs with its defaults, as users run it.

Agreement: lm-eval's default takes the log-softmax in the model's dtype; in bf16 its log-probabilities
of a random 1.1B model (all near -ln 32000 = -10.4) sit on bf16's grid of 1/16, so each token is off
by up to 1/32 the same way, and a 30-token answer by ~1 (the first GPU run: 1.23), and choices of
one question often tie exactly. The Scorer takes it in float32 (eval/scoring.py), so the reference is
lm-eval's own recipe with `softmax_dtype=float32` (one more, untimed, pass); the figures against its
default are reported beside it. Predictions are compared where the reference decides: a question
whose two best choices are within the log-likelihood tolerance is a tie, counted apart.
"""

from __future__ import annotations

import collections
import statistics
from pathlib import Path

import torch
from check_model import timed

BENCHMARK = "medqa_4options"
SAMPLE_BENCHMARKS = "pkg://sample/data/benchmarks"
PROTOCOLS = ("harness", "full_text")
TIMED_PASSES = 3
# Largest |log-likelihood difference| from the reference (lm-eval, log-softmax in float32) that
# passes: fp32 agrees to rounding; in bf16 the two sides pad and batch differently, so different
# kernels round differently (part (e), the same Scorer on two devices, measured 0.035 on the GPU).
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.1}


def medqa_requests(limit: int | None) -> dict[str, list]:
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.eval.prompts import build_request
    from med42_ray.paths import resolve_path

    items = load_benchmarks(resolve_path(SAMPLE_BENCHMARKS), [BENCHMARK])[BENCHMARK]
    items = [it for it in items if not it.needs_image][:limit]
    return {p: [build_request(it, p) for it in items] for p in PROTOCOLS}


def eval_batch_tokens() -> int:
    """`evaluate.max_batch_tokens`'s default, the budget the evaluation actors use."""
    from med42_ray.eval.config import EvalConfig

    return EvalConfig.model_fields["max_batch_tokens"].default


def timed_passes(fn, device: str) -> tuple[object, dict]:
    """One untimed pass, then TIMED_PASSES timed ones: the last value and the seconds (median, all, cold)."""
    value, cold = timed(fn, device)
    runs = []
    for _ in range(TIMED_PASSES):
        value, seconds = timed(fn, device)
        runs.append(seconds)
    return value, {"seconds": statistics.median(runs), "runs_s": runs, "cold_s": cold}


def score_ours(scorer, requests: dict[str, list], device: str) -> dict:
    """Per protocol: timing, per-question log-likelihoods, token counts and the Scorer paths used."""
    out = {}
    for protocol, reqs in requests.items():
        scored, timing = timed_passes(lambda: scorer.score(reqs), device)
        out[protocol] = {**timing, "lls": [s.loglikelihoods for s in scored],
                         "tokens": [s.num_tokens for s in scored],
                         "methods": dict(collections.Counter(s.method for s in scored))}
    return out


def score_lm_eval(model_dir: str, requests: dict[str, list], dtype: str, device: str, batch_size: int) -> dict:
    """Per protocol: lm-eval's timing and log-likelihoods with its defaults, and its log-likelihoods
    with the log-softmax in float32 (the reference; untimed)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, dtype=dtype, device=device, batch_size=batch_size)

    def run(reqs):
        flat = lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=(r.context, c), idx=j)
                                 for r in reqs for j, c in enumerate(r.continuations)], disable_tqdm=True)
        lls, i = [], 0
        for r in reqs:
            lls.append([float(ll) for ll, _ in flat[i:i + len(r.continuations)]])
            i += len(r.continuations)
        return lls

    out = {}
    for protocol, reqs in requests.items():
        lls, timing = timed_passes(lambda: run(reqs), device)
        out[protocol] = {**timing, "lls": lls}
    lm.softmax_dtype = torch.float32  # HFLM(softmax_dtype=...): what its _loglikelihood_tokens reads
    for protocol, reqs in requests.items():
        out[protocol]["lls_fp32_softmax"] = run(reqs)
    return out  # lm (and its GPU memory) goes with this frame


def agreement(ours: list[list[float]], reference: list[list[float]], tokens: list[list[int]], tolerance: float) -> dict:
    """Log-likelihood differences (the largest, and the largest per continuation token) and argmax
    agreement over the questions the reference decides: those whose two best choices are more than
    `tolerance` apart. The others are ties, listed with whether ours picked the same choice anyway."""
    def argmax(v):
        return max(range(len(v)), key=v.__getitem__)

    decided, disagree, ties = 0, [], []
    for q, (a, b) in enumerate(zip(ours, reference)):
        top = sorted(b, reverse=True)
        margin, same = top[0] - top[1], argmax(a) == argmax(b)
        if margin <= tolerance:
            ties.append({"question": q, "reference_margin": margin, "agree": same})
            continue
        decided += 1
        if not same:
            disagree.append({"question": q, "reference_margin": margin})
    diffs = [(abs(x - y), n) for a, b, t in zip(ours, reference, tokens) for x, y, n in zip(a, b, t)]
    return {"n": len(ours), "decided": decided, "agree": decided - len(disagree), "ties": ties,
            "disagreements": disagree, "max_ll_diff": max(d for d, _ in diffs),
            "max_ll_diff_per_token": max(d / n for d, n in diffs)}


def passed(row: dict, tolerance: float) -> bool:
    """Within tolerance of the reference, and the same prediction wherever the reference decides."""
    return row["max_ll_diff"] <= tolerance and row["agree"] == row["decided"]


def ours_vs_lm_eval(model_dir: str, limit: int | None, dtype: str, device: str, lm_eval_batch: int) -> dict:
    """Part (d). Returns the figures and our per-protocol log-likelihoods (part (e)'s reference)."""
    from med42_ray.eval.scoring import Scorer
    from med42_ray.eval.workers import load_model

    requests = medqa_requests(limit)
    tokenizer, model = load_model(model_dir, dtype=dtype, device=device)
    ours = score_ours(Scorer(model, tokenizer, max_batch_tokens=eval_batch_tokens()), requests, device)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    theirs = score_lm_eval(model_dir, requests, dtype, device, lm_eval_batch)
    tol = TOLERANCE[dtype]
    figures = {"dtype": dtype, "questions": len(requests[PROTOCOLS[0]]), "lm_eval_batch_size": lm_eval_batch,
               "our_max_batch_tokens": eval_batch_tokens(), "tolerance": tol, "timed_passes": TIMED_PASSES,
               "reference": "lm-eval HFLM, log-softmax in float32 (softmax_dtype); timed: its defaults",
               "protocols": {}}
    for p in PROTOCOLS:
        n, o, t = len(requests[p]), ours[p], theirs[p]
        default = agreement(o["lls"], t["lls"], o["tokens"], tol)
        row = {"ours_s": o["seconds"], "lm_eval_s": t["seconds"], "ours_runs_s": o["runs_s"],
               "lm_eval_runs_s": t["runs_s"], "ours_cold_s": o["cold_s"], "lm_eval_cold_s": t["cold_s"],
               "ours_questions_per_s": n / o["seconds"], "lm_eval_questions_per_s": n / t["seconds"],
               "methods": o["methods"], **agreement(o["lls"], t["lls_fp32_softmax"], o["tokens"], tol),
               "vs_lm_eval_default": {k: default[k] for k in ("max_ll_diff", "max_ll_diff_per_token", "agree",
                                                              "decided")} | {"ties": len(default["ties"])}}
        row["speedup"] = row["ours_questions_per_s"] / row["lm_eval_questions_per_s"]
        figures["protocols"][p] = row
    figures["status"] = "ok" if all(passed(r, tol) for r in figures["protocols"].values()) else "fail"
    return figures, {p: (ours[p]["lls"], ours[p]["tokens"]) for p in PROTOCOLS}


def model_bytes(model_dir: str) -> int:
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))


def split_device(model_dir: str, limit: int, single: dict[str, list], dtype: str, gpu_share: float) -> dict:
    """Part (e): the model loaded with `device_map` over cuda:0 and the CPU (cuda:0 capped at
    `gpu_share` of the weights, so the last layers and the output head land on the CPU, as the last
    GPU of a 70B actor holds them), scored by the Scorer and compared with the one-device scores."""
    from med42_ray.eval.scoring import Scorer
    from med42_ray.eval.workers import load_model

    cap = int(gpu_share * model_bytes(model_dir))
    tokenizer, model = load_model(model_dir, dtype=dtype, device="cuda", max_memory={0: cap, "cpu": "100GiB"})
    placed = dict(collections.Counter(str(d) for d in model.hf_device_map.values()))
    if "cpu" not in placed or len(placed) < 2:
        raise RuntimeError(f"the device map did not split the model (cuda:0 capped at {cap} bytes): {placed}")
    requests = medqa_requests(limit)
    ours = score_ours(Scorer(model, tokenizer, max_batch_tokens=eval_batch_tokens()), requests, "cuda")
    tol = TOLERANCE[dtype]
    figures = {"dtype": dtype, "questions": limit, "gpu_cap_bytes": cap, "modules_per_device": placed,
               "last_module_device": str(list(model.hf_device_map.values())[-1]), "tolerance": tol,
               "reference": "the Scorer on one device (part eval)", "protocols": {}}
    for p in PROTOCOLS:
        lls, tokens = single[p]
        figures["protocols"][p] = {"seconds": ours[p]["seconds"], "methods": ours[p]["methods"],
                                   **agreement(ours[p]["lls"], lls[:limit], tokens[:limit], tol)}
    figures["status"] = "ok" if all(passed(r, tol) for r in figures["protocols"].values()) else "fail"
    return figures
