"""The cost records and the report's cost section (issue 16 item 1), without Ray: the files a run
writes are built here by the same functions the run uses, the report is read back. The real
measurements, end to end, are checked in test_peft_methods' [full, lora, dora] pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from med42_ray.eval.cost import first_questions, variants, with_rates
from med42_ray.layout import RunLayout, TrainDir
from med42_ray.report import build_report
from med42_ray.report.inputs import ReportError
from med42_ray.train import cost as train_cost
from med42_ray.train.plan import export_bytes, make_plan, weight_bytes


def test_plan_sizes_the_exports_from_the_parameters_it_counts():
    assert export_bytes(1000, 1000, "full", 2) == {"model": 2000}
    assert export_bytes(1100, 100, "lora", 4) == {"adapter": 400, "merged": 4000}
    assert export_bytes(1100, 100, "lora", 4, merged=False) == {"adapter": 400}
    assert weight_bytes(7, 2) == 14


def test_plan_has_no_time_without_a_peak_flop_rate(tiny_model_dir):
    plan = make_plan(tiny_model_dir, "full", gpus=1, tokens=1000, mfu=0.4, peak_tflops=0.0, seq_len=128)
    assert plan.wall_time_s == 0.0 and plan.tokens_per_s == 0.0


def test_peak_memory_is_this_process_s_own():
    import resource

    peak = train_cost.peak_memory(torch.device("cpu"))
    assert peak["device_bytes"] is None  # CPU: no device of its own
    assert peak["host_bytes"] == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > 50 * 2**20
    assert train_cost.gather_peak_memory(torch.device("cpu"), 1)[0]["host_bytes"] >= peak["host_bytes"]


def test_tree_bytes_sums_every_file_below(tmp_path):
    from pyarrow import fs

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 1000)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"0" * 24)
    assert train_cost.tree_bytes(fs.LocalFileSystem(), str(tmp_path / "a")) == 1024
    assert train_cost.tree_bytes(fs.LocalFileSystem(), str(tmp_path / "a" / "x.bin")) == 1000


def _req(text):
    from med42_ray.eval.prompts import Request

    return Request(benchmark="b", item_id=text, context=text, continuations=(" A", " B"), gold=0,
                   choice_texts=("A", "B"))


def test_cost_sample_takes_every_benchmark_in_turn_and_each_prompt_once():
    reqs = {"medqa": [(None, _req(k)) for k in ("m1", "m2", "m3")],
            "pubmedqa": [(None, _req(k)) for k in ("p1", "m1", "p2")]}
    assert [r.context for r in first_questions(reqs, 4)] == ["m1", "p1", "m2", "m3"]
    assert [r.context for r in first_questions(reqs, 99)] == ["m1", "p1", "m2", "m3", "p2"]


def test_an_adapter_is_measured_both_ways_and_rates_follow_the_clock():
    assert variants(None) == ("model",) and variants("/a") == ("unmerged", "merged")
    f = with_rates({"questions": 32, "seconds": 4.0})
    assert f["questions_per_s"] == 8.0 and f["ms_per_question"] == 125.0


# ---- the report, from the files a run writes -----------------------------------------------------

def _results(acc: float, n: int = 10, cost: dict | None = None) -> dict:
    model = {"protocol": "harness", "benchmarks": {"medqa_4options": {"acc": acc, "acc_stderr": 0.1, "n": n}}}
    return {"protocol": "harness", "models": {"m": model}, **({"inference_cost": {"m": cost}} if cost else {})}


def _figures(qps: float, params: int, dtype: str = "float32", device: int | None = None) -> dict:
    return {"questions": 32, "seconds": 32 / qps, "questions_per_s": qps, "ms_per_question": 1000 / qps,
            "load_s": 2.0, "device": "cpu", "dtype": dtype, "params": params, "peak_device_bytes": device,
            "peak_host_bytes": 600 * 2**20}


def _plan(checkpoint: int, exports: dict) -> dict:
    return {"mfu": 0.4, "peak_tflops": None, "tokens": 5000, "wall_time_s": None, "accelerator_hours": None,
            "device_bytes_per_worker": 40 * 2**20, "host_bytes_per_worker": 0, "checkpoint_bytes": checkpoint,
            "export_bytes": exports}


def _train_run(root: Path, name: str, wall: float, hosts: list[int], ckpt: int, exports: dict, plan_exports: dict):
    out = TrainDir(root / "train" / name)
    out.root.mkdir(parents=True)
    out.metrics.write_text(json.dumps({"step": 1, "loss": 2.0, "step_time_s": 1.0}) + "\n")
    out.cost.write_text(json.dumps({"wall_time_s": wall, "workers": len(hosts), "accelerator": "CPU",
                                    "per_worker": 0.5, "accelerator_hours": wall * len(hosts) * 0.5 / 3600,
                                    "checkpoint_bytes": ckpt, "export_bytes": exports,
                                    "plan": _plan(ckpt // 2, plan_exports)}))
    out.worker_memory.write_text(json.dumps({"workers": [{"device": "cpu", "device_bytes": None, "host_bytes": h}
                                                         for h in hosts]}))


@pytest.fixture
def costed_run(tmp_path):
    layout = RunLayout(tmp_path)
    for label, acc, cost in (("base", 0.3, {"model": _figures(40.0, 5_000_000)}),
                             ("full", 0.6, {"model": _figures(41.0, 5_000_000)}),
                             ("lora", 0.5, {"unmerged": _figures(30.0, 5_100_000), "merged": _figures(40.0, 5_000_000)})):
        layout.eval(label).root.mkdir(parents=True)
        layout.eval(label).summary.write_text(json.dumps(_results(acc, cost=cost)))
    _train_run(tmp_path, "full", 3600.0, [2**30, 3 * 2**30], 12 * 2**20, {"model": 20 * 2**20},
               {"model": 20 * 2**20})
    _train_run(tmp_path, "lora", 1800.0, [2**30, 2**30], 2 * 2**20, {"adapter": 900 * 1024, "merged": 20 * 2**20},
               {"adapter": 600 * 1024, "merged": 20 * 2**20})
    return tmp_path


def test_report_puts_measured_cost_beside_the_plan(costed_run):
    md = build_report(costed_run).read_text()
    report = json.loads((costed_run / "report" / "report.json").read_text())
    full = report["cost"]["training"]["full"]
    assert full["accelerator_hours"] == 1.0 and full["peak_host_bytes"] == 3 * 2**30  # the larger worker
    assert len(full["peak_memory_per_worker"]) == 2
    section = md[md.index("## Cost"):md.index("## Decontamination")]
    assert "| full | 1h 00m 00s (plan —) | 1 (plan —) | n/a on CPU (plan 40.0 MiB) | 3.0 GiB (plan offloads 0 B) " \
           "| 12.0 MiB (plan 6.0 MiB, ×2) | model 20.0 MiB (plan 20.0 MiB, ×1) |" in section
    assert "adapter 900.0 KiB (plan 600.0 KiB, ×1.5); merged 20.0 MiB (plan 20.0 MiB, ×1)" in section
    assert "| CPU-hours |" in section
    lora = report["cost"]["inference"]["lora"]
    assert lora["unmerged"]["plan_weight_bytes"] == 4 * 5_100_000 and lora["merged"]["questions_per_s"] == 40.0
    assert "| lora | adapter (peft) | 30.00 | 33.3 |" in section and "| lora | merged | 40.00 | 25.0 |" in section
    assert "| base | — | 40.00 | 25.0 | n/a on CPU | 600.0 MiB | 19.1 MiB (float32) | 2s |" in section


def test_accuracy_against_hours_puts_base_at_zero_and_is_drawn(costed_run):
    build_report(costed_run)
    points = json.loads((costed_run / "report" / "report.json").read_text())["cost"]["accuracy_vs_hours"]
    assert [(p["model"], p["accelerator_hours"], round(p["acc"])) for p in points] == [
        ("base", 0.0, 30), ("full", 1.0, 60), ("lora", 0.5, 50)]
    png = costed_run / "report" / "cost.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![headline pooled accuracy against fine-tuning accelerator-hours](cost.png)" in \
        (costed_run / "report" / "report.md").read_text()


def test_a_run_without_cost_records_says_so(tmp_path):
    RunLayout(tmp_path).eval("base").root.mkdir(parents=True)
    RunLayout(tmp_path).eval("base").summary.write_text(json.dumps(_results(0.3)))
    md = build_report(tmp_path).read_text()
    assert "No cost records in this run" in md
    assert not (tmp_path / "report" / "cost.png").exists()


def test_a_malformed_cost_file_is_named_with_its_field(costed_run):
    path = TrainDir(costed_run / "train" / "lora").cost
    bad = json.loads(path.read_text())
    bad["wall_time_s"] = -1
    path.write_text(json.dumps(bad))
    with pytest.raises(ReportError, match=r"train/lora/cost.json: field 'wall_time_s'"):
        build_report(costed_run)
    bad_eval = RunLayout(costed_run).eval("base").summary
    data = json.loads(bad_eval.read_text())
    del data["inference_cost"]["m"]["model"]["params"]
    bad_eval.write_text(json.dumps(data))
    path.write_text(json.dumps({**bad, "wall_time_s": 1.0}))
    with pytest.raises(ReportError, match=r"eval/base/results.json: field 'inference_cost.m.model.params'"):
        build_report(costed_run)


def test_the_pipeline_prints_each_strategy_s_training_cost(costed_run):
    from med42_ray.pipeline.cli import cost_lines

    build_report(costed_run)
    assert cost_lines(json.loads((costed_run / "report" / "report.json").read_text())) == [
        "training cost: full 1h 00m 00s (1 CPU-hours), lora 30m 00s (0.5 CPU-hours); "
        "inference cost and the plan's estimates in the report"]
