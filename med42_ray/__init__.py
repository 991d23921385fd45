"""med42-ray: the Med42 recipe (data mixture, full-parameter and LoRA tuning, zero-shot
medical evaluation) as Ray Data, Ray Train and Ray Tune programs."""

__version__ = "0.1.0"
