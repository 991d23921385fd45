"""Bad input at the edges (issue 13): every config field mistyped once, a row of tens of megabytes,
paths with spaces and non-ASCII characters, a source that is a directory of mixed files. Each is
counted and explained, never a crash in a Ray worker."""

from __future__ import annotations

import json
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import BaseModel

from med42_ray.config import ConfigError, RunConfig, load_config
from med42_ray.data.pipeline import run_prepare
from med42_ray.data.readers import iter_task, plan_read_tasks, source_files
from med42_ray.eval.config import EvalConfig
from med42_ray.train.config import TrainConfig

# ---- 1. every config field mistyped once ---------------------------------------------------------

# Valid values for the required fields of the sections a path passes through.
REQUIRED = {"name": "a", "path": "x.jsonl", "format": "alpaca", "stage": "pretrain", "step": 1}


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model a field holds (itself, optionally, or as the items of a list), and
    whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            model, in_list = _section(arg)
            if model:
                return model, in_list
    if origin is list and args and _section(args[0])[0]:
        return _section(args[0])[0], True
    return None, False


def _leaves(model: type[BaseModel], prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, annotation) of every field that is not itself a section; list items as index 0."""
    for name, field in model.model_fields.items():
        sub, in_list = _section(field.annotation)
        if sub is None:
            yield (*prefix, name), field.annotation
        else:
            yield from _leaves(sub, (*prefix, name, *((0,) if in_list else ())))


def _wrong_values(annotation: Any) -> list:
    """Values pydantic rejects for a field of this type: of another kind (a list where a scalar
    goes, text or a number where a list or mapping goes), and for a scalar one of its kind but
    wrong ('lots' for an int, 1.5 for an int, 'nope' for a choice). A type not listed here fails
    the test (KeyError): a new kind of field needs its wrong values."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]  # X | None: None is fine, the mistake is in the X
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple, dict):
        return ["oops", 3]
    if origin is typing.Literal:
        return ["nope", [1]]
    return {bool: ["maybe", [True]], int: ["lots", 1.5, [1], True], float: ["fast", [1.0], True],
            str: [5, [1], {"a": 1}]}[origin]


def _required(model: type[BaseModel]) -> dict:
    return {k: REQUIRED[k] for k, f in model.model_fields.items() if f.is_required()}


def _tree(prefix: tuple, path: tuple, value: Any, model: type[BaseModel]) -> dict:
    """A config tree setting prefix + path to `value`, `path` running through `model`'s fields;
    the sections on the way get their required fields, a list of sections one item."""
    tree: dict = {}
    node = tree
    for key in prefix:  # plain mappings (the pipeline's free-form sections)
        node = node.setdefault(key, {})
    keys = [k for k in path if not isinstance(k, int)]
    for key in keys[:-1]:
        model, in_list = _section(model.model_fields[key].annotation)
        child = _required(model)
        node[key] = [child] if in_list else child
        node = child
    node[keys[-1]] = value
    return tree


def _cases() -> list[tuple[str, tuple, tuple, Any, type[BaseModel]]]:
    """(dotted key, prefix, path in the model, annotation, model) of every leaf."""
    cases = [((), RunConfig)]
    # The pipeline's free-form sections hold train / evaluate settings: their keys must read as well.
    cases += [(("pipeline", *s.split(".")), TrainConfig) for s in ("train", "full", "lora", "pretrain.train")]
    cases += [(("pipeline", "evaluate"), EvalConfig)]
    return [(".".join(map(str, prefix + path)), prefix, path, annotation, model)
            for prefix, model in cases for path, annotation in _leaves(model)]


@pytest.mark.parametrize("dotted, prefix, path, annotation, model", _cases(), ids=[c[0] for c in _cases()])
def test_every_mistyped_field_gives_one_error_naming_key_and_file(tmp_path, dotted, prefix, path, annotation, model):
    for n, value in enumerate(_wrong_values(annotation)):
        cfg = tmp_path / f"mistyped {n}.yaml"
        cfg.write_text(yaml.safe_dump(_tree(prefix, path, value, model)))
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        header, *problems = str(e.value).splitlines()
        assert header == f"invalid configuration in {cfg}:", (value, str(e.value))
        assert len(problems) == 1, (value, str(e.value))  # one mistake, one error
        assert problems[0].startswith(f"  {dotted}: "), (value, problems[0])
        assert "instance of" not in problems[0], problems[0]  # pydantic's words for our classes
        assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained traceback


def test_the_leaves_reach_nested_sections():
    """The generator above really walks into train.scaling, train.lora, list items and the
    pipeline's free-form sections (a guard against it silently testing less)."""
    keys = {c[0] for c in _cases()}
    assert {"train.scaling.use_gpu", "train.lora.r", "prepare.sources.0.weight", "evaluate.models.0.adapter",
            "pipeline.kill_worker.step", "pipeline.pretrain.domain", "sweep.space.lr_min",
            "pipeline.full.lora.alpha", "pipeline.evaluate.models.0.name"} <= keys
    assert len(keys) > 300


def test_a_section_given_a_scalar_names_no_internal_class():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lora=[1]"])
    assert str(e.value).splitlines()[1] == ("  train.lora: should be a section (a mapping of keys) "
                                            "(got [1], from override 'train.lora=[1]')")


def test_a_huge_mistyped_value_is_shown_cut_short(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"seed": ["x" * 100] * 1000}))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    line = str(e.value).splitlines()[1]
    assert line.startswith("  seed: Input should be a valid integer (got [") and len(line) < 200


def test_a_pipeline_section_cannot_change_its_run_strategy():
    """pipeline.full configures the full run: a `strategy` there used to be overwritten unseen."""
    with pytest.raises(ConfigError, match=r"pipeline\.lora\.strategy: this section configures the lora run"):
        load_config(None, ["pipeline.lora.strategy=full"])
    assert load_config(None, ["pipeline.lora.strategy=lora"]).pipeline.lora["strategy"] == "lora"


# ---- 2. a row of tens of megabytes -------------------------------------------------------------

def _alpaca(i: int, output: str | None = None) -> dict:
    return {"instruction": f"Name the vitamin that prevents deficiency number {i}.", "input": "",
            "output": output or f"Vitamin number {i}."}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_an_oversized_line_is_rejected_unread_and_the_rows_after_it_keep_their_numbers(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [_alpaca(1), _alpaca(2, "x " * 3000), _alpaca(3)])
    with src.open("ab") as f:
        f.write(b'{"instruction": "no newline at the end", "output": "' + b"y" * 3000 + b'"}')
    [task] = plan_read_tasks([src], "alpaca", "s", max_row_bytes=1000)
    rows = list(iter_task(task))
    assert [(r["row"], r["reject"]) for r in rows] == [(1, None), (2, "oversized_row"), (3, None), (4, "oversized_row")]
    size = len(json.dumps(_alpaca(2, "x " * 3000))) + 1  # the line, newline included
    assert rows[1]["detail"].startswith(f"the row is {size} bytes, over the 1000 bytes limit for one row")
    assert rows[2]["messages"][-1]["content"] == "Vitamin number 3."


def test_an_oversized_element_of_a_json_document_is_rejected(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps([_alpaca(1), _alpaca(2, "x " * 3000), _alpaca(3)]))
    [task] = plan_read_tasks([src], "alpaca", "s", max_row_bytes=1000)
    assert [(r["row"], r["reject"]) for r in iter_task(task)] == [(1, None), (2, "oversized_row"), (3, None)]


def _manifest_rejects(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "prepared/rejects/rejects.jsonl").open()]


def _assert_accounted(manifest: dict) -> None:
    for name, s in manifest["sources"].items():
        total = (sum(s["rejected"].values()) + s["duplicates"] + sum(s["contaminated"].values())
                 + s["sampled_out"] + s["kept"])
        assert s["read"] == total, name


def test_rows_of_tens_of_megabytes_are_counted_and_explained_by_prepare(ray_cluster, tmp_path):
    """A 30 MB answer in a JSON-lines source and a 20 MB one in a JSON array are rejected with a
    reason (unread: no worker tokenises them); a 1 MB one, under the limit, follows the seq_len
    policy (split into pieces, every token packed)."""
    lines = _jsonl(tmp_path / "lines.jsonl", [_alpaca(1), _alpaca(2, "fever " * 5_000_000), _alpaca(3),
                                              _alpaca(4, " ".join(f"w{i}" for i in range(120_000)))])
    array = tmp_path / "array.json"
    array.write_text(json.dumps([_alpaca(5), _alpaca(6, "cough " * 3_500_000)]))
    assert lines.stat().st_size > 30e6 and array.stat().st_size > 20e6
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "prepare": {"sources": [
        {"name": "lines", "path": str(lines), "format": "alpaca"},
        {"name": "array", "path": str(array), "format": "alpaca"}]}}))
    manifest = run_prepare(load_config(cfg))
    _assert_accounted(manifest)
    s = manifest["sources"]
    assert (s["lines"]["read"], s["lines"]["kept"], s["lines"]["rejected"]) == (4, 3, {"oversized_row": 1})
    assert (s["array"]["read"], s["array"]["kept"], s["array"]["rejected"]) == (2, 1, {"oversized_row": 1})
    got = {(Path(r["file"]).name, r["row"], r["reason"]) for r in _manifest_rejects(tmp_path / "run")}
    assert got == {("lines.jsonl", 2, "oversized_row"), ("array.json", 2, "oversized_row")}
    assert all(" MiB, over the 16.0 MiB limit for one row" in r["detail"] for r in _manifest_rejects(tmp_path / "run"))
    # the 1 MB answer is longer than seq_len: split, and all of it packed
    assert s["lines"]["tokens"] > 120_000 and manifest["sequences"] > 120_000 // manifest["seq_len"]


# ---- 3. paths with spaces and non-ASCII characters -----------------------------------------------

def test_prepare_with_spaces_non_ascii_and_brackets_in_every_path(ray_cluster, tmp_path):
    """run_dir, the source (its directory name holds glob characters too) and the config file."""
    src = _jsonl(tmp_path / "données [v2]" / "alpaca tiny é.jsonl", [_alpaca(i) for i in range(6)])
    run_dir = tmp_path / "my runs" / "Überprüfung 1"
    cfg = tmp_path / "конфиг dir" / "my config ü.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({"run_dir": str(run_dir), "prepare": {"sources": [
        {"name": "alpaca", "path": str(src), "format": "alpaca"}]}}, allow_unicode=True), encoding="utf-8")
    manifest = run_prepare(load_config(cfg))
    _assert_accounted(manifest)
    assert (manifest["sources"]["alpaca"]["read"], manifest["sources"]["alpaca"]["kept"]) == (6, 6)
    assert manifest["sources"]["alpaca"]["files"] == [str(src)]
    assert manifest["shards"] and all((run_dir / "prepared" / s).is_file() for s in manifest["shards"])
    assert json.loads((run_dir / "prepared" / "manifest.json").read_text(encoding="utf-8")) == manifest
    ledger = pq.read_table(run_dir / "prepared" / "ledger", columns=["file", "id"]).to_pylist()
    assert {r["file"] for r in ledger} == {str(src)} and all(r["id"].startswith("alpaca:alpaca tiny é:") for r in ledger)


# ---- 4. a source that is a directory of mixed files ----------------------------------------------

def _mixed_dir(root: Path) -> Path:
    """A dataset directory as downloads leave it: the data in two of the format's layouts, the same
    rows again as Parquet, documentation, macOS litter and a subdirectory of another split."""
    _jsonl(root / "a.jsonl", [_alpaca(1), _alpaca(2)])
    (root / "b.JSON").write_text(json.dumps([_alpaca(3), _alpaca(4)]))
    pq.write_table(pa.Table.from_pylist([_alpaca(5)]), root / "c.parquet")
    (root / "notes.csv").write_text("instruction,output\nq,a\n")
    (root / "README.md").write_text("# A dataset\n\nRows are {instruction, input, output}.\n")
    (root / "LICENSE").write_text("CC BY-NC 4.0\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00\x10\xff")
    _jsonl(root / "test" / "d.jsonl", [_alpaca(6)])
    return root


SKIPPED = {".DS_Store": "hidden (its name starts with '.')", "LICENSE": "documentation, not data", "README.md": "documentation, not data",
           "c.parquet": "a .parquet file; format 'alpaca' reads .json/.jsonl/.ndjson files",
           "notes.csv": "a .csv file; format 'alpaca' reads .json/.jsonl/.ndjson files",
           "test": "subdirectory: not read (a glob such as dir/**/*.json reads into subdirectories)"}


def test_a_directory_source_reads_its_files_of_the_format_and_says_what_it_skipped(tmp_path):
    found = source_files(str(_mixed_dir(tmp_path / "mixed")), "alpaca")
    assert [p.name for p in found.read] == ["a.jsonl", "b.JSON"]
    assert {p.name: why for p, why in found.skipped} == SKIPPED
    assert [p.name for p in source_files(str(tmp_path / "mixed"), "mmlu").read] == ["notes.csv"]
    assert source_files(str(tmp_path / "mixed" / "a.jsonl"), "alpaca").read == [tmp_path / "mixed" / "a.jsonl"]


def test_a_directory_source_with_an_ambiguous_file_or_no_data_is_a_clear_error(ray_cluster, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("nothing here\n")
    _jsonl(tmp_path / "odd" / "a.jsonl", [_alpaca(1)])
    (tmp_path / "odd" / "train").write_text(json.dumps(_alpaca(2)) + "\n")
    for name, pattern in [("docs", r"holds no \.json/\.jsonl/\.ndjson file for format 'alpaca'; README\.md: doc"),
                          ("odd", r"odd/train: no file extension")]:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}",
                                 f"prepare.sources=[{{name: s, path: '{tmp_path / name}', format: alpaca}}]"])
        with pytest.raises(ConfigError, match=f"source 's': .*{pattern}"):
            run_prepare(cfg)


def test_prepare_on_a_directory_of_mixed_files_counts_and_explains(ray_cluster, tmp_path, capsys):
    mixed = _mixed_dir(tmp_path / "mixed")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}",
                             f"prepare.sources=[{{name: mixed, path: '{mixed}', format: alpaca}}]"])
    manifest = run_prepare(cfg)
    _assert_accounted(manifest)
    s = manifest["sources"]["mixed"]
    assert (s["read"], s["kept"], s["rejected"]) == (4, 4, {})
    assert s["files"] == [str(mixed / "a.jsonl"), str(mixed / "b.JSON")]
    assert {Path(f["file"]).name: f["why"] for f in s["skipped_files"]} == SKIPPED
    assert "source 'mixed': reading 2 file(s)" in capsys.readouterr().out


def test_evaluate_with_spaces_and_non_ascii_in_the_model_and_run_paths(ray_cluster, tiny_model_dir, tmp_path):
    """The model's label defaults to its directory's name, which may hold any character; a label
    may not (it names result directories and table columns)."""
    from med42_ray.cli import main

    model = tmp_path / "modèles locaux" / "tiny llama ü"
    shutil.copytree(tiny_model_dir, model)
    run_dir = tmp_path / "my runs" / "Überprüfung 1"
    rc = main(["evaluate", "--model", str(model), "--num-actors", "1", "--run-dir", str(run_dir),
               "-o", "evaluate.progress=false", "-o", "evaluate.limit=2", "-o", "evaluate.benchmarks=[medqa_4options]"])
    assert rc == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    assert list(results["models"]) == ["tiny_llama_u"]  # the directory's name, as a label may be spelt
    assert results["models"]["tiny_llama_u"]["benchmarks"]["medqa_4options"]["n"] == 2
