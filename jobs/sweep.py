"""Ray Tune: ASHA search over LoRA rank, alpha and learning rate (`med42-ray sweep`).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/sweep.py --config <run.yaml> [options]

Options are those of `med42-ray sweep --help`.
"""

from _job import run_command

run_command("sweep")
