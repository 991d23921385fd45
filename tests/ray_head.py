"""A Ray head started as a user starts one on a laptop (`ray start --head`), for the tests that
need a cluster outliving one command: `ray job submit`, Prometheus scraping, the dashboard in a
browser. Loopback only, 2 CPUs, dashboard and job server on, token auth on. It is a separate
cluster from the tests' in-process one (every port its own), stopped by signalling its own process
group (never `ray stop`, which would stop every cluster on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# How often each process hands its metrics to the node's agent (Ray's default is 10 s): 1 s lets
# a short test run be scraped several times.
METRICS_REPORT_INTERVAL_MS = 1000


@dataclass
class RayHead:
    dashboard: str     # http://127.0.0.1:<port>: dashboard, job server, state API
    gcs: str           # 127.0.0.1:<port>: RAY_ADDRESS for a driver (a `med42-ray` command)
    temp: Path         # --temp-dir: the session's logs, Ray's prometheus.yml and grafana files
    metrics_port: int  # the node's metrics export port (Prometheus scrapes it)

    @property
    def session(self) -> Path:
        return self.temp / "session_latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict:
    """Token auth is on for a local head; every client must say so (README: "Token authentication")."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def start_head():
    """Generator: yields a RayHead once its job server answers, stops it afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dash, gcs, metrics = free_port(), free_port(), free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={free_port()}",
           f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    env = cli_env(RAY_metrics_report_interval_ms=str(METRICS_REPORT_INTERVAL_MS),
                  RAY_TRAIN_ENABLE_STATE_TRACKING="1")
    env.pop("RAY_ADDRESS", None)
    # `ray start --head` turns token auth on only when a token exists (a fresh machine has none),
    # and with RAY_AUTH_MODE=token refuses to start without one: make it first, as README says.
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True)
    head = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited: {(temp / 'head.log').read_text()[-2000:]}")
            probe = subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", address],
                                   env=cli_env(), capture_output=True, text=True)
            if probe.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError(f"job server not up: {probe.stderr[-2000:]}")
            time.sleep(2)
        yield RayHead(address, f"127.0.0.1:{gcs}", temp, metrics)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
