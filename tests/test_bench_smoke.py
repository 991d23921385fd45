"""The bench/ scripts still run: each one's reproduction command from BENCHMARKS.md, plus --smoke
(tiny sizes, same code and same baseline comparison), as a subprocess; both sides' figures are
checked and BENCHMARKS.md is left as it was. Each script starts Ray clusters of its own: about
3 minutes for the three on 2 cores."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
REAL_DATA = "../shared/data/raw"  # how BENCHMARKS.md's commands name the real public data


def reproduce_command(script: str) -> list[str]:
    """BENCHMARKS.md's reproduction command for bench/<script>, as arguments."""
    found = re.findall(rf"python (bench/{re.escape(script)}(?: [^`\n]*)?)", BENCHMARKS_MD.read_text())
    assert len(found) == 1, f"BENCHMARKS.md should give one reproduction command for bench/{script}: {found}"
    return shlex.split(found[0])


def run_smoke(script: str, request, tmp_path: Path) -> dict:
    """Run the reproduction command with --smoke, its data and output redirected; its results.json."""
    args = reproduce_command(script)
    if REAL_DATA in args:
        raw = str(request.getfixturevalue("raw_dir"))  # skips when the real data is absent
        args = [raw if a == REAL_DATA else a for a in args]
    if "--out" in args:  # scratch goes to tmp_path, never into the checkout's runs/
        args[args.index("--out") + 1] = str(tmp_path)
    else:
        args += ["--out", str(tmp_path)]
    before = BENCHMARKS_MD.read_text()
    proc = subprocess.run([sys.executable, *args, "--smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{shlex.join(args)} --smoke:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert BENCHMARKS_MD.read_text() == before, "--smoke changed BENCHMARKS.md"
    return json.loads((tmp_path / "smoke" / "results.json").read_text())


def test_bench_prepare_smoke(request, tmp_path):
    pytest.importorskip("lm_eval")  # the Janitor baseline
    r = run_smoke("bench_prepare.py", request, tmp_path)
    one, two = r["pipeline"]["runs"]["1x"], r["pipeline"]["runs"]["2x"]
    assert two["rows"] == 2 * one["rows"] > 0 and two["kept"] > one["kept"] > 0
    assert all(run[k] > 0 for run in (one, two) for k in ("rows_per_s", "rows_per_cpu_s", "peak_rss"))
    dec = r["decontam"]
    assert dec["planted_rows"] > 0 and dec["clean_rows"] > 0
    for name in ("ours", "janitor"):
        assert dec[name]["rows_per_cpu_s"] > 0 and dec[name]["build_cpu_s"] > 0, name
    assert dec["ours"]["recall_all"]["rate"] >= dec["janitor"]["recall_all"]["rate"] > 0


def test_bench_eval_smoke(request, tmp_path):
    pytest.importorskip("lm_eval")
    r = run_smoke("bench_eval.py", request, tmp_path)  # the packaged sample's MedQA questions
    assert r["n"] == 8 and r["agree"] == r["n"]
    for side in ("lm_eval", "ours"):
        assert r[side]["questions_per_s"] > 0 and r[side]["cpu_s"] > 0, side
    assert r["ours"]["acc"] == r["lm_eval"]["acc"] and r["max_ll_diff"] < 1e-4  # one-token letters


def test_bench_train_smoke(request, tmp_path):
    r = run_smoke("bench_train.py", request, tmp_path)
    ours = r["ours"]["ours"]  # --smoke: only ours with the demo's settings
    assert list(r["ours"]) == ["ours"]
    for row in (ours, r["plain"], r["padded"], r["longest"]):
        assert row["steps"] == 4 and row["tokens_per_s"] > 0, row["name"]
    # two packed rows per micro-batch: the shorter is padded to the longer (rows fill ~92% of seq_len)
    # (the baselines' batches are a few random documents each here: either may pad more)
    assert ours["non_padding"] > 0.9 and 0 < r["padded"]["non_padding"] <= 1 and 0 < r["longest"]["non_padding"] <= 1
    assert ours["loss_last"] < ours["loss_first"]
    assert 0 < ours["first_step_s"] < ours["wall_s"] and ours["wall_over_compute"] >= 1
    assert r["plain"]["wall_over_compute"] >= 1


def test_bench_eval_modes_smoke(request, tmp_path):
    r = run_smoke("bench_eval_modes.py", request, tmp_path)  # 4 questions of each benchmark of the packaged sample
    modes = r["modes"]
    assert list(modes) == ["zero_shot_first", "fewshot_3", "cot", "permutations_3", "zero_shot_last"]
    for key, m in modes.items():
        assert m["questions_per_s"] > 0 and m["cpu_s"] > 0 and m["ratio"] > 0 and 0 <= m["acc"] <= 1, key
    first, last = modes["zero_shot_first"], modes["zero_shot_last"]
    assert first["questions"] == last["questions"] == 8 and r["zero_shot_runs_agree"]
    assert r["baseline"]["wall_s"] == pytest.approx((first["wall_s"] + last["wall_s"]) / 2)
    pools = modes["fewshot_3"]["fewshot"]["pools"]  # the sample has MedQA dev, no MMLU dev split
    assert all(p["split"] in ("train", "dev") for p in pools.values())
    assert modes["fewshot_3"]["questions"] == 4 * len(pools) > 0
    assert modes["cot"]["forward_requests"] == 8 and 0 <= modes["cot"]["unparsed"] <= 1
    perm = modes["permutations_3"]  # both benchmarks list lettered options: 3 rotations each
    assert perm["questions"] == 8 and perm["permuted_questions"] == 24 and perm["forward_requests"] == 32
