"""What a successful run may leave on the dashboard that is Ray's own, not ours, and why it cannot
be avoided (README "Failed tasks and dead actors that are Ray's own"). Shared by
tests/test_clean_runs.py (the state API) and tests/test_dashboard_browser.py (the pages)."""

# Dead actors, one set per Train run or Tune trial:
RAYS_OWN_DEAD = {
    # Ray Train ends each run by `ray.kill`ing its worker group and the group's helpers.
    "RayTrainWorker", "SynchronizationActor", "PreemptionWatcher",
    # Train's placement-group cleaner exits by itself once its run has ended.
    "PlacementGroupCleaner",
    # The run's controller, released when `fit()` returns.
    "TrainController",
    # Ray Data's streaming split that feeds Train's workers; they die with their owner, the run.
    "DatasetManager", "SplitCoordinator",
    # Tune's trial actor, which Tune ends with its trial.
    "with_resources.<locals>.ResourceTrainable",
}
# Ours, one per sweep, released when the sweep returns: its stop registry and its report relay.
OURS_DEAD = {"StopRegistry", "ReportRelay"}
# A failed task that is Ray's own: Ray Train's PlacementGroupCleaner.stop() calls exit_actor()
# inside the task when its monitor thread has not exited by itself, and Ray records the task as
# FAILED (WORKER_DIED, "exit_actor() is called"). A race inside Ray Train, in any run; seen in 1 of
# 2 sweeps here.
RAYS_OWN_FAILED = {"PlacementGroupCleaner.stop"}
# Ray's own detached singletons, called by Ray Train's controller (the run's state record) and by
# Ray Data (resource requests) in every run, never by our code. Both are created with
# max_restarts=-1 and max_task_retries=-1, so Ray retries a call whose attempt dies. CI saw a train
# job with four such failed attempts (TrainStateActor.create_or_update_train_run x2,
# .create_or_update_train_run_attempt, _AutoscalingCoordinatorActor.request_resources) while the
# run's record still read FINISHED with its one attempt. A failed attempt of theirs is Ray's
# bookkeeping unless the method itself raised (TASK_EXECUTION_EXCEPTION): that one would be a real
# error, perhaps from what our run handed Ray, and fails the tests.
RAYS_OWN_ACTORS = {"TrainStateActor", "_AutoscalingCoordinatorActor"}


def rays_own_failure(name: str, error_type: str | None) -> bool:
    """Whether a failed task (its name, `Class.method` for an actor task) is Ray's own."""
    if name in RAYS_OWN_FAILED:
        return True
    return name.split(".")[0] in RAYS_OWN_ACTORS and error_type != "TASK_EXECUTION_EXCEPTION"
