"""`sepsis-rl logs` and `sepsis-rl logs import`: logged decisions for offline RL and off-policy
evaluation, simulated or read from a table, written as a logs folder (`training.rl.offline.data`).

Only this module prints and chooses exit codes; the work is done in `training.rl.offline.logs`.
Every input is checked before any episode is simulated or any row converted, and the folder is
written through a staging folder, so a refused or interrupted run leaves no output behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sepsis_rl.cli.console import check_out_folder, console, err_console, fail, parse_sets
from sepsis_rl.common.intervals import format_interval, mean_interval, proportion_interval

logs_app = typer.Typer(
    help="Make logged episodes (`sepsis-rl logs --env ... --behaviour ...`) or import a table "
    "of them (`sepsis-rl logs import`), for offline training and off-policy evaluation.",
    no_args_is_help=True,
    invoke_without_command=True,
)

OutOpt = Annotated[Path | None, typer.Option(help="Logs folder to write (data/ and logs.json).")]
ForceOpt = Annotated[bool, typer.Option(help="Replace the logs already in --out.")]


@logs_app.callback()
def simulate_command(
    ctx: typer.Context,
    env: Annotated[
        str | None, typer.Option(help="SepsisEnv-v0 or icu-sepsis: the env to log.")
    ] = None,
    behaviour: Annotated[
        str | None,
        typer.Option(
            help="Who decides: protocol (SepsisEnv), clinicians, random, or a checkpoint folder."
        ),
    ] = None,
    algo: Annotated[
        str | None,
        typer.Option(help="With a checkpoint: refuse one trained by another algorithm (dqn, ...)."),
    ] = None,
    epsilon: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Mix in this probability of a uniform random action."),
    ] = 0.0,
    episodes: Annotated[int, typer.Option(min=1, help="Number of stays to simulate.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same logs.")] = 0,
    env_kwarg: Annotated[
        list[str] | None,
        typer.Option(
            "--env-kwarg",
            help="A gymnasium.make argument, KEY=VALUE (repeatable), e.g. split=test.",
        ),
    ] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Simulate stays of a behaviour policy and log every decision with its probability."""
    if ctx.invoked_subcommand is not None:
        return
    from training.rl.offline.logs import behaviour_policy, log_env_kwargs, simulate_logs

    given = {"--env": env, "--behaviour": behaviour, "--out": out}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise fail(f"missing {', '.join(missing)} (or use `sepsis-rl logs import` for a table)")
    _check_out(out, force)
    env_id = _check_env(env)
    try:
        kwargs = log_env_kwargs(env_id, parse_sets(env_kwarg))
        with err_console.status(f"loading behaviour {behaviour!r}"):
            policy = behaviour_policy(env_id, behaviour, algo, kwargs)
    except ValueError as err:  # LogsError and the checkpoint's own errors
        raise fail(str(err)) from None
    try:
        with err_console.status(f"simulating {episodes:,} stays of {env}"):
            steps, info = simulate_logs(env_id, policy, episodes, seed, epsilon, kwargs)
    except (TypeError, ValueError) as err:  # gymnasium.make refuses an --env-kwarg
        raise fail(f"cannot simulate {env} with env_kwargs {kwargs}: {err}") from None
    _write(steps, info, out)


@logs_app.command("import", help="Import a CSV or Parquet table of logged stays.")
def import_command(
    table: Annotated[Path, typer.Option(help="CSV or Parquet table, one row per decision.")],
    out: Annotated[Path, typer.Option(help="Logs folder to write (data/ and logs.json).")],
    state_columns: Annotated[
        str | None,
        typer.Option(help="The state's columns, a,b,c (default: every non-reserved column)."),
    ] = None,
    n_actions: Annotated[
        int | None, typer.Option(min=1, help="Number of actions (default: largest action + 1).")
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Discount to judge the logs by (default 0.99)."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Import logged stays: columns stay_id, step, state columns, action, reward, terminal and
    optionally behaviour_prob (see `training.rl.offline.logs`)."""
    from training.rl.offline.data import LogsError
    from training.rl.offline.logs import import_table

    _check_out(out, force)
    columns = None
    if state_columns is not None:
        columns = [c.strip() for c in state_columns.split(",") if c.strip()]
        if not columns:
            raise fail(f"--state-columns {state_columns!r} names no column; give a,b,c")
    try:
        with err_console.status(f"reading {table}"):
            steps, info = import_table(table, columns, n_actions, gamma)
    except LogsError as err:
        raise fail(str(err)) from None
    _write(steps, info, out)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, or already holds logs (unless --force)."""
    from training.rl.offline.data import DATA_SUBDIR, INFO_FILE

    check_out_folder(out)
    held = [name for name in (INFO_FILE, DATA_SUBDIR) if (out / name).exists()]
    if held and not force:
        raise fail(
            f"--out {out} already holds logs ({', '.join(held)}); choose another --out, or pass "
            "--force to replace them"
        )


def _check_env(env: str) -> str:
    """The env id, if logs can be simulated in it and its package is installed."""
    from sepsis_env.ids import is_icu_sepsis, is_sepsis_env

    if is_sepsis_env(env):
        return env
    if is_icu_sepsis(env):
        from sepsis_env.icu_sepsis import ICUSepsisNotInstalledError, require_icu_sepsis

        try:
            require_icu_sepsis()
        except ICUSepsisNotInstalledError as err:
            raise fail(str(err)) from None
        return env
    raise fail(
        f"--env {env!r}: logs are simulated in SepsisEnv-v0 or icu-sepsis; import other data "
        "with `sepsis-rl logs import --table FILE`"
    )


def _write(steps, info, out: Path) -> None:
    """Write the logs through a staging folder and print what they hold."""
    from sepsis_rl.common.files import staged_directory
    from training.rl.offline.data import write_logs
    from training.rl.offline.logs import action_frequencies, stay_returns

    with err_console.status(f"writing {len(steps):,} steps"), staged_directory(out) as stage:
        write_logs(steps, info, stage)
    returns = stay_returns(steps)
    lengths = np.bincount(steps.stay, minlength=steps.n_stays)
    shares = action_frequencies(steps, info.n_actions)
    known = np.isfinite(steps.behaviour_prob).all()
    console.print(
        f"{steps.n_stays:,} stays, {len(steps):,} steps (mean {lengths.mean():.1f} per stay) "
        f"from {info.env}, behaviour {info.behaviour}"
        + (f" with epsilon {info.epsilon:g}" if info.epsilon else ""),
        highlight=False,
    )
    # A 0/1 return (ICU-Sepsis: survival) gets a rate's interval, which stays inside [0, 1].
    binary = np.isin(returns, (0.0, 1.0)).all()
    interval = proportion_interval(returns == 1.0) if binary else mean_interval(returns)
    console.print(
        f"return per stay (undiscounted): {format_interval(interval)}; "
        f"terminated {steps.terminated.sum():,}, truncated {steps.truncated.sum():,}",
        highlight=False,
    )
    console.print(
        "actions: " + ", ".join(f"{a}: {s:.1%}" for a, s in enumerate(shares) if s > 0),
        highlight=False,
    )
    console.print(
        "behaviour probabilities: "
        + ("logged for every step" if known else "unknown (no behaviour_prob column)"),
        highlight=False,
    )
    console.print(f"wrote {out}", highlight=False)
