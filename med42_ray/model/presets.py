"""Config-only presets (Llama-2 7B/13B/70B `config.json`, as published) for planning without a download."""

from __future__ import annotations

import json
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# Hugging Face ids that the presets stand for, so `plan --model meta-llama/Llama-2-70b-hf` works offline.
PRESET_ALIASES = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "m42-health/med42-70b": "llama-2-70b",
}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_config_dict(name: str) -> dict | None:
    """The config.json of a preset (by name or HF alias); None when `name` is not one."""
    name = PRESET_ALIASES.get(name, name)
    path = PRESET_DIR / f"{name.lower()}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    """A transformers config for a preset, the embedded tiny model, a local directory or a HF id."""
    from transformers import AutoConfig

    from med42_ray.model.tiny import resolve_model

    cfg = preset_config_dict(name_or_path)
    if cfg is not None:
        model_type = cfg["model_type"]
        return AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
    return AutoConfig.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
