"""Ending a trial's Ray Train run cleanly when ASHA stops the trial.

Tune stops a trial by stopping its actor, which would kill the Train controller it drives in the
middle of the run: the run's placement group and its request to Ray's autoscaling coordinator
would then stay held (minutes), and the next trial's Ray Data reads would find no CPU left. So:

1. the sweep creates one `StopRegistry` actor (0 CPU) and hands it to every trial;
2. when Tune completes or stops a trial, `RegisterStops` (a Tune callback, in the driver) records
   it right away: the trial actor itself is busy waiting for its next result and would hear of
   the stop only then;
3. the train loop asks the registry after every step (validation.Validation.stop_requested) and
   ends the run normally, so Train releases everything;
4. the trial actor's `cleanup` waits for that end before Tune lets the actor go.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from ray import tune

STOP_WAIT_S = 600  # how long a stopped trial waits for its Train run to wind down

# Trial id -> set once its Train run has returned. Per process: a trial actor runs one trial, in a
# thread of its own, while Tune calls `cleanup` on the actor's main thread.
_RUN_ENDED: dict[str, threading.Event] = {}


@contextmanager
def train_run(trial_id: str):
    """Marks the span of a trial's Train run, for `cleanup` to wait on."""
    ended = _RUN_ENDED[trial_id] = threading.Event()
    try:
        yield
    finally:
        ended.set()


class StopRegistry:
    """The trials Tune has completed or stopped (a Ray actor)."""

    def __init__(self):
        self._stopped: set[str] = set()

    def stop(self, trial_id: str) -> None:
        self._stopped.add(trial_id)

    def is_stopped(self, trial_id: str) -> bool:
        return trial_id in self._stopped


def create_registry():
    import ray

    return ray.remote(num_cpus=0)(StopRegistry).remote()


class RegisterStops(tune.Callback):
    """Records a trial in the registry as soon as Tune completes or stops it (ASHA included)."""

    def __init__(self, registry):
        self.registry = registry

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.registry.stop.remote(trial.trial_id)


def graceful_trainable(train_fn, registry):
    """`train_fn` (a Tune function trainable) whose actor, when stopped, waits for the function to
    return (its Train run to end cleanly) before going away."""
    from ray.tune.trainable.function_trainable import wrap_function

    class SweepTrial(wrap_function(train_fn)):
        _name = "sweep_trial"

        def cleanup(self):
            # This class travels by value (cloudpickle): look the event up in the imported module,
            # where the trial's function put it, not in a pickled copy. (Not the function's thread:
            # after returning, it waits for this actor's main thread to collect its last result.)
            from med42_ray.sweep import stopping

            ended = stopping._RUN_ENDED.pop(self.trial_id, None)
            if ended is not None and not ended.is_set():
                registry.stop.remote(self.trial_id)
                ended.wait(timeout=STOP_WAIT_S)
            super().cleanup()

    return SweepTrial
