"""The whole recipe, resumable: prepare, evaluate base, train full + LoRA, evaluate, report (`med42-ray pipeline`).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --config <run.yaml> [options]

Options are those of `med42-ray pipeline --help`.
"""

from _job import run_command

run_command("pipeline")
