"""Issue 15, item 5: data from anywhere. Sources as Parquet files, `datasets.save_to_disk` folders,
and JSON/CSV/Parquet under s3:// URIs, read against a real S3 API (moto's server on loopback,
through pyarrow's S3FileSystem), each row mapped by the same per-row checks as a local JSON file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import BUCKET
from pydantic import ValidationError

from med42_ray.data.config import SourceConfig
from med42_ray.data.filesystems import RemoteFile
from med42_ray.data.readers import iter_rows, iter_task, plan_read_tasks, source_files
from med42_ray.paths import PACKAGE_DIR

datasets = pytest.importorskip("datasets")
pytest.importorskip("moto.server")

SAMPLE = PACKAGE_DIR / "sample" / "data" / "train"


def _alpaca(i: int, output: str | None = None) -> dict:
    return {"instruction": f"Name the vitamin that prevents deficiency number {i}.", "input": "",
            "output": f"Vitamin number {i}." if output is None else output}


ALPACA = [_alpaca(1), _alpaca(2, ""), _alpaca(3), {"instruction": "no answer"}, _alpaca(5), _alpaca(6), _alpaca(7)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path: Path, rows: list[dict], row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def _read(location, fmt: str) -> list[tuple]:
    """Everything a reader says about each row, but where it was read from."""
    tasks = plan_read_tasks([location], fmt, "src", target_bytes=200)
    return [(r["row"], r["messages"], r["reject"], r["detail"]) for t in tasks for r in iter_task(t)]


# ---- local containers: Parquet and save_to_disk --------------------------------------------------

def test_a_parquet_file_is_read_per_row_group_with_the_same_checks_as_json_lines(tmp_path):
    """7 rows in row groups of 3: 3 tasks, rows numbered through the file, the same messages and the
    same rejects (an empty and a missing `output`) as the JSON-lines file of the same records."""
    parquet = _parquet(tmp_path / "a.parquet", ALPACA)
    tasks = plan_read_tasks([parquet], "alpaca", "src")
    assert [(t["row_group"], t["first_line"]) for t in tasks] == [(0, 1), (1, 4), (2, 7)]
    rows = _read(parquet, "alpaca")
    assert rows == _read(_jsonl(tmp_path / "a.jsonl", ALPACA), "alpaca")
    assert [(r[0], r[2]) for r in rows] == [(1, None), (2, "empty_field"), (3, None), (4, "missing_field"),
                                            (5, None), (6, None), (7, None)]
    ids = [r["id"] for r in iter_rows(parquet, "alpaca", "src")]
    assert ids == [f"src:a:{i}" for i in range(1, 8)]


def test_parquet_with_nested_columns_maps_like_json(tmp_path):
    """ShareGPT's list of {from, value} structs survives Parquet's nested types; a conversation
    without an answer is rejected as from JSON."""
    rows = [json.loads(line) for line in (SAMPLE / "medical_chat.jsonl").read_text().splitlines()[:20]]
    rows.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "anyone?"}]})
    fmt = "sharegpt"
    parquet_rows = _read(_parquet(tmp_path / "c.parquet", rows, row_group_size=8), fmt)
    assert parquet_rows == _read(_jsonl(tmp_path / "c.jsonl", rows), fmt)
    assert parquet_rows[-1][2] == "unsupported_shape" and all(r[2] is None for r in parquet_rows[:-1])


def test_a_broken_or_empty_parquet_file_is_one_counted_reject(tmp_path):
    good = _parquet(tmp_path / "good.parquet", ALPACA[:2])
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])  # the footer is gone
    [(row, _, reject, detail)] = _read(cut, "alpaca")
    assert (row, reject) == (0, "malformed_parquet") and "unreadable before any row" in detail
    empty = _parquet(tmp_path / "empty.parquet", [])
    assert [(r[0], r[2]) for r in _read(empty, "alpaca")] == [(0, "empty_file")]


def test_invalid_utf8_in_a_parquet_string_rejects_that_row_only(tmp_path):
    """Arrow does not validate UTF-8 on read: the one bad row is rejected, its neighbours kept."""
    raw = pa.array([b"Name vitamin one.", b"bad \xff byte", b"Name vitamin three."], type=pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # a string column, unvalidated
    pq.write_table(pa.table({"instruction": text, "output": ["A.", "B.", "C."]}), tmp_path / "u.parquet")
    assert [(r[0], r[2]) for r in _read(tmp_path / "u.parquet", "alpaca")] == [(1, None), (2, "non_utf8"), (3, None)]


def test_arrow_ipc_files_read_in_file_and_stream_format(tmp_path):
    table = pa.Table.from_pylist(ALPACA)
    for name, writer in [("f.arrow", pa.ipc.new_file), ("s.arrow", pa.ipc.new_stream)]:
        with writer(tmp_path / name, table.schema) as w:
            w.write_table(table, max_chunksize=2)
        assert _read(tmp_path / name, "alpaca") == _read(_jsonl(tmp_path / "a.jsonl", ALPACA), "alpaca"), name


def test_mmlu_refuses_parquet_naming_the_file(tmp_path):
    path = _parquet(tmp_path / "m.parquet", [{"question": "q", "A": "a"}])
    with pytest.raises(ValueError, match=r"m\.parquet: format 'mmlu' reads CSV rows"):
        plan_read_tasks([path], "mmlu", "src")


def test_a_save_to_disk_folder_is_read_with_pyarrow_in_datasets_order(tmp_path):
    """A real `Dataset.save_to_disk` in two shards, of a selection (datasets writes the selected rows):
    the rows read are load_from_disk's, in its order."""
    ds = datasets.Dataset.from_list(ALPACA).select([6, 0, 1, 2, 3, 4])
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    found = source_files(str(tmp_path / "saved"), "alpaca")
    assert [p.name for p in found.read] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert found.skipped == []
    rows = [r for f in found.read for r in iter_rows(f, "alpaca", "src")]
    expected = [r for r in iter_rows(_jsonl(tmp_path / "x.jsonl", list(datasets.load_from_disk(str(tmp_path / "saved")))),
                                     "alpaca", "src")]
    assert [(r["messages"], r["reject"]) for r in rows] == [(r["messages"], r["reject"]) for r in expected]
    assert [(Path(r["file"]).name, r["row"]) for r in rows] == [
        ("data-00000-of-00002.arrow", 1), ("data-00000-of-00002.arrow", 2), ("data-00000-of-00002.arrow", 3),
        ("data-00001-of-00002.arrow", 1), ("data-00001-of-00002.arrow", 2), ("data-00001-of-00002.arrow", 3)]


def test_a_dataset_dict_folder_asks_for_one_split(tmp_path):
    ds = datasets.Dataset.from_list(ALPACA)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"DatasetDict with splits train, test; name one split's folder .*dd/train"):
        source_files(str(tmp_path / "dd"), "alpaca")
    assert len(source_files(str(tmp_path / "dd" / "train"), "alpaca").read) == 1


def test_a_directory_of_parquet_only_reads_it_and_one_with_json_too_reads_the_json(tmp_path):
    _parquet(tmp_path / "pq" / "train-00000-of-00002.parquet", ALPACA[:3])
    _parquet(tmp_path / "pq" / "train-00001-of-00002.parquet", ALPACA[3:])
    (tmp_path / "pq" / "README.md").write_text("# data\n")
    found = source_files(str(tmp_path / "pq"), "alpaca")
    assert [p.name for p in found.read] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [(p.name, why) for p, why in found.skipped] == [("README.md", "documentation, not data")]
    _jsonl(tmp_path / "pq" / "train.jsonl", ALPACA)
    assert [p.name for p in source_files(str(tmp_path / "pq"), "alpaca").read] == ["train.jsonl"]


# ---- the same sources on S3 (moto's server on loopback) -------------------------------------------

@pytest.mark.parametrize("name,fmt", [("general_chat.jsonl", "chat"), ("medical_chat.jsonl", "sharegpt"),
                                      ("medical_flashcards.json", "alpaca"), ("medical_mcq.jsonl", "medqa")])
def test_json_files_on_s3_read_exactly_as_on_disk(s3, name, fmt):
    """The shipped sample's files (JSON lines and a JSON array): every row's messages, reject and
    detail are the same (a remote JSON-lines file is one task, a local one is cut in byte ranges)."""
    local = SAMPLE / name
    s3.upload(local, f"sample/{name}")
    remote = _read(s3.uri(f"sample/{name}"), fmt)
    assert remote == _read(local, fmt) and len(remote) > 10
    row = next(iter_rows(s3.uri(f"sample/{name}"), fmt, "src"))
    assert (row["file"], row["id"]) == (f"s3://{BUCKET}/sample/{name}", f"src:{Path(name).stem}:1")


def test_csv_parquet_and_save_to_disk_on_s3_read_exactly_as_on_disk(s3, tmp_path):
    mmlu = tmp_path / "anatomy_test.csv"
    mmlu.write_text('What is the largest organ?,Skin,Liver,Heart,Lung,A\n"Two\nlines",x,y,z,w,B\nbroken,row\n')
    s3.upload(mmlu, "csv/anatomy_test.csv")
    assert _read(s3.uri("csv/anatomy_test.csv"), "mmlu") == _read(mmlu, "mmlu")

    parquet = _parquet(tmp_path / "a.parquet", ALPACA)
    s3.upload(parquet, "pq/a.parquet")
    assert len(plan_read_tasks([s3.uri("pq/a.parquet")], "alpaca", "s")) == 3  # one per row group
    assert _read(s3.uri("pq/a.parquet"), "alpaca") == _read(parquet, "alpaca")

    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    s3.upload(tmp_path / "saved", "saved")
    found = source_files(s3.uri("saved"), "alpaca")
    assert [str(f) for f in found.read] == [f"s3://{BUCKET}/saved/data-0000{i}-of-00002.arrow" for i in (0, 1)]
    local = source_files(str(tmp_path / "saved"), "alpaca").read
    assert [_read(f, "alpaca") for f in found.read] == [_read(f, "alpaca") for f in local]


def test_globs_and_directories_on_s3_match_the_local_ones(s3, tmp_path):
    root = tmp_path / "tree"
    _jsonl(root / "a.jsonl", ALPACA[:2])
    _jsonl(root / "sub" / "b.jsonl", ALPACA[2:4])
    _jsonl(root / "sub" / "deeper" / "c.jsonl", ALPACA[4:])
    _jsonl(root / ".hidden.jsonl", ALPACA[:1])
    (root / "README.md").write_text("# tree\n")
    _parquet(root / "same.parquet", ALPACA)
    s3.upload(root, "tree")

    def names(pattern: str, remote: bool) -> list[str]:
        found = source_files(s3.uri(f"tree/{pattern}") if remote else str(root / pattern), "alpaca")
        return [str(p).split("tree/", 1)[1] for p in found.read]

    for pattern in ["*.jsonl", "**/*.jsonl", "sub/*.jsonl", "*/*/c.jsonl", "sub/**/*.jsonl", "a.jsonl"]:
        assert names(pattern, remote=True) == names(pattern, remote=False), pattern
    remote = source_files(s3.uri("tree"), "alpaca")
    local = source_files(str(root), "alpaca")
    assert [p.name for p in remote.read] == [p.name for p in local.read] == ["a.jsonl"]
    assert [(p.name, why) for p, why in remote.skipped] == [(p.name, why) for p, why in local.skipped]


def test_missing_remote_files_are_errors_naming_the_uri(s3):
    with pytest.raises(FileNotFoundError, match=f"no file matches source path 's3://{BUCKET}/nope/"):
        source_files(s3.uri("nope/*.jsonl"), "alpaca")
    with pytest.raises(FileNotFoundError, match=f"no file matches source path 's3://{BUCKET}/nope.jsonl"):
        source_files(s3.uri("nope.jsonl"), "alpaca")


def test_a_password_in_a_source_uri_is_refused_at_the_edge():
    with pytest.raises(ValidationError, match="path\n.*the URI holds a password.*AWS_ACCESS_KEY_ID"):
        SourceConfig(name="s", path="s3://key:secret@bucket/a.jsonl", format="alpaca")
    assert SourceConfig(name="s", path="s3://bucket/a.jsonl?region=eu-west-1", format="alpaca")


def test_remote_file_shows_no_options_or_credentials():
    f = RemoteFile("s3://user:pw@bkt?endpoint_override=h:1", "bkt/dir/a.jsonl")
    assert (str(f), f.name, f.stem, f.suffix) == ("s3://bkt/dir/a.jsonl", "a.jsonl", "a", ".jsonl")
    assert str(RemoteFile("hdfs://namenode:8020", "/data/a.jsonl")) == "hdfs://namenode:8020/data/a.jsonl"


# ---- prepare end to end, sources on S3 ------------------------------------------------------------

def test_prepare_reads_s3_sources_and_accounts_for_every_row(ray_cluster, s3, tmp_path):
    """JSON lines, Parquet and a save_to_disk folder on S3, read by Ray workers: every row is kept or
    counted with its reason, and the manifest and ledger name the files without the URI's options."""
    from med42_ray.config import load_config
    from med42_ray.data.pipeline import run_prepare

    _jsonl(tmp_path / "a.jsonl", ALPACA)
    s3.upload(tmp_path / "a.jsonl", "e2e/a.jsonl")
    s3.upload(_parquet(tmp_path / "b.parquet", [_alpaca(i) for i in range(10, 17)]), "e2e/b.parquet")
    datasets.Dataset.from_list([_alpaca(i) for i in range(20, 24)]).save_to_disk(str(tmp_path / "saved"))
    s3.upload(tmp_path / "saved", "e2e/saved")
    sources = [{"name": "jsonl", "path": s3.uri("e2e/a.jsonl"), "format": "alpaca"},
               {"name": "parquet", "path": s3.uri("e2e/*.parquet"), "format": "alpaca"},
               {"name": "saved", "path": s3.uri("e2e/saved"), "format": "alpaca"}]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"prepare.sources={json.dumps(sources)}"])
    manifest = run_prepare(cfg)

    got = {name: (s["read"], s["kept"], s["rejected"]) for name, s in manifest["sources"].items()}
    assert got == {"jsonl": (7, 5, {"empty_field": 1, "missing_field": 1}), "parquet": (7, 7, {}), "saved": (4, 4, {})}
    assert manifest["sources"]["parquet"]["files"] == [f"s3://{BUCKET}/e2e/b.parquet"]
    assert manifest["sources"]["saved"]["files"] == [f"s3://{BUCKET}/e2e/saved/data-00000-of-00001.arrow"]
    ledger = pq.read_table(tmp_path / "run" / "prepared" / "ledger", columns=["file", "row"])
    assert {f for f in ledger["file"].to_pylist()} == {f"s3://{BUCKET}/e2e/a.jsonl", f"s3://{BUCKET}/e2e/b.parquet",
                                                       f"s3://{BUCKET}/e2e/saved/data-00000-of-00001.arrow"}
    assert manifest["sequences"] > 0
    shutil.rmtree(tmp_path / "run")


def test_a_prepared_directory_uploads_to_s3_and_reads_back(s3, tmp_path):
    """run_dir outputs to a URI: a stage's folder copied as it is, read back byte for byte."""
    from med42_ray.data.filesystems import upload_tree

    local = tmp_path / "prepared"
    _parquet(local / "shards" / "part-0.parquet", ALPACA)
    (local / "manifest.json").write_text(json.dumps({"sources": {}}))
    dest = upload_tree(local, s3.uri("runs/r1/prepared"))
    assert str(dest) == f"s3://{BUCKET}/runs/r1/prepared"
    for rel in ("manifest.json", "shards/part-0.parquet"):
        with s3.fs.open_input_file(f"{BUCKET}/runs/r1/prepared/{rel}") as f:
            assert f.read() == (local / rel).read_bytes()
    with pytest.raises(ValueError, match="is a local path"):
        upload_tree(local, str(tmp_path / "elsewhere"))


def test_prepare_names_the_source_of_a_file_it_cannot_read(tmp_path):
    """Planned on the driver, before Ray starts: one ConfigError naming source and file."""
    from med42_ray.config import ConfigError, load_config
    from med42_ray.data.pipeline import plan_prepare

    _parquet(tmp_path / "m.parquet", [{"question": "q"}])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}",
                             f"prepare.sources=[{{name: mm, path: '{tmp_path}/*.parquet', format: mmlu}}]"])
    with pytest.raises(ConfigError, match=r"source 'mm': .*m\.parquet: format 'mmlu' reads CSV rows"):
        plan_prepare(cfg)
