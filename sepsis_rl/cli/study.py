"""`sepsis-rl run`: the whole study in one command (see `training.study`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from sepsis_rl.cli.console import check_out_folder, fail, progress_bar
from sepsis_rl.cli.console import err_console as console
from training.study.layout import OPTIONS_FILE, STAGE_NAMES


def run_cmd(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Real data: a folder of .psv files, a .zip, a .csv or a .parquet. "
            "Without it, a synthetic cohort is made (the embedded default)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Study folder (stages and the report).")] = Path(
        "results/study"
    ),
    config: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON file of study options (see training/study/options.py)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The run's one seed.")] = None,
    quick: Annotated[
        bool, typer.Option(help="Small cohort and short budgets: the study in about 3 minutes.")
    ] = False,
    upload: Annotated[
        str | None,
        typer.Option(
            help="Also copy the finished study folder to shared storage "
            "(s3://bucket/prefix, gs://..., file://...)."
        ),
    ] = None,
) -> None:
    """Run the study: data -> classifiers -> DQN -> evaluation -> offline RL and OPE -> report.

    Finished stages whose inputs have not changed are reused, so a rerun after a crash or Ctrl-C
    continues where it stopped.
    """
    from data_prep.reader import DataFormatError
    from training.study.options import load_study_options
    from training.study.pipeline import run_study

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    check_out_folder(out)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        options = load_study_options(config, quick, seed)
    except ValueError as err:
        raise fail(str(err)) from None
    if data is not None and not data.exists():
        raise fail(f"{data}: no such file or folder")
    try:
        with progress_bar() as bar:
            task = bar.add_task("study", total=None)

            def progress(text: str, done: int, total: int | None) -> None:
                bar.update(task, description=text, completed=done, total=total)

            def notify(text: str) -> None:
                nonlocal task
                bar.console.print(text, highlight=False, markup=False)
                bar.remove_task(task)  # a fresh bar per stage: no stale counts
                task = bar.add_task(text.split("]")[0].lstrip("["), total=None)

            result = run_study(
                out, options, data, notify=notify, progress=progress,
                stage_done=(lambda folder: _upload(folder, out, upload)) if upload else None,
            )  # fmt: skip
    except DataFormatError as err:
        raise fail(
            f"{err} (fix the file, or set prepare: {{skip_bad: true}} in --config)"
        ) from None
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: finished stages are kept; rerun the same command to continue"
        )
        raise typer.Exit(130) from None
    if upload:
        _upload(Path(out), out, upload)  # the report, and any stage reused from before
        console.print(f"uploaded {out} to {upload}")
    ran, reused = ", ".join(result.ran) or "none", ", ".join(result.reused) or "none"
    console.print(f"stages run: {ran}; reused: {reused}")
    console.print(f"report: {result.report_html}  (and {result.report_md.name})")
    for name in STAGE_NAMES:
        if (out / name).is_dir():
            console.print(f"  {name + '/':<12} {out / name}")
    console.print(f"  {'options':<12} {out / OPTIONS_FILE}")


def _upload(folder: Path, out: Path, upload: str) -> None:
    """Copy `folder` (the study, or one stage of it) to the same place under `upload`."""
    from sepsis_rl.common.files import copy_to_storage

    relative = Path(folder).resolve().relative_to(Path(out).resolve())
    target = upload.rstrip("/") + ("" if relative == Path(".") else f"/{relative.as_posix()}")
    try:
        copy_to_storage(Path(folder).resolve(), target)
    except (OSError, ValueError) as err:
        raise fail(f"the upload of {folder} to {target} failed: {err}", 1) from None


def _interrupt(signum, frame) -> None:
    """Ctrl-C: remember it (the training loop checks) and interrupt whatever runs now."""
    from training.study.pipeline import INTERRUPTED

    INTERRUPTED.set()
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add `run` to the root app."""
    app.command("run")(run_cmd)
