"""`sepsis-rl data ...`: synthesise, download and prepare PhysioNet-format data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from data_prep.prepare import OUTPUT_FILES, PrepareOptions, prepare
from sepsis_rl.cli.console import check_out_folder, fail, progress_bar
from sepsis_rl.cli.console import err_console as console

data_app = typer.Typer(
    help="Read, synthesise, download and prepare PhysioNet 2019 data.", no_args_is_help=True
)


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="Folder to write training_setA/ and training_setB/.")],
    patients: Annotated[int, typer.Option(min=1, help="Number of ICU stays.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    septic_fraction: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Override the reference prevalence (about 7%)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace training_setA/ and training_setB/ already in --out.")
    ] = False,
) -> None:
    """Write a synthetic cohort as .psv files in exactly the PhysioNet 2019 format."""
    from data_prep.synth import generate_cohort, write_psv_files
    from sepsis_rl.common.files import staged_directory

    check_out_folder(out)
    existing = [p.name for p in sorted(Path(out).glob("training_set*")) if any(p.iterdir())]
    if existing and not force:
        raise fail(
            f"{out} already holds {', '.join(existing)} (real data, or an earlier cohort); "
            "choose another --out, or pass --force to replace them"
        )

    with console.status(f"generating {patients:,} stays"):
        table = generate_cohort(patients, seed=seed, septic_fraction=septic_fraction)
    with console.status(f"writing {patients:,} .psv files"), staged_directory(out) as stage:
        write_psv_files(table, stage)
    septic = table.groupby("patient_id", sort=False)["SepsisLabel"].max()
    console.print(
        f"wrote {patients:,} stays ({len(table):,} hourly rows, {septic.mean():.1%} septic) "
        f"to {out}"
    )


@data_app.command("prepare")
def prepare_command(
    input: Annotated[
        Path, typer.Option("--input", help="Folder of .psv files, a .zip, a .csv or a .parquet.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    skip_bad: Annotated[
        bool, typer.Option(help="Leave malformed files out (listed in the report).")
    ] = False,
    outliers: Annotated[str, typer.Option(help="clip | drop | none")] = "clip",
    iqr_k: Annotated[float, typer.Option(help="IQR fence multiplier.")] = 1.5,
    missing_threshold: Annotated[
        float, typer.Option(help="Drop measurements missing in more than this fraction.")
    ] = 0.5,
    max_window_hours: Annotated[int, typer.Option(help="Longest feature window (h).")] = 24,
    seed: Annotated[int, typer.Option(help="Seeds the split and window placement.")] = 0,
    env_ctgan_patients: Annotated[
        int,
        typer.Option(
            help="Add this many CTGAN-generated patients to the environment cohort's training "
            "split (never to validation or test)."
        ),
    ] = 0,
    env_ctgan_epochs: Annotated[int, typer.Option(help="Epochs of that GAN.")] = 300,
) -> None:
    """Read, validate, split, clean and build features; write tables and a report to --out."""
    from data_prep.cleaning import OUTLIER_MODES
    from data_prep.reader import DataFormatError

    check_out_folder(out)
    if outliers not in OUTLIER_MODES:
        raise fail(f"--outliers {outliers!r}: choose one of {', '.join(OUTLIER_MODES)}")

    try:
        options = PrepareOptions(
            missing_threshold=missing_threshold,
            iqr_k=iqr_k,
            outliers=outliers,
            max_window_hours=max_window_hours,
            seed=seed,
            skip_bad=skip_bad,
            env_ctgan_patients=env_ctgan_patients,
            env_ctgan_epochs=env_ctgan_epochs,
        )
    except ValueError as err:  # options that are not valid, each named
        raise fail(str(err)) from None
    try:
        with progress_bar() as bar:
            task = bar.add_task("reading", total=None)
            report = prepare(
                input, out, options, progress=lambda d, t: bar.update(task, completed=d, total=t)
            )
    except DataFormatError as err:
        # --skip-bad can leave out one bad file (or patient), not fix an empty or unreadable input.
        per_file = err.line is not None or err.path.lower().endswith(".psv")
        per_file = per_file and not skip_bad and not err.message.startswith("empty input")
        hint = " (fix the file, or pass --skip-bad to leave bad files out)" if per_file else ""
        raise fail(f"{err}{hint}") from None
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    raw = report["raw"]
    console.print(
        f"read {raw['patients']:,} patients ({raw['septic_patients']:,} septic), "
        f"{raw['rows']:,} rows; skipped {len(report['skipped'])} files; "
        f"dropped columns: {len(report['cleaning']['dropped_columns'])}; "
        f"in {report['seconds']} s"
    )
    console.print(f"wrote {', '.join(OUTPUT_FILES)} to {out}")


@data_app.command("download")
def download_command(
    out: Annotated[Path, typer.Option(help="Cache folder for training_setA/ and training_setB/.")],
    base_url: Annotated[
        str,
        typer.Option(
            help="Where the release's training/ folder is [default: the PhysioNet release]."
        ),
    ] = "",
    sets: Annotated[str, typer.Option(help="Sets to fetch: AB, A or B (A,B also works).")] = "AB",
    limit: Annotated[
        int | None, typer.Option(help="Only the first N files of each set (for a trial run).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel downloads.")] = 8,
) -> None:
    """Fetch the public PhysioNet 2019 training files; resumable, skips files already there."""
    from data_prep.download import PHYSIONET_BASE_URL, download, release_files

    check_out_folder(out)
    try:
        files = release_files(tuple(c for c in sets if c not in ", "), limit)
    except ValueError as err:
        raise fail(str(err)) from None
    with progress_bar() as bar:
        task = bar.add_task("downloading", total=len(files))
        result = download(
            out,
            base_url or PHYSIONET_BASE_URL,
            files,
            workers,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    console.print(
        f"fetched {len(result.fetched):,}, already there {result.skipped_existing:,}, "
        f"failed {len(result.failed):,}"
    )
    if result.failed:
        for _rel, error in list(result.failed.items())[:10]:
            console.print(f"  {error}", highlight=False)
        raise fail(f"{len(result.failed)} files failed; rerun the same command to resume", 1)
