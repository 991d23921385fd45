"""`ray job submit` of jobs/pipeline.py on a local head with token auth, as a user runs it:
the job succeeds and writes its report; a failure injected mid-training fails the first
submission, and resubmitting skips the finished stages and resumes training from its checkpoint.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ray_head import VENV_BIN, cli_env

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parents[1]


def _ray_job(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command, *rest = args  # the address goes before any `--`: what follows it is the entrypoint
    result = subprocess.run([str(VENV_BIN / "ray"), "job", command, "--address", address, *rest],
                            env=cli_env(), capture_output=True, text=True, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"ray job {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _submit_and_wait(address: str, entrypoint: list[str], timeout: float = 900):
    job_id = f"med42_test_{uuid.uuid4().hex[:12]}"  # fixed per submission, so a retry cannot start a twin
    submit = ("submit", "--no-wait", "--submission-id", job_id, "--working-dir", ".",
              "--runtime-env", "jobs/runtime_env.yaml", "--", *entrypoint)
    for _ in range(40):  # the head's job agent comes up a little after the job API answers
        result = _ray_job(address, *submit, check=False)
        if result.returncode == 0 or "already exists" in result.stderr:
            break
        if not any(m in result.stderr for m in ("No available agent", "Connection aborted", "Failed to connect")):
            break
        time.sleep(3)
    assert result.returncode == 0 or "already exists" in result.stderr, result.stderr[-3000:]
    # Statuses from the Job SDK in a client process of its own: RAY_AUTH_MODE is read when ray is
    # imported, and this test process imported it without token auth (the in-process cluster).
    probe = (f"from ray.job_submission import JobSubmissionClient as C; "
             f"print(C({address!r}).get_job_status({job_id!r}).value)")
    deadline = time.time() + timeout
    while time.time() < deadline:
        reply = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True)
        status = reply.stdout.strip().splitlines()[-1] if reply.returncode == 0 else ""
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status, _ray_job(address, "logs", job_id).stdout
        time.sleep(5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _markdown_table(md: str, first_header: str) -> dict[str, dict[str, str]]:
    """The Markdown table whose first header cell is `first_header`, as {row label: {column: cell}}."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_pipeline_job_fails_then_resumes_and_reports(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    entrypoint = [
        "python", "jobs/pipeline.py", "--run-dir", str(run_dir), "--limit", "4",
        "-o", "pipeline.pretrain.train.max_steps=2", "-o", "pipeline.full.max_steps=4",
        "-o", "pipeline.lora.max_steps=2", "-o", "train.checkpoint_every_steps=2",
        "-o", "evaluate.num_actors=1",
        # The injected failure: a worker dies after step 3 of the full run, and no in-job retry,
        # so the job fails; the second submission must pick up from the step-2 checkpoint.
        "-o", "train.max_failures=0", "-o", "pipeline.kill_worker={stage: train_full, step: 3}",
    ]
    status, logs = _submit_and_wait(ray_head.dashboard, entrypoint)
    assert status == "FAILED", logs[-3000:]
    stages = run_dir / "stages"
    assert {p.stem for p in stages.glob("*.json")} == {"prepare", "pretrain_prepare", "pretrain", "evaluate_base"}
    assert (stages / "train_full.worker_killed").is_file()
    assert _steps(run_dir / "train" / "full" / "metrics.jsonl") == [1, 2, 3]

    status, logs = _submit_and_wait(ray_head.dashboard, entrypoint)
    assert status == "SUCCEEDED", logs[-3000:]
    for stage in ("prepare", "pretrain_prepare", "pretrain", "evaluate_base"):
        assert f"[pipeline] {stage}: already finished" in logs
    assert "[pipeline] train_full: starting" in logs
    assert re.search(r"resumed from checkpoint \S+step_00000002: step 2", logs), logs[-3000:]
    full = run_dir / "train" / "full"
    # Resumed, not restarted: steps 1-2 were trained once, only step 3 (after the checkpoint) again.
    assert _steps(full / "metrics.jsonl") == [1, 2, 3, 4]
    assert _steps(full / "metrics.superseded.jsonl") == [3]
    assert (full / "model" / "model.safetensors").is_file()
    assert (run_dir / "train" / "lora" / "adapter" / "adapter_config.json").is_file()

    # The report's table is the evaluations' results.json, cell for cell.
    report = run_dir / "report"
    md = (report / "report.md").read_text()
    table = _markdown_table(md, "benchmark")
    for label in ("base", "full", "lora"):
        results = json.loads((run_dir / "eval" / label / "results.json").read_text())
        benchmarks = results["models"][label]["benchmarks"]
        assert benchmarks, label
        for name, metrics in benchmarks.items():
            cell = table[name][label]
            assert float(cell.split("±")[0]) == pytest.approx(round(100 * metrics["acc"], 1), abs=0.051), (name, label)
    for png in ("loss_curves.png", "comparison.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (report / "report.html").read_text()
    assert f"report: {report / 'report.md'}" in logs
