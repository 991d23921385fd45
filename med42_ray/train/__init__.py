"""`med42-ray train` and `med42-ray plan`: full-parameter (DeepSpeed ZeRO) and LoRA (peft) training on Ray Train."""
