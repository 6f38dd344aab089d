"""What every command shares: the consoles, exit codes, the error exit, the progress bar and
`--set KEY=VALUE` overrides. Library code raises; only the command line prints and exits.

Exit codes: 0 done; 1 the work ran but produced no result (for example no trial scored);
2 bad input, found before any long work; 130 interrupted (finished work is kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()
"""Results: tables, summaries, where outputs went."""
err_console = Console(stderr=True)
"""Errors, warnings and progress."""

EXIT_NO_RESULT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print an error the user can act on and return the exit to raise."""
    # soft_wrap: long paths stay whole for copy and paste; the terminal wraps the line.
    # escape: a message quoting the user's input (`[1, 2`, `[[step, lr]]`) must print as written.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_out_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that exists and is not a folder."""
    from sepsis_rl.common.files import check_output_folder

    try:
        check_output_folder(out)
    except NotADirectoryError as err:
        raise fail(f"{option} {err}") from None


def check_out_file(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output file path that is a folder or lies under a file."""
    from sepsis_rl.common.files import check_output_folder

    if out.is_dir():
        raise fail(f"{option} {out} is a folder; give the path of a file to write")
    try:
        check_output_folder(out.parent)
    except NotADirectoryError as err:
        raise fail(f"{option} {out}: its folder {err}") from None


def progress_bar() -> Progress:
    """The progress display every long step uses (on stderr)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` pairs with YAML-typed values (`lr=1e-3`, `fcnet_hiddens=[64,64]`)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise fail(f"--set {pair!r}: the value is not valid YAML ({err})") from None
    return out
