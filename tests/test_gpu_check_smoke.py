"""The GPU check (bench/gpu_check) still runs: its CPU smoke mode, as a subprocess with a Ray cluster
of its own, on the embedded tiny model in fp32; the figures it measured are checked. About 5 minutes
on 2 shared cores (prepare ~1 min, each Ray Train run 1-2 min, most of it start-up)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "bench" / "gpu_check" / "check.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("gpu_check_smoke")
    # No bundle: this machine's own packages (a carry folder built for the GPU machine may be here)
    proc = subprocess.run([sys.executable, str(CHECK), "--smoke", "--out", str(out), "--work", str(out / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"check.py --smoke failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout, out


def test_every_part_ran(smoke):
    results, stdout, out = smoke
    statuses = {name: r["status"] for name, r in results.items() if name != "meta"}
    assert statuses == {"environment": "ok", "matmul": "ok", "model": "ok", "prepare": "ok", "packed_loss": "ok",
                        "train_full": "ok", "train_lora": "ok", "eval": "ok", "eval_split": "skipped"}
    assert "CUDA" in results["eval_split"]["reason"]  # split between cuda:0 and the CPU: nothing to split here
    assert "| (b) full, ZeRO-3, Ray Train | ok" in stdout  # the table, printed last
    assert (out / "GPU.md").read_text().startswith("## GPU\n")


def test_packed_losses_equal_per_document(smoke):
    kernels = smoke[0]["packed_loss"]["kernels"]
    for kernel in ("eager", "sdpa"):
        for mb in ("mb1", "mb2"):
            r = kernels[kernel][mb]
            assert r["ok"] and r["max_abs_diff"] < 1e-4 and r["documents"] > r["rows"], (kernel, mb, r)
            # the control (documents attending to each other) is far from the per-document losses
            assert r["leak_max_abs_diff"] > 100 * max(r["max_abs_diff"], 1e-7), (kernel, mb, r)
            assert r["fwd_bwd_tokens_per_s"] > 0
        assert kernels[kernel]["mb2"]["row_tokens"][1] < kernels[kernel]["mb2"]["row_tokens"][0]  # padded row
    assert kernels["flash_attention_2"]["status"] == "skipped" and kernels["flex_attention"]["status"] == "skipped"


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_training_steps(smoke, strategy):
    r, matmul = smoke[0][f"train_{strategy}"], smoke[0]["matmul"]
    assert r["steps"] == 3 and r["timed_steps"] == 2 and r["tokens_per_s"] > 0
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    assert r["mfu_datasheet"] is None  # no GPU, no datasheet peak
    assert r["mfu_measured_matmul"] == pytest.approx(r["model_flops_per_s"] / matmul["flops_per_s"])
    assert r["peak_memory_bytes"] > 0 and r["memory_kind"] == "worker peak RSS"
    assert r["zero_stage"] == (3 if strategy == "full" else 2)
    assert (r["trainable_params"] == r["total_params"]) == (strategy == "full")


def test_evaluator_agrees_with_lm_eval(smoke):
    from transformers import AutoTokenizer

    from med42_ray.model import resolve_model

    r = smoke[0]["eval"]
    assert r["dtype"] == "float32" and r["questions"] == 6
    # One pass scores one-token continuations; the embedded tokenizer (512 tokens) spells " B" and
    # " D" in two, so its lettered questions take the prefix cache too.
    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
    one_token = all(len(tok.tokenize(f" {letter}")) == 1 for letter in "ABCD")
    for protocol, method in (("harness", "one_pass" if one_token else "prefix_cache"), ("full_text", "prefix_cache")):
        x = r["protocols"][protocol]
        # fp32: no ties (choices within 1e-4), lm-eval's default log-softmax is float32 as well
        assert x["agree"] == x["decided"] == x["n"] == 6 and not x["ties"] and x["max_ll_diff"] < 1e-4, (protocol, x)
        assert x["max_ll_diff_per_token"] <= x["max_ll_diff"] and x["vs_lm_eval_default"]["max_ll_diff"] < 1e-4
        assert x["methods"] == {method: 6}
        assert x["ours_questions_per_s"] > 0 and x["lm_eval_questions_per_s"] > 0
        assert len(x["ours_runs_s"]) == len(x["lm_eval_runs_s"]) == r["timed_passes"] and x["ours_cold_s"] > 0


def test_write_benchmarks_replaces_the_section(smoke, tmp_path):
    results_json = smoke[2] / "gpu_check.json"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## GPU\n\nold text\n\n## Training\n\nkept\n")
    for _ in range(2):  # idempotent: the second write replaces the first
        subprocess.run([sys.executable, str(CHECK), "--write-benchmarks", str(md), "--results", str(results_json)],
                       cwd=REPO, check=True, capture_output=True, timeout=60)
    text = md.read_text()
    assert text.count("## GPU\n") == 1 and "old text" not in text and text.endswith("## Training\n\nkept\n")
    assert "CPU smoke run" in text and "python3 bench/gpu_check/check.py --bundle .gpu_bundle" in text


def test_a_part_that_raised_is_reported_with_its_exception():
    """The first GPU run wrote "packed_loss: outside tolerance" for a kernel that raised."""
    sys.path.insert(0, str(CHECK.parent))
    try:
        import check_report
    finally:
        sys.path.remove(str(CHECK.parent))
    error = "InductorError: LoweringException: NoValidChoicesError: No choices to select.\n  target: flex_attention"
    ok = {"status": "ok", "mb1": {"max_abs_diff": 0.01, "leak_max_abs_diff": 2.0, "fwd_bwd_tokens_per_s": None},
          "mb2": {"max_abs_diff": 0.01, "leak_max_abs_diff": 3.0, "fwd_bwd_tokens_per_s": 1e4}}
    results = {"meta": {"date": "today"}, "environment": {"status": "ok", "python": "3.12", "cpus": 2},
               "packed_loss": {"status": "error", "dtype": "bfloat16", "error": f"flex_attention: {error}",
                               "kernels": {"sdpa": ok, "flex_attention": {"status": "error", "error": error}}},
               "eval": {"status": "error", "error": "RuntimeError: CUDA out of memory\nmore"}}
    text = check_report.markdown(results)
    assert "- packed_loss: error: flex_attention: InductorError: LoweringException: NoValidChoicesError" in text
    assert "- eval: error: RuntimeError: CUDA out of memory\n" in text and "outside tolerance" not in text
    assert "sdpa ok: mb1: max 1.00e-02" in text  # what the part measured before the error stays in the table
    results["packed_loss"] = {"status": "fail", "dtype": "bfloat16", "failed": "sdpa", "kernels": {"sdpa": ok}}
    assert "- packed_loss: outside tolerance: sdpa" in check_report.markdown(results)
