"""Two `med42-ray` commands at once on one machine: each starts a local Ray cluster of its own, and
no Ray process of one finds the other (Ray Train's PlacementGroupCleaner used to fail with "Found
multiple active Ray instances" as soon as a second cluster ran beside a training run)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

MED42_RAY = str(Path(sys.executable).with_name("med42-ray"))
CROSSTALK = "Found multiple active Ray instances"
STARTED = re.compile(r"started a local Ray cluster of this command's own at (\S+)")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # as a user starts them
    env.update(RAY_AUTH_MODE="token", RAY_DISABLE_USAGE_STATS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([MED42_RAY, *args, "-o", "ray.dashboard=false"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_train_and_evaluate_started_together_each_finish_on_their_own_cluster(tmp_path, sample_prepared):
    """A short `train` and an `evaluate` started at the same moment, beside this test session's own
    cluster (a third GCS on the machine, so the old failure needs no lucky timing): both finish
    with complete outputs, on two different clusters, and neither log shows Ray finding the other."""
    prepared, _ = sample_prepared
    logs = {name: tmp_path / f"{name}.log" for name in ("train", "evaluate")}
    procs = {
        "train": _start(["train", "--run-dir", str(tmp_path / "t"), "--data-dir", str(prepared),
                         "--max-steps", "2", "--num-workers", "1", "--num-cpus", "2"], logs["train"]),
        "evaluate": _start(["evaluate", "--run-dir", str(tmp_path / "e"), "--num-cpus", "1", "--limit", "2",
                            "--num-actors", "1", "--benchmarks", "medqa_4options,pubmedqa"], logs["evaluate"]),
    }
    try:
        codes = {name: p.wait(timeout=420) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    text = {name: log.read_text() for name, log in logs.items()}
    for name, code in codes.items():
        assert code == 0, f"{name} exited {code}:\n{text[name][-3000:]}"
        assert CROSSTALK not in text[name], f"{name}: a Ray process found the other cluster"
    addresses = {name: STARTED.findall(t) for name, t in text.items()}
    assert all(len(a) == 1 for a in addresses.values()), addresses
    assert addresses["train"] != addresses["evaluate"], addresses

    metrics = [json.loads(line) for line in (tmp_path / "t/train/full/metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(math.isfinite(m["loss"]) for m in steps)
    assert (tmp_path / "t/train/full/model/config.json").is_file()

    results = json.loads((tmp_path / "e/eval/results.json").read_text())
    (model,) = results["models"].values()
    assert {b: r["n"] for b, r in model["benchmarks"].items()} == {"medqa_4options": 2, "pubmedqa": 2}
    for bench in ("medqa_4options", "pubmedqa"):
        (samples,) = (tmp_path / "e/eval").glob(f"*/samples/{bench}.jsonl")
        assert len(samples.read_text().splitlines()) == 2
