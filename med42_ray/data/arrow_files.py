"""Sources in Arrow's own containers: Parquet files and `datasets.save_to_disk` folders.

Their rows come out as dicts (struct and list values as Python dicts and lists), numbered from 1 in
their file, and go to the format's row mapper exactly as a JSON record does, so a Parquet export of
an Alpaca or ShareGPT dataset reads with the format `alpaca` or `sharegpt`.

A Parquet file is planned one task per row group (from its footer, so a big file is read by many
workers); an Arrow IPC file is one task. A `save_to_disk` folder is an Arrow stream file per shard,
listed in order by its state.json: pyarrow reads them, `datasets` is not needed. A file Arrow
cannot decode is one reject ("malformed_parquet" / "malformed_arrow") at the row where reading
stopped (0 when nothing could be read), and the rest of the file is unread, as for a broken JSON
document.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from med42_ray.data import filesystems as fsys
from med42_ray.data.filesystems import Location

CONTAINERS = {".parquet": "parquet", ".arrow": "arrow"}
_ARROW_FILE_MAGIC = b"ARROW1"  # the IPC *file* format; a save_to_disk shard is the *stream* format
_UNREADABLE = (pa.ArrowInvalid, pa.ArrowNotImplementedError)  # corrupt or unsupported data, not I/O
_BATCH_ROWS = 1024
SAVE_TO_DISK_STATE = "state.json"
DATASET_DICT = "dataset_dict.json"


def container(loc: Location) -> str | None:
    """'parquet', 'arrow', or None for a text file (JSON, CSV)."""
    return CONTAINERS.get(loc.suffix.lower())


def plan(loc: Location, base: dict) -> list[dict]:
    """Read tasks for one Parquet or Arrow file. `start`/`end` are byte spans (for sizing the run);
    `first_line` is the first row's number."""
    size = fsys.size(loc)
    whole = {**base, "container": container(loc), "start": 0, "end": size, "first_line": 1, "whole_file": True}
    if container(loc) != "parquet":
        return [whole]
    try:
        meta = pq.ParquetFile(fsys.open_native(loc)).metadata
    except _UNREADABLE:
        return [whole]  # the task reads it again and reports why, as a reject row
    tasks, offset, first = [], 0, 1
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        nbytes = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        tasks.append({**whole, "start": offset, "end": offset + nbytes, "first_line": first, "row_group": g,
                      "whole_file": meta.num_row_groups == 1})
        offset, first = offset + nbytes, first + group.num_rows
    return tasks or [whole]


def iter_rows(task: dict) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """(row number, row dict, reject, detail) for one task from `plan`."""
    loc = fsys.from_task(task)
    kind = task["container"]
    row = task["first_line"] - 1
    try:
        for batch in _batches(loc, kind, task.get("row_group")):
            for raw, reject, detail in _batch_rows(batch):
                row += 1
                yield row, raw, reject, detail
    except _UNREADABLE as e:
        where = f"after row {row}" if row else "before any row"
        yield (row + 1 if row else 0), None, f"malformed_{kind}", \
            f"{kind} data unreadable {where}: {str(e).splitlines()[0]}; the rest of the file is unread"


def _batches(loc: Location, kind: str, row_group: int | None) -> Iterator[pa.RecordBatch]:
    with fsys.open_native(loc) as f:
        if kind == "parquet":
            groups = None if row_group is None else [row_group]
            yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS, row_groups=groups)
        else:
            is_file_format = f.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
            f.seek(0)
            if is_file_format:
                reader = pa.ipc.open_file(f)
                yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                yield from pa.ipc.open_stream(f)


def _batch_rows(batch: pa.RecordBatch) -> Iterator[tuple[Any, str | None, str | None]]:
    """Rows as dicts. Arrow does not check that strings are UTF-8 when reading; a batch that holds
    a bad one is converted row by row, so only that row is rejected."""
    try:
        yield from ((r, None, None) for r in batch.to_pylist())
        return
    except UnicodeDecodeError:
        pass
    for i in range(batch.num_rows):
        try:
            yield batch.slice(i, 1).to_pylist()[0], None, None
        except UnicodeDecodeError as e:
            yield None, "non_utf8", f"invalid UTF-8 in a text column: {e.reason}"


def save_to_disk_files(folder: Location, entries: list[tuple[Location, str]]) -> list[Location] | None:
    """The data files of a `datasets.save_to_disk` folder, in order; None if `folder` is not one.
    A DatasetDict folder (one subfolder per split) is an error naming its splits: reading them all
    would mix test rows into training."""
    names = {e.name: e for e, kind in entries if kind == "file"}
    if DATASET_DICT in names:
        splits = _json(names[DATASET_DICT]).get("splits", [])
        raise ValueError(f"{folder} is a datasets DatasetDict with splits {', '.join(map(str, splits))}; "
                         f"name one split's folder as the source's path (e.g. {folder}/{splits[0] if splits else 'train'})")
    if SAVE_TO_DISK_STATE not in names:
        return None
    state = _json(names[SAVE_TO_DISK_STATE])
    try:
        files = [f["filename"] for f in state["_data_files"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{names[SAVE_TO_DISK_STATE]}: not a datasets save_to_disk state (no _data_files list: {e})") from None
    located = [_child(folder, f) for f in files]
    missing = [str(f) for f in located if fsys.kind(f) != "file"]
    if missing:
        raise FileNotFoundError(f"{names[SAVE_TO_DISK_STATE]} lists data files that are missing: {', '.join(missing)}")
    return located


def _child(folder: Location, name: str) -> Location:
    return folder / name if not isinstance(folder, fsys.RemoteFile) else folder.child(f"{folder.path.rstrip('/')}/{name}")


def _json(loc: Location) -> dict:
    with fsys.open_input(loc) as f:
        try:
            value = json.load(f)
        except ValueError as e:
            raise ValueError(f"{loc}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{loc}: expected a JSON object")
    return value
