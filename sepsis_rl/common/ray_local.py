"""Starting Ray: on a cluster when given an address, else locally and bound to loopback only."""

from __future__ import annotations

import os

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray binds every local service to 127.0.0.1 instead of the default interface."""


def join_advice(address: str, err: Exception) -> str:
    """What to do when a cluster refuses the connection: the usual cause is token authentication
    (Ray 2.60 turns it on for a `ray start` head on a machine where Ray has run before), which Ray
    reports only as a failed connection after its retries."""
    advice = ""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        advice = (
            " If the cluster uses token authentication (Ray's log above then says "
            "'Authentication token is missing'), export RAY_AUTH_MODE=token with the "
            "cluster's token in ~/.ray/auth_token (or the file RAY_AUTH_TOKEN_PATH names) "
            "and run the command again."
        )
    return (
        f"cannot join the Ray cluster at {address}: {err}.{advice} Check the address with "
        "`ray status` in the same shell."
    )


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (`address`, or RAY_ADDRESS as set inside `ray job submit`), or start
    a local Ray bound to loopback only. Returns True when this call started or joined Ray (the
    caller then shuts it down), False when Ray was already running in this process."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as err:
            raise ConnectionError(join_advice(address, err)) from err
        return True
    os.environ.setdefault(LOOPBACK_ENV, "0")
    ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)
    return True
