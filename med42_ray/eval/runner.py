"""Fan the scoring out on Ray: one group of named actors per model, tasks of questions, retries.

Each model gets `num_actors` ScoringActor replicas (named `med42-eval/<run>/<model>/<i>`, so the
dashboard shows which actor serves which model). Unique requests (equal prompt + continuations are
scored once) are cut into tasks of `questions_per_task`, grouped by prompt length so batches pad
little. `_Scheduler` keeps two tasks in flight per ready actor. Groups whose actors fit the cluster
together run in parallel; the rest start, in order, as soon as a finished group's actors are
released (an idle cluster always takes the next group, even one that does not fit it all).

Fault tolerance: actors are created with max_restarts=-1. When a task fails because its actor
died, the task goes back to the front of its model's queue (up to `max_task_retries` times) and is
sent to whichever replica is ready next; the dead one is restarted by Ray and rejoins after its
`ready()` answers. Results are stored by request key, and a task is recorded once by id: nothing
is lost or counted twice.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from med42_ray.eval import cost
from med42_ray.eval.generation import GenerationRequest
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
    requests: list[Request | GenerationRequest]  # unique by key
    # eval/cost.py: answered again, timed, by one of the model's actors once all are answered;
    # `cost` gets the figures by variant
    cost_requests: list[Request | GenerationRequest] = field(default_factory=list)
    cost: dict[str, dict] = field(default_factory=dict)


@dataclass
class Task:
    id: int
    model: str
    requests: list[Request | GenerationRequest]  # of one kind: the actor method `method` takes them
    attempts: int = 0

    @property
    def method(self) -> str:
        """The ScoringActor method that answers this task: log-likelihoods or generations."""
        return "generate" if isinstance(self.requests[0], GenerationRequest) else "score"


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
    """One model's actors, its queue of tasks and what has come back."""

    job: ModelJob
    queue: collections.deque
    actors: list = field(default_factory=list)
    ready: list = field(default_factory=list)  # per actor: is it known alive?
    inflight: list = field(default_factory=list)  # per actor: tasks in flight
    results: dict = field(default_factory=dict)  # key -> Scored (or Generated)
    done_tasks: set = field(default_factory=set)
    total_tasks: int = 0
    started: bool = False
    finished: bool = False

    def record(self, task_id: int, scored: list[Scored]) -> None:
        if task_id not in self.done_tasks:  # a task is recorded once, whatever happened before
            self.done_tasks.add(task_id)
            for s in scored:
                self.results.setdefault(s.key, s)

    @property
    def complete(self) -> bool:
        return not self.queue and not any(self.inflight) and len(self.done_tasks) == self.total_tasks


class _Pending(NamedTuple):
    """What an object ref in flight answers: an actor's `ready()` (task None) or a task's result."""

    group: _Group
    actor_index: int
    task: Task | None


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


def make_tasks(model: str, requests: Sequence[Request | GenerationRequest], per_task: int,
               first_id: int = 0) -> list[Task]:
    """Tasks of one kind each (scoring or generation), longest prompts first within a kind."""
    ordered = sorted(requests, key=lambda r: len(r.context), reverse=True)
    tasks: list[Task] = []
    for generative in (False, True):
        kind = [r for r in ordered if isinstance(r, GenerationRequest) == generative]
        tasks += [Task(first_id + len(tasks) + i, model, kind[s: s + per_task])
                  for i, s in enumerate(range(0, len(kind), per_task))]
    return tasks


def _make_groups(jobs: Sequence[ModelJob], per_task: int) -> list[_Group]:
    """One group per job; task ids are unique across all groups."""
    groups, next_id = [], 0
    for job in jobs:
        tasks = make_tasks(job.name, job.requests, per_task, next_id)
        next_id += len(tasks)
        groups.append(_Group(job, collections.deque(tasks), total_tasks=len(tasks)))
    return groups


class _Scheduler:
    """Starts groups as the cluster allows, keeps their actors busy, re-queues the tasks of dead ones."""

    def __init__(self, jobs: Sequence[ModelJob], settings: RunnerSettings,
                 on_event: Callable[[Event], None] | None):
        self.settings, self.on_event = settings, on_event
        self.run_id = uuid.uuid4().hex[:6]
        resources = ray.cluster_resources()
        self.cpu_total, self.gpu_total = resources.get("CPU", 1), resources.get("GPU", 0)
        gpus = settings.gpus_per_actor
        self.gpus = gpus if gpus is not None else (1.0 if self.gpu_total >= 1 else 0.0)
        self.threads = max(1, int(settings.cpus_per_actor)) if not self.gpus else None
        self.actor_cls = ray.remote(ScoringActor)
        self.groups = _make_groups(jobs, settings.questions_per_task)
        self.pending: dict[ray.ObjectRef, _Pending] = {}
        self.repings: list[tuple[float, _Group, int]] = []  # (when, group, actor index): being restarted
        self.start_failures: collections.Counter = collections.Counter()  # (model, actor index) -> count
        self._warn_if_group_does_not_fit()

    def _warn_if_group_does_not_fit(self) -> None:
        s = self.settings
        too_many_gpus = self.gpus and self.gpus * s.num_actors > self.gpu_total
        if s.cpus_per_actor * s.num_actors > self.cpu_total or too_many_gpus:
            log.warning("%d actors of %s CPU / %s GPU do not all fit the cluster (%s CPU, %s GPU): "
                        "the ones that do not will wait", s.num_actors, s.cpus_per_actor, self.gpus,
                        self.cpu_total, self.gpu_total)

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, dict[str, Scored]]:
        for g in self.groups:
            if g.total_tasks == 0:
                g.started = g.finished = True
        self.start_what_fits()
        while self.pending or self.repings:
            self._send_due_repings()
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=REPING_SECONDS)
            if done:
                self._route(done[0])
        self._check_all_scored()
        return {g.job.name: g.results for g in self.groups}

    def _route(self, ref: ray.ObjectRef) -> None:
        group, i, task = self.pending.pop(ref)
        if task is None:
            self.on_ready(ref, group, i)
        else:
            self.on_result(ref, group, i, task)

    def _send_due_repings(self) -> None:
        now = time.monotonic()
        for entry in [r for r in self.repings if r[0] <= now]:
            self.repings.remove(entry)
            self._ping(entry[1], entry[2])

    # --- starting and stopping groups -----------------------------------------------------------

    def start(self, group: _Group) -> None:
        s = self.settings
        group.started = True
        for i in range(s.num_actors):
            actor = self.actor_cls.options(
                name=f"med42-eval/{self.run_id}/{group.job.name}/{i}", num_cpus=s.cpus_per_actor,
                num_gpus=self.gpus, max_restarts=-1, max_task_retries=0,
            ).remote(group.job.path, group.job.adapter, s.dtype, s.max_batch_tokens, s.max_length, self.threads)
            group.actors.append(actor)
            group.ready.append(False)
            group.inflight.append(0)
            self._ping(group, i)

    def start_what_fits(self) -> None:
        """Start waiting groups in order while they fit next to the running ones."""
        for g in self.groups:
            if g.started:
                continue
            if not self._fits_now():
                break
            self.start(g)

    def _fits_now(self) -> bool:
        s = self.settings
        n = sum(len(g.actors) for g in self.groups if g.started and not g.finished)
        cpu, gpu = n * s.cpus_per_actor, n * self.gpus
        if cpu == 0 and gpu == 0:  # an idle cluster always takes the next group
            return True
        return (cpu + s.cpus_per_actor * s.num_actors <= self.cpu_total
                and (not self.gpus or gpu + self.gpus * s.num_actors <= self.gpu_total))

    def finish(self, group: _Group) -> None:
        group.finished = True
        if group.job.cost_requests:
            self._measure_cost(group)
        for actor in group.actors:
            ray.kill(actor, no_restart=True)
        log.info("model %s: %d tasks scored", group.job.name, group.total_tasks)

    def _measure_cost(self, group: _Group) -> None:
        """The model's inference cost on a ready actor (eval/cost.py). Blocking: other models'
        tasks in flight go on meanwhile, and their results wait in Ray until this returns."""
        job = group.job
        tasks = [t.requests for t in make_tasks(job.name, job.cost_requests, self.settings.questions_per_task)]
        for i, actor in enumerate(group.actors):
            if not group.ready[i]:
                continue
            try:
                job.cost = cost.measure_on(actor, tasks, job.adapter)
                return
            except (RayActorError, ActorUnavailableError) as e:
                log.warning("model %s: actor %d died measuring the inference cost (%s); trying another", job.name, i, e)
            except RayTaskError as e:  # a measurement must not cost the scores: they are all in
                log.warning("model %s: measuring the inference cost failed; results.json has none for it: %s",
                            job.name, e)
                return
        log.warning("model %s: no actor left to measure the inference cost; results.json has none for it", job.name)

    # --- sending work ---------------------------------------------------------------------------

    def _ping(self, group: _Group, i: int) -> None:
        self.pending[group.actors[i].ready.remote()] = _Pending(group, i, None)

    def dispatch(self, group: _Group) -> None:
        """Top every ready actor of the group up to IN_FLIGHT_PER_ACTOR tasks."""
        for i, actor in enumerate(group.actors):
            while group.ready[i] and group.inflight[i] < IN_FLIGHT_PER_ACTOR and group.queue:
                task = group.queue.popleft()
                group.inflight[i] += 1
                call = getattr(actor, task.method).remote(task.id, task.requests)
                self.pending[call] = _Pending(group, i, task)

    # --- answers --------------------------------------------------------------------------------

    def on_ready(self, ref: ray.ObjectRef, group: _Group, i: int) -> None:
        """Actor i's `ready()` answered (it may now take tasks) or failed (ask again, within limits)."""
        try:
            ray.get(ref)
        except ActorUnavailableError:  # Ray is restarting it: ask again in a moment
            if not group.finished:
                self.repings.append((time.monotonic() + REPING_SECONDS, group, i))
            return
        except RayActorError as e:
            if not group.finished:
                self._retry_start(group, i, e)
            return
        group.ready[i] = True
        self.dispatch(group)

    def _retry_start(self, group: _Group, i: int, error: RayActorError) -> None:
        self.start_failures[(group.job.name, i)] += 1
        if self.start_failures[(group.job.name, i)] > self.settings.max_task_retries:
            raise RuntimeError(f"scoring actor {i} for model {group.job.name!r} could not start: {error}") from error
        self._ping(group, i)

    def on_result(self, ref: ray.ObjectRef, group: _Group, i: int, task: Task) -> None:
        """A task came back from actor i: record it, keep the actor busy, finish the group when done."""
        group.inflight[i] -= 1
        try:
            task_id, scored = ray.get(ref)
        except (RayActorError, ActorUnavailableError) as e:
            self.on_actor_died(group, i, task, e)
            return
        group.record(task_id, scored)
        self._emit(group, task)
        self.dispatch(group)
        if group.complete:
            self.finish(group)
            self.start_what_fits()

    def on_actor_died(self, group: _Group, i: int, task: Task, error: RayActorError) -> None:
        """Actor i died with `task` in flight: re-queue it first and wait for Ray to restart the actor."""
        task.attempts += 1
        if task.attempts > self.settings.max_task_retries:
            raise RuntimeError(f"task {task.id} of model {group.job.name!r} failed "
                               f"{task.attempts} times; last error: {error}") from error
        log.warning("actor %d of %s died with task %d in flight: re-queued (attempt %d)",
                    i, group.job.name, task.id, task.attempts + 1)
        group.queue.appendleft(task)
        if group.ready[i]:  # wait until Ray has restarted it before sending more work
            group.ready[i] = False
            self._ping(group, i)
        self.dispatch(group)
        self._emit(group, task, retried=True)

    def _emit(self, group: _Group, task: Task, retried: bool = False) -> None:
        if self.on_event:
            self.on_event(Event(group.job.name, task, group.actors, len(group.done_tasks), group.total_tasks,
                                retried=retried))

    def _check_all_scored(self) -> None:
        for g in self.groups:
            missing = {r.key for r in g.job.requests} - set(g.results)
            if missing:
                raise RuntimeError(f"model {g.job.name!r}: {len(missing)} requests were never scored")


def run_jobs(jobs: Sequence[ModelJob], settings: RunnerSettings,
             on_event: Callable[[Event], None] | None = None) -> dict[str, dict[str, Scored]]:
    """Score every job's requests on Ray; returns {model name: {request key: Scored, or Generated
    for a GenerationRequest}}."""
    return _Scheduler(jobs, settings, on_event).run()
