"""What a training run writes to its job log: our lines once, a progress line every N steps, and
library noise kept out.

Ray Train V2 patches `print` in its workers to go through its logger, which also tees to the
(captured) stdout: every printed line reached the job log twice. Our lines go to stdout directly.
Ray Train also logs each `ray.train.report` at INFO ("Reporting training result N:
TrainingReport(...)", the whole metrics dict, from every rank); the figures a user reads are in
our progress line, metrics.jsonl, Prometheus and the trackers, so that logger keeps its warnings
only, and transformers' weight-loading bar (a line per redraw in a log) is off. Two deprecation warnings that every worker raised on every run come from inside peft and
DeepSpeed, not from anything a user can change; they are filtered by their exact text, so any
other warning still shows.
"""

from __future__ import annotations

import logging
import sys
import warnings

PREFIX = "[med42-ray]"
# (message regex, category): raised inside libraries we call, once per worker per run.
LIBRARY_DEPRECATIONS = [
    # peft's PeftModel reads model.is_gradient_checkpointing, which transformers 5 deprecates
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # DeepSpeed's comm layer calls torch.distributed.all_gather_into_tensor (ZeRO-3 gathers)
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning),
]


def say(text: str) -> None:
    """One line in the job log (stdout, not Ray Train's patched print, which doubles it)."""
    sys.stdout.write(f"{PREFIX} {text}\n")
    sys.stdout.flush()


def quiet_library_noise() -> None:
    """In a Ray Train worker, before the engine is built (see the module doc)."""
    from ray.train.v2._internal.execution import context as train_context
    from transformers.utils import logging as hf_logging

    train_context.logger.setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()  # "Loading weights" bars: redraws are lines in a job log
    for message, category in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category)


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(row: dict, total_steps: int, epochs: int, elapsed_s: float, eta_s: float | None) -> str:
    """`step 20/120 | epoch 1/3 | loss 2.3456 | lr 1.20e-05 | 1,234 tokens/s | 1m02s elapsed | ETA 5m10s`.
    `epoch` counts from 1 (the epoch the step belongs to); tokens/s is the step's, all workers."""
    epoch = min(row["epoch"] + 1, epochs)
    parts = [f"step {row['step']}/{total_steps}", f"epoch {epoch}/{epochs}", f"loss {row['loss']:.4f}",
             f"lr {row['lr']:.2e}", f"{row['tokens_per_s']:,.0f} tokens/s", f"{duration(elapsed_s)} elapsed"]
    if eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return " | ".join(parts)


class ProgressLog:
    """Rank 0's progress line every `every` steps and at the last step (every=0: never)."""

    def __init__(self, every: int, total_steps: int, epochs: int, started_at: float):
        self.every, self.total_steps, self.epochs, self.started_at = every, total_steps, epochs, started_at
        self.first: tuple[int, float] | None = None  # (step, wall time) of the first step seen

    def step(self, row: dict, now: float) -> None:
        if self.first is None:
            self.first = (row["step"], now)  # the rate counts from here: start-up is not training
        if not self.every or (row["step"] % self.every and row["step"] != self.total_steps):
            return
        done = row["step"] - self.first[0]
        eta = (self.total_steps - row["step"]) * (now - self.first[1]) / done if done > 0 else None
        say(progress_line(row, self.total_steps, self.epochs, now - self.started_at, eta))
