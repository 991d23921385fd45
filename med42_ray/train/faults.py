"""Fault injection for exercising recovery: kill a training worker process once, mid-run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillWorkerOnce:
    """A `step_hook` for `run_train`: after optimizer step `step`, worker `rank` dies abruptly
    (os._exit, no cleanup, as if the node had gone) the first time only. `marker` records that it
    happened, so the restarted worker group trains on."""

    step: int
    rank: int
    marker: str

    def __call__(self, *, step: int, rank: int) -> None:
        if step == self.step and rank == self.rank and not Path(self.marker).exists():
            Path(self.marker).write_text(f"killed rank {rank} after step {step}\n")
            # Ray Train's controller collects the workers' reports at each health check (every 2 s
            # by default); a checkpoint reported since the last one dies with the worker, as in a
            # real crash. Drills and tests mean "after the checkpoints so far are registered".
            time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
            os._exit(1)
