"""`--permutations k`: options rotated, gold moved with them, and the robustness metrics; one
evaluate run with permutations and few-shot together."""

from __future__ import annotations

import json

import pytest
from test_eval import _eval_config, make_tiny_llama, write_small_root

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.eval.permute import (
    permutable,
    permutation_metrics,
    permuted_items,
    rotation,
)
from med42_ray.eval.prompts import build_request

ITEM = BenchmarkItem("medqa_4options", "q1", "Which?", ("w", "x", "y", "z"), 2)


def test_rotations_move_gold_with_its_option():
    perms = permuted_items(ITEM, 3)
    assert [j for j, _, _ in perms] == [1, 2, 3]
    assert len({p.choices for _, _, p in perms} | {ITEM.choices}) == 4  # all distinct from each other and the original
    for j, order, p in perms:
        assert p.choices == tuple(ITEM.choices[i] for i in order)
        assert p.choices[p.gold] == "y" and p.id == f"q1~perm{j}"
    # with k = n - 1 the gold option is shown under every letter once
    assert sorted([ITEM.gold] + [p.gold for _, _, p in perms]) == [0, 1, 2, 3]
    assert rotation(4, 1) == (3, 0, 1, 2)


def test_permuted_prompt_lists_options_in_the_new_order():
    _, _, p = permuted_items(ITEM, 1)[0]
    assert "A. z\nB. w\nC. x\nD. y\n" in build_request(p, "harness").context
    assert not permutable("pubmedqa") and not permutable("headqa_en") and permutable("mmlu_anatomy")


def test_metrics_count_consistency_by_option_not_letter():
    original = [{"id": "a", "prediction": 2, "acc": 1.0}, {"id": "b", "prediction": 0, "acc": 0.0}]
    permuted = [  # a: picks option 2 in both orders (right); b: picks option 0, then option 1
        {"id_original": "a", "permutation": 1, "original_choice": 2, "acc": 1.0},
        {"id_original": "a", "permutation": 2, "original_choice": 2, "acc": 1.0},
        {"id_original": "b", "permutation": 1, "original_choice": 0, "acc": 0.0},
        {"id_original": "b", "permutation": 2, "original_choice": 1, "acc": 1.0}]
    m = permutation_metrics(original, permuted)
    assert m == {"k": 2, "acc_permuted": 0.75, "acc_all_orders": 0.5, "consistency": 0.5, "n": 2}


def test_permutation_limit_in_config():
    from pydantic import ValidationError

    from med42_ray.eval.config import EvalConfig

    assert EvalConfig(permutations=3).permutations == 3
    with pytest.raises(ValidationError, match="permutations"):
        EvalConfig(permutations=4)
    with pytest.raises(ValidationError, match="med42_chat"):
        EvalConfig(num_fewshot=1, also_protocols=["med42_chat"])


def test_evaluate_with_permutations_and_fewshot(ray_cluster, raw_dir, tmp_path):
    """MedQA (dev as its few-shot pool) and MMLU anatomy (its dev) 2-shot, options rotated twice;
    PubMedQA and HEAD-QA have no pool here and are skipped, said so in results.json."""
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.benchmarks.formats import MEDQA_DEV, mmlu_test_file
    from med42_ray.eval.fewshot import draw_examples, fewshot_pool
    from med42_ray.eval.run import run_evaluate
    from med42_ray.eval.scoring import Scorer
    from med42_ray.eval.workers import load_model

    root = write_small_root(raw_dir, tmp_path / "root", n=4)
    (root / MEDQA_DEV).write_text("".join((raw_dir / MEDQA_DEV).read_text().splitlines(keepends=True)[:20]))
    dev = mmlu_test_file("anatomy", "dev")
    (root / dev).parent.mkdir(parents=True)
    (root / dev).write_text((raw_dir / dev).read_text())
    items = load_benchmarks(root)
    model = make_tiny_llama(tmp_path / "model", [it.question for v in items.values() for it in v], 8192)
    cfg = _eval_config(tmp_path, root, [{"name": "tiny", "path": str(model)}], num_actors=1,
                       num_fewshot=2, permutations=2)
    summary = run_evaluate(cfg)

    assert summary["fewshot"]["pools"]["medqa_4options"]["split"] == "dev"
    assert summary["fewshot"]["pools"]["mmlu_anatomy"]["sampler"] == "first_n"
    assert set(summary["fewshot"]["skipped"]) == {"pubmedqa", "headqa_en"}
    result = summary["models"]["tiny"]["benchmarks"]
    assert set(result) == {"medqa_4options", "mmlu_anatomy"}
    samples = tmp_path / "eval" / "tiny" / "samples"
    for bench in result:
        rows = [json.loads(x) for x in (samples / f"{bench}.permuted.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * 4 and {r["permutation"] for r in rows} == {1, 2}
        original = [json.loads(x) for x in (samples / f"{bench}.jsonl").read_text().splitlines()]
        assert result[bench]["permutations"] == permutation_metrics(original, rows)

    # the permuted rows' numbers are the Scorer's on the permuted, few-shot prompts
    tokenizer, m = load_model(str(model), dtype="float32", device="cpu")
    medqa = items["medqa_4options"]
    shots = draw_examples(fewshot_pool(root, "medqa_4options"), medqa, 2)
    reqs = [build_request(p, "harness", examples=shots[it.id]) for it in medqa for _, _, p in permuted_items(it, 2)]
    expected = [s.loglikelihoods for s in Scorer(m, tokenizer).score(reqs)]
    rows = [json.loads(x) for x in (samples / "medqa_4options.permuted.jsonl").read_text().splitlines()]
    for row, exp in zip(rows, expected):
        assert row["loglikelihoods"] == pytest.approx(exp, abs=1e-4)
    assert "Options rotated 2 way(s)" in (tmp_path / "eval" / "comparison.md").read_text()
    from med42_ray.report import build_report  # and the run's report shows the same numbers

    md = build_report(tmp_path).read_text()
    robustness = json.loads((tmp_path / "report" / "report.json").read_text())["robustness"]
    assert {r["benchmark"]: r["cells"]["tiny"]["consistency"] for r in robustness["rows"]} == {
        b: v["permutations"]["consistency"] for b, v in result.items()}
    assert "## Robustness to option order" in md and "| **pooled** |" in md
    assert "2-shot accuracy" in (tmp_path / "eval" / "comparison.md").read_text()


def test_report_pools_permutation_figures_over_questions():
    from med42_ray.eval.results import permutation_markdown, permutation_table

    def bench(acc, perm, consistency, n):
        return {"acc": acc, "permutations": {"k": 2, "acc_permuted": perm, "acc_all_orders": perm / 2,
                                             "consistency": consistency, "n": n}}

    models = {"base": {"benchmarks": {"medqa_4options": bench(0.5, 0.25, 0.5, 30), "pubmedqa": {"acc": 0.6}}},
              "full": {"benchmarks": {"medqa_4options": bench(0.6, 0.5, 0.75, 30),
                                      "mmlu_anatomy": bench(0.7, 0.7, 1.0, 10)}}}
    table = permutation_table(models)
    assert [r["benchmark"] for r in table["rows"]] == ["medqa_4options", "mmlu_anatomy"]
    assert table["rows"][1]["cells"]["base"] is None
    assert table["pooled"]["base"] == {"acc": 0.5, "acc_permuted": 0.25, "acc_all_orders": 0.125,
                                       "consistency": 0.5, "n": 30}
    full = table["pooled"]["full"]
    assert full["n"] == 40 and full["consistency"] == pytest.approx((0.75 * 30 + 1.0 * 10) / 40)
    assert "| **pooled** | 50.0 / 25.0 / 50.0 | 62.5 / 55.0 / 81.2 |" in permutation_markdown(models)
    assert permutation_table({"base": {"benchmarks": {"pubmedqa": {"acc": 0.6}}}}) is None
