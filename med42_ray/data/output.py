"""Writing `prepare`'s output so that a run that fails never looks finished.

manifest.json is the completion marker: `train` reads the shards it lists and refuses a directory
without one. So it is removed before anything else is touched (`clear`), and written last and
whole, a temporary file renamed over it (`write_manifest`). A write that fails because the disk is
full (or a quota or a file-size limit is hit) ends in one `OutputWriteError` naming the file being
written, and the partial output is removed: it frees the space, and nothing half-written is left
for a rerun or for `train` to pick up.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from med42_ray.errors import RunError
from med42_ray.layout import PreparedDir

# The errors that mean "no room to write", not a bug: the user frees space and reruns.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PARQUET_MAGIC = b"PAR1"  # a Parquet file starts and ends with it; a cut-off one lacks the end


class OutputWriteError(OSError, RunError):
    """Writing prepare's output failed for lack of space; names the file and what was done."""


def clear(out: PreparedDir) -> None:
    """Remove a previous run's output, the manifest first: from then on nothing claims the old shards."""
    for f in (out.manifest, _tmp(out.manifest), out.contamination):
        f.unlink(missing_ok=True)
    for sub in (out.ledger, out.shards, out.rejects):
        shutil.rmtree(sub, ignore_errors=True)


def write_manifest(path: Path, text: str) -> None:
    """Write the completion marker whole or not at all, only once everything it lists is on disk."""
    tmp = _tmp(path)
    with writing(path):
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the contents
        os.replace(tmp, path)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around a write of `path` in this process: a full disk becomes an OutputWriteError naming it."""
    try:
        yield
    except OSError as e:
        if isinstance(e, OutputWriteError) or e.errno not in DISK_FULL:
            raise
        raise OutputWriteError(e.errno, f"{os.strerror(e.errno).lower()} while writing {path}") from None


@contextmanager
def finishing(out: PreparedDir) -> Iterator[None]:
    """Around everything `prepare` writes. A write that fails for lack of space, here or in a Ray
    worker (Parquet shards and ledger), removes the partial output and raises one OutputWriteError
    naming the file; any other failure propagates as it is (there is no manifest either way)."""
    try:
        yield
    except Exception as e:
        code = e.errno if isinstance(e, OutputWriteError) else disk_full_errno(e)
        if code is None:
            raise
        what = e.strerror if isinstance(e, OutputWriteError) else _worker_write_failure(code, out)
        clear(out)
        raise OutputWriteError(code, f"prepare: {what}. The partial output in {out.root} was removed "
                                     "and no manifest.json was written; free space there and rerun "
                                     "the same command.") from None


def disk_full_errno(exc: BaseException) -> int | None:
    """The errno of a full disk anywhere in the chain: Ray re-raises a worker's OSError as a
    RayTaskError whose `cause` is the original, Ray Data wraps that again."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e.errno
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _worker_write_failure(code: int, out: PreparedDir) -> str:
    """The Ray worker's error does not say which file it was writing; the cut-off file does."""
    partial = partial_parquet_files(out.root)
    where = str(partial[0]) if partial else f"a new file in {out.root}"
    more = f" (and {len(partial) - 1} more cut off)" if len(partial) > 1 else ""
    return f"{os.strerror(code).lower()} while writing {where}{more}"


def partial_parquet_files(root: Path) -> list[Path]:
    """Parquet files under `root` whose footer never got written (a writer stopped mid-file)."""
    return sorted(f for f in root.rglob("*.parquet") if not _has_parquet_footer(f))


def _has_parquet_footer(path: Path) -> bool:
    size = path.stat().st_size
    if size < 2 * len(PARQUET_MAGIC) + 4:  # magic, footer length, magic
        return False
    with path.open("rb") as f:
        f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
        return f.read() == PARQUET_MAGIC


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
