"""Stage markers: `<run_dir>/stages/<stage>.json`, written when a stage finishes.

A resubmitted pipeline skips every stage whose marker is there *and* was written for the same
inputs (a fingerprint of the stage's config and of the stages it reads from). A marker written
for other inputs is an error, not a silent rerun or a silent reuse: the user decides.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from med42_ray.errors import ConfigError


def fingerprint(inputs: Any, upstream: list[str]) -> str:
    text = json.dumps({"inputs": inputs, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageMarkers:
    def __init__(self, stages_dir: Path):
        self.dir = stages_dir

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def finished(self, stage: str, expected: str) -> dict | None:
        """The marker of a finished stage, None if it has not finished; raises if it finished
        with other inputs."""
        path = self.path(stage)
        if not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text())
            found = marker["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a stage marker ({e}); delete it to rerun stage {stage!r}") from None
        if found != expected:
            raise ConfigError(
                f"stage {stage!r} in {self.dir} finished with a different configuration "
                f"(fingerprint {found}, now {expected}). Use a new --run-dir, or delete {path} and the "
                "markers of the stages after it to redo them here.")
        return marker

    def write(self, stage: str, fp: str, seconds: float, outputs: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = {"stage": stage, "fingerprint": fp, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "seconds": round(seconds, 1), "outputs": outputs}
        tmp = self.path(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps(marker, indent=1, default=str) + "\n")
        tmp.replace(self.path(stage))  # a marker is either whole or absent
