"""lm-evaluation-harness's own code reads the lm-eval files a real `med42-ray evaluate` writes
(the embedded tiny model on the embedded sample benchmarks), and its numbers equal ours."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest

from med42_ray.benchmarks import MMLU_CLINICAL
from med42_ray.eval import lm_eval_format
from med42_ray.layout import EvalDir

pytest.importorskip("lm_eval")

STALE = "results_2000-01-01T00-00-00.000000.json"  # an earlier run's file: replaced, not kept beside


@pytest.fixture(scope="module")
def evaluated(ray_cluster, tiny_model_dir, tmp_path_factory):
    """One evaluate run: harness as the headline, med42_chat beside it, 3 questions per benchmark."""
    from med42_ray.cli import main
    from med42_ray.eval.run import default_model_name
    from med42_ray.paths import resolve_path

    if not resolve_path("pkg://sample/data/benchmarks").is_dir():
        pytest.skip("embedded sample benchmarks not built yet")
    run = tmp_path_factory.mktemp("lm_eval_run")
    model = default_model_name(tiny_model_dir, None)
    (run / "eval" / model).mkdir(parents=True)
    (run / "eval" / model / STALE).write_text("{}")
    rc = main(["evaluate", "--model", tiny_model_dir, "--limit", "3", "--num-actors", "1", "--run-dir", str(run),
               "-o", "evaluate.progress=false", "-o", "evaluate.also_protocols=[med42_chat]"])
    assert rc == 0
    return EvalDir(run / "eval"), model


def _read(dest: EvalDir, model: str):
    """(ours: results.json of the model, lm-eval's results, lm-eval's samples by task), the files
    found by lm-eval's own filename helpers."""
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames

    files = [str(p) for p in dest.lm_eval_files(model)]
    (results_file,) = get_results_filenames(files)
    assert get_latest_filename(files) == results_file
    samples = {}
    for f in get_sample_results_filenames(files):
        task = re.fullmatch(r"samples_(.+)_\d{4}-\d\d-\d\dT[\d.-]+\.jsonl", Path(f).name).group(1)
        samples[task] = [json.loads(line) for line in Path(f).read_text().splitlines()]
    ours = json.loads(dest.model_results(model).read_text())
    return ours, json.loads(Path(results_file).read_text()), samples


def _table_rows(table: str) -> dict[tuple[str, str], tuple[str, str]]:
    """make_table's markdown, {(task shown, metric): (value, stderr)} (a task's later metrics have a
    blank task cell: they belong to the row above)."""
    rows, task = {}, None
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        task = cells[0].lstrip("- ") or task
        rows[(task, cells[4])] = (cells[6], cells[8])
    return rows


def test_lm_eval_renders_our_results_and_its_numbers_equal_ours(evaluated):
    from lm_eval.api.metrics import mean, mean_stderr
    from lm_eval.utils import make_table

    dest, model = evaluated
    ours, results, samples = _read(dest, model)
    assert STALE not in {p.name for p in dest.lm_eval_files(model)}
    tasks = list(ours["benchmarks"])
    assert set(tasks) >= {"medqa_4options", "medmcqa", "pubmedqa", "headqa_en", *MMLU_CLINICAL}
    assert set(results["configs"]) == set(samples) == set(tasks)

    table = _table_rows(make_table(results))
    for task in tasks:
        mine, entry = ours["benchmarks"][task], results["results"][task]
        metrics = [m["metric"] for m in results["configs"][task]["metric_list"]]
        assert "acc" in metrics and results["higher_is_better"][task] == {m: True for m in metrics}
        assert results["n-samples"][task] == {"original": mine["canonical_size"], "effective": mine["n"]}
        assert 2 <= mine["n"] <= 3
        assert results["n-shot"][task] == 0
        for m in metrics:
            assert entry[f"{m},none"] == mine[m]
            assert entry[f"{m}_stderr,none"] == mine[f"{m}_stderr"]
            # lm-eval's own aggregation over the logged samples gives the same numbers
            per_doc = [s[m] for s in samples[task]]
            assert mean(per_doc) == pytest.approx(mine[m], abs=1e-12)
            assert mean_stderr(per_doc) == pytest.approx(mine[f"{m}_stderr"], abs=1e-12)
            # and its table shows them (4 decimals)
            shown = table[(entry["alias"], m)]
            assert shown == (f"{mine[m]:.4f}", f"{mine[f'{m}_stderr']:.4f}"), (task, m)
    # lm-eval's task names, its own configs for the tasks it has (mmlu reports acc only, as it does)
    assert results["configs"]["mmlu_anatomy"]["dataset_path"] == "cais/mmlu"
    assert [m["metric"] for m in results["configs"]["mmlu_anatomy"]["metric_list"]] == ["acc"]
    assert "acc_norm,none" not in results["results"]["mmlu_anatomy"]
    assert results["configs"]["medqa_4options"]["dataset_path"] == "GBaker/MedQA-USMLE-4-options-hf"

    # the group: Med42's MMLU clinical mean (results.json's aggregate), shown by make_table's groups table
    group = results["groups"]["mmlu_clinical"]
    assert results["group_subtasks"]["mmlu_clinical"] == list(MMLU_CLINICAL)
    assert group["acc,none"] == pytest.approx(ours["aggregates"]["mmlu_clinical"]["acc"], abs=1e-12)
    ses = [ours["benchmarks"][b]["acc_stderr"] for b in MMLU_CLINICAL]
    assert group["acc_stderr,none"] == pytest.approx(math.sqrt(sum(s * s for s in ses)) / len(ses), abs=1e-12)
    groups_table = _table_rows(make_table(results, "groups"))
    assert groups_table[(group["alias"], "acc")][0] == f"{ours['aggregates']['mmlu_clinical']['acc']:.4f}"
    assert results["config"]["model_args"] == f"pretrained={ours['model']}"
    assert results["model_name"] == ours["model"] and results["task_hashes"].keys() == set(tasks)


def test_samples_are_lm_evals_and_carry_our_scores(evaluated):
    from lm_eval.utils import apply_template, hash_string

    dest, model = evaluated
    ours, results, samples = _read(dest, model)
    for task, logged in samples.items():
        rows = [json.loads(line) for line in dest.samples(model, task).read_text().splitlines()]
        assert [s["doc_id"] for s in logged] == list(range(len(rows)))
        for s, row in zip(logged, rows):
            assert s["doc"]["id"] == row["id"] and s["filter"] == "none"
            n = len(row["loglikelihoods"])
            assert len(s["arguments"]) == len(s["resps"]) == len(s["filtered_resps"]) == n
            # lm-eval's tracker wrote them as for its own: strings, one repeat per request
            assert [float(ll) for ll, _ in s["filtered_resps"]] == row["loglikelihoods"]
            assert [r[0] for r in s["resps"]] == s["filtered_resps"]
            assert [g == "True" for _, g in s["filtered_resps"]] == row["is_greedy"]
            context = s["arguments"]["gen_args_0"]["arg_0"]
            assert s["prompt_hash"] == hash_string(context)
            assert s["target"] == (s["doc"]["choices"][row["gold"]] if task == "pubmedqa" else str(row["gold"]))
            assert s["acc"] == row["acc"]
        if task not in lm_eval_format.LM_EVAL_TASK_YAML:  # our own task's templates say what was asked
            cfg = results["configs"][task]
            for s in logged:
                choices = ast.literal_eval(apply_template(cfg["doc_to_choice"], s["doc"]))  # as lm-eval reads it
                assert apply_template(cfg["doc_to_text"], s["doc"]) == s["arguments"]["gen_args_0"]["arg_0"]
                assert [s["arguments"][f"gen_args_{i}"]["arg_1"] for i in range(len(choices))] == \
                    [" " + c for c in choices]
    assert any(t not in lm_eval_format.LM_EVAL_TASK_YAML for t in samples), "no task of our own was evaluated"


def test_other_protocols_say_so(evaluated):
    dest, model = evaluated
    other = dest.protocol("med42_chat")
    ours, results, _ = _read(other, model)
    assert results["config"]["protocol"] == "med42_chat"
    for task, entry in results["results"].items():
        if task != "mmlu_clinical":
            assert entry["alias"].endswith("[med42_chat]")
            assert results["configs"][task]["metadata"]["med42_ray_protocol"] == "med42_chat"
            assert entry["acc,none"] == ours["benchmarks"][task]["acc"]


def test_task_files_are_where_lm_evals_index_has_them():
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    for task, rel in lm_eval_format.LM_EVAL_TASK_YAML.items():
        assert Path(index[task].yaml_path).as_posix().endswith(f"lm_eval/tasks/{rel}"), task
