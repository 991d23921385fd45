"""Fault injection for exercising recovery: kill a training worker process once, mid-run."""

from __future__ import annotations

import os
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
            os._exit(1)
