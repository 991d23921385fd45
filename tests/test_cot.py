"""Chain-of-thought evaluation (`evaluate --protocol cot`): lm-eval's prompt, its filters and its
metric give the same answers as ours on the same strings; generation equals lm-eval's HF backend
on the same model; the command writes every generation and the parse rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.eval import generation as gen
from med42_ray.layout import EvalDir

lm_eval = pytest.importorskip("lm_eval")

COT_YAML = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "flan_cot_zeroshot"
CHOICES = ("Cisplatin", "Vincristine", "Cyclophosphamide", "Methotrexate")
RESPONSES = [
    "The drug causes ototoxicity. The answer is (A).",
    "So the answer is (C) Cyclophosphamide.",
    "It damages the kidney, the final answer: (D)!",
    "The answer: B.",
    "Option (A) is wrong, (B) too; I pick (D). The answer is D.",
    "Vincristine causes neuropathy, which is what is described.",
    "methotrexate, surely",
    "Answer:C",
    "Answer: E",  # a letter without an option: no answer
    "I do not know.",
    "",
    "The answer is",
    "the answer is (b) since...",
    "Answer is (A) but the answer is (C).",
]


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.safe_load((COT_YAML / "_mmlu_flan_cot_zeroshot_template_yaml").read_text())


def _filters(template: dict) -> dict[str, dict]:
    return {f["name"]: f["filter"][0] for f in template["filter_list"]}


def test_patterns_and_stops_are_lm_evals(template):
    filters = _filters(template)
    assert filters["strict-match"]["regex_pattern"] == gen.STRICT_PATTERN
    flexible = filters["flexible-extract"]
    assert flexible["regex_pattern"] == gen.FLEXIBLE_PATTERN
    assert (flexible["group_select"], flexible["ignore_case"], flexible["ignore_punctuation"]) == (-1, True, True)
    assert tuple(template["generation_kwargs"]["until"]) == gen.STOP_SEQUENCES
    assert template["generation_kwargs"]["do_sample"] is False
    assert list(gen.FILTERS) == list(filters)


def test_prompt_is_flan_cot_zeroshots(template):
    """The MMLU prompt lm-eval renders (description + Jinja doc_to_text) for the same question."""
    from lm_eval.utils import apply_template

    sub = yaml.safe_load((COT_YAML / "mmlu_anatomy.yaml").read_text())
    doc = {"question": " Which nerve supplies the deltoid?\n", "choices": ["Axillary", "Radial", "Ulnar", "Median"],
           "answer": 0}
    item = BenchmarkItem("mmlu_anatomy", "q1", doc["question"], tuple(doc["choices"]), 0)
    assert gen.cot_text(item) == sub["description"] + apply_template(template["doc_to_text"], doc)
    assert gen.build_cot_request(item, 16).target == apply_template(template["doc_to_target"], doc)


def test_other_benchmarks_take_the_same_form():
    usmle = BenchmarkItem("usmle_sample_exam", "u1", "Q?", ("a", "b", "c", "d", "e"), 4)
    assert gen.cot_text(usmle) == "Q: Q?\n(A) a (B) b (C) c (D) d (E) e\nA: Let's think step by step."
    pubmed = BenchmarkItem("pubmedqa", "p1", "Does it work?", ("yes", "no", "maybe"), 0, context="We tried.")
    assert gen.cot_text(pubmed) == ("Abstract: We tried.\nQ: Does it work?\n(A) yes (B) no (C) maybe\n"
                                    "A: Let's think step by step.")


@pytest.mark.parametrize("choices", [CHOICES, ("yes", "no", "maybe"), ("Guilty", "Guilty of Romance", "B.", "?")])
def test_extraction_equals_lm_evals_filters(template, choices):
    """lm-eval's own filter classes, configured from the task YAML, on the same strings."""
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter

    filters = _filters(template)
    strict = RegexFilter(**{k: v for k, v in filters["strict-match"].items() if k != "function"})
    flexible = MultiChoiceRegexFilter(**{k: v for k, v in filters["flexible-extract"].items() if k != "function"})
    responses = [*RESPONSES, f"I choose {choices[-1]}.", f"{choices[1].upper()}!"]
    docs = [{"choices": list(choices)}] * len(responses)
    theirs_strict = [r[0] for r in strict.apply([[r] for r in responses], docs)]
    theirs_flexible = [r[0] for r in flexible.apply([[r] for r in responses], docs)]
    assert [gen.strict_match(r) for r in responses] == theirs_strict
    assert [gen.flexible_extract(r, choices) for r in responses] == theirs_flexible
    # the strings exercise every branch: a match, the option text, ": X", and nothing
    assert gen.FALLBACK in theirs_flexible and gen.FALLBACK in theirs_strict
    assert len(set(theirs_flexible)) >= 3


def test_exact_match_equals_lm_evals_metric():
    from lm_eval.api.metrics import exact_match_hf_evaluate

    extracted = ["(B)", "B", "(b) Vincristine", "[invalid]", "b.", " (B)", "(C)"]
    for e in extracted:
        theirs = exact_match_hf_evaluate(predictions=[e], references=["(B)"], ignore_case=True,
                                         ignore_punctuation=True)["exact_match"]
        assert gen.exact_match(e, "(B)") == theirs, e


def test_sample_row_and_metrics():
    item = BenchmarkItem("medqa_4options", "m1", "Which drug?", CHOICES, 2)
    req = gen.build_cot_request(item, 32)
    rows = [gen.sample_row(item, req, gen.Generated(req.key, text, 10, False)) for text in
            ("The answer is (C).", "Cyclophosphamide it is.", "no idea", "The answer is (A).")]
    assert [r["acc"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert [r["acc_strict"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert [r["unparsed"] for r in rows] == [0.0, 0.0, 1.0, 0.0]
    assert [r["prediction"] for r in rows] == [2, 2, -1, 0]
    m = gen.benchmark_metrics(rows, excluded=1, canonical=10)
    assert (m["acc"], m["acc_strict"], m["unparsed"], m["unparsed_strict"], m["n"]) == (0.5, 0.25, 0.25, 0.5, 4)
    assert rows[0]["generation"] == "The answer is (C)." and rows[0]["prompt"] == req.context


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    import torch

    from med42_ray.eval.scoring import Scorer
    from med42_ray.eval.workers import load_model

    torch.set_num_threads(2)
    tokenizer, model = load_model(tiny_model_dir, device="cpu")
    return Scorer(model, tokenizer, max_batch_tokens=600)


def _sample_items(n: int = 6) -> list[BenchmarkItem]:
    from med42_ray.benchmarks import load_benchmarks
    from med42_ray.paths import resolve_path

    benches = load_benchmarks(resolve_path("pkg://sample/data/benchmarks"), None)
    return [it for items in benches.values() for it in items if not it.needs_image][:: 7][:n]


def test_generation_equals_lm_eval_hf_backend(scorer):
    """lm-eval's HFLM.generate_until with the same model object, greedy, the same stops and length."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    requests = [gen.build_cot_request(it, 24) for it in _sample_items()]
    lm = HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=1, device="cpu")
    kwargs = {"until": list(gen.STOP_SEQUENCES), "do_sample": False, "max_gen_toks": 24}
    theirs = lm.generate_until([Instance("generate_until", {}, (r.context, dict(kwargs)), i)
                                for i, r in enumerate(requests)], disable_tqdm=True)
    ours = gen.generate(scorer, requests)  # batched (left-padded) under the scorer's token budget
    prompts = {r.key: scorer.tok_encode(r.context) for r in requests}
    assert max(len(b) for b in gen._batches(requests, prompts, scorer.max_batch_tokens)) > 1  # padding exercised
    assert [g.text for g in ours] == theirs
    assert all(0 < g.num_tokens <= 24 for g in ours)
    assert [g.key for g in ours] == [r.key for r in requests]


def test_cli_cot_writes_generations_and_parse_rate(ray_cluster, tmp_path):
    """A real `evaluate --protocol cot --limit 2` on the embedded tiny model and sample benchmarks."""
    from med42_ray.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", "--protocol", "cot", "--limit", "2", "--max-new-tokens", "16", "--num-actors", "1",
               "--benchmarks", "medqa_4options,pubmedqa,mmlu_anatomy", "--output-dir", str(out),
               "--run-dir", str(tmp_path), "-o", "evaluate.progress=false"])
    assert rc == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["protocol"] == "cot"
    (model,) = summary["models"].values()
    for bench in ("medqa_4options", "pubmedqa"):
        metrics = model["benchmarks"][bench]
        rows = [json.loads(line) for line in (out / next(iter(summary["models"])) / "samples" / f"{bench}.jsonl").open()]
        assert len(rows) == metrics["n"] == 2
        assert all(r["prompt"].endswith(gen.COT_TRIGGER) and isinstance(r["generation"], str) for r in rows)
        assert all(0 < r["num_tokens"] <= 16 for r in rows)
        assert metrics["unparsed"] == sum(r["unparsed"] for r in rows) / 2
        assert metrics["acc"] == sum(r["acc"] for r in rows) / 2
    assert (out / "comparison.md").is_file()
    _check_lm_eval_files(EvalDir(out), next(iter(summary["models"])), model)


def _check_lm_eval_files(dest, name, ours):
    """lm-eval's own helpers find and render the CoT files; their numbers and extractions are ours,
    MMLU's config is lm-eval's flan_cot_zeroshot task, and our tasks' Jinja renders our prompts."""
    pytest.importorskip("lm_eval")
    from lm_eval.utils import apply_template, get_results_filenames, get_sample_results_filenames, make_table

    files = [str(p) for p in dest.lm_eval_files(name)]
    (results_file,) = get_results_filenames(files)
    lm = json.loads(Path(results_file).read_text())
    tasks = {"medqa_4options": "medqa_4options_flan_cot_zeroshot", "pubmedqa": "pubmedqa_flan_cot_zeroshot",
             "mmlu_anatomy": "mmlu_flan_cot_zeroshot_anatomy"}
    assert set(lm["results"]) == {*tasks.values(), "mmlu_clinical"} and "exact_match" in make_table(lm)
    by_task = {Path(f).name.split("_20")[0].removeprefix("samples_"): f for f in get_sample_results_filenames(files)}
    for bench, task in tasks.items():
        entry, metrics = lm["results"][task], ours["benchmarks"][bench]
        assert entry["exact_match,flexible-extract"] == metrics["acc"]
        assert entry["exact_match,strict-match"] == metrics["acc_strict"]
        assert lm["configs"][task]["generation_kwargs"]["max_gen_toks"] == 16
        rows = [json.loads(line) for line in (dest.samples(name, bench)).open()]
        logged = [json.loads(line) for line in Path(by_task[task]).read_text().splitlines()]
        assert len(logged) == 2 * len(rows)  # one line per filter
        for row, strict, flexible in zip(rows, logged[0::2], logged[1::2]):
            assert (strict["filter"], flexible["filter"]) == ("strict-match", "flexible-extract")
            assert strict["filtered_resps"] == [row["strict_match"]] and flexible["filtered_resps"] == [row["flexible_extract"]]
            assert strict["resps"] == [[row["generation"]]] and flexible["exact_match"] == row["acc"]
            config = lm["configs"][task]
            prompt = apply_template(config["doc_to_text"], strict["doc"])
            if bench.startswith("mmlu_"):  # lm-eval's own template, on its dataset's fields
                prompt = config["description"] + apply_template(config["doc_to_text"], {
                    "question": strict["doc"]["question"], "choices": strict["doc"]["choices"]})
            assert prompt == row["prompt"]
            target = {"answer": row["gold"]} if bench.startswith("mmlu_") else strict["doc"]
            assert apply_template(config["doc_to_target"], target) == row["target"] == strict["target"]
    assert lm["configs"]["mmlu_flan_cot_zeroshot_anatomy"]["dataset_path"] == "cais/mmlu"
