"""Ray actors: zero-shot medical benchmarks, lm-evaluation-harness protocol (`med42-ray evaluate`).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py --config <run.yaml> [options]

Options are those of `med42-ray evaluate --help`.
"""

from _job import run_command

run_command("evaluate")
