"""BENCHMARKS.md's sections: each bench script writes its own `## <name>` and leaves the others alone."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, text: str, heading: str, after: str | None = None) -> None:
    """Replace the section that starts with `heading` by `text` (which begins with that heading);
    when there is none, insert it right after the section `after` if that exists, else append it."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    own = _section(heading)
    if own.search(old):
        path.write_text(own.sub(lambda _: text, old))
        return
    if after and (m := _section(after).search(old)):
        path.write_text(old[:m.end()] + text + old[m.end():])
        return
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def _section(heading: str) -> re.Pattern:
    """A section: its heading line and everything up to the next `## ` heading or the end."""
    return re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
