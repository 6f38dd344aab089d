"""`sepsis-rl serve`: the command-line layer of the policy server (`sepsis_rl.serve.app`).

Every input is checked before Ray starts (exit 2 with what to fix): the checkpoint (layout,
manifest, SepsisEnv, nothing unpickled), the classifier folder and the preprocessing it needs,
the token file, the replica count against this machine's CPUs (Serve waits forever for replicas
it cannot place), and the port.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sepsis_rl.cli.console import EXIT_INTERRUPTED, console, err_console, fail

LOOPBACK = "127.0.0.1"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What stops the server (Serve and Ray shut down first)."""


class Ingress(StrEnum):
    """`--ingress`: how requests reach the replicas (`sepsis_rl.serve.ingress`)."""

    haproxy = "haproxy"
    proxy = "proxy"


def serve_cmd(
    checkpoint: Annotated[Path, typer.Option(help="A run's checkpoints/best or checkpoints/last.")],
    classifier: Annotated[
        Path | None,
        typer.Option(help="The `model` folder of `sepsis-rl classify`: hourly risk on /v1/stay."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback unless you mean otherwise).")
    ] = LOOPBACK,
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="Replicas, each loading the policy.")] = 1,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding a bearer token every /v1/ request but health must send."),
    ] = None,
    ingress: Annotated[
        Ingress,
        typer.Option(
            help="haproxy: HAProxy forwards each request straight to a replica (fast); proxy: "
            "Ray Serve's Python proxy (about 6 times slower; where HAProxy does not run)."
        ),
    ] = Ingress.haproxy,
) -> None:
    """Serve a trained policy over HTTP (Ray Serve + FastAPI): a web page at /, the API under
    /v1/ (health, model, recommend, stay, what-if), its description at /docs. Runs until Ctrl-C.

    Research software: the answers come from a policy trained in a simulator, not a clinical
    tool."""
    from sepsis_rl.serve.app import APP_NAME, REPLICA_CPUS, ServeArgs, build

    _check_checkpoint(checkpoint)
    if classifier is not None:
        _check_classifier(classifier)
    if token_file is not None:
        _check_token_file(token_file)
    cpus = os.cpu_count() or 1
    cluster = os.environ.get("RAY_ADDRESS")
    if not cluster:
        _check_replicas(replicas, REPLICA_CPUS, cpus, "this machine's")
    _check_port(host, port)
    if host != LOOPBACK:
        err_console.print(
            f"[yellow]warning:[/] listening on {host}, not only on this machine"
            + ("" if token_file else "; without --token-file anyone who reaches it can use it"),
            highlight=False,
        )
    args = ServeArgs(
        checkpoint=str(checkpoint.resolve()),
        classifier=str(classifier.resolve()) if classifier else None,
        token_file=str(token_file.resolve()) if token_file else None,
        replicas=replicas,
    )

    import ray
    from ray import serve

    from sepsis_rl.serve.ingress import local_serve, wait_until_ready

    url = f"http://{host}:{port}"
    stopped_by: list[int] = []
    try:
        # RAY_ADDRESS: join that cluster; else a local Ray on loopback, with the ingress's
        # environment set before it starts.
        with local_serve(host, port, ingress.value, num_cpus=cpus):
            if cluster:
                err_console.print(
                    f"joined the cluster at {cluster}: requests reach the replicas the way its "
                    "nodes were started (--ingress applies to a local server; README, 'On a "
                    "cluster')",
                    style="dim",
                    highlight=False,
                )
                _check_replicas(
                    replicas, REPLICA_CPUS, ray.cluster_resources().get("CPU", 0), "the cluster's"
                )
            # After ray.init, which installs its own SIGTERM handler (log and die): SIGTERM and
            # Ctrl-C (SIGINT, handled here too: a shell that starts the command in the
            # background leaves SIGINT ignored, and Python then raises no KeyboardInterrupt)
            # must end in serve.shutdown and ray.shutdown, or Ray's agents outlive the server.
            stop = threading.Event()

            def request_stop(signum: int, _frame) -> None:
                stopped_by.append(signum)
                stop.set()

            previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
            try:
                err_console.print(
                    f"starting {replicas} replica(s) of {checkpoint} "
                    f"({'the cluster' if cluster else ingress.value + ' ingress'}) ...",
                    highlight=False,
                )
                try:
                    serve.run(build(args), name=APP_NAME, route_prefix="/")
                    wait_until_ready(url)
                except (RuntimeError, TimeoutError) as err:  # a replica's constructor failed
                    raise fail(f"the server did not start: {err}") from None
                console.print(f"serving {checkpoint} at [bold]{url}/[/] (API docs: {url}/docs)")
                if token_file:
                    console.print(
                        f"/v1/ requests need: Authorization: Bearer <the token in {token_file}>"
                    )
                console.print("Ctrl-C stops the server", style="dim")
                while not stop.wait(1.0):
                    pass
                err_console.print("stopping", highlight=False)
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)
    except (ConnectionError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:  # Ctrl-C before the handlers above were installed
        err_console.print("stopping", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if stopped_by and stopped_by[0] == signal.SIGINT:
        raise typer.Exit(EXIT_INTERRUPTED)


def _check_replicas(replicas: int, each: float, cpus: float, whose: str) -> None:
    """Refuse more replicas than the CPUs can place: `serve.run` would wait for them forever."""
    if replicas * each > cpus:
        raise fail(
            f"--replicas {replicas} needs {replicas * each:g} CPUs ({each:g} each), more than "
            f"{whose} {cpus:g}: Serve would wait forever for the replicas it cannot place; use "
            f"at most {int(cpus / each)}"
        )


def _check_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint `sepsis-rl serve` cannot answer for, without unpickling anything."""
    from sepsis_env.ids import is_sepsis_env
    from training.rl.policy import check_algorithm

    try:
        options = check_algorithm(checkpoint, None)
    except (FileNotFoundError, ValueError) as err:
        raise fail(f"--checkpoint {err}") from None
    if not is_sepsis_env(options.env):
        raise fail(
            f"--checkpoint {checkpoint} was trained on {options.env}; serve answers for SepsisEnv "
            "policies only (a request gives a patient's vitals)"
        )


def _check_classifier(classifier: Path) -> None:
    """Refuse a classifier folder that is not intact, or whose preprocessing is gone."""
    from sepsis_rl.common.manifest import ManifestError, verify_manifest
    from sepsis_rl.serve.stay import preprocessing_file
    from training.classification.model_file import MODEL_KIND

    if not classifier.is_dir():
        raise fail(
            f"--classifier {classifier} is not a folder; pass the `model` folder "
            "`sepsis-rl classify` wrote"
        )
    try:
        verify_manifest(classifier, MODEL_KIND)
        preprocessing_file(classifier)
    except (FileNotFoundError, ManifestError) as err:
        raise fail(f"--classifier {err}") from None


def _check_token_file(token_file: Path) -> None:
    from sepsis_rl.serve.access import read_token

    try:
        read_token(token_file)
    except ValueError as err:
        raise fail(str(err)) from None


def _check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on (Serve would fail later, less clearly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise fail(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); choose another "
                "port, or stop what uses it"
            ) from None


def register(app: typer.Typer) -> None:
    """Add `serve` to the root app."""
    app.command("serve")(serve_cmd)
