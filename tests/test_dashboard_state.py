"""What the Ray dashboard shows of our runs: a Train run under its stage's name with its workers,
status and restart after a worker failure, and datasets named for what they are.

Asked of the two actors the dashboard itself reads: Ray Train's state actor (the Train page,
/api/train/v2/runs/v1) and Ray Data's stats actor (the Data page, /api/data/datasets/<job>). The
session cluster has no dashboard process; these actors live in the cluster either way.
"""

from __future__ import annotations

import pytest

from med42_ray.config import load_config
from med42_ray.train.faults import KillWorkerOnce
from med42_ray.train.trainer import input_dataset_name, run_train

pytestmark = pytest.mark.slow  # one short real Ray Train run with one restart (~1.5 min on 2 cores)

RUN = "train_lora"  # the pipeline's stage name, as its runs are named (pipeline/run.py)
WORKERS = 2


@pytest.fixture(scope="module")
def trained(sample_prepared, tiny_model_dir, tmp_path_factory):
    """A 2-step LoRA run named like the pipeline's train_lora stage; rank 1 dies after step 1."""
    run_dir = tmp_path_factory.mktemp("dashboard_state")
    cfg = load_config(None, [
        f"run_dir={run_dir}", f"train.data_dir={sample_prepared[0]}", "train.strategy=lora",
        f"train.run_name={RUN}", "train.max_steps=2", f"train.scaling.num_workers={WORKERS}",
        "train.scaling.threads_per_worker=1", "train.zero_stage=null", "train.peak_tflops=0.1",
        "train.export=false"])
    return run_train(cfg, step_hook=KillWorkerOnce(step=1, rank=1, marker=str(run_dir / "killed.txt")))


def _train_runs() -> tuple[list, dict]:
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    assert actor is not None, "no Ray Train state actor: RAY_TRAIN_ENABLE_STATE_TRACKING was off"
    return list(ray.get(actor.get_train_runs.remote()).values()), ray.get(actor.get_train_run_attempts.remote())


def test_train_run_is_listed_under_its_stage_name_with_its_workers(trained):
    import ray

    runs, attempts = _train_runs()
    ours = [r for r in runs if r.name == RUN]
    assert len(ours) == 1, [r.name for r in runs]
    run = ours[0]
    assert run.status.name == "FINISHED", (run.status, run.status_detail)
    assert run.job_id == ray.get_runtime_context().get_job_id()  # the Jobs page links it to this driver
    assert run.run_settings.datasets == ["train"]
    failed, restarted = attempts[run.id].values()  # the killed worker group, then its restart
    assert failed.status.name == "ERRORED", (failed.status, failed.status_detail)
    assert restarted.status.name == "FINISHED", (restarted.status, restarted.status_detail)
    for attempt in (failed, restarted):
        assert sorted(w.world_rank for w in attempt.workers) == list(range(WORKERS))
        assert all(w.pid > 0 and w.actor_id for w in attempt.workers)
    assert not {w.pid for w in failed.workers} & {w.pid for w in restarted.workers}  # new processes


def test_datasets_are_named_for_what_they_are(trained):
    import ray
    from ray.data._internal.stats import get_or_create_stats_actor

    datasets = ray.get(get_or_create_stats_actor().get_datasets.remote())
    # the dashboard's dataset ids are <name>_<uuid>_<execution index>
    names = {tag.rsplit("_", 2)[0] for tag in datasets}
    assert {"prepare.read_decontaminate", "prepare.pack", input_dataset_name(RUN)} <= names, sorted(names)
    assert not {n for n in names if n == "dataset"}, sorted(datasets)  # nothing left unnamed
    for tag, state in datasets.items():
        if tag.startswith(("prepare.", f"{RUN}.")):
            assert state["state"] == "FINISHED", (tag, state["state"])
            assert state["operators"], tag
