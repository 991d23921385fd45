"""Carrying a trial's validation reports from its Ray Train run to Tune, without polling.

Ray's own bridge (`ray.tune.integration.ray_train.TuneReportCallback`) puts each report in a
`ray.util.queue.Queue` that the trial actor polls every 0.2 s with `get(timeout=...)`: every poll
that finds nothing ends in `Empty` raised by the queue actor, a failed task on the dashboard, about
five a second for as long as a trial runs (103 in a 2-trial sweep of 4 steps, 266 in a user's).

Here one `ReportRelay` actor per sweep holds a queue per trial, and the trial waits on it with no
timeout: `next` returns the next report, or None once the Train run has ended. Every call returns.

The trial (`relay_reports`) runs its Train run in a thread of its own and, in the trial function's
thread, hands each report to `tune.report`, as Tune requires.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from med42_ray.sweep.run import (
    METRIC,  # Tune rejects results without the metric it optimises
)


class ReportRelay:
    """Trial id -> its reports not yet taken (an async Ray actor: waiting costs no thread)."""

    def __init__(self):
        self._queues: dict[str, asyncio.Queue] = {}

    def _queue(self, trial_id: str) -> asyncio.Queue:
        return self._queues.setdefault(trial_id, asyncio.Queue())

    async def put(self, trial_id: str, metrics: dict | None) -> None:
        """A report, or None: the run has ended."""
        self._queue(trial_id).put_nowait(metrics)

    async def next(self, trial_id: str) -> dict | None:
        metrics = await self._queue(trial_id).get()
        if metrics is None:
            self._queues.pop(trial_id, None)
        return metrics


def create_relay():
    import ray

    return ray.remote(num_cpus=0)(ReportRelay).remote()


def forward_reports(relay, trial_id: str):
    """A Ray Train callback (it runs in the Train controller) that sends rank 0's reports carrying
    validation metrics to the relay; the others have nothing for Tune."""
    import ray
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and METRIC in metrics[0]:
                ray.get(relay.put.remote(trial_id, dict(metrics[0])))  # in order, before the next step's

    return ForwardReports()


def relay_reports(relay, trial_id: str, train: Callable[[], None]) -> None:
    """Run `train()` (a Train run with `forward_reports`) in a thread, marked as the trial's Train
    run for stopping.py, `tune.report` each of its reports from this thread, and re-raise whatever
    `train` raised once its reports are all in."""
    import ray
    from ray import tune

    from med42_ray.sweep.stopping import train_run

    failure: list[Exception] = []

    def run() -> None:
        # The end marker goes in before train_run lets a stopped trial's actor go (stopping.py), so
        # that no `next` is left waiting in the relay for a trial that is gone.
        with train_run(trial_id):
            try:
                train()
            except Exception as e:  # noqa: BLE001 (re-raised in the trial's thread, where Tune records it)
                failure.append(e)
            finally:
                ray.get(relay.put.remote(trial_id, None))

    # Daemon: a stopped trial's actor goes away without this thread (stopping.py waits for the run).
    thread = threading.Thread(target=run, name=f"train-{trial_id}", daemon=True)
    thread.start()
    while (metrics := ray.get(relay.next.remote(trial_id))) is not None:
        tune.report(metrics)
    thread.join()
    if failure:
        raise failure[0]
