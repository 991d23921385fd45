"""A real Prometheus (Debian's package) scrapes a `ray start --head` cluster through Ray's own
service discovery, as README "Metrics in Prometheus and Grafana" sets it up, and returns
med42-ray's per-step training metrics and evaluation progress (issue 14, item 2).

Prometheus runs Ray's generated prometheus.yml (session_latest/metrics/prometheus/), with only
the scrape interval cut from 10 s to 1 s so that a short run is scraped several times; the head
hands metrics to its agent every second (tests/ray_head.py).

HEAVY: about 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from ray_head import VENV_BIN, cli_env, free_port

from med42_ray.ray_metrics import grafana_dashboard

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

PROMETHEUS = shutil.which("prometheus")
TRAIN_RUN = "train_lora"


def _query(url: str, path: str, **params) -> list:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(ray_head, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (CI installs Debian's package: .ci/run)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ray_head.session / "metrics" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address={url[7:]}"],
                            stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((work / "prometheus.log").read_text()[-2000:])
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _med42_ray(head, *args: str, log: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "med42-ray"), *args], env=cli_env(RAY_ADDRESS=head.gcs),
                          stdout=open(log, "w"), stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]


def _samples(url: str, query: str, start: float) -> list[float]:
    """Every value Prometheus holds for `query` since `start`, at 1 s resolution, in time order."""
    series = _query(url, "/api/v1/query_range", query=query, start=start, end=time.time(), step="1s")
    return [float(v) for s in series for _, v in s["values"]]


def _wait_for(url: str, query: str, start: float, ready, timeout: float = 30) -> list[float]:
    """The samples once `ready(samples)` holds: the last values arrive a scrape after the run ends."""
    deadline = time.time() + timeout
    while True:
        values = _samples(url, query, start)
        if ready(values) or time.time() > deadline:
            return values
        time.sleep(1)


@pytest.fixture(scope="module")
def prepared_on_head(ray_head, prometheus, tmp_path_factory):
    """`med42-ray prepare` on the embedded sample, run on the head: (prepared dir, start time)."""
    run_dir = tmp_path_factory.mktemp("prepare")
    start = time.time()
    _med42_ray(ray_head, "prepare", "--run-dir", str(run_dir), log=run_dir / "prepare.log")
    return run_dir / "prepared", start


def test_prometheus_returns_data_operator_rows_and_bytes(prometheus, prepared_on_head):
    """The dashboard's Data page reads its per-operator rows and bytes from Prometheus: with one
    running they are real figures, under our datasets' names."""
    prepared, start = prepared_on_head
    manifest = json.loads((prepared / "manifest.json").read_text())
    for dataset in ("prepare.read_decontaminate", "prepare.pack"):
        pattern = dataset.replace(".", "\\\\.")
        for figure in ("rows", "bytes"):
            values = _wait_for(prometheus, f'ray_data_output_{figure}{{dataset=~"{pattern}_.*"}}', start,
                               lambda v: v and max(v) > 0)
            assert values and max(values) > 0, (dataset, figure, values)
    # the packing stage's last operator wrote every packed row
    pack = _query(prometheus, "/api/v1/query",
                  query='max_over_time(ray_data_output_rows{dataset=~"prepare\\\\.pack_.*"}[10m])')
    assert max(float(s["value"][1]) for s in pack) >= manifest["sequences"]


def test_prometheus_returns_per_step_training_loss(ray_head, prometheus, prepared_on_head, tmp_path):
    prepared, _ = prepared_on_head
    start = time.time()
    _med42_ray(ray_head, "train", "--run-dir", str(tmp_path), "--data-dir", str(prepared), "--strategy", "lora",
               "--max-steps", "40", "--num-workers", "1", "-o", f"train.run_name={TRAIN_RUN}",
               "-o", "train.export=false", "-o", "train.peak_tflops=0.1",  # a CPU has no datasheet peak: MFU needs one
               log=tmp_path / "train.log")
    rows = [json.loads(line) for line in (tmp_path / "train" / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))

    selector = f'{{run="{TRAIN_RUN}"}}'
    steps = _wait_for(prometheus, f"ray_med42_train_step{selector}", start, lambda v: v and max(v) == 40)
    assert steps and max(steps) == 40, steps
    assert steps == sorted(steps)  # the step gauge only moves forward
    losses = _samples(prometheus, f"ray_med42_train_loss{selector}", start)
    # A per-step series: several distinct steps scraped, each value one step's logged loss.
    logged = [r["loss"] for r in rows]
    assert len(set(losses)) >= 3, losses
    for value in losses:
        assert any(math.isclose(value, x, rel_tol=1e-9) for x in logged), (value, logged)
    assert math.isclose(losses[-1], logged[-1], rel_tol=1e-9)
    for figure in ("lr", "grad_norm", "tokens_per_s", "mfu", "epoch"):
        assert _samples(prometheus, f"ray_med42_train_{figure}{selector}", start), figure
    # Every training panel of our Grafana dashboard draws a line for this run.
    for panel in grafana_dashboard()["panels"]:
        for target in panel["targets"]:
            if "train" in target["expr"]:
                assert _samples(prometheus, target["expr"].replace("$run", TRAIN_RUN), start), panel["title"]


def test_prometheus_returns_evaluation_progress(ray_head, prometheus, tmp_path):
    start = time.time()
    out = tmp_path / "eval"
    _med42_ray(ray_head, "evaluate", "--run-dir", str(tmp_path), "--output-dir", str(out), "--limit", "4",
               "--num-actors", "1", "--benchmarks", "medqa_4options,pubmedqa", log=tmp_path / "evaluate.log")
    evaluation = f'evaluation="{out.resolve()}"'
    for benchmark in ("medqa_4options", "pubmedqa"):
        selector = f'{{{evaluation},benchmark="{benchmark}"}}'
        total = _wait_for(prometheus, f"ray_med42_eval_questions_total{selector}", start, bool)
        assert total and total[-1] == 4, (benchmark, total)
        done = _wait_for(prometheus, f"ray_med42_eval_questions_done{selector}", start, lambda v: v and v[-1] == 4)
        assert done and done[-1] == 4 and done == sorted(done), (benchmark, done)
    rate = _samples(prometheus, f"ray_med42_eval_questions_per_s{{{evaluation}}}", start)
    assert rate and rate[-1] > 0, rate
    for panel in grafana_dashboard()["panels"]:
        for target in panel["targets"]:
            if "eval" in target["expr"]:
                assert _samples(prometheus, target["expr"], start), panel["title"]
