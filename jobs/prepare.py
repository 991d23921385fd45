"""Ray Data: the decontaminated, tokenised, packed instruction mixture (`med42-ray prepare`).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/prepare.py --config <run.yaml> [options]

Options are those of `med42-ray prepare --help`.
"""

from _job import run_command

run_command("prepare")
