"""`upload_to`: each stage's outputs copied under a URI (s3://, gs://, any pyarrow filesystem) when
the stage ends, laid out as under run_dir, so a run on a node whose disk goes away with it leaves
its results in object storage. The run itself writes locally (Ray, DeepSpeed and the report all
want a local directory); Ray Train's checkpoints have their own URI, train.storage_path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from med42_ray.errors import RunError

if TYPE_CHECKING:  # annotations only
    from med42_ray.config import RunConfig


def check_uri(value: str) -> str:
    """upload_to's rule, for its validator: a URI pyarrow resolves, with no password in it (it is
    printed and written into markers)."""
    from med42_ray.data.filesystems import is_uri

    if not is_uri(value):
        raise ValueError("give a URI such as s3://bucket/runs/x (outputs are written to run_dir locally "
                         "and uploaded there when each stage ends)")
    if urlsplit(value).password is not None:
        raise ValueError("the URI holds a password; give credentials through the environment "
                         "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...)")
    return value


def destination(uri: str, run_dir: Path, local: Path) -> str:
    """Where `local` goes under `uri`: its place under run_dir (an output kept elsewhere by its
    name), appended to the URI's path, before pyarrow's ?options."""
    try:
        relative = local.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        relative = local.name
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{relative}"))


def upload_outputs(cfg: RunConfig, *outputs: Path) -> list[str]:
    """Copy each output directory that exists under cfg.upload_to (nothing without it); prints one
    line per directory and returns where they went, without pyarrow's options."""
    from med42_ray.data.filesystems import upload_tree
    from med42_ray.layout import layout_for

    if cfg.upload_to is None:
        return []
    run_dir = layout_for(cfg).root
    done = []
    for local in outputs:
        if not local.is_dir():
            continue
        try:
            dest = str(upload_tree(local, destination(cfg.upload_to, run_dir, local)))
        except OSError as e:  # its message names the destination
            raise RunError(f"upload_to: {e}") from None
        print(f"uploaded {local} to {dest}", flush=True)
        done.append(dest)
    return done
