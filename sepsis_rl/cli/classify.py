"""`sepsis-rl classify` and `sepsis-rl classify-score`: the command-line layer of the classifiers.

Only this module prints and chooses exit codes; the work is done in `training.classification`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sepsis_rl.cli.console import check_out_file, check_out_folder, console, err_console, fail


class Task(StrEnum):
    patients = "patients"
    hourly = "hourly"


class Oversample(StrEnum):
    none = "none"
    smote = "smote"
    ctgan = "ctgan"
    all = "all"


def classify_cmd(
    data: Annotated[Path, typer.Option(help="Folder written by `sepsis-rl data prepare`.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics, tables, plots and the model.")],
    task: Annotated[
        Task,
        typer.Option(
            help="patients: one prediction per stay; hourly: an alarm every hour, scored by the "
            "PhysioNet/CinC 2019 normalised utility."
        ),
    ] = Task.patients,
    oversample: Annotated[
        Oversample | None,
        typer.Option(
            help="Minority oversampling to compare (all: the three). Default: all for patients; "
            "none and smote for hourly (CTGAN only when asked)."
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated. patients: logreg,random_forest,xgboost,svm (default all); "
            "hourly: xgboost,logreg (default both)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds models, SMOTE, CTGAN and the bootstrap.")] = 0,
    ctgan_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="CTGAN training epochs (default 300; hourly: 20)."),
    ] = None,
    max_train_hours: Annotated[
        int,
        typer.Option(
            min=1,
            help="hourly: training hours per fit (every septic hour, then a random subset of "
            "the others).",
        ),
    ] = 200_000,
    ctgan_batch_size: Annotated[
        int, typer.Option(min=10, help="CTGAN batch size (a multiple of 10).")
    ] = 500,
    sampling_strategy: Annotated[
        str,
        typer.Option(help="'auto' balances the classes; a number is minority/majority after."),
    ] = "auto",
    select_metric: Annotated[
        str, typer.Option(help="Validation metric that picks the best model.")
    ] = "pr_auc",
    threshold_rule: Annotated[
        str, typer.Option(help="How thresholds are chosen on validation: f1 | youden.")
    ] = "f1",
    bootstrap: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for CIs.")] = 1000,
    fidelity: Annotated[bool, typer.Option(help="Write the CTGAN fidelity report.")] = True,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML/JSON of ClassifyConfig fields (e.g. the best_config.yaml "
            "of `sepsis-rl analyze`); its fields override the options above.",
        ),
    ] = None,
) -> None:
    """Train sepsis classifiers (with none/SMOTE/CTGAN oversampling) and evaluate them honestly.

    Fits on training patients, picks thresholds and the best model on validation patients, and
    reports every metric with a 95% bootstrap CI on the real test patients.
    """
    check_out_folder(out)
    if task is Task.hourly:
        if config_file is not None:
            raise fail("--config is for the per-patient task; --task hourly takes options only")
        _classify_hourly(
            data, out, oversample, models, seed, ctgan_epochs, ctgan_batch_size, sampling_strategy,
            bootstrap, max_train_hours,
        )  # fmt: skip
        return
    oversample = oversample or Oversample.all
    models = models or "logreg,random_forest,xgboost,svm"
    ctgan_epochs = ctgan_epochs or 300
    from training.classification.experiment import run_classification
    from training.classification.features import DataFolderError, load_features
    from training.classification.leakage import LeakageError
    from training.classification.models import ClassifierSettings
    from training.classification.options import ClassifyConfig

    try:
        strategy: float | str = float(sampling_strategy)
    except ValueError:
        strategy = sampling_strategy
    modes = ("none", "smote", "ctgan") if oversample is Oversample.all else (oversample.value,)
    try:
        config = ClassifyConfig(
            oversample=modes,
            models=tuple(m.strip() for m in models.split(",") if m.strip()),
            select_metric=select_metric,
            threshold_rule=threshold_rule,
            n_boot=bootstrap,
            fidelity=fidelity,
            settings=ClassifierSettings(
                seed=seed,
                sampling_strategy=strategy,
                ctgan_epochs=ctgan_epochs,
                ctgan_batch_size=ctgan_batch_size,
            ),
        )
    except ValueError as err:  # options that are not valid, each named
        raise fail(str(err)) from None
    try:
        if config_file is not None:
            from training.classification.options import classify_config_from_file

            config = classify_config_from_file(config_file, base=config)
        config.validate()
        table = load_features(data)
    except ValueError as err:  # DataFolderError included
        raise fail(str(err)) from None

    progress = _progress()
    try:
        with progress:
            task = progress.add_task("starting", total=None)
            report = _progress_report(progress, task)
            result = run_classification(table, out, config, progress=report)
    except DataFolderError as err:
        raise fail(str(err)) from None
    except LeakageError as err:
        raise fail(f"leakage check failed, no results written: {err}", 1) from None
    except ValueError as err:
        raise fail(str(err)) from None

    _print_summary(result, out)


def _strategy(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _progress() -> Progress:
    """The classifiers' progress display (on stderr), for either task."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


def _progress_report(progress: Progress, task):
    def report(description: str, done: int, total: int) -> None:
        progress.update(task, description=description, completed=done, total=total)
        if not err_console.is_terminal:  # logs and CI get one line per step
            err_console.print(f"[{done}/{total}] {description}", highlight=False)

    return report


def _classify_hourly(
    data: Path,
    out: Path,
    oversample: Oversample | None,
    models: str | None,
    seed: int,
    ctgan_epochs: int | None,
    ctgan_batch_size: int,
    sampling_strategy: str,
    bootstrap: int,
    max_train_hours: int,
) -> None:
    """`classify --task hourly`: options checked and data read before any fit."""
    from training.classification.features import DataFolderError
    from training.classification.hourly import (
        DEFAULT_HOURLY_CTGAN_EPOCHS,
        DEFAULT_HOURLY_OVERSAMPLE,
        HOURLY_MODELS,
        HourlyConfig,
        load_hourly,
        run_hourly,
    )
    from training.classification.models import ClassifierSettings

    if oversample is None:
        modes = DEFAULT_HOURLY_OVERSAMPLE
    elif oversample is Oversample.all:
        modes = ("none", "smote", "ctgan")
    else:
        modes = (oversample.value,)
    names = HOURLY_MODELS if models is None else tuple(m.strip() for m in models.split(","))
    try:
        config = HourlyConfig(
            models=tuple(m for m in names if m),
            oversample=modes,
            n_boot=bootstrap,
            max_train_hours=max_train_hours,
            settings=ClassifierSettings(
                seed=seed,
                sampling_strategy=_strategy(sampling_strategy),
                ctgan_epochs=ctgan_epochs or DEFAULT_HOURLY_CTGAN_EPOCHS,
                ctgan_batch_size=ctgan_batch_size,
            ),
        )
        table = load_hourly(data)
    except ValueError as err:  # OptionsError and DataFolderError included
        raise fail(str(err)) from None
    progress = _progress()
    try:
        with progress:
            task = progress.add_task("starting", total=None)
            result = run_hourly(table, out, config, progress=_progress_report(progress, task))
    except DataFolderError as err:
        raise fail(str(err)) from None
    except ValueError as err:
        raise fail(str(err)) from None
    _print_hourly_summary(result, out)


def _print_hourly_summary(result, out: Path) -> None:
    table = Table(title="Test patients: normalised utility [95% CI]")
    for column in ("model / rule", "oversampling", "threshold", "utility", "AUROC", "AUPRC"):
        table.add_column(column)
    for c in result.candidates:
        table.add_row(
            c.model + (" *" if c is result.best else ""),
            c.oversample,
            f"{c.threshold:.4f}",
            c.test.utility.format(),
            c.test.auroc.format() if c.test.auroc is not None else "-",
            c.test.auprc.format() if c.test.auprc is not None else "-",
        )
    for name, score in result.rules.items():
        table.add_row(
            name,
            "rule",
            "-",
            score.utility.format(),
            score.auroc.format() if score.auroc is not None else "-",
            score.auprc.format() if score.auprc is not None else "-",
        )
    console.print(table)
    metrics = result.metrics
    for effect in metrics["oversampling_effect"]:
        d = effect["difference_vs_none"]
        console.print(
            f"  {effect['oversample']:>5} vs none, {effect['model']:<8} utility "
            f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]: {effect['verdict']}"
        )
    for effect in metrics["model_vs_best_rule"]:
        d = effect["difference"]
        console.print(
            f"  {effect['model']}+{effect['oversample']} vs {effect['rule']}: utility "
            f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]: {effect['verdict']}"
        )
    console.print(
        f"selected (*) on validation utility: {result.best.name}; wrote metrics.json, "
        f"comparison.csv/.md and model/ to {out}"
    )


def _print_summary(result, out: Path) -> None:
    metrics = result.metrics
    best = metrics["best"]
    table = Table(title="Test patients: value [95% CI]", show_lines=False)
    for column in ("model", "oversampling", "PR-AUC", "ROC-AUC", "recall", "precision", "Brier"):
        table.add_column(column)
    for c in result.candidates:
        e = c.test.estimates
        table.add_row(
            c.model + (" *" if c is result.best else ""),
            c.oversample,
            e["pr_auc"].format(),
            e["roc_auc"].format(),
            e["recall"].format(),
            e["precision"].format(),
            e["brier"].format(),
        )
    console.print(table)
    prevalence = metrics["test_prevalence"]
    baseline = metrics["trivial_baseline"]["test"]
    console.print(
        f"test prevalence {prevalence['value']:.3f}; always-'no sepsis' baseline: accuracy "
        f"{baseline['accuracy']['value']:.3f}, PR-AUC {baseline['pr_auc']['value']:.3f}, "
        "ROC-AUC 0.500"
    )
    console.print(
        f"selected (*) on {best['selected_on']}: {best['model']} + {best['oversample']}, "
        f"threshold {best['threshold']:.3f}"
    )
    for effect in metrics["oversampling_effect"]:
        if effect["metric"] == "pr_auc":
            d = effect["difference_vs_none"]
            console.print(
                f"  {effect['oversample']:>5} vs none, {effect['model']:<13} PR-AUC "
                f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]: {effect['verdict']}"
            )
    timing = Table(title="Time per part (s)")
    timing.add_column("part")
    timing.add_column("wall", justify="right")
    timing.add_column("CPU", justify="right")
    for part, seconds in metrics["timings_seconds"].items():
        timing.add_row(part, f"{seconds:.1f}", f"{metrics['cpu_seconds'][part]:.1f}")
    console.print(timing)
    console.print(f"wrote metrics.json, comparison.csv/.md, plots and model/ to {out}")


def score_cmd(
    model: Annotated[Path, typer.Option(help="The `model` folder written by classify.")],
    features: Annotated[
        Path,
        typer.Option(
            "--features",
            "--input",
            help="Patient features (.parquet or .csv) as `data prepare` writes; for --task "
            "hourly, a folder (or .zip) of PhysioNet .psv files, with or without the "
            "SepsisLabel column (the Challenge's test files have none).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write scores to this .csv (default: print them); for --task hourly, the "
            "folder for one prediction .psv per patient (required)."
        ),
    ] = None,
    task: Annotated[
        Task, typer.Option(help="patients: a features table; hourly: .psv files, hour by hour.")
    ] = Task.patients,
) -> None:
    """Score patients with a saved classifier: probability of sepsis and the decision.

    With --task hourly: one `<patient>.psv` per input file with the header
    `PredictedProbability|PredictedLabel` and one line per hour, as PhysioNet/CinC 2019 entries
    wrote them (the Challenge's `evaluate_sepsis_score.py` reads them).
    """
    if task is Task.hourly:
        _score_hourly(model, features, out)
        return
    import pandas as pd

    from sepsis_rl.common.files import write_text_atomic
    from training.classification.model_file import (
        FeatureMismatchError,
        ModelFileError,
        check_features,
        load_model,
    )

    if not features.is_file():
        raise fail(f"{features} does not exist")
    if out is not None:
        check_out_file(out)
    try:
        table = (
            pd.read_parquet(features) if features.suffix == ".parquet" else pd.read_csv(features)
        )
    except Exception as err:  # a damaged table can fail in pyarrow or pandas in many ways
        raise fail(f"cannot read {features}: {err}") from None
    try:
        # The table is checked against the model's feature list before the model is loaded:
        # bad input is refused before the model's libraries start their thread pools.
        expected = _feature_names(model)
        if expected is not None:
            check_features(table, expected)
        scores = load_model(model).predict_table(table)
    except (ModelFileError, FeatureMismatchError) as err:
        raise fail(str(err)) from None
    if out is None:
        console.print(scores.to_string(index=False))
    else:
        write_text_atomic(out, scores.to_csv(index=False))
        console.print(f"scored {len(scores):,} patients; wrote {out}")


def _score_hourly(model: Path, psv: Path, out: Path | None) -> None:
    """`classify-score --task hourly`: bad input refused (file, line, column) before scoring.
    Files without SepsisLabel (the Challenge's test files) are scored like labelled ones."""
    import time

    from data_prep.reader import DataFormatError, read_cohort
    from data_prep.schema import LABEL
    from training.classification.hourly import load_hourly_model, score_psv_folder
    from training.classification.model_file import ModelFileError

    if out is None:
        raise fail("--task hourly writes one .psv per patient: give the folder with --out")
    check_out_folder(out)
    if not psv.exists():
        raise fail(f"--input {psv} does not exist; give a folder (or .zip) of .psv files")
    start = time.perf_counter()
    try:
        table = read_cohort(psv, allow_unlabelled=True).table
    except (DataFormatError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    try:
        hourly = load_hourly_model(model)
        n_files = score_psv_folder(hourly, table, out)
    except ModelFileError as err:
        raise fail(str(err)) from None
    seconds = time.perf_counter() - start
    unlabelled = table.column(LABEL).null_count
    labels = "" if unlabelled == 0 else f", {unlabelled:,} of them without SepsisLabel"
    console.print(
        f"scored {table.num_rows:,} hours{labels} of {n_files:,} patients in {seconds:.1f} s "
        f"({table.num_rows / seconds:,.0f} hours/s); wrote {n_files:,} .psv files to {out}"
    )


def _feature_names(model: Path) -> list[str] | None:
    """The feature names in the model folder's metadata, or None when it cannot be read (then
    `load_model` says what is wrong with the folder)."""
    import json

    from training.classification.model_file import MODEL_META_FILE

    try:
        names = json.loads((model / MODEL_META_FILE).read_text())["feature_names"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


def register(app: typer.Typer) -> None:
    """Add `classify` and `classify-score` to the root app."""
    app.command("classify")(classify_cmd)
    app.command("classify-score")(score_cmd)
