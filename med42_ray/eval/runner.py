"""Fan the scoring out on Ray: one group of named actors per model, tasks of questions, retries.

Each model gets `num_actors` ScoringActor replicas (named `med42-eval/<run>/<model>/<i>`, so the
dashboard shows which actor serves which model). Unique requests (equal prompt + continuations are
scored once) are cut into tasks of `questions_per_task`, grouped by prompt length so batches pad
little. The runner keeps two tasks in flight per live actor. Groups whose actors fit the cluster
together run in parallel; the rest start as soon as a finished group's actors are released.

Fault tolerance: actors are created with max_restarts=-1. When a task fails because its actor
died, the task goes back to the front of its model's queue and is sent to whichever replica is
ready next (the dead one is restarted by Ray and rejoins after its `ready()` answers). Results are
stored by request key, and a task is recorded once: nothing is lost or counted twice.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from med42_ray.eval.prompts import Request
from med42_ray.eval.scoring import Scored
from med42_ray.eval.workers import ScoringActor

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 2
REPING_SECONDS = 0.5


@dataclass
class ModelJob:
    name: str
    path: str
    adapter: str | None
    requests: list[Request]  # unique by key


@dataclass
class Task:
    id: int
    model: str
    requests: list[Request]
    attempts: int = 0


@dataclass
class Event:
    """Passed to `on_event` after each finished task (progress bars, tests that kill actors)."""

    model: str
    task: Task
    actors: list  # the model's actor handles
    done_tasks: int
    total_tasks: int
    retried: bool = False


@dataclass
class _Group:
    job: ModelJob
    queue: collections.deque
    actors: list = field(default_factory=list)
    ready: list = field(default_factory=list)  # per actor: is it known alive?
    inflight: list = field(default_factory=list)  # per actor: tasks in flight
    results: dict = field(default_factory=dict)  # key -> Scored
    done_tasks: set = field(default_factory=set)
    total_tasks: int = 0
    started: bool = False
    finished: bool = False


@dataclass
class RunnerSettings:
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    dtype: str = "auto"
    questions_per_task: int = 32
    max_batch_tokens: int = 8192
    max_length: int | None = None
    max_task_retries: int = 3


def make_tasks(model: str, requests: Sequence[Request], per_task: int, first_id: int = 0) -> list[Task]:
    ordered = sorted(requests, key=lambda r: len(r.context), reverse=True)
    return [Task(first_id + i, model, ordered[s: s + per_task])
            for i, s in enumerate(range(0, len(ordered), per_task))]


def run_jobs(jobs: Sequence[ModelJob], settings: RunnerSettings,
             on_event: Callable[[Event], None] | None = None) -> dict[str, dict[str, Scored]]:
    """Score every job's requests on Ray; returns {model name: {request key: Scored}}."""
    run_id = uuid.uuid4().hex[:6]
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    groups, next_id = [], 0
    for job in jobs:
        tasks = make_tasks(job.name, job.requests, settings.questions_per_task, next_id)
        next_id += len(tasks)
        groups.append(_Group(job, collections.deque(tasks), total_tasks=len(tasks)))
    cpu_total = ray.cluster_resources().get("CPU", 1)
    gpu_total = ray.cluster_resources().get("GPU", 0)
    per_group_cpu = settings.cpus_per_actor * settings.num_actors
    if per_group_cpu > cpu_total or (gpus and gpus * settings.num_actors > gpu_total):
        log.warning("%d actors of %s CPU / %s GPU do not all fit the cluster (%s CPU, %s GPU): "
                    "the ones that do not will wait", settings.num_actors, settings.cpus_per_actor, gpus,
                    cpu_total, gpu_total)
    threads = max(1, int(settings.cpus_per_actor)) if not gpus else None
    actor_cls = ray.remote(ScoringActor)

    def start(group: _Group) -> None:
        group.started = True
        for i in range(settings.num_actors):
            actor = actor_cls.options(
                name=f"med42-eval/{run_id}/{group.job.name}/{i}", num_cpus=settings.cpus_per_actor,
                num_gpus=gpus, max_restarts=-1, max_task_retries=0,
            ).remote(group.job.path, group.job.adapter, settings.dtype, settings.max_batch_tokens,
                     settings.max_length, threads)
            group.actors.append(actor)
            group.ready.append(False)
            group.inflight.append(0)
            pending[actor.ready.remote()] = ("ready", group, i, None)

    def used() -> tuple[float, float]:
        active = [g for g in groups if g.started and not g.finished]
        n = sum(len(g.actors) for g in active)
        return n * settings.cpus_per_actor, n * gpus

    def start_what_fits() -> None:
        for g in groups:
            if g.started:
                continue
            cpu, gpu = used()
            fits = cpu + per_group_cpu <= cpu_total and (not gpus or gpu + gpus * settings.num_actors <= gpu_total)
            if fits or (cpu == 0 and gpu == 0):  # an idle cluster always takes the next group
                start(g)
            else:
                break

    def dispatch(group: _Group) -> None:
        for i, actor in enumerate(group.actors):
            while group.ready[i] and group.inflight[i] < IN_FLIGHT_PER_ACTOR and group.queue:
                task = group.queue.popleft()
                group.inflight[i] += 1
                pending[actor.score.remote(task.id, task.requests)] = ("task", group, i, task)

    def finish(group: _Group) -> None:
        group.finished = True
        for actor in group.actors:
            ray.kill(actor, no_restart=True)
        log.info("model %s: %d tasks scored", group.job.name, group.total_tasks)

    pending: dict = {}
    failures: collections.Counter = collections.Counter()
    for g in groups:
        if g.total_tasks == 0:
            g.started = g.finished = True
    start_what_fits()
    repings: list = []  # (when, group, actor index): actors being restarted by Ray
    while pending or repings:
        now = time.monotonic()
        for when, g, i in [r for r in repings if r[0] <= now]:
            repings.remove((when, g, i))
            pending[g.actors[i].ready.remote()] = ("ready", g, i, None)
        done, _ = ray.wait(list(pending), num_returns=1, timeout=REPING_SECONDS)
        if not done:
            continue
        kind, group, i, task = pending.pop(done[0])
        if kind == "ready":
            try:
                ray.get(done[0])
            except ActorUnavailableError:  # Ray is restarting it: ask again in a moment
                if not group.finished:
                    repings.append((time.monotonic() + REPING_SECONDS, group, i))
                continue
            except RayActorError as e:
                if group.finished:
                    continue
                failures[(group.job.name, i)] += 1
                if failures[(group.job.name, i)] > settings.max_task_retries:
                    raise RuntimeError(f"scoring actor {i} for model {group.job.name!r} could not start: {e}") from e
                pending[group.actors[i].ready.remote()] = ("ready", group, i, None)
                continue
            group.ready[i] = True
            dispatch(group)
            continue
        group.inflight[i] -= 1
        try:
            task_id, scored = ray.get(done[0])
        except (RayActorError, ActorUnavailableError) as e:
            task.attempts += 1
            if task.attempts > settings.max_task_retries:
                raise RuntimeError(f"task {task.id} of model {group.job.name!r} failed "
                                   f"{task.attempts} times; last error: {e}") from e
            log.warning("actor %d of %s died with task %d in flight: re-queued (attempt %d)",
                        i, group.job.name, task.id, task.attempts + 1)
            group.queue.appendleft(task)
            if group.ready[i]:  # wait until Ray has restarted it before sending more work
                group.ready[i] = False
                pending[group.actors[i].ready.remote()] = ("ready", group, i, None)
            dispatch(group)
            if on_event:
                on_event(Event(group.job.name, task, group.actors, len(group.done_tasks), group.total_tasks,
                               retried=True))
            continue
        if task_id not in group.done_tasks:  # a task is recorded once, whatever happened before
            group.done_tasks.add(task_id)
            for s in scored:
                group.results.setdefault(s.key, s)
        if on_event:
            on_event(Event(group.job.name, task, group.actors, len(group.done_tasks), group.total_tasks))
        dispatch(group)
        if not group.queue and not any(group.inflight) and len(group.done_tasks) == group.total_tasks:
            finish(group)
            start_what_fits()
    for g in groups:
        missing = {r.key for r in g.job.requests} - set(g.results)
        if missing:
            raise RuntimeError(f"model {g.job.name!r}: {len(missing)} requests were never scored")
    return {g.job.name: g.results for g in groups}
