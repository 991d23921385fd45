"""Connect to Ray: join the cluster a job runs in, or start a local one on loopback."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:  # the section lives in config.py, which composes every stage's; no import up
    from med42_ray.config import RayConfig

log = logging.getLogger(__name__)


def connect(cfg: RayConfig) -> str | None:
    """Start or join Ray once per process; return the dashboard URL when there is one.

    Inside `ray job submit` RAY_ADDRESS is set and we join that cluster. Otherwise a local
    cluster is started bound to 127.0.0.1 so nothing listens on a public interface.
    """
    if ray.is_initialized():
        return _dashboard_url(ray.get_runtime_context())
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        ctx = ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.dashboard,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
        )
    url = _dashboard_url(ctx)
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    return url


def _dashboard_url(ctx) -> str | None:
    url = getattr(ctx, "dashboard_url", None)
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
