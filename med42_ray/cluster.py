"""Connect to Ray: join the cluster a job runs in, or start a local one of this command's own.

Several commands may run on one machine at once (an `evaluate` while a `train` runs). Each local
cluster must stay apart from the others: Ray's own processes (Ray Train's PlacementGroupCleaner,
the state API, anything calling ray.init() with no address) look for "the" cluster by scanning the
machine's processes for GCS servers, and with two of them they fail ("Found multiple active Ray
instances") or pick the other one. So a local cluster's GCS port is chosen before it starts, and
its address is exported as RAY_ADDRESS to every process it starts, which then never scan.

Ray Train state tracking is switched on here too, for every run started or joined: without it the
dashboard's Train state API answers "Train state is not tracked" and our runs' names, workers and
attempts appear nowhere.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:  # the section lives in config.py, which composes every stage's; no import up
    from med42_ray.config import RayConfig


ADDRESS_ENV = "RAY_ADDRESS"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node
# Read by Ray Train in the driver when fit() starts a run (its state actor then records the run,
# its attempts and workers for the dashboard); jobs/runtime_env.yaml and cluster.yaml set it too.
TRAIN_STATE_ENV = "RAY_TRAIN_ENABLE_STATE_TRACKING"
LOOPBACK = "127.0.0.1"

# The address this process exported for the local cluster it started: when that cluster is shut
# down (tests start several in one process), it is ours to replace, not a cluster to join.
_exported: str | None = None


def connect(cfg: RayConfig) -> str | None:
    """Start or join Ray once per process; return the dashboard URL when there is one.

    Inside `ray job submit` RAY_ADDRESS is set and we join that cluster, as with ray.address or
    --ray-address (say so on stdout: the user asked for it). Otherwise a local cluster of this
    command's own is started on loopback, isolated from any other on the machine.
    """
    # Before the early return: a cluster someone else initialised (a test session) still gets the
    # runs this process starts tracked. A user's explicit 0 is kept.
    os.environ.setdefault(TRAIN_STATE_ENV, "1")
    if ray.is_initialized():
        return _dashboard_url(ray.get_runtime_context())
    address = cfg.address or _inherited_address()
    if address:
        print(f"Joining the Ray cluster at {address} (from "
              f"{'ray.address' if cfg.address else ADDRESS_ENV}); not starting one", flush=True)
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        ctx = start_local(num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard)
    url = _dashboard_url(ctx)
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    return url


def start_local(**init_kwargs):
    """A new local cluster on loopback whose processes know its address (see the module doc).

    `init_kwargs` go to ray.init (num_cpus, include_dashboard, log_to_driver, ...)."""
    global _exported
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    os.environ[GCS_PORT_ENV] = str(port)
    # Before ray.init: the raylet copies this environment when it starts, and every worker,
    # actor and Ray Train controller it spawns inherits it from there.
    os.environ[ADDRESS_ENV] = address  # (connect has set TRAIN_STATE_ENV already: it travels alike)
    _exported = address
    try:
        # address="local": always a new cluster (RAY_ADDRESS, just set, would otherwise be joined)
        ctx = ray.init(address="local", dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK, **init_kwargs)
    except BaseException:
        os.environ.pop(ADDRESS_ENV, None)
        _exported = None
        raise
    finally:
        os.environ.pop(GCS_PORT_ENV, None)  # only the head node reads it; a later cluster picks its own
    print(f"started a local Ray cluster of this command's own at {address} "
          f"(its processes find it through {ADDRESS_ENV})", flush=True)
    return ctx


def _inherited_address() -> str | None:
    """RAY_ADDRESS, unless it names a local cluster this process started (and has since shut down)."""
    address = os.environ.get(ADDRESS_ENV)
    return None if not address or address == _exported else address


def _free_port() -> int:
    """A TCP port free now. Another process may take it before the GCS binds it; Ray picks its
    other ports the same way, and the window is the few milliseconds until ray.init binds it."""
    with socket.socket() as s:
        s.bind(("", 0))  # the GCS listens on every interface, so the port must be free on all
        return s.getsockname()[1]


def _dashboard_url(ctx) -> str | None:
    url = getattr(ctx, "dashboard_url", None)
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
