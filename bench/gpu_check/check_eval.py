"""Parts (d) and (e): our evaluator against lm-evaluation-harness's HF backend, and on a model split
between the GPU and the CPU.

Both sides score the same (context, continuation) pairs of the embedded sample's MedQA questions,
built as `med42-ray evaluate` builds them (benchmark registry, eval/prompts.py), with two protocols:
`harness` (one-token letters: the Scorer's one-pass path) and `full_text` (whole answer texts: its
prefix-cache path). Timings exclude model loading and follow one warm-up batch on each side.
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from check_model import timed

BENCHMARK = "medqa_4options"
SAMPLE_BENCHMARKS = "pkg://sample/data/benchmarks"
PROTOCOLS = ("harness", "full_text")
WARMUP_QUESTIONS = 2
# Largest |log-likelihood difference| that passes: fp32 agrees to rounding; in bf16 the two sides
# pad and batch differently, so different kernels round differently.
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


def score_ours(scorer, requests: dict[str, list], device: str) -> dict:
    """Per protocol: seconds, per-question log-likelihoods and the Scorer paths used."""
    out = {}
    for protocol, reqs in requests.items():
        scorer.score(reqs[:WARMUP_QUESTIONS])
        scored, seconds = timed(lambda: scorer.score(reqs), device)
        out[protocol] = {"seconds": seconds, "lls": [s.loglikelihoods for s in scored],
                         "methods": dict(collections.Counter(s.method for s in scored))}
    return out


def score_lm_eval(model_dir: str, requests: dict[str, list], dtype: str, device: str, batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, dtype=dtype, device=device, batch_size=batch_size)
    out = {}
    for protocol, reqs in requests.items():
        def pairs(rs):
            return [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, c), idx=j)
                    for r in rs for j, c in enumerate(r.continuations)]

        lm.loglikelihood(pairs(reqs[:WARMUP_QUESTIONS]), disable_tqdm=True)
        flat, seconds = timed(lambda: lm.loglikelihood(pairs(reqs), disable_tqdm=True), device)
        lls, i = [], 0
        for r in reqs:
            lls.append([float(ll) for ll, _ in flat[i:i + len(r.continuations)]])
            i += len(r.continuations)
        out[protocol] = {"seconds": seconds, "lls": lls}
    return out  # lm (and its GPU memory) goes with this frame


def agreement(ours: list[list[float]], theirs: list[list[float]]) -> dict:
    """Argmax agreement, the largest |difference|, and for each disagreement the margin between the
    reference's two best choices (a margin under the difference is a tie broken by rounding)."""
    def argmax(v):
        return max(range(len(v)), key=v.__getitem__)

    disagree = []
    for q, (a, b) in enumerate(zip(ours, theirs)):
        if argmax(a) != argmax(b):
            top = sorted(b, reverse=True)
            disagree.append({"question": q, "reference_margin": top[0] - top[1]})
    return {"n": len(ours), "agree": len(ours) - len(disagree),
            "max_ll_diff": max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b)),
            "disagreements": disagree}


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
    figures = {"dtype": dtype, "questions": len(requests[PROTOCOLS[0]]), "lm_eval_batch_size": lm_eval_batch,
               "our_max_batch_tokens": eval_batch_tokens(), "tolerance": TOLERANCE[dtype], "protocols": {}}
    for p in PROTOCOLS:
        n = len(requests[p])
        row = {"ours_s": ours[p]["seconds"], "lm_eval_s": theirs[p]["seconds"],
               "ours_questions_per_s": n / ours[p]["seconds"], "lm_eval_questions_per_s": n / theirs[p]["seconds"],
               "methods": ours[p]["methods"], **agreement(ours[p]["lls"], theirs[p]["lls"])}
        row["speedup"] = row["ours_questions_per_s"] / row["lm_eval_questions_per_s"]
        figures["protocols"][p] = row
    figures["status"] = "ok" if all(r["max_ll_diff"] <= TOLERANCE[dtype] for r in figures["protocols"].values()) \
        else "fail"
    return figures, {p: ours[p]["lls"] for p in PROTOCOLS}


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
    figures = {"dtype": dtype, "questions": limit, "gpu_cap_bytes": cap, "modules_per_device": placed,
               "last_module_device": str(list(model.hf_device_map.values())[-1]),
               "tolerance": TOLERANCE[dtype], "protocols": {}}
    for p in PROTOCOLS:
        figures["protocols"][p] = {"seconds": ours[p]["seconds"], "methods": ours[p]["methods"],
                                   **agreement(ours[p]["lls"], single[p][:limit])}
    ok = all(r["max_ll_diff"] <= TOLERANCE[dtype] for r in figures["protocols"].values())
    figures["status"] = "ok" if ok else "fail"
    return figures
