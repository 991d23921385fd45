"""`prepare` end to end on Ray Data: the embedded sample, bad input, and the real public files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from med42_ray.config import load_config
from med42_ray.data.pipeline import run_prepare
from med42_ray.paths import PACKAGE_DIR

STATUS_KEYS = ("rejected", "duplicates", "contaminated", "sampled_out", "kept")


def _total(value) -> int:
    return sum(value.values()) if isinstance(value, dict) else value


def _assert_invariant(manifest: dict) -> None:
    for name, s in manifest["sources"].items():
        assert s["read"] == sum(_total(s[k]) for k in STATUS_KEYS), name


@pytest.fixture(scope="module")
def sample_run(sample_prepared):
    return sample_prepared


def test_sample_manifest_accounts_for_every_row(sample_run):
    out, manifest = sample_run
    assert json.loads((out / "manifest.json").read_text()) == manifest
    _assert_invariant(manifest)
    ledger = pq.read_table(out / "ledger", columns=["source"])
    assert sum(s["read"] for s in manifest["sources"].values()) == ledger.num_rows
    # weights at work: flashcards (2.0) are repeated, the general sources (0.5) sampled
    flash = manifest["sources"]["medical_flashcards"]
    assert flash["kept_copies"] == 2 * flash["kept"] and flash["sampled_out"] == 0
    dolly = manifest["sources"]["general_dolly"]
    assert 0.3 < dolly["sampled_out"] / (dolly["read"] - dolly["duplicates"] - _total(dolly["contaminated"])) < 0.7


def test_sample_planted_benchmark_items_are_removed(sample_run):
    out, manifest = sample_run
    planted = json.loads((PACKAGE_DIR / "sample/data/PLANTED.json").read_text())
    found = {json.loads(line)["id"]: json.loads(line) for line in (out / "contamination.jsonl").open()}
    assert set(planted) <= set(found), set(planted) - set(found)
    for row in found.values():
        assert row["benchmark"] and row["item_id"] and row["matching_text"]
    assert sum(_total(s["contaminated"]) for s in manifest["sources"].values()) == len(found)


def _packed(out: Path, manifest: dict) -> list[dict]:
    columns = ["input_ids", "labels", "position_ids", "doc_sources"]
    return [row for shard in manifest["shards"] for row in pq.read_table(out / shard, columns=columns).to_pylist()]


def test_same_seed_packs_the_same_sequences(sample_run, tmp_path):
    """A rerun with the same config and seed writes the same packed rows in the same order, so a
    training run (and the demo's numbers) repeat exactly."""
    out, manifest = sample_run
    again = run_prepare(load_config(None, [f"run_dir={tmp_path}"]))
    assert _packed(tmp_path / "prepared", again) == _packed(out, manifest)


def test_sample_shards_are_packed_and_masked(sample_run, tiny_tokenizer):
    out, manifest = sample_run
    table = pq.read_table(out / "shards")
    assert table.num_rows == manifest["sequences"] > 0
    seq_len = manifest["seq_len"]
    tokens = 0
    for row in table.to_pylist():
        n = row["num_tokens"]
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == n <= seq_len
        assert sum(row["doc_tokens"]) == n
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert len(starts) == len(row["doc_tokens"])
        tokens += n
    assert tokens == manifest["tokens"] == sum(s["tokens"] for s in manifest["sources"].values())
    assert manifest["packing_efficiency"] > 0.9
    # Trainable tokens of kept ledger rows decode to the assistant answers.
    ledger = pq.read_table(out / "ledger").to_pylist()
    kept = [r for r in ledger if r["status"] == "kept"][:50]
    for r in kept:
        answers = [m["content"] for m in json.loads(r["messages"]) if m["role"] == "assistant"]
        trained = [t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100]
        text = tiny_tokenizer.decode(trained, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert text == "".join(answers)


def test_bad_input_is_counted_with_file_row_and_reason(ray_cluster, tmp_path):
    good = {"instruction": "Name the vitamin deficient in scurvy.", "input": "", "output": "Vitamin C."}
    lines = [
        json.dumps(good),
        '{"instruction": "broken", "output": ',  # malformed JSON
        json.dumps({"instruction": "What causes rickets?", "input": ""}),  # missing output
        json.dumps({"instruction": "What causes pellagra?", "input": "", "output": "  "}),  # empty output
    ]
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_bytes(("\n".join(lines) + "\n").encode() + b'{"instruction": "caf\xe9", "output": "x"}\n')
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text(json.dumps({"question": "Which vitamin is fat soluble?", "options": {"A": "C", "B": "K"},
                               "answer_idx": "E", "answer": "K"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(f"""
run_dir: {tmp_path}/run
prepare:
  seq_len: 256
  sources:
    - {{name: alpaca, path: {alpaca}, format: alpaca}}
    - {{name: mcq, path: {mcq}, format: medqa}}
    - {{name: empty, path: {empty}, format: alpaca}}
""")
    manifest = run_prepare(load_config(cfg_file))
    _assert_invariant(manifest)
    rejects = [json.loads(line) for line in (tmp_path / "run/prepared/rejects/rejects.jsonl").open()]
    got = {(Path(r["file"]).name, r["row"], r["reason"]) for r in rejects}
    assert got == {
        ("alpaca.jsonl", 2, "malformed_json"),
        ("alpaca.jsonl", 3, "missing_field"),
        ("alpaca.jsonl", 4, "empty_field"),
        ("alpaca.jsonl", 5, "non_utf8"),
        ("mcq.jsonl", 1, "bad_answer_key"),
        ("empty.jsonl", 0, "empty_file"),
    }
    assert all(r["detail"] for r in rejects)
    assert "output" in next(r["detail"] for r in rejects if r["reason"] == "missing_field")
    s = manifest["sources"]["alpaca"]
    assert (s["read"], s["kept"], s["rejected"]) == (
        5, 1, {"malformed_json": 1, "missing_field": 1, "empty_field": 1, "non_utf8": 1})


def test_public_raw_files(ray_cluster, raw_dir, tmp_path, monkeypatch):
    """The real public mixture (MedAlpaca, Alpaca, Dolly, HEAD-QA train) against every benchmark."""
    monkeypatch.setenv("MED42_DATA", str(raw_dir))  # the config's paths are ${MED42_DATA:-../shared/data/raw}/...
    cfg = load_config(PACKAGE_DIR / "configs/public_raw.yaml", [f"run_dir={tmp_path}"])
    assert cfg.prepare.benchmarks_dir == cfg.evaluate.benchmarks_dir == str(raw_dir)
    manifest = run_prepare(cfg)
    _assert_invariant(manifest)
    s = manifest["sources"]
    assert s["medalpaca_wikidoc_patient_info"]["read"] == 5942
    assert s["headqa_train"]["read"] == 2657
    assert s["headqa_train"]["rejected"].get("needs_image", 0) > 0
    assert s["alpaca_gpt4_demo"]["read"] == 999 and s["alpaca_tiny"]["read"] == 100
    assert s["dolly_hhrlhf"]["read"] == 1000
    assert set(manifest["benchmarks"]["items"]) >= {"medqa_4options", "medmcqa", "pubmedqa", "headqa_en",
                                                    "usmle_sample_exam", "mmlu_anatomy"}
