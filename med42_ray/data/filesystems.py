"""Where a source's files live: the local disk, or any filesystem pyarrow reaches by URI.

A location is a local `Path`, or a `RemoteFile` for `s3://`, `gs://`, `hdfs://`, `abfs://`... (whatever
`pyarrow.fs.FileSystem.from_uri` knows). Options ride in the URI as pyarrow reads them, e.g.
`s3://bucket/data/*.jsonl?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1`; credentials
come from where the cloud's SDK looks (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
an instance role, GOOGLE_APPLICATION_CREDENTIALS, ...), which pyarrow reads itself. `file://` URIs
are local paths.

A RemoteFile keeps the URI's filesystem part (`fs_uri`: scheme, host or bucket, query) so that a Ray
worker rebuilds the same filesystem, and shows itself without the query or a user:password, so the
ids, the ledger and the manifest's file lists never carry options or secrets.

Remote globs match one path segment per `*`/`?`/`[...]` and any number of segments per `**`, as the
local `glob.glob(recursive=True)` does; the listing is one recursive listing under the glob's fixed
prefix (object stores have no directories to walk).
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Union
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from med42_ray.paths import PACKAGE_SCHEME, resolve_path

_READ_BUFFER = 1 << 20  # one ranged GET per MiB read, not per readline


@dataclass(frozen=True)
class RemoteFile:
    fs_uri: str  # scheme://[user:password@]host-or-bucket[?query]: rebuilds the filesystem anywhere
    path: str    # the path on that filesystem (for object stores: "bucket/key")

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.path).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def child(self, path: str) -> "RemoteFile":
        return RemoteFile(self.fs_uri, path)

    def __str__(self) -> str:
        scheme, netloc = urlsplit(self.fs_uri)[:2]
        host = netloc.rpartition("@")[2]  # never show a user:password
        if host and (self.path == host or self.path.startswith(host + "/")):
            return f"{scheme}://{self.path}"  # a bucket filesystem: its paths start with the bucket
        return f"{scheme}://{host}/{self.path.lstrip('/')}"


Location = Union[Path, RemoteFile]


def is_uri(value: str) -> bool:
    """A URI pyarrow resolves ('s3://...'), as opposed to a local path or the package's 'pkg://'."""
    scheme = urlsplit(value).scheme
    return "://" in value and len(scheme) > 1 and not value.startswith(PACKAGE_SCHEME)


_FILESYSTEMS: dict[str, pafs.FileSystem] = {}  # one per fs_uri per process: an S3 client is costly to build


def filesystem(fs_uri: str) -> pafs.FileSystem:
    if fs_uri not in _FILESYSTEMS:
        _FILESYSTEMS[fs_uri] = pafs.FileSystem.from_uri(fs_uri)[0]
    return _FILESYSTEMS[fs_uri]


def locate(value: str) -> Location:
    """A configured path as a location: a URI other than file:// becomes a RemoteFile."""
    if not is_uri(value):
        return resolve_path(value)
    parts = urlsplit(value)
    if parts.scheme == "file":
        return Path(parts.path)
    fs, path = pafs.FileSystem.from_uri(value)
    fs_uri = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
    _FILESYSTEMS.setdefault(fs_uri, fs)
    return RemoteFile(fs_uri, path)


def to_task(loc: Location) -> dict:
    """What a read task carries to name and reopen its file in another process (JSON-safe)."""
    return {"path": str(loc), **({"fs": [loc.fs_uri, loc.path]} if isinstance(loc, RemoteFile) else {})}


def from_task(task: dict) -> Location:
    return RemoteFile(*task["fs"]) if task.get("fs") else Path(task["path"])


def kind(loc: Location) -> str:
    """'file', 'dir', 'missing' or 'other' (a FIFO, a socket...)."""
    if isinstance(loc, Path):
        return "file" if loc.is_file() else "dir" if loc.is_dir() else "missing" if not loc.exists() else "other"
    return _kind(filesystem(loc.fs_uri).get_file_info(loc.path).type)


def _kind(t: pafs.FileType) -> str:
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir", pafs.FileType.NotFound: "missing"}.get(t, "other")


def size(loc: Location) -> int:
    if isinstance(loc, Path):
        return loc.stat().st_size
    return filesystem(loc.fs_uri).get_file_info(loc.path).size


def open_input(loc: Location) -> BinaryIO:
    """A seekable binary file, buffered (reading lines from an object store is then one request per
    MiB, not per line)."""
    if isinstance(loc, Path):
        return open(loc, "rb")
    return io.BufferedReader(filesystem(loc.fs_uri).open_input_file(loc.path), _READ_BUFFER)


def open_native(loc: Location):
    """The file as pyarrow's own random-access file (Parquet and Arrow readers want one)."""
    if isinstance(loc, Path):
        return pafs.LocalFileSystem().open_input_file(str(loc))
    return filesystem(loc.fs_uri).open_input_file(loc.path)


def list_dir(loc: Location) -> list[tuple[Location, str]]:
    """A directory's own entries, sorted by name, each with its `kind`."""
    if isinstance(loc, Path):
        return [(entry, kind(entry)) for entry in sorted(loc.iterdir())]
    infos = filesystem(loc.fs_uri).get_file_info(pafs.FileSelector(loc.path, recursive=False))
    return sorted(((loc.child(i.path), _kind(i.type)) for i in infos), key=lambda e: e[0].path)


def expand(pattern: str) -> list[Location]:
    """A file, or the files a glob matches ('**' crosses directories), sorted; [] when none.
    A file that exists is taken as named, even if its name holds glob characters."""
    loc = locate(pattern)
    if kind(loc) == "file":
        return [loc]
    if isinstance(loc, Path):
        return sorted(Path(p) for p in _glob.glob(str(loc), recursive=True) if Path(p).is_file()) \
            if _glob.has_magic(str(loc)) else []
    if not _glob.has_magic(loc.path):
        return []
    parts = loc.path.split("/")
    fixed = next(i for i, part in enumerate(parts) if _glob.has_magic(part))
    base = "/".join(parts[:fixed])
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = filesystem(loc.fs_uri).get_file_info(selector)
    return sorted((loc.child(i.path) for i in infos
                   if i.type == pafs.FileType.File and _matches(parts[fixed:], i.path.split("/")[fixed:])),
                  key=lambda f: f.path)


def _matches(pattern: list[str], path: list[str]) -> bool:
    """Segment-wise glob match: '**' spans zero or more segments, other parts exactly one."""
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_matches(pattern[1:], path[i:]) for i in range(len(path) + 1)
                   if not any(p.startswith(".") for p in path[:i]))
    if not path or (path[0].startswith(".") and not pattern[0].startswith(".")):
        return False  # as glob.glob: a wildcard does not match a hidden name
    return fnmatch.fnmatchcase(path[0], pattern[0]) and _matches(pattern[1:], path[1:])


def upload_tree(local: Path, uri: str) -> RemoteFile:
    """Copy a local directory tree (a stage's outputs) under a URI, files replaced, with pyarrow's
    copy_files (threaded; multipart for big files). Returns where it went. An error names the
    destination without its options."""
    dest = locate(uri)
    if not isinstance(dest, RemoteFile):
        raise ValueError(f"upload_tree: {uri!r} is a local path; give a URI such as s3://bucket/runs/x")
    if not local.is_dir():
        raise FileNotFoundError(f"nothing to upload: {local} is not a directory")
    try:
        pafs.copy_files(str(local), dest.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=filesystem(dest.fs_uri))
    except OSError as e:
        raise OSError(e.errno, f"uploading {local} to {dest} failed: {e}") from None
    return dest
