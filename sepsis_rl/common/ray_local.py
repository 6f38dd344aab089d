"""Starting Ray: on a cluster when given an address, else locally and bound to loopback only."""

from __future__ import annotations

import os

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray binds every local service to 127.0.0.1 instead of the default interface."""


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (`address`, or RAY_ADDRESS as set inside `ray job submit`), or start
    a local Ray bound to loopback only. Returns True when this call started or joined Ray (the
    caller then shuts it down), False when Ray was already running in this process."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ.setdefault(LOOPBACK_ENV, "0")
    ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)
    return True
