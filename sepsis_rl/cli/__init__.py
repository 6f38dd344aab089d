"""The `sepsis-rl` command line: `main` is the console script; the root app is in `root.py`.

Library code raises; this layer prints, shows progress and chooses exit codes. This module imports
nothing heavy at the top, so that a Ctrl-C at any moment, start-up included, ends in one line and
exit code 130 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

EXIT_BAD_INPUT = 2  # = console.EXIT_BAD_INPUT; repeated so that start-up imports nothing
EXIT_INTERRUPTED = 130  # = console.EXIT_INTERRUPTED


def main() -> None:
    """Entry point of the `sepsis-rl` console script."""
    try:
        from sepsis_rl.cli.root import app

        app()
    except KeyboardInterrupt:  # during start-up (imports), or anywhere Typer does not catch it
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as done:
        if done.code == EXIT_BAD_INPUT and not _ray_running():
            _exit_now(EXIT_BAD_INPUT)
        raise


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _exit_now(code: int) -> None:
    """End the process at once after bad input: nothing was written and nothing needs closing,
    while libraries imported on the way (Arrow's, xgboost's, torch's thread pools) can abort the
    ordinary interpreter shutdown ("terminate called without an active exception", exit 134)
    when their native threads are torn down."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
            stream.flush()
    os._exit(code)


def __getattr__(name: str) -> Any:
    """`sepsis_rl.cli.app`, the root Typer app, imported on first use (`from sepsis_rl.cli import
    app` in tests and scripts)."""
    if name == "app":
        from sepsis_rl.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
