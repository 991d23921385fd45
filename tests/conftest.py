"""Shared fixtures. One local Ray cluster per test session, on loopback with 2 CPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import s3_server  # noqa: F401  (sets moto's fake credentials before the session's Ray cluster starts)

REPO = Path(__file__).resolve().parents[1]
# Real public files laid out by the project owners beside the checkout (never copied in).
RAW = Path(os.environ.get("MED42_RAW_DATA", REPO.parent / "shared" / "data" / "raw"))


def pytest_configure(config):
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    if not RAW.is_dir():
        pytest.skip(f"real data not found at {RAW} (set MED42_RAW_DATA)")
    return RAW


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # address="local": a cluster of its own even when the developer has one running (`ray start`)
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                   ignore_reinit_error=True, log_to_driver=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The embedded tiny Llama (built locally on first use, then cached)."""
    from med42_ray.model import resolve_model

    return resolve_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def sample_prepared(ray_cluster, tmp_path_factory):
    """`med42-ray prepare` on the embedded sample, run once per test session:
    (prepared directory, manifest)."""
    from med42_ray.config import load_config
    from med42_ray.data.pipeline import run_prepare

    run_dir = tmp_path_factory.mktemp("sample_prepare")
    manifest = run_prepare(load_config(None, [f"run_dir={run_dir}"]))
    return run_dir / "prepared", manifest


@pytest.fixture(scope="module")
def ray_head():
    """A `ray start --head` cluster of its own for one test module (tests/ray_head.py)."""
    from ray_head import start_head

    yield from start_head()


@pytest.fixture(scope="module")
def s3():
    """A real S3 API on loopback (moto's server) for one test module (tests/s3_server.py)."""
    from s3_server import start_s3

    yield from start_s3()
