"""What a user reads in a job log (issue 15, item 2): `train` prints a progress line every N steps
and at the last, our lines once, no Ray Train report dumps, no library deprecation warnings
from every worker, no progress-bar redraws; `evaluate` gives readable progress lines.

Both commands run as a user runs them, with stdout a pipe (as in `ray job submit` or CI).
HEAVY: about 2 minutes on 2 cores.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

MED42_RAY = str(Path(sys.executable).with_name("med42-ray"))
PROGRESS = re.compile(r"^\[med42-ray\] step (\d+)/12 \| epoch 1/\d+ \| loss \d+\.\d{4} \| lr \d\.\d\de[-+]\d\d \| "
                      r"[\d,]+ tokens/s \| \d+(s|m\d\ds) elapsed( \| ETA \d+(s|m\d\ds))?$")


def _run(args: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    done = subprocess.run([MED42_RAY, *args], env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                          text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return out


def _strip_ray_prefix(line: str) -> str:
    """'(RayTrainWorker pid=123) text' -> 'text' (Ray prefixes each worker line, in colour on a TTY)."""
    return re.sub(r"^(\x1b\[\d+m)?\([A-Za-z]+ pid=\d+(, ip=[\d.]+)?\)(\x1b\[0m)? ", "", line)


def test_train_log_has_progress_lines_and_no_noise(sample_prepared, tmp_path):
    prepared, _ = sample_prepared
    out = _run(["train", "--run-dir", str(tmp_path), "--data-dir", str(prepared), "--strategy", "full",
                "--max-steps", "12", "--num-workers", "2", "-o", "train.log_every_steps=5",
                "-o", "train.export=false"])
    lines = [_strip_ray_prefix(line) for line in out.splitlines()]
    progress = [line for line in lines if PROGRESS.match(line)]
    assert [int(PROGRESS.match(line)[1]) for line in progress] == [5, 10, 12], "\n".join(lines[-60:])
    assert "ETA" in progress[0] and "ETA 0s" in progress[-1]
    ours = collections.Counter(line for line in lines if line.startswith("[med42-ray]"))
    assert ours and max(ours.values()) == 1, [line for line, n in ours.items() if n > 1]
    assert sum(line.startswith("[med42-ray] step 1 done") for line in lines) == 1
    for noise in ("Reporting training result", "TrainingReport(", "is_gradient_checkpointing",
                  "all_gather_into_tensor", "Loading weights"):
        assert noise not in out, noise


def test_evaluate_log_has_progress_lines_not_bar_redraws(tmp_path):
    out = _run(["evaluate", "--run-dir", str(tmp_path), "--limit", "3", "--num-actors", "1",
                "--benchmarks", "medqa_4options,pubmedqa"])
    assert "\r" not in out and "it/s]" not in out and "Loading weights" not in out
    final = [line for line in out.splitlines() if line.startswith("questions done: ")][-1]
    assert final == "questions done: medqa_4options 3/3, pubmedqa 3/3", final
