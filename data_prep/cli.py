"""`sepsis-rl data ...`: read, synthesise, download and prepare PhysioNet-format data."""

from __future__ import annotations

import typer

data_app = typer.Typer(
    help="Read, synthesise, download and prepare PhysioNet 2019 data.", no_args_is_help=True
)
