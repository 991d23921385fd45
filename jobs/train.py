"""Ray Train: full-parameter (DeepSpeed ZeRO-3) or LoRA fine-tuning (`med42-ray train`).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --config <run.yaml> [options]

Options are those of `med42-ray train --help`.
"""

from _job import run_command

run_command("train")
