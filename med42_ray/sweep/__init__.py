"""`med42-ray sweep`: Ray Tune (ASHA) over LoRA rank, alpha and learning rate; each trial a Ray Train run."""
