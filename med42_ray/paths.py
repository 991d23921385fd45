"""Where the package's own files are, and how a configured path resolves. A leaf module: it
imports nothing of the package, so every stage (and config.py) can use it."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
PACKAGE_SCHEME = "pkg://"


def resolve_path(value: str) -> Path:
    """Resolve 'pkg://sample/data' to a file shipped in the package; other paths unchanged."""
    if value.startswith(PACKAGE_SCHEME):
        return PACKAGE_DIR / value[len(PACKAGE_SCHEME):]
    return Path(value).expanduser()
