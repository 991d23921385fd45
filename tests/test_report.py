"""The per-run report: its tables must say exactly what the run's files say.

The run directory is generated here in the formats the stages write (results.json through
med42_ray.eval.results' own metric functions from 0/1 sample rows; metrics.jsonl, run_info.json and
manifest.json with the fields of a real 40-step run on the embedded sample), because runs/ is not
in the repository. Expected cells are computed from those files with this test's own arithmetic and
its own Markdown table parser, not with the report's code.
"""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from med42_ray.eval import results as res
from med42_ray.report import ReportError, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAMPLE_DIR = "/work/main/med42_ray/sample/data/benchmarks"
STEPS = ("step1", "step2ck", "step3")
# (questions, correct answers for base, full, lora): base and full are a real run on the embedded
# sample (runs/default); lora and the USMLE per-step split are made up in the same range.
COUNTS = {
    "medqa_4options": (40, 8, 9, 10), "medmcqa": (40, 9, 14, 11), "pubmedqa": (30, 15, 15, 14),
    "mmlu_anatomy": (12, 2, 1, 3), "mmlu_clinical_knowledge": (20, 5, 6, 5),
    "mmlu_college_biology": (20, 4, 5, 6), "mmlu_college_medicine": (20, 4, 9, 7),
    "mmlu_medical_genetics": (20, 5, 6, 5), "mmlu_professional_medicine": (20, 4, 4, 5),
    "usmle_sample_exam": (30, 5, 6, 7), "headqa_en": (30, 7, 9, 8),
    "usmle_self_assessment": (27, 6, 8, None),  # lora not scored on it: its cell must read "—"
}
EXPECTED_LABELS = [
    "medqa_4options", "medmcqa", "pubmedqa", "mmlu_anatomy", "mmlu_clinical_knowledge", "mmlu_college_biology",
    "mmlu_college_medicine", "mmlu_medical_genetics", "mmlu_professional_medicine",
    "mmlu_clinical (6-subject mean)", "usmle_sample_exam", "usmle_sample_exam step1", "usmle_sample_exam step2ck",
    "usmle_sample_exam step3", "headqa_en", "usmle_self_assessment", "usmle_self_assessment step1",
    "usmle_self_assessment step2ck", "usmle_self_assessment step3",
]
# Parameter counts and FLOPs/token of the embedded tiny Llama (strategies.trainable_parameters and
# metrics.flops_per_token on the real model; LoRA r=8 on all seven projections).
RUN_INFO = {
    "full": {"trainable_params": 5130496, "total_params": 5130496, "zero_stage": 3, "flops_per_token": 31176192.0,
             "lr": 0.001, "lora": None},
    "lora": {"trainable_params": 156160, "total_params": 5286656, "zero_stage": 2, "flops_per_token": 23818240.0,
             "lr": 0.0002, "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": [
                 "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}},
}
# prepare's manifest of the same sample run: (read, kept, contaminated {benchmark: rows}, sampled_out)
SOURCES = {
    "medical_flashcards": (670, 668, {"usmle_sample_exam": 1, "mmlu_anatomy": 1}, 0),
    "medical_mcq": (337, 334, {"mmlu_professional_medicine": 1, "headqa_en": 1, "medqa_4options": 1}, 0),
    "medical_chat": (169, 167, {"pubmedqa": 1, "medmcqa": 1}, 0),
    "general_dolly": (241, 114, {}, 127),
    # two rows more than the real run, so a benchmark is hit by two sources and by 2 rows of one
    "general_chat": (132, 61, {"mmlu_college_biology": 1, "medqa_4options": 2}, 68),
}


# -- run directory generator ------------------------------------------------------------------------

def model_results(column: int, label: str, protocol: str = "harness", fewer: int = 0) -> dict:
    """`fewer`: that many correct answers fewer per benchmark (another protocol's results)."""
    per_benchmark, samples = {}, {}
    for bench, (n, *correct) in COUNTS.items():
        k = correct[column]
        if k is None:
            continue
        k = max(0, k - fewer)
        rows = [{"acc": float(i < k), "acc_norm": float(i < k), **({"step": STEPS[i % 3]} if "usmle" in bench else {})}
                for i in range(n)]
        samples[bench] = rows
        per_benchmark[bench] = res.benchmark_metrics(rows, 0, 10 * n)
    return {"model": f"runs/x/train/{label}/model", "adapter": None, "protocol": protocol,
            "benchmarks": per_benchmark, "aggregates": res.aggregate(per_benchmark, samples)}


def eval_summary(label: str, model: dict, protocols=("harness",)) -> dict:
    """What `run_evaluate` writes at evaluate.output_dir (the pipeline: <run_dir>/eval/<label>), or
    at its protocols/<protocol>/ for the protocols after the first (the headline)."""
    return {"protocol": model["protocol"],
            "protocol_description": "lm-evaluation-harness 0.4.x zero-shot templates; log-likelihood of ' ' + choice",
            "benchmarks_dir": SAMPLE_DIR, "limit": None, "seconds": 25.59, "questions": 309,
            "distinct_prompts": 309, "protocols_in_pass": list(protocols), "questions_per_second": 22.04,
            "skipped_benchmarks": [], "notes": res.NOTES, "models": {label: model}}


def metrics_rows(strategy: str, steps: int) -> list[dict]:
    rows, seen = [], 0
    for step in range(1, steps + 1):
        tokens = 900 + (37 * step) % 124
        seen += tokens
        decay = 6.0 if strategy == "full" else 14.0  # LoRA learns more slowly
        loss = 2.0 + 6.3 * math.exp(-step / decay) + 0.05 * math.sin(step)
        step_time = 15.7 if step == 1 else (1.05 if strategy == "full" else 0.85) + 0.01 * (step % 5)
        rows.append({"loss": loss, "grad_norm": 4.0 / step, "tokens": tokens, "loss_tokens": tokens // 4,
                     "non_padding_fraction": 1.0, "step": step, "epoch": 0, "lr": 0.001 if step > 1 else 0.0,
                     "tokens_per_s": tokens / step_time, "step_time_s": step_time, "data_wait_s": 0.01,
                     "compute_s": step_time - 0.01, "tokens_seen": seen, "mfu": None})
    return rows


def manifest() -> dict:
    sources = {name: {"format": "alpaca", "path": f"pkg://sample/data/train/{name}.jsonl", "weight": 1.0,
                      "domain": "medical", "read": read, "rejected": {}, "duplicates": 0, "contaminated": contam,
                      "sampled_out": out, "kept": kept, "kept_copies": kept, "repeated_copies": 0,
                      "tokens": 10 * kept, "trainable_tokens": 3 * kept}
               for name, (read, kept, contam, out) in SOURCES.items()}
    return {"invariant": "read = sum(rejected) + duplicates + sum(contaminated) + sampled_out + kept, per source",
            "seq_len": 512, "template": "med42", "tokenizer": "tiny-llama", "seed": 42, "shards": [],
            "sequences": 292, "tokens": 144893, "packing_efficiency": 0.9692, "sources": sources,
            "benchmarks": {"dir": SAMPLE_DIR, "items": {b: n for b, (n, *_) in COUNTS.items()},
                           "index": {"items": 309, "n": 13}}}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_run_dir(root: Path, evals=("base", "full", "lora"), strategies=("full", "lora"), steps=12,
                 protocols=("harness",)) -> Path:
    """`protocols`: the headline, then the also-scored ones, laid out as the pipeline's evaluate writes
    them (each protocol after the headline: 2 fewer correct answers per benchmark than the one before)."""
    for label in evals:
        for i, protocol in enumerate(protocols):
            model = model_results(("base", "full", "lora").index(label), label, protocol, fewer=2 * i)
            out = root / "eval" / label / ("" if i == 0 else f"protocols/{protocol}")
            write_json(out / "results.json", eval_summary(label, model, protocols))
            write_json(out / label / "results.json", model)  # evaluate's per-model copy
    for s in strategies:
        d = root / "train" / s
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_rows(s, steps)))
        write_json(d / "run_info.json", {"strategy": s, "model": "tiny-llama", **RUN_INFO[s], "world_size": 2,
                                         "seq_len": 512, "peak_flops_per_worker": None, "total_steps": steps,
                                         "epochs": 1})
    write_json(root / "prepared" / "manifest.json", manifest())
    return root


# -- reading the report back ------------------------------------------------------------------------

def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in a Markdown text: [header, row, ...], cells stripped, separator dropped."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if re.fullmatch(r"\|(-+:?\|)+", line.strip()):
                continue
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    return tables


def table_with(tables, first_header: str, contains: str):
    [t] = [t for t in tables if t[0][0] == first_header and contains in t[0]]
    return t


def fmt(acc: float, se: float | None) -> str:
    return f"{round(100 * acc, 1):.1f}" + ("" if se is None or math.isnan(se) else f" ± {round(100 * se, 1):.1f}")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = make_run_dir(tmp_path_factory.mktemp("run"))
    md_path = build_report(run_dir)
    return run_dir, md_path


def test_accuracy_table_equals_each_results_json(report):
    run_dir, md_path = report
    assert md_path == run_dir / "report" / "report.md"
    table = table_with(markdown_tables(md_path.read_text()), "benchmark", "Med42-70B (published)")
    assert table[0] == ["benchmark", "base", "full", "lora", "Med42-70B (published)"]
    assert [r[0] for r in table[1:]] == EXPECTED_LABELS
    cells = {r[0]: r[1:] for r in table[1:]}
    for col, label in enumerate(("base", "full", "lora")):
        model = json.loads((run_dir / "eval" / label / "results.json").read_text())["models"][label]
        for bench, score in model["benchmarks"].items():
            assert cells[bench][col] == fmt(score["acc"], score["acc_stderr"]), (label, bench)
        subjects = [s for s in model["benchmarks"] if s.startswith("mmlu_")]
        mmlu_mean = statistics.fmean(model["benchmarks"][s]["acc"] for s in subjects)
        assert cells["mmlu_clinical (6-subject mean)"][col] == fmt(mmlu_mean, None)
        for exam in ("usmle_sample_exam", "usmle_self_assessment"):
            by_step = model["aggregates"].get(f"{exam}_by_step")
            for step in STEPS:
                want = "—" if by_step is None else fmt(by_step[step]["acc"], by_step[step]["acc_stderr"])
                assert cells[f"{exam} {step}"][col] == want
    assert cells["usmle_self_assessment"][2] == "—"  # lora was not scored on it
    assert cells["medqa_4options"][0] == "20.0 ± 6.4"  # 8/40, sd 0.405 / sqrt(40)
    for bench, pub in res.MED42_70B_PUBLISHED.items():
        assert cells[bench][3] == f"{pub:.1f}"
    assert cells["pubmedqa"][3] == "—"


def test_usmle_headline_is_the_mean_of_the_usmle_sets(report):
    run_dir, md_path = report
    line = next(ln for ln in md_path.read_text().splitlines() if ln.startswith("**USMLE headline**"))
    shown = dict(re.findall(r"(\w+) \*\*([\d.]+)%\*\*", line))
    # base: (5/30 + 6/27) / 2, full: (6/30 + 8/27) / 2, lora: usmle_sample_exam only
    assert shown == {"base": f"{100 * (5 / 30 + 6 / 27) / 2:.1f}", "full": f"{100 * (6 / 30 + 8 / 27) / 2:.1f}",
                     "lora": f"{100 * 7 / 30:.1f}"}
    assert "lora **23.3%** (usmle_sample_exam only)" in line
    assert "Med42-70B 71.8% published" in line and "72%" in line  # mean of 72.0 and 71.7


def test_report_json_holds_the_results_numbers(report):
    run_dir, _ = report
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert data["columns"] == ["base", "full", "lora"]
    rows = {r["benchmark"]: r for r in data["rows"]}
    assert list(rows) == EXPECTED_LABELS
    for label in data["columns"]:
        model = json.loads((run_dir / "eval" / label / "results.json").read_text())["models"][label]
        for bench, score in model["benchmarks"].items():
            assert rows[bench]["values"][label] == pytest.approx(100 * score["acc"])
            assert rows[bench]["stderr"][label] == pytest.approx(100 * score["acc_stderr"])
        assert rows["mmlu_clinical (6-subject mean)"]["values"][label] == pytest.approx(
            100 * model["aggregates"]["mmlu_clinical"]["acc"])
    assert rows["usmle_self_assessment"]["values"]["lora"] is None
    assert rows["medmcqa"]["published"] == res.MED42_70B_PUBLISHED["medmcqa"]


def test_strategy_table_comes_from_run_info_and_metrics(report):
    run_dir, md_path = report
    table = table_with(markdown_tables(md_path.read_text()), "strategy", "median MFU")
    header, rows = table[0], {r[0]: dict(zip(table[0], r)) for r in table[1:]}
    assert list(rows) == ["full", "lora"]
    for s, row in rows.items():
        info = json.loads((run_dir / "train" / s / "run_info.json").read_text())
        metrics = [json.loads(ln) for ln in (run_dir / "train" / s / "metrics.jsonl").read_text().splitlines()]
        assert row["trainable params"] == f"{info['trainable_params']:,}"
        assert row["total params"] == f"{info['total_params']:,}"
        assert row["% of total"] == f"{100 * info['trainable_params'] / info['total_params']:.2f}%"
        assert row["workers"] == "2" and row["ZeRO stage"] == str(info["zero_stage"])
        assert row["steps"] == "12 / 12"
        assert row["final loss"] == f"{metrics[-1]['loss']:.4f}"
        steady = sorted(r["tokens_per_s"] for r in metrics[1:])  # first step is warm-up
        assert len(steady) == 11 and row["median tokens/s"] == f"{steady[5]:,.0f}"
        assert row["median MFU"] == "n/a on CPU"
        total = sum(r["step_time_s"] for r in metrics)
        assert row["train time"] == f"{round(total)}s"
    assert rows["lora"]["% of total"] == "2.95%"
    assert header[0] == "strategy"


def test_contamination_totals_equal_the_manifest(report):
    run_dir, md_path = report
    m = json.loads((run_dir / "prepared" / "manifest.json").read_text())
    tables = markdown_tables(md_path.read_text())
    removed = {r[0]: r for r in table_with(tables, "benchmark", "training rows removed")[1:]}
    expected = {}
    for src, c in m["sources"].items():
        for bench, n in c["contaminated"].items():
            expected.setdefault(bench, {})[src] = n
    for bench, items in m["benchmarks"]["items"].items():
        assert removed[bench][1] == str(items)
        assert removed[bench][2] == str(sum(expected.get(bench, {}).values()))
        for src, n in expected.get(bench, {}).items():
            assert f"{src} ({n})" in removed[bench][3]
    total = sum(sum(c["contaminated"].values()) for c in m["sources"].values())
    assert total == 10 and removed["**total**"][2] == f"**{total}**"
    assert removed["medqa_4options"][2:] == ["3", "medical_mcq (1), general_chat (2)"]
    sources = {r[0]: r for r in table_with(tables, "source", "sampled_out")[1:]}
    assert sources["general_dolly"][1:] == ["241", "114", "0", "0", "0", "127", "✓"]
    data = json.loads((run_dir / "report" / "report.json").read_text())["contamination"]
    assert data["total_removed"] == total
    assert data["benchmarks"]["medqa_4options"]["sources"] == {"medical_mcq": 1, "general_chat": 2}


def test_pngs_exist_and_html_embeds_them(report):
    run_dir, _ = report
    out = run_dir / "report"
    html = (out / "report.html").read_text()
    embedded = [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]
    for name in ("comparison.png", "loss_curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        assert png in embedded
    assert len(embedded) == 2
    assert not re.search(r'src="(?!data:)', html)  # nothing fetched from elsewhere
    assert "<td class=\"num\">20.0 ± 6.4</td>" in html


def test_only_the_columns_that_exist(tmp_path):
    run_dir = make_run_dir(tmp_path, evals=("base", "lora"), strategies=("lora",), steps=3)
    # a stage-by-stage run's per-model results.json (no "models" wrapper) reads the same
    lora = run_dir / "eval" / "lora"
    lora.joinpath("results.json").write_text(lora.joinpath("lora", "results.json").read_text())
    md = build_report(run_dir).read_text()
    table = table_with(markdown_tables(md), "benchmark", "Med42-70B (published)")
    assert table[0] == ["benchmark", "base", "lora", "Med42-70B (published)"]
    assert {r[0]: r[2] for r in table[1:]}["medqa_4options"] == fmt(10 / 40, math.sqrt(0.25 * 0.75 * 40 / 39) / math.sqrt(40))
    assert [r[0] for r in table_with(markdown_tables(md), "strategy", "median MFU")[1:]] == ["lora"]
    assert (run_dir / "report" / "loss_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_missing_and_malformed_inputs_name_the_file_and_field(tmp_path):
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "eval" / "base" / "results.json"))):
        build_report(tmp_path)

    run_dir = make_run_dir(tmp_path / "run", strategies=("full",), steps=3)
    full = run_dir / "eval" / "full" / "results.json"
    good = full.read_text()
    full.write_text(good[:-20])
    with pytest.raises(ReportError, match=re.escape(str(full)) + ": not valid JSON"):
        build_report(run_dir)
    data = json.loads(good)
    data["models"]["full"]["benchmarks"]["medmcqa"]["acc"] = "high"
    full.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=re.escape(f"{full}: field 'models.full.benchmarks.medmcqa.acc'")):
        build_report(run_dir)
    data["models"]["full"]["benchmarks"]["medmcqa"]["acc"] = 0.3  # of 40 questions: 12 correct, fine
    del data["models"]["full"]["benchmarks"]["pubmedqa"]["n"]  # the pooled accuracy counts questions
    full.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=re.escape(f"{full}: field 'models.full.benchmarks.pubmedqa.n'")):
        build_report(run_dir)
    data["models"]["full"]["benchmarks"]["pubmedqa"]["n"] = 30
    data["models"]["full"]["benchmarks"]["medmcqa"]["acc"] = 0.33  # 13.2 of 40: not per-question 0/1
    full.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=re.escape(f"{full}: field 'models.full.benchmarks.medmcqa': ")
                       + ".*not a whole number"):
        build_report(run_dir)
    full.write_text(good)

    metrics = run_dir / "train" / "full" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    row = json.loads(lines[1])
    del row["loss"]
    metrics.write_text("\n".join([lines[0], json.dumps(row), lines[2]]) + "\n")
    with pytest.raises(ReportError, match=re.escape(f"{metrics} line 2: field 'loss'")):
        build_report(run_dir)


def test_cli_regenerates_and_prints_the_path(tmp_path, capsys):
    from med42_ray.cli import main

    run_dir = make_run_dir(tmp_path / "run", evals=("base",), strategies=(), steps=1)
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report" / "report.md")
    assert "No training metrics found" in (run_dir / "report" / "report.md").read_text()
    assert main(["report", "--run-dir", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_usmle_step_rows_only_when_items_carry_steps():
    """The sample's USMLE items have no step: no all-"—" step rows; real ones get all three."""
    def model(with_steps: bool) -> dict:
        rows = [{"acc": float(i < 4), "acc_norm": float(i < 4), "step": STEPS[i % 3] if with_steps else "unknown"}
                for i in range(9)]
        per = {"usmle_sample_exam": res.benchmark_metrics(rows, 0, 376)}
        return {"benchmarks": per, "aggregates": res.aggregate(per, {"usmle_sample_exam": rows})}

    labels = [label for label, *_ in res.comparison_rows({"base": model(False), "full": model(False)})]
    assert labels == ["usmle_sample_exam"]
    rows = res.comparison_rows({"base": model(False), "full": model(True)})
    assert [label.strip() for label, *_ in rows] == ["usmle_sample_exam"] + [f"usmle_sample_exam {s}" for s in STEPS]
    assert rows[1][1] == [None, pytest.approx(100 * 2 / 3)]  # step1 holds items 0, 3, 6: two of them correct


# -- pooled accuracy ---------------------------------------------------------------------------------

def hand_made(**benchmarks: tuple[int, int]) -> dict:
    """One model's results from (correct, questions) per benchmark, through evaluate's own metrics."""
    return {"benchmarks": {b: res.benchmark_metrics([{"acc": float(i < k), "acc_norm": 0.0} for i in range(n)], 0, n)
                           for b, (k, n) in benchmarks.items()}}


def binomial(correct: int, n: int) -> tuple[float, float]:
    p = correct / n
    return p, math.sqrt(p * (1 - p) / n)


def test_pooled_accuracy_counts_every_question_once():
    from med42_ray.report.sections import pooled_accuracy

    models = {"base": hand_made(a=(1, 2), b=(30, 100)), "full": hand_made(a=(2, 2), b=(60, 100)),
              "lora": hand_made(a=(1, 2), b=(55, 100))}
    block = pooled_accuracy(models, "full_text", headline=True)
    assert (block["protocol"], block["headline"], block["benchmarks"]) == ("full_text", True, ["a", "b"])
    base = block["models"]["base"]
    assert (base["correct"], base["n"]) == (31, 102)
    assert base["acc"] == pytest.approx(31 / 102) != pytest.approx((0.5 + 0.3) / 2)  # not the benchmarks' mean
    assert base["se"] == pytest.approx(math.sqrt(31 / 102 * 71 / 102 / 102))
    assert list(block["differences"]) == ["full-base", "lora-base", "full-lora"]
    for key, (a, b) in {"full-base": (62, 31), "lora-base": (56, 31), "full-lora": (62, 56)}.items():
        (pa, sa), (pb, sb) = binomial(a, 102), binomial(b, 102)
        d = block["differences"][key]
        assert d["diff"] == pytest.approx(pa - pb) and d["se"] == pytest.approx(math.sqrt(sa ** 2 + sb ** 2))
        assert d["z"] == pytest.approx((pa - pb) / math.sqrt(sa ** 2 + sb ** 2)) and d["same_benchmarks"]
    assert block["differences"]["lora-base"]["z"] == pytest.approx(3.653, abs=1e-3)  # 0.2451 / 0.0671
    assert block["ordering"] == {"checks": [
        {"claim": "full > base by >= 2 se", "difference": "full-base", "holds": True},
        {"claim": "lora > base by >= 2 se", "difference": "lora-base", "holds": True},
        {"claim": "full >= lora", "difference": "full-lora", "holds": True}], "holds": True, "complete": True}


@pytest.mark.parametrize(("models", "holds", "verdict"), [
    # full below 2 errors above base (0.10 / 0.070 = 1.43 errors)
    ({"base": (40, 100), "full": (50, 100), "lora": (49, 100)}, [False, False, True], False),
    # LoRA above full: the paper's full >= LoRA fails though both beat the base
    ({"base": (20, 100), "full": (50, 100), "lora": (51, 100)}, [True, True, False], False),
    # equal pools (62/102 each, split differently over the benchmarks): full >= LoRA holds
    ({"base": (31, 102), "full": (62, 102), "lora": (62, 102)}, [True, True, True], True),
    # a pipeline with strategies [full]: only its check is made
    ({"base": (20, 100), "full": (50, 100)}, [True, None, None], True),
    # no base column: only full >= lora can be checked
    ({"full": (20, 100), "lora": (50, 100)}, [None, None, False], False),
    # columns of another name (a standalone evaluate): nothing to check
    ({"tiny": (20, 100), "tiny+adapter": (50, 100)}, [None, None, None], None),
])
def test_ordering_verdict(models, holds, verdict):
    from med42_ray.report.sections import pooled_accuracy

    def split(name, k, n):  # lora's 62 of 102 fall differently over the two benchmarks than full's
        first = min(k, 2) if name != "lora" else 0
        return hand_made(a=(first, 2), b=(k - first, n - 2))

    block = pooled_accuracy({name: split(name, k, n) for name, (k, n) in models.items()}, "harness", headline=False)
    assert [c["holds"] for c in block["ordering"]["checks"]] == holds
    assert block["ordering"]["holds"] is verdict
    assert block["ordering"]["complete"] is (None not in holds)
    assert set(block["differences"]) == {c["difference"] for c, h in zip(block["ordering"]["checks"], holds)
                                         if h is not None}


def pooled_from_counts(column: int, fewer: int = 0) -> tuple[int, int]:
    """(correct, questions) over every benchmark the column has, straight from COUNTS."""
    pairs = [(max(0, c[column] - fewer), n) for n, *c in COUNTS.values() if c[column] is not None]
    return sum(k for k, _ in pairs), sum(n for _, n in pairs)


def test_pooled_section_comes_first_with_the_results_numbers(report):
    run_dir, md_path = report
    md = md_path.read_text()
    assert md.index("## Pooled accuracy") < md.index("## Zero-shot accuracy")
    assert "Headline protocol `harness`" in md and "### Protocol `harness` (headline)" in md
    tables = markdown_tables(md)
    shown = {r[0]: r[1:] for r in table_with(tables, "model", "correct / questions")[1:]}
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert data["headline_protocol"] == "harness" and list(data["pooled"]) == ["harness"]
    block = data["pooled"]["harness"]
    for column, label in enumerate(("base", "full", "lora")):
        k, n = pooled_from_counts(column)
        p, se = binomial(k, n)
        assert block["models"][label] == {**block["models"][label], "correct": k, "n": n,
                                          "acc": pytest.approx(p), "se": pytest.approx(se)}
        assert shown[label] == [f"{k:,} / {n:,}", fmt(p, se)]
    assert pooled_from_counts(0) == (74, 309) and pooled_from_counts(2) == (81, 282)  # lora: no usmle_self_assessment
    diffs = {r[0]: r[1:] for r in table_with(tables, "difference", "size (standard errors)")[1:]}
    (pf, sf), (pb, sb) = binomial(92, 309), binomial(74, 309)
    z = (pf - pb) / math.hypot(sf, sb)
    assert diffs["full − base"] == [f"+{100 * (pf - pb):.1f} ± {100 * math.hypot(sf, sb):.1f}", f"+{z:.1f}"]
    assert block["differences"]["full-base"]["z"] == pytest.approx(z) and z < 2
    assert "lora − base (different benchmarks)" in diffs and "lora lacks `usmle_self_assessment`" in md
    assert block["ordering"]["holds"] is False
    assert "The paper's ordering **does not hold**: full > base by ≥ 2 se ✗" in md
    assert block["results_files"] == {c: str(run_dir / "eval" / c / "results.json") for c in ("base", "full", "lora")}
    html = (run_dir / "report" / "report.html").read_text()
    assert "<h3>Protocol <code>harness</code> (headline)</h3>" in html


def test_two_protocols_headline_first_each_from_its_own_files(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", strategies=(), protocols=("full_text", "harness"))
    # a protocol left by an earlier evaluate but not scored by this one is not read
    stale = run_dir / "eval" / "base" / "protocols" / "med42_chat" / "results.json"
    write_json(stale, eval_summary("base", model_results(0, "base", "med42_chat"), ("harness", "med42_chat")))
    md = build_report(run_dir).read_text()
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert data["headline_protocol"] == "full_text" and list(data["pooled"]) == ["full_text", "harness"]
    assert data["protocols"] == {"base": "full_text", "full": "full_text", "lora": "full_text"}
    assert "Headline protocol `full_text` (the accuracy table below); also scored: `harness`." in md
    assert md.index("### Protocol `full_text` (headline)") < md.index("### Protocol `harness`") < md.index(
        "## Zero-shot accuracy")
    assert "### Protocol `harness` (headline)" not in md
    for protocol, fewer in (("full_text", 0), ("harness", 2)):
        block = data["pooled"][protocol]
        assert block["headline"] is (protocol == "full_text")
        for column, label in enumerate(("base", "full", "lora")):
            assert (block["models"][label]["correct"], block["models"][label]["n"]) == pooled_from_counts(column, fewer)
        sub = "" if protocol == "full_text" else "protocols/harness"
        assert block["results_files"] == {c: str(run_dir / "eval" / c / sub / "results.json")
                                          for c in ("base", "full", "lora")}
    # the accuracy table stays the headline protocol's
    cells = {r[0]: r[1:] for r in table_with(markdown_tables(md), "benchmark", "Med42-70B (published)")[1:]}
    assert cells["medqa_4options"][0] == "20.0 ± 6.4"

    missing = run_dir / "eval" / "full" / "protocols" / "harness" / "results.json"
    missing.unlink()
    with pytest.raises(ReportError, match=re.escape(f"{missing}: file not found")):
        build_report(run_dir)


def test_a_standalone_evaluate_in_the_run_dir_reports_its_other_protocols(tmp_path):
    """`med42-ray evaluate --also-protocols harness` into <run_dir>/eval: the columns are its
    per-model results, the other protocol's under eval/protocols/harness/; no base/full/lora
    columns, so no difference and no verdict."""
    root = tmp_path / "run" / "eval"
    for i, protocol in enumerate(("full_text", "harness")):
        model = model_results(1, "tiny", protocol, fewer=2 * i)
        out = root if i == 0 else root / "protocols" / protocol
        write_json(out / "results.json", eval_summary("tiny", model, ("full_text", "harness")))
        write_json(out / "tiny" / "results.json", model)
    md = build_report(tmp_path / "run").read_text()
    data = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert data["columns"] == ["tiny"] and list(data["pooled"]) == ["full_text", "harness"]
    for protocol, fewer in (("full_text", 0), ("harness", 2)):
        block = data["pooled"][protocol]
        assert (block["models"]["tiny"]["correct"], block["models"]["tiny"]["n"]) == pooled_from_counts(1, fewer)
        assert block["differences"] == {} and block["ordering"]["holds"] is None
    assert data["pooled"]["harness"]["results_files"] == {"tiny": str(root / "protocols" / "harness" / "results.json")}
    assert "full ≥ lora) **cannot be checked**: it needs two of the columns base, full, lora." in md
