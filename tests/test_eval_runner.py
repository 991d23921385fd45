"""The evaluation scheduler (`eval/runner.py`) on a real local Ray cluster of 2 CPUs: model groups
that do not fit together run one after another, and an actor killed with a task in flight loses
nothing and counts nothing twice."""

from __future__ import annotations

import re

import pytest

from med42_ray.benchmarks import load_benchmarks
from med42_ray.eval.prompts import Request, build_request
from med42_ray.eval.runner import ModelJob, RunnerSettings, run_jobs
from med42_ray.eval.scoring import Scorer
from med42_ray.eval.workers import load_model
from med42_ray.paths import resolve_path


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    """Twelve distinct MedQA requests from the packaged sample benchmarks."""
    root = resolve_path("pkg://sample/data/benchmarks")
    if not root.is_dir():
        pytest.skip("embedded sample benchmarks not built yet")
    unique = {}
    for it in load_benchmarks(root, ["medqa_4options"])["medqa_4options"]:
        r = build_request(it, "harness")
        unique.setdefault(r.key, r)
    return list(unique.values())[:12]


@pytest.fixture(scope="module")
def expected(tiny_model_dir, requests) -> dict[str, list[float]]:
    """The same requests scored in this process: key -> loglikelihoods."""
    tokenizer, model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    return {s.key: s.loglikelihoods for s in Scorer(model, tokenizer).score(requests)}


def assert_scored_like(results: dict, expected: dict[str, list[float]]) -> None:
    assert set(results) == set(expected)
    for key, scored in results.items():
        assert scored.loglikelihoods == pytest.approx(expected[key], abs=1e-5)


def test_groups_that_do_not_fit_together_run_one_after_another(ray_cluster, tiny_model_dir, requests, expected):
    """Each group's actor wants both CPUs of the cluster: the second group's actor is created only
    once the first group has finished and released its own."""
    import ray

    jobs = [ModelJob(name, tiny_model_dir, None, requests) for name in ("first", "second")]
    settings = RunnerSettings(num_actors=1, cpus_per_actor=2, questions_per_task=3)
    seen = []  # (model, retried, done tasks, scoring actors alive at that moment)

    def record(ev):
        alive = {n for n in ray.util.list_named_actors() if n.startswith("med42-eval/")}
        seen.append((ev.model, ev.retried, ev.done_tasks, alive))

    results = run_jobs(jobs, settings, on_event=record)

    # 12 requests in tasks of 3: four results per model, each recorded once, first's all before second's
    assert [(model, retried, done) for model, retried, done, _ in seen] == [
        (model, False, done) for model in ("first", "second") for done in (1, 2, 3, 4)]
    first_alive = set().union(*(alive for model, _, _, alive in seen if model == "first"))
    # named med42-eval/<run>/<model>/<i>; while the first group runs, no actor of the second exists
    assert len(first_alive) == 1 and re.fullmatch(r"med42-eval/[0-9a-f]{6}/first/0", *first_alive), first_alive
    assert any("/second/" in n for model, _, _, alive in seen if model == "second" for n in alive)
    for name in ("first", "second"):
        assert_scored_like(results[name], expected)


def test_killed_actor_requeues_its_task_in_flight_and_counts_it_once(ray_cluster, tiny_model_dir, requests,
                                                                     expected):
    """One actor, two tasks in flight: killing it after its first result fails the second task,
    which is re-queued and scored by the restarted actor, once."""
    import ray

    settings = RunnerSettings(num_actors=1, cpus_per_actor=1, questions_per_task=2)
    events = []

    def kill_after_first(ev):
        events.append(ev)
        if not ev.retried and ev.done_tasks == 1:
            ray.kill(ev.actors[0], no_restart=False)  # Ray restarts it; its task in flight fails

    results = run_jobs([ModelJob("killed", tiny_model_dir, None, requests)], settings, on_event=kill_after_first)

    retried = [ev.task.id for ev in events if ev.retried]
    assert retried, "the kill hit no task in flight"
    finished = [ev.task.id for ev in events if not ev.retried]
    assert sorted(finished) == list(range(6)) and set(retried) <= set(finished)
    assert events[-1].done_tasks == events[-1].total_tasks == 6
    assert_scored_like(results["killed"], expected)
