"""`upload_to`: each stage's outputs copied under a URI when it ends, against a real S3 API (moto's
server on loopback, the fixture of tests/test_sources_anywhere.py).

HEAVY: `med42-ray prepare` on the sample twice, once as the pipeline's first stage (~1 min on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from med42_ray.cli import main
from med42_ray.config import load_config
from med42_ray.errors import ConfigError
from med42_ray.upload import destination

pytest.importorskip("moto.server")
from s3_server import BUCKET  # noqa: E402

pytestmark = pytest.mark.slow


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _uploaded(s3, key: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    infos = s3.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{key}", recursive=True))
    found = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with s3.fs.open_input_file(info.path) as f:
                found[info.path.removeprefix(f"{BUCKET}/{key}/")] = f.read()
    return found


def test_upload_to_must_be_a_uri_without_a_password():
    with pytest.raises(ConfigError, match=r"upload_to: give a URI such as s3://bucket/runs/x"):
        load_config(None, ["upload_to=/tmp/runs"])
    with pytest.raises(ConfigError, match="upload_to: the URI holds a password"):
        load_config(None, ["upload_to=s3://key:secret@bucket/runs"])
    assert load_config(None, ["upload_to=gs://bucket/runs/x"]).upload_to == "gs://bucket/runs/x"


def test_an_output_goes_to_its_place_under_run_dir_before_the_uris_options(tmp_path):
    uri = "s3://b/runs/x?endpoint_override=127.0.0.1:9000&scheme=http"
    assert destination(uri, tmp_path, tmp_path / "train" / "lora") == \
        "s3://b/runs/x/train/lora?endpoint_override=127.0.0.1:9000&scheme=http"
    assert destination("s3://b/runs/x/", tmp_path, tmp_path.parent / "elsewhere" / "prepared") == \
        "s3://b/runs/x/prepared"  # kept outside run_dir: by its name


def test_prepare_uploads_its_outputs(s3, ray_cluster, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["prepare", "--run-dir", str(run_dir), "-o", f"upload_to={s3.uri('runs/p')}"]) == 0
    local = _files(run_dir / "prepared")
    assert "manifest.json" in local and any(k.startswith("shards/") for k in local)
    assert _uploaded(s3, "runs/p/prepared") == local  # every file, byte for byte
    assert f"to s3://{BUCKET}/runs/p/prepared" in capsys.readouterr().out


def test_the_pipeline_uploads_a_finished_stage_with_its_marker(s3, ray_cluster, tmp_path):
    """The pipeline's own run loop on its first stage (the later ones train for minutes: their
    output directories are the layout's, tests/test_layout.py)."""
    from med42_ray.pipeline.run import Pipeline

    class FirstStage(Pipeline):
        def stages(self):
            return super().stages()[:1]

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"upload_to={s3.uri('runs/pipe')}"])
    pipeline = FirstStage(cfg)
    assert [s.name for s in pipeline.stages()] == ["prepare"]
    pipeline.run()
    root = tmp_path / "run"
    uploaded = _uploaded(s3, "runs/pipe")
    local = {f"{d}/{k}": v for d in ("prepared", "stages") for k, v in _files(root / d).items()}
    assert "stages/prepare.json" in local and "prepared/manifest.json" in local
    assert uploaded == local  # the finished stage and its marker, nothing else


def test_evaluate_uploads_its_results(s3, ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["evaluate", "--run-dir", str(run_dir), "--limit", "2", "--num-actors", "1",
                 "--benchmarks", "medqa_4options", "-o", f"upload_to={s3.uri('runs/e')}"]) == 0
    local = _files(run_dir / "eval")
    assert "results.json" in local
    assert _uploaded(s3, "runs/e/eval") == local
