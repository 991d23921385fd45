"""Where med42-ray caches what it builds locally (the tiny Llama, parsed USMLE booklets)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$MED42_RAY_CACHE, else $XDG_CACHE_HOME/med42_ray, else ~/.cache/med42_ray."""
    explicit = os.environ.get("MED42_RAY_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "med42_ray"
