"""Models by name: the embedded tiny Llama, Llama-2 config presets for planning, HF ids/paths as-is."""

from med42_ray.model.tiny import TINY_LLAMA, build_tiny_llama, resolve_model

__all__ = ["TINY_LLAMA", "build_tiny_llama", "resolve_model"]
