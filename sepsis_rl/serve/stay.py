"""A whole ICU stay, hour by hour: the uploaded PhysioNet `.psv` file read by the project's reader,
the vitals each hour's recommendation sees, and the classifier's sepsis risk at each hour.

Decisions for the hours (also in `sepsis_rl.serve.service.PolicyService.stay`'s docstring):

* A vital missing at an hour carries its last measured value forward (as `data prepare`'s
  imputer does); a vital not measured yet (PhysioNet stays often have no lactate at all) takes
  the PhysioNet reference median (`data_prep.schema.SPECS`, label-0 rows) until it is. Both are
  named in the warnings, so every hour gets an action, and the reader of the answer knows which
  values were not measured.
* Values outside the simulator's observation range (`sepsis_env.env.OBS_LOW`/`OBS_HIGH`) are
  clipped to it, with a warning; an hour whose vitals still break a rule the policy's input
  obeys (SBP below DBP, MAP outside DBP-SBP) gets no action (null) and a warning.
* The `.psv` format records no treatments, so every hour is scored as if no organ support were
  running (the recommend defaults, `training.rl.recommend.CONTEXT_DEFAULTS`).
* The risk at hour t is the classifier applied to the stay's hours up to and including t (its
  feature window: the last `max_window_hours` of them), never to later hours.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from data_prep.cleaning import age_in_years
from data_prep.features import DEFAULT_MAX_WINDOW_H, ROW
from data_prep.prepare import PREPROCESSING_FILE
from data_prep.reader import DataFormatError, read_cohort
from data_prep.schema import MEASUREMENTS, PATIENT, SPECS, TIME
from sepsis_env.env import OBS_HIGH, OBS_INDEX, OBS_LOW, OBS_UNITS
from sepsis_rl.serve.problems import InputError, Problem
from training.classification.model_file import MODEL_META_FILE, SepsisClassifier, load_model
from training.rl.recommend import VITALS

UPLOAD_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""An uploaded file's stem kept as the patient id (`p000123`); anything else becomes `upload`."""


HOURS_LISTED = 5
"""Hours named in one warning before the rest are counted."""


def read_stay(content: bytes, filename: str | None) -> tuple[str, pd.DataFrame]:
    """(patient id, the canonical hourly table) of one uploaded `.psv` file.

    The bytes are written to a private temporary folder and read by `data_prep.reader`, which
    checks the header, every token and the hour sequence. Raises InputError naming the line and
    column the reader refused.
    """
    stem = Path(filename or "").name.removesuffix(".psv")
    patient = stem if UPLOAD_NAME.fullmatch(stem) else "upload"
    shown = f"{patient}.psv"
    with tempfile.TemporaryDirectory(prefix="sepsis-rl-stay-") as folder:
        path = Path(folder, shown)
        path.write_bytes(content)
        try:
            table = read_cohort(Path(folder)).table
        except DataFormatError as err:
            # The reader names the temporary file; the client knows the file by its own name.
            message = shown + str(err).removeprefix(err.path)
            raise InputError([Problem("file", message, err.line, err.column)]) from None
    return patient, table.to_pandas()


@dataclass
class StayVitals:
    """What the policy is given at each hour of a stay."""

    values: pd.DataFrame
    """One row per hour, one column per `VITALS` name: measured, carried forward or filled."""
    warnings: list[str]


def stay_vitals(hourly: pd.DataFrame) -> StayVitals:
    """The vitals of every hour: measured, else carried forward, else the reference median;
    clipped to the simulator's range. Warnings say which values were not measured as given."""
    hours = hourly[TIME].to_numpy()
    raw = hourly[list(VITALS)].astype(float).copy()
    raw["Age"] = age_in_years(raw["Age"])
    carried = raw.ffill()
    warnings = []
    for name in VITALS:
        unit = OBS_UNITS[OBS_INDEX[name]]
        measured = raw[name].notna().to_numpy()
        seen = carried[name].notna().to_numpy()
        n_carried = int((seen & ~measured).sum())
        if n_carried:
            warnings.append(
                f"{name} was not measured at {n_carried} of {len(hours)} hours "
                f"({_hours(hours[seen & ~measured], lead=False)}): its last measured value was "
                "carried forward"
            )
        if not seen.all():
            median = SPECS[name].median
            when = "in the stay" if not seen.any() else f"before hour {hours[seen.argmax()]:g}"
            warnings.append(
                f"{name} was never measured {when}: {_hours(hours[~seen])} "
                f"{'use' if (~seen).sum() > 1 else 'uses'} the PhysioNet reference median, "
                f"{median:g} {unit}"
            )
            carried[name] = carried[name].fillna(median)
        i = OBS_INDEX[name]
        low, high = float(OBS_LOW[i]), float(OBS_HIGH[i])
        outside = ((carried[name] < low) | (carried[name] > high)).to_numpy()
        if outside.any():
            warnings.append(
                f"{name} lies outside the simulator's range ({low:g} to {high:g} {unit}) at "
                f"{_hours(hours[outside])}: clipped to it"
            )
            carried[name] = carried[name].clip(low, high)
    return StayVitals(carried.reset_index(drop=True), warnings)


def _hours(hours: np.ndarray, lead: bool = True) -> str:
    """`hours 3, 4, 5, 7, 9 and 12 more` (`hour 3` for one; without the word if not `lead`)."""
    shown = ", ".join(f"{h:g}" for h in hours[:HOURS_LISTED])
    more = len(hours) - HOURS_LISTED
    text = shown + (f" and {more} more" if more > 0 else "")
    if not lead:
        return text
    return f"{'hour' if len(hours) == 1 else 'hours'} {text}"


class RiskModel:
    """A classifier saved by `sepsis-rl classify` with the preprocessing its features came from
    (the `data prepare` folder its `best_model.json` names), scoring every hour of a stay."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.classifier: SepsisClassifier = load_model(self.folder)
        saved = joblib.load(preprocessing_file(self.folder))
        self.cleaning = saved["cleaning"]
        self.features = saved["features"]
        options = saved.get("options") or {}
        self.max_window_hours = int(options.get("max_window_hours", DEFAULT_MAX_WINDOW_H))

    def hourly_risk(self, hourly: pd.DataFrame) -> np.ndarray:
        """Probability of sepsis at each hour, from that hour's feature window only (the last
        `max_window_hours` hours up to and including it). Cleaning is causal (last value carried
        forward, then training medians), so cleaning the whole stay once and cutting windows
        from it equals cleaning each prefix."""
        cleaned = self.cleaning.transform(hourly.drop(columns=[ROW], errors="ignore"))
        kept = [name for name in MEASUREMENTS if name in cleaned.columns]
        for name in kept:
            cleaned[f"{name}__observed"] = hourly[name].notna().to_numpy()
        windows = []
        for t in range(len(cleaned)):
            window = cleaned.iloc[max(0, t + 1 - self.max_window_hours) : t + 1].copy()
            window[PATIENT] = f"hour-{t}"
            windows.append(window)
        features = self.features.transform(pd.concat(windows, ignore_index=True))
        return self.classifier.predict_table(features)["probability"].to_numpy(dtype=float)


def preprocessing_file(classifier_folder: str | Path) -> Path:
    """The `preprocessing.joblib` of the `data prepare` folder a classifier was trained on (its
    `best_model.json` records the features file, `trained_on.features`), checked against the
    sha256 recorded beside it (`trained_on.preprocessing_sha256`) before anything unpickles it.

    Raises FileNotFoundError saying what is missing, ManifestError when the file changed."""
    import json

    from sepsis_rl.common.manifest import ManifestError, file_sha256

    meta_path = Path(classifier_folder) / MODEL_META_FILE
    try:
        trained_on = json.loads(meta_path.read_text())["trained_on"]
        features = trained_on["features"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FileNotFoundError(
            f"{meta_path} does not name the features the classifier was trained on "
            f"(trained_on.features: {err}); pass the `model` folder `sepsis-rl classify` wrote"
        ) from None
    path = Path(features).parent / PREPROCESSING_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the hourly risk cleans and summarises a stay as `data prepare` "
            f"did for the classifier ({meta_path} names {features}); keep that folder where it "
            "was, or serve without --classifier"
        )
    expected = trained_on.get("preprocessing_sha256")
    if not expected:
        raise ManifestError(
            f"{meta_path} records no sha256 of {path} (a classifier written before it was "
            "recorded): its preprocessing cannot be checked before it is unpickled; run "
            "`sepsis-rl classify` again, or serve without --classifier"
        )
    if file_sha256(path) != expected:
        raise ManifestError(
            f"{path} changed since the classifier in {classifier_folder} was trained (its sha256 "
            f"differs from the one in {meta_path}): prepare the data again and run `sepsis-rl "
            "classify` again, or serve without --classifier"
        )
    return path


def risk_or_none(model: RiskModel | None, hourly: pd.DataFrame) -> list[Any]:
    """The hourly risk, or None at every hour without a classifier."""
    if model is None:
        return [None] * len(hourly)
    return [float(r) for r in model.hourly_risk(hourly)]
