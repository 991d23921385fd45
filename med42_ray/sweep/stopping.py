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

from ray import tune

STOP_WAIT_S = 600  # how long a stopped trial waits for its Train run to wind down


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
            from ray.train._internal.session import get_session

            thread = get_session().training_thread
            if thread.is_alive():
                registry.stop.remote(self.trial_id)
                thread.join(timeout=STOP_WAIT_S)
            super().cleanup()

    return SweepTrial
