"""Shared by every job script: run one `med42-ray` sub-command with the job's arguments.

`ray job submit --working-dir .` uploads this repository and starts the entrypoint in it; the
package is put first on the path so the job runs the code that was submitted, even where an
older med42-ray is installed on the cluster (the nodes install its dependencies; see cluster.yaml).
Inside a job RAY_ADDRESS is set, so every command joins the cluster instead of starting one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_command(command: str) -> None:
    from med42_ray.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
