"""A successful run leaves no failed task and no heap of dead actors on the dashboard (issue 14, 4).

`prepare`, a short LoRA `train` that streams its input from the files (the distributed Parquet
read) and a one-trial `sweep` run in a child process on a cluster of their own with the dashboard
on: Ray's state API, which the dashboard's pages show, needs it, and the session cluster has none.
The child prints what the state API lists; the test asserts on that.

HEAVY: about 2 minutes on 2 cores.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
from rays_own import OURS_DEAD, RAYS_OWN_DEAD, rays_own_failure

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

def _workload(tmp: str) -> dict:
    """Runs in the child: the three stages, then the state API's failed tasks and dead actors."""
    import ray
    from ray.util import state

    from med42_ray.cli import main
    from med42_ray.config import load_config
    from med42_ray.data.pipeline import run_prepare
    from med42_ray.train.trainer import run_train

    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=0,
                   _node_ip_address="127.0.0.1", log_to_driver=False)
    run_prepare(load_config(None, [f"run_dir={tmp}"]))
    prepared = f"{tmp}/prepared"
    run_train(load_config(None, [
        f"run_dir={tmp}/t", f"train.data_dir={prepared}", "train.strategy=lora", "train.max_steps=2",
        "train.scaling.num_workers=1", "train.scaling.threads_per_worker=1", "train.zero_stage=null",
        "train.peak_tflops=0.1", "train.export=false", "train.driver_read_max_mb=0"]))  # read_parquet
    rc = main(["sweep", "--run-dir", f"{tmp}/s", "--data-dir", prepared, "--num-samples", "1", "--max-steps", "2",
               "--eval-every", "2", "--num-workers", "1", "-o", "train.peak_tflops=0.1"])
    address = f"http://{ctx.dashboard_url}"
    # Task and actor events reach the state API after a short flush interval
    import time

    time.sleep(5)
    failed = state.list_tasks(address=address, filters=[("state", "=", "FAILED")], detail=True, limit=10000,
                              raise_on_missing_output=False)
    dead = state.list_actors(address=address, filters=[("state", "=", "DEAD")], detail=True, limit=10000,
                             raise_on_missing_output=False)
    total = len(state.list_tasks(address=address, limit=10000, raise_on_missing_output=False))
    ray.shutdown()
    return {"sweep_rc": rc, "tasks": total,
            "failed": [{"name": t.name, "error_type": t.error_type,
                        "error": (t.error_message or "").strip().splitlines()[-1:]} for t in failed],
            "dead": [{"class_name": a.class_name, "death_cause": a.death_cause} for a in dead]}


def test_successful_runs_leave_no_failed_tasks(tmp_path, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], check=False, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["sweep_rc"] == 0 and seen["tasks"] > 50  # the runs happened and their tasks were listed
    assert all(rays_own_failure(t["name"], t["error_type"]) for t in seen["failed"]), seen["failed"]
    dead = collections.Counter(a["class_name"] for a in seen["dead"])
    assert set(dead) <= RAYS_OWN_DEAD | OURS_DEAD, dead
    # Two Train runs (train, the trial): at most one of each per run, one Tune trial actor.
    assert all(n <= 2 for n in dead.values()), dead


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    print(json.dumps(_workload(sys.argv[1])))
