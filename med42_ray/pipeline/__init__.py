"""The whole recipe as resumable stages: prepare -> evaluate base -> train full + LoRA -> evaluate -> report."""
