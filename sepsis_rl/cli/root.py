"""The root `sepsis-rl` Typer app; each command module registers its commands on it.

Kept apart from `sepsis_rl.cli.main` so that importing it (Typer, Rich, numpy, the libraries the
commands need) happens inside `main`, where a Ctrl-C during start-up is caught.
"""

from __future__ import annotations

import typer

from sepsis_rl.cli.classify import register as register_classify
from sepsis_rl.cli.data import data_app
from sepsis_rl.cli.offline_logs import logs_app
from sepsis_rl.cli.offline_ope import register as register_ope
from sepsis_rl.cli.rl import register as register_rl
from sepsis_rl.cli.serve import register as register_serve
from sepsis_rl.cli.study import register as register_study
from sepsis_rl.cli.tune import register as register_tuning

app = typer.Typer(
    name="sepsis-rl",
    help="Learn and check treatment strategies for ICU patients with sepsis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(logs_app, name="logs")
register_rl(app)
register_classify(app)
register_tuning(app)
register_study(app)
register_ope(app)
register_serve(app)
