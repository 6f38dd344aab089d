"""`sepsis-rl tune classifiers --task hourly`: search the hourly early-warning model by the
validation patients' normalised utility (PhysioNet/CinC 2019).

The protocol:
1. The features of every hour are built once (`HourlyFeatureBuilder` fitted on the training
   patients, `training.classification.hourly.build_features`).
2. A trial draws model family, oversampling and their hyper-parameters from the per-patient
   search's space (`tuning.spaces.CLASSIFIER_SPACE`) restricted to the hourly models; Optuna's
   TPE (seeded) proposes them, the untuned default first when the space holds it.
3. Each trial fits on training hours only (`training_rows`: every septic hour, the others
   subsampled to `max_train_hours`), chooses its decision threshold on the validation patients
   and reports the validation utility at that threshold: the number the search maximises.
4. The best configuration is refitted once by `run_hourly` (the classify protocol); that refit is
   the only time a test patient is scored.

Why in-process Optuna rather than Ray Tune trials as `tuning.classifier_search` does: every
trial needs the same feature matrix (1.4 GB float32 for the full cohort). Built once and shared
in one process, a trial costs one fit; a Ray trial process would rebuild or copy it, and two at
once would not fit beside the rest on a 2-core, few-GB machine.

Outputs under `storage/name/`: `trials.csv` (one row per trial: its parameters, validation
utility, threshold, seconds), `best.json`, and with a refit `final/` (the folder `classify --task
hourly` writes).
"""

from __future__ import annotations

import json
import time
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from data_prep.schema import LABEL, PATIENT
from sepsis_rl.common.config_files import options_dataclass
from sepsis_rl.common.files import staged_directory, write_json_atomic
from training.classification.hourly import (
    DEFAULT_HOURLY_OVERSAMPLE,
    DEFAULT_MAX_TRAIN_HOURS,
    HOURLY_MODELS,
    HOURLY_OVERSAMPLERS,
    HourlyConfig,
    HourlyTable,
    build_features,
    choose_utility_threshold,
    fit_hours,
    hour_probabilities,
    load_hourly,
    run_hourly,
    training_rows,
)
from tuning.classifier_search import FixedSettings, default_point_within, settings_of
from tuning.spaces import CLASSIFIER_SPACE, restrict, suggest

TRIALS_FILE, BEST_FILE = "trials.csv", "best.json"
"""What a search writes into its folder: one row per trial; the best trial and the search."""
HOURLY_TUNE_METRIC = "val_utility"
"""What a trial reports: the validation normalised utility at its own threshold (maximised)."""
Names = Field(strict=False, min_length=1)


@options_dataclass
class HourlySearch:
    """Every option of an hourly search; the field list is the documentation."""

    data: Annotated[Path, Field(strict=False)]
    """Folder written by `sepsis-rl data prepare` (its hourly.parquet and split.csv)."""
    num_samples: PositiveInt = 12
    """Configurations to try (the default configuration counts as the first)."""
    time_budget_s: PositiveFloat | None = 600.0
    """Start no new trial after this many seconds (None: no limit)."""
    seed: NonNegativeInt = 0
    """Seeds the Optuna sampler, the training-hour subsample and every model and oversampler."""
    models: Annotated[tuple[Literal[HOURLY_MODELS], ...], Names] = HOURLY_MODELS
    """Model families the search may choose (xgboost, logreg)."""
    oversample: Annotated[tuple[Literal[HOURLY_OVERSAMPLERS], ...], Names] = (
        DEFAULT_HOURLY_OVERSAMPLE
    )
    """Oversampling modes the search may choose."""
    max_train_hours: PositiveInt = DEFAULT_MAX_TRAIN_HOURS
    """Training hours per fit: every septic hour, then a random subset of the others."""
    storage: Annotated[str, Field(min_length=1)] = "results/tune"
    """Local folder that holds the experiment."""
    name: Annotated[str, Field(min_length=1)] = "hourly"
    """Experiment folder name under `storage`."""
    fixed: FixedSettings = field(default_factory=dict)
    """`ClassifierSettings` fields held fixed in every trial (e.g. ctgan_epochs)."""

    def space(self) -> dict[str, Any]:
        return restrict(CLASSIFIER_SPACE, model=self.models, oversample=self.oversample)

    def default_point(self) -> dict[str, Any] | None:
        """The untuned default, if the restricted space contains it."""
        return default_point_within(self.models, self.oversample)

    @property
    def folder(self) -> Path:
        return Path(self.storage) / self.name


class HourlyTrials:
    """The features and labels every trial shares, built once."""

    def __init__(self, table: HourlyTable, search: HourlySearch):
        self.table = table
        self.search = search
        _, self.features = build_features(table)
        self.labels = table.frame[LABEL].to_numpy()
        self.ids = table.frame[PATIENT].to_numpy()
        self.fit_rows = training_rows(table, search.max_train_hours, search.seed)
        self.val_rows = table.rows("val")

    def validation_utility(self, config: dict[str, Any]) -> dict[str, Any]:
        """Fit one configuration on the training hours; its validation threshold and utility."""
        start = time.perf_counter()
        settings = settings_of(config)
        pipeline = fit_hours(
            config["model"],
            config["oversample"],
            settings,
            self.features,
            self.labels,
            self.fit_rows,
        )
        val = self.val_rows
        scores = hour_probabilities(pipeline, self.features.iloc[val])
        threshold, utility = choose_utility_threshold(self.ids[val], self.labels[val], scores)
        return {
            HOURLY_TUNE_METRIC: utility,
            "threshold": threshold,
            "seconds": time.perf_counter() - start,
        }


def _trial_config(search: HourlySearch, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "fixed": dict(search.fixed), "seed": search.seed}


def run_hourly_search(search: HourlySearch, table: HourlyTable | None = None) -> pd.DataFrame:
    """Run the search; write `trials.csv` and `best.json` into `search.folder` (all or nothing)
    and return the trials, best first."""
    import optuna

    table = table or load_hourly(Path(search.data))
    trials = HourlyTrials(table, search)
    space = search.space()
    sampler = optuna.samplers.TPESampler(seed=search.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    default = search.default_point()
    if default is not None:
        study.enqueue_trial(default)
    rows, drawn = [], []
    started = time.perf_counter()
    for number in range(search.num_samples):
        if (
            search.time_budget_s is not None
            and time.perf_counter() - started > search.time_budget_s
        ):
            break
        trial = study.ask()
        suggest(space, trial)
        params = dict(trial.params)
        result = trials.validation_utility(_trial_config(search, params))
        study.tell(trial, result[HOURLY_TUNE_METRIC])
        rows.append({"trial": number, **params, **result})
        drawn.append(params)
    frame = pd.DataFrame(rows).sort_values(HOURLY_TUNE_METRIC, ascending=False, kind="stable")
    best = frame.iloc[0]
    best_params = {k: _plain(v) for k, v in drawn[int(best["trial"])].items()}
    record = {
        "kind": "hourly classifiers",
        "metric": HOURLY_TUNE_METRIC,
        "mode": "max",
        "data": str(Path(search.data).resolve()),
        "trials": len(rows),
        "best": {
            "params": best_params,
            "config": _trial_config(search, best_params),
            HOURLY_TUNE_METRIC: float(best[HOURLY_TUNE_METRIC]),
            "threshold": float(best["threshold"]),
        },
        "default": search.default_point(),
    }
    with staged_directory(search.folder) as stage:
        frame.to_csv(stage / TRIALS_FILE, index=False)
        write_json_atomic(stage / BEST_FILE, record)
    return frame


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (for JSON and ClassifierSettings)."""
    return value.item() if isinstance(value, np.generic) else value


def refit_best_hourly(search: HourlySearch, out: Path | None = None) -> dict[str, Any]:
    """Refit the best configuration of `best.json` by `run_hourly` into `out` (default
    `search.folder / "final"`): the one touch of test patients. Returns its metrics."""
    record = json.loads((search.folder / BEST_FILE).read_text())
    config = record["best"]["config"]
    hourly = HourlyConfig(
        models=(config["model"],),
        oversample=(config["oversample"],),
        max_train_hours=search.max_train_hours,
        settings=settings_of(config),
    )
    return run_hourly(Path(search.data), out or search.folder / "final", hourly).metrics
