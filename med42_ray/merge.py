"""Deep merge of config trees: mappings merge key by key, anything else (lists too) is replaced."""

from __future__ import annotations

from typing import Any


def deep_merge(tree: dict, overrides: dict[str, Any]) -> dict:
    """Merge `overrides` into `tree` in place and return it."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            deep_merge(tree[key], value)
        else:
            tree[key] = value
    return tree
