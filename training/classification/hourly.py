"""Hourly early warning of sepsis, scored by the PhysioNet/CinC 2019 Challenge's normalised utility.

`sepsis-rl classify --task hourly` runs `run_hourly`; `classify-score --task hourly` loads the
saved `HourlyModel` and writes the Challenge's prediction files. The protocol, in the order it
runs:

1. Read `hourly.parquet` and `split.csv` from a `data prepare` folder (`load_hourly`): one row
   per patient-hour, each patient on the side of the split `data prepare` chose.
2. Fit `HourlyFeatureBuilder` on the training patients' hours and build every hour's features
   from that hour and the hours before it only (`data_prep.hourly_features`).
3. Fit every candidate (model x oversampling) on training hours only (`training_rows`): all
   septic hours (SepsisLabel = 1) of training patients and, when there are more hours than
   `max_train_hours`, a seeded random subset of their other hours. Oversamplers (SMOTE, CTGAN)
   sit inside the imbalanced-learn pipeline, so synthetic hours exist only inside `fit`.
   Validation and test hours are never subsampled.
4. On validation patients: each candidate's decision threshold maximises the normalised utility
   (`utility_by_threshold`); the best candidate is the one with the highest validation utility.
5. On test patients: the normalised utility with a 95% percentile bootstrap interval over
   patients, beside the clinical rules (`qsofa`, `sirs`, alarm at >= 2 criteria: no threshold is
   tuned) and the trivial rules (never alarm: utility 0 by definition; always alarm). Paired
   bootstrap differences, all on the same resampled patients: each model with vs without
   oversampling ("does oversampling help?") and each model vs the best rule (chosen on
   validation utility).
6. Write `metrics.json`, `comparison.csv`, `comparison.md` and `model/` (the fitted feature
   builder and the selected pipeline, oversampler dropped, with its threshold and a manifest).

Defaults (`HourlyConfig`): XGBoost and logistic regression, without oversampling and with SMOTE.
CTGAN is compared only when asked (`oversample=("none", "smote", "ctgan")`): on the full cohort it
trains on about 20,000 septic hours x 229 features, so its epochs are capped
(`ctgan_epochs`, 20 by default against the per-patient task's 300).

The clinical rules use the last value observed at or before each hour (carried forward), like
the features; a criterion whose variable was never measured in the stay is not met.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
from imblearn.pipeline import Pipeline
from pydantic import Field, PositiveInt
from sklearn.impute import SimpleImputer

from data_prep.hourly_features import HourlyFeatureBuilder
from data_prep.prepare import HOURLY_FILE
from data_prep.prepare import SPLIT_FILE as PREPARED_SPLIT_FILE
from data_prep.schema import HEADER, LABEL, PATIENT, TIME
from data_prep.split import read_split
from sepsis_rl.common.config_files import options_dataclass
from sepsis_rl.common.files import staged_directory, write_json_atomic
from sepsis_rl.common.manifest import ManifestError, verify_manifest, write_manifest
from training.classification.features import SPLITS, DataFolderError
from training.classification.metrics import (
    Estimate,
    bootstrap_weights,
    format_estimate,
    metric_draws,
    percentile_interval,
)
from training.classification.model_file import ModelFileError, _scoring_pipeline, _versions
from training.classification.models import (
    MODEL_LABELS,
    OVERSAMPLER_LABELS,
    ClassifierSettings,
    build_pipeline,
)
from training.classification.utility import (
    hourly_auroc_auprc,
    patient_utilities,
    utility_by_threshold,
    utility_draws,
)

HOURLY_MODELS: tuple[str, ...] = ("xgboost", "logreg")
"""Models of the hourly task (random forest and the SVM are left to the per-patient task: on a
million training hours they do not fit in the time budget)."""
HOURLY_OVERSAMPLERS: tuple[str, ...] = ("none", "smote", "ctgan")
DEFAULT_HOURLY_OVERSAMPLE: tuple[str, ...] = ("none", "smote")
"""CTGAN is compared only when asked (module docstring)."""
DEFAULT_MAX_TRAIN_HOURS = 200_000
"""Training hours kept per fit: every septic hour, then a random subset of the others (XGBoost's fit
time grows with the rows: 200,000 keeps the full-cohort run within 5 minutes on 2 cores). The full
cohort's 1.1M training hours x 229 float32 features are about 1 GB before any copy."""
DEFAULT_HOURLY_CTGAN_EPOCHS = 20
UTILITY_THRESHOLD_GRID = 512
"""Candidate thresholds tried on validation: this many quantiles of the validation scores."""

# --- Clinical rules ---------------------------------------------------------------------------
# qSOFA: Singer M et al., "The Third International Consensus Definitions for Sepsis and Septic
# Shock (Sepsis-3)", JAMA 2016;315(8):801-810. Its third criterion, altered mentation (GCS < 15),
# is not in the PhysioNet 2019 data: qSOFA here counts 2 criteria, so an alarm needs both.
QSOFA_RESP_MIN_PER_MIN = 22.0
"""Respiratory rate at or above which the qSOFA criterion is met (breaths/min)."""
QSOFA_SBP_MAX_MMHG = 100.0
"""Systolic blood pressure at or below which the qSOFA criterion is met (mmHg)."""
# SIRS: Bone RC et al., "Definitions for sepsis and organ failure ...", ACCP/SCCM Consensus
# Conference, Chest 1992;101(6):1644-1655. Immature band forms (> 10%) are not in the data.
SIRS_TEMP_HIGH_C = 38.0
"""Temperature above which the SIRS temperature criterion is met (deg C)."""
SIRS_TEMP_LOW_C = 36.0
"""Temperature below which the SIRS temperature criterion is met (deg C)."""
SIRS_HR_BPM = 90.0
"""Heart rate above which the SIRS criterion is met (beats/min)."""
SIRS_RESP_PER_MIN = 20.0
"""Respiratory rate above which the SIRS criterion is met (breaths/min)..."""
SIRS_PACO2_MMHG = 32.0
"""... or arterial PaCO2 below which it is met (mmHg)."""
SIRS_WBC_HIGH_K_PER_UL = 12.0
"""White cell count above which the SIRS criterion is met (10^3/uL)..."""
SIRS_WBC_LOW_K_PER_UL = 4.0
"""... or below which it is met (10^3/uL)."""
RULE_ALARM_CRITERIA = 2
"""qSOFA and SIRS alarm when at least this many criteria are met (both papers)."""

RULES: tuple[str, ...] = ("qsofa", "sirs")
RULE_LABELS = {
    "qsofa": "qSOFA >= 2 (respiratory rate, SBP; mentation not in the data)",
    "sirs": "SIRS >= 2 (temperature, heart rate, respiration/PaCO2, WBC)",
}
TRIVIAL_RULES: tuple[str, ...] = ("never", "always")

PREDICTION_HEADER = ("PredictedProbability", "PredictedLabel")
"""Header of the Challenge's prediction files (`save_challenge_predictions` of the Challenge's
driver.py writes `PredictedProbability|PredictedLabel`, then `%g|%d` per hour)."""

HOURLY_MODEL_FILE = "hourly_model.joblib"
HOURLY_META_FILE = "hourly_model.json"
HOURLY_MODEL_FORMAT = "sepsis-rl-hourly-classifier/1"
HOURLY_MODEL_KIND = "sepsis-rl/hourly-classifier-model"
"""The kind recorded in the hourly model folder's manifest."""

ProgressFn = Callable[[str, int, int], None]


@options_dataclass(frozen=True)
class HourlyConfig:
    """Every option of a `classify --task hourly` run."""

    models: Annotated[tuple[Literal[HOURLY_MODELS], ...], Field(strict=False, min_length=1)] = (
        HOURLY_MODELS
    )
    """Models to train (xgboost, logreg)."""
    oversample: Annotated[
        tuple[Literal[HOURLY_OVERSAMPLERS], ...], Field(strict=False, min_length=1)
    ] = DEFAULT_HOURLY_OVERSAMPLE
    """Oversampling of septic training hours to compare (none, smote, ctgan)."""
    n_boot: Annotated[int, Field(ge=100)] = 1000
    """Bootstrap resamples of the test patients for the intervals."""
    max_train_hours: PositiveInt = DEFAULT_MAX_TRAIN_HOURS
    """Training hours per fit: all septic hours plus a random subset of the others."""
    settings: ClassifierSettings = field(
        default_factory=lambda: ClassifierSettings(ctgan_epochs=DEFAULT_HOURLY_CTGAN_EPOCHS)
    )
    """Model and oversampler hyper-parameters, including the seed (shared with the per-patient
    task: `training.classification.models.ClassifierSettings`)."""


# --- Data --------------------------------------------------------------------------------------


@dataclass
class HourlyTable:
    """The canonical hourly table of a prepared folder, sorted by patient and hour, with each
    row's split."""

    frame: pd.DataFrame
    split: np.ndarray
    """'train', 'val' or 'test' for each row."""
    source: Path

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_hourly(data_dir: Path) -> HourlyTable:
    """`hourly.parquet` and `split.csv` of a `data prepare` folder, checked: every patient in the
    split, and every split with a septic and a non-septic patient. Raises DataFolderError."""
    data_dir = Path(data_dir)
    hint = f"run `sepsis-rl data prepare --input <raw data> --out {data_dir}` first"
    hourly_path, split_path = data_dir / HOURLY_FILE, data_dir / PREPARED_SPLIT_FILE
    for path in (hourly_path, split_path):
        if not path.is_file():
            raise DataFolderError(f"{path} is missing; {hint}")
    try:
        frame = pd.read_parquet(hourly_path)
        split = read_split(split_path)
    except Exception as err:  # pyarrow and pandas raise several types for damaged files
        raise DataFolderError(f"cannot read {hourly_path} or {split_path}: {err}; {hint}") from err
    missing = [c for c in (PATIENT, TIME, LABEL) if c not in frame.columns]
    if missing:
        raise DataFolderError(f"{hourly_path} lacks column(s) {missing}; {hint}")
    pa.default_memory_pool().release_unused()  # the reader's buffers, kept by arrow's allocator
    frame[PATIENT] = frame[PATIENT].astype(str)
    frame = in_stay_order(frame)
    of_patient = split.set_index(PATIENT)["split"]
    row_split = frame[PATIENT].map(of_patient)
    if row_split.isna().any():
        unknown = frame.loc[row_split.isna(), PATIENT].iloc[0]
        raise DataFolderError(f"patient {unknown} of {hourly_path} is not in {split_path}; {hint}")
    labels = frame.groupby(PATIENT, sort=False)[LABEL].max()
    for name in SPLITS:
        in_split = labels[of_patient.reindex(labels.index) == name]
        if in_split.nunique() < 2:
            raise DataFolderError(
                f"{split_path}: the {name} patients need septic and non-septic stays (found "
                f"{int(in_split.sum())} septic of {in_split.size}); prepare a larger cohort"
            )
    return HourlyTable(frame, row_split.to_numpy(dtype=object).astype(str), data_dir)


def in_stay_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each patient's hours contiguous and in ICULOS order, and a fresh index: as
    it is when `data prepare` or the reader wrote it (no copy then), else sorted."""
    ids, hours = frame[PATIENT].to_numpy(), frame[TIME].to_numpy()
    new_stay = ids[1:] != ids[:-1]
    firsts = ids[np.r_[0, np.flatnonzero(new_stay) + 1]] if ids.size else ids
    if ((np.diff(hours) > 0) | new_stay).all() and pd.Index(firsts).is_unique:
        if frame.index.equals(pd.RangeIndex(len(frame))):
            return frame
        return frame.reset_index(drop=True)
    return frame.sort_values([PATIENT, TIME], kind="stable").reset_index(drop=True)


def training_rows(table: HourlyTable, max_train_hours: int, seed: int) -> np.ndarray:
    """Row positions a candidate is fitted on: training patients only; every septic hour, and the
    other hours subsampled (seeded) when there are more than `max_train_hours` in all."""
    train = table.rows("train")
    if train.size <= max_train_hours:
        return train
    septic = table.frame[LABEL].to_numpy()[train] == 1
    others = train[~septic]
    keep = max(max_train_hours - int(septic.sum()), 0)
    chosen = np.random.default_rng(seed).choice(others, size=min(keep, others.size), replace=False)
    return np.sort(np.r_[train[septic], chosen])


def build_features(table: HourlyTable) -> tuple[HourlyFeatureBuilder, pd.DataFrame]:
    """The feature builder fitted on the training patients' hours, and every hour's features."""
    builder = HourlyFeatureBuilder().fit(table.frame.iloc[table.rows("train")])
    return builder, builder.transform(table.frame)


def fit_hours(
    model: str,
    oversample: str,
    settings: ClassifierSettings,
    features: pd.DataFrame,
    labels: np.ndarray,
    fit_rows: np.ndarray,
) -> Pipeline:
    """The pipeline `hourly_pipeline(model, oversample)` fitted on the hours `fit_rows` (the
    positions `training_rows` chose: training patients only)."""
    pipeline = hourly_pipeline(model, oversample, settings, discrete_features(features.columns))
    return pipeline.fit(features.iloc[fit_rows], labels[fit_rows])


def discrete_features(names: Sequence[str]) -> list[str]:
    """The 0/1 feature columns (kept 0/1 by SMOTENC and CTGAN)."""
    return [n for n in ("Gender", "Unit1", "Unit2", "unit_known") if n in names]


def hourly_pipeline(
    model: str, oversample: str, settings: ClassifierSettings, discrete: Sequence[str] = ()
) -> Pipeline:
    """`build_pipeline(model, oversample)` behind a median imputer fitted on training hours,
    except for XGBoost without oversampling, which handles a missing value itself (a feature of
    a variable never measured yet). Logistic regression, SMOTE's neighbours and CTGAN need
    complete rows."""
    inner = build_pipeline(model, oversample, settings, discrete)
    if model == "xgboost" and oversample == "none":
        return inner
    imputer = SimpleImputer(strategy="median", keep_empty_features=True).set_output(
        transform="pandas"
    )
    return Pipeline([("impute", imputer), *inner.steps])


# --- Clinical and trivial rules --------------------------------------------------------------


def rule_criteria(features: pd.DataFrame, rule: str) -> np.ndarray:
    """Number of criteria of `rule` (qsofa or sirs) met at each hour, from the carried-forward
    values (`<variable>__last` features); an unmeasured variable meets no criterion."""

    def last(name: str) -> np.ndarray:
        column = f"{name}__last"
        if column not in features.columns:
            return np.full(len(features), np.nan)
        return features[column].to_numpy(dtype=np.float64)

    with np.errstate(invalid="ignore"):
        if rule == "qsofa":
            met = [last("Resp") >= QSOFA_RESP_MIN_PER_MIN, last("SBP") <= QSOFA_SBP_MAX_MMHG]
        elif rule == "sirs":
            temp, wbc = last("Temp"), last("WBC")
            met = [
                (temp > SIRS_TEMP_HIGH_C) | (temp < SIRS_TEMP_LOW_C),
                last("HR") > SIRS_HR_BPM,
                (last("Resp") > SIRS_RESP_PER_MIN) | (last("PaCO2") < SIRS_PACO2_MMHG),
                (wbc > SIRS_WBC_HIGH_K_PER_UL) | (wbc < SIRS_WBC_LOW_K_PER_UL),
            ]
        else:
            raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    return np.sum(met, axis=0).astype(np.float64)


# --- Scoring -----------------------------------------------------------------------------------


PREDICT_CHUNK_HOURS = 65_536
"""Hours scored per call: features are cast to float64 a chunk at a time, and `score_psv_folder`
builds the features of about this many hours (whole stays) at a time."""


def hour_probabilities(pipeline: Pipeline, features: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class for each hour, from float64 features in chunks.

    float64 makes a linear model's score of an hour the same (to about 1e-16) whether the hour is
    scored alone, at a bedside, or with a million others; in float32 the matrix products of
    different batch sizes differ in the 7th digit. XGBoost reads float32 either way.
    """
    if _reads_float32(pipeline):
        return np.asarray(pipeline.predict_proba(features)[:, 1], dtype=float)
    parts = [
        pipeline.predict_proba(
            features.iloc[start : start + PREDICT_CHUNK_HOURS].astype(np.float64)
        )[:, 1]
        for start in range(0, len(features), PREDICT_CHUNK_HOURS)
    ]
    return np.concatenate(parts).astype(float) if parts else np.zeros(0)


def _reads_float32(pipeline: Pipeline) -> bool:
    """True for a bare XGBoost pipeline (every other step passthrough): it casts to float32
    itself, so a float64 copy would change nothing and cost time."""
    from xgboost import XGBClassifier

    *before, (_, model) = pipeline.steps
    return isinstance(model, XGBClassifier) and all(
        step in (None, "passthrough") for _, step in before
    )


def choose_utility_threshold(patient_ids, labels, scores) -> tuple[float, float]:
    """(threshold, validation utility): the threshold among `UTILITY_THRESHOLD_GRID` quantiles
    of the scores (and just above the highest: no alarm) that maximises the normalised utility
    of `scores >= threshold`."""
    s = np.asarray(scores, dtype=float)
    grid = np.unique(np.quantile(s, np.linspace(0.0, 1.0, UTILITY_THRESHOLD_GRID)))
    grid = np.r_[grid, np.nextafter(s.max(), np.inf)]
    utilities = utility_by_threshold(patient_ids, labels, s, grid)
    best = int(np.argmax(utilities))
    return float(grid[best]), float(utilities[best])


@dataclass
class HourlyScore:
    """One rule or model on one set of patients: its utility and the hourly AUROC/AUPRC of its
    scores, each with a 95% interval over patients when bootstrapped (NaN bounds otherwise)."""

    utility: Estimate
    auroc: Estimate | None
    """None when the scores are constant (nothing to rank) or absent."""
    auprc: Estimate | None
    alarm_share: float
    """Share of hours with an alarm."""
    draws: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "utility": self.utility.to_dict(),
            "auroc": None if self.auroc is None else self.auroc.to_dict(),
            "auprc": None if self.auprc is None else self.auprc.to_dict(),
            "alarm_share": self.alarm_share,
        }


def score_alarms(
    patient_ids, labels, alarms, scores=None, weights: np.ndarray | None = None
) -> HourlyScore:
    """The utility of 0/1 `alarms` and, when `scores` vary, the Challenge's hourly AUROC and
    AUPRC of `scores`; with `weights` (bootstrap resamples of the patients, in the order their
    hours come) every figure gets its interval from the same resamples."""
    parts = patient_utilities(patient_ids, labels, alarms)
    gain, room = (parts.observed - parts.inaction).sum(), (parts.best - parts.inaction).sum()
    point = float(gain / room)
    draws = None
    estimate = Estimate(point, np.nan, np.nan)
    if weights is not None:
        draws = utility_draws(parts, weights)
        undefined = 1.0 - np.isfinite(draws).sum() / draws.size
        estimate = Estimate(point, *percentile_interval(draws), float(undefined))
    auroc = auprc = None
    if scores is not None and np.ptp(np.asarray(scores, dtype=float)) > 0:
        # The scorer counts probabilities of exactly 0 as never positive: shift counts off 0.
        s = np.asarray(scores, dtype=float)
        s = (s - s.min()) / np.ptp(s) * 0.98 + 0.01
        points = hourly_auroc_auprc(labels, s)
        if weights is None:
            auroc, auprc = (Estimate(v, np.nan, np.nan) for v in points)
        else:
            patients = pd.factorize(np.asarray(patient_ids))[0]  # the order of the weights
            ranked = ranking_intervals(patients, labels, s, weights)
            auroc, auprc = (
                Estimate(v, *ranked[name])
                for v, name in zip(points, ("auroc", "auprc"), strict=True)
            )
    return HourlyScore(estimate, auroc, auprc, float(np.mean(alarms)), draws)


RESAMPLES_PER_CHUNK = 16
"""Bootstrap resamples scored at once for the AUROC/AUPRC intervals: each holds a weight per
test hour, so a chunk of the full cohort's 230,000 test hours takes about 30 MB per array."""


def ranking_intervals(
    patients: np.ndarray, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> dict[str, tuple[float, float, float]]:
    """`{"auroc": (low, high, undefined share), "auprc": ...}`: 95% percentile intervals of the
    hourly AUROC and AUPRC of non-constant `scores` over the patient resamples `weights` (one row
    per resample, one column per patient; `patients` is each hour's column).

    For scores that are not constant, the Challenge's `compute_auc` (`hourly_auroc_auprc`)
    equals ROC-AUC with ties counted one half and average precision (its docstring):
    `metric_draws` computes both for every resample at once, each hour weighted by how often
    its patient was drawn."""
    names = {"auroc": "roc_auc", "auprc": "pr_auc"}
    s = np.asarray(scores, dtype=float)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, weights.shape[0], RESAMPLES_PER_CHUNK):
        # metric_draws also scores alarms at a threshold; only its ranking scores are kept.
        chunk = metric_draws(
            labels, s, 0.5, weights[start : start + RESAMPLES_PER_CHUNK][:, patients]
        )
        for name, metric in names.items():
            draws[name].append(chunk[metric])
    out = {}
    for name in names:
        values = np.concatenate(draws[name])
        undefined = 1.0 - np.isfinite(values).sum() / max(values.size, 1)
        out[name] = (*percentile_interval(values), float(undefined))
    return out


def paired_utility_difference(a: HourlyScore, b: HourlyScore) -> Estimate:
    """Utility of a minus b with the paired bootstrap interval (both scored with the same
    weights)."""
    if a.draws is None or b.draws is None:
        raise ValueError("paired differences need both scores bootstrapped with the same weights")
    low, high = percentile_interval(a.draws - b.draws)
    return Estimate(a.utility.value - b.utility.value, low, high)


def verdict(difference: Estimate) -> str:
    """'better', 'worse' or 'no clear difference' from the interval of a utility difference."""
    if not (np.isfinite(difference.ci_low) and np.isfinite(difference.ci_high)):
        return "undetermined"
    if difference.ci_low > 0:
        return "better"
    if difference.ci_high < 0:
        return "worse"
    return "no clear difference (95% CI includes 0)"


# --- The saved model ---------------------------------------------------------------------------


@dataclass
class HourlyModel:
    """A fitted hourly early-warning model: the feature builder, the pipeline and its threshold.

    `predict_hours(table)` scores whole stays at once; `bedside()` scores one patient one hour
    at a time, as at a bedside, with the same result (each hour's features depend only on that
    hour and the hours before it).
    """

    builder: HourlyFeatureBuilder
    pipeline: Pipeline
    threshold: float
    metadata: dict = field(default_factory=dict)

    def probabilities(self, features: pd.DataFrame) -> np.ndarray:
        return hour_probabilities(self.pipeline, features)

    def predict_hours(self, table: pd.DataFrame) -> pd.DataFrame:
        """`PredictedProbability` and `PredictedLabel` (0/1) for each row of a canonical hourly
        table (each patient's hours contiguous and in time order), with the table's index."""
        probability = self.probabilities(self.builder.transform(table))
        return pd.DataFrame(
            {
                PREDICTION_HEADER[0]: probability,
                PREDICTION_HEADER[1]: (probability >= self.threshold).astype(np.int8),
            },
            index=table.index,
        )

    def bedside(self, patient_id: str = "patient") -> BedsideScorer:
        """A scorer for one patient that takes one hour at a time."""
        return BedsideScorer(self, patient_id)


class BedsideScorer:
    """One patient's hours, given one at a time: `add_hour(values)` returns that hour's
    (probability, label). Keeps the stay so far (at most 336 h in the Challenge's data) and
    builds the features of the newest hour from it."""

    def __init__(self, model: HourlyModel, patient_id: str):
        self.model = model
        self.patient_id = patient_id
        self._hours: list[dict[str, float]] = []

    def add_hour(self, values: Mapping[str, Any]) -> tuple[float, int]:
        """Score the next hour; `values` maps the PhysioNet variables (ICULOS included) to
        numbers, a missing one to NaN or absent."""
        self._hours.append({name: float(values.get(name, np.nan)) for name in HEADER[:-1]})
        stay = pd.DataFrame(self._hours)
        stay.insert(0, PATIENT, self.patient_id)
        features = self.model.builder.transform(stay).iloc[[-1]]
        probability = float(self.model.probabilities(features)[0])
        return probability, int(probability >= self.model.threshold)


def save_hourly_model(model: HourlyModel, folder: Path) -> Path:
    """Write the builder and the scoring pipeline (oversampler dropped), their description and
    the manifest of both into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HOURLY_MODEL_FILE
    joblib.dump({"builder": model.builder, "pipeline": _scoring_pipeline(model.pipeline)}, path)
    metadata = {
        "format": HOURLY_MODEL_FORMAT,
        **model.metadata,
        "threshold": model.threshold,
        "feature_names": list(model.builder.feature_names_out_),
        "versions": _versions(),
    }
    write_json_atomic(folder / HOURLY_META_FILE, metadata)
    write_manifest(folder, HOURLY_MODEL_KIND)
    return path


def load_hourly_model(folder: Path) -> HourlyModel:
    """The model `classify --task hourly` saved in `folder` (its `model/` sub-folder), checked
    against its manifest before anything is unpickled. Raises ModelFileError."""
    import json

    folder = Path(folder)
    path, meta_path = folder / HOURLY_MODEL_FILE, folder / HOURLY_META_FILE
    for needed in (path, meta_path):
        if not needed.is_file():
            raise ModelFileError(
                f"{needed} is missing; point at the `model` folder written by "
                "`sepsis-rl classify --task hourly`"
            )
    try:
        verify_manifest(
            folder,
            HOURLY_MODEL_KIND,
            remedy="copy the folder again from where it was written, or re-run "
            "`sepsis-rl classify --task hourly`",
        )
    except ManifestError as err:
        raise ModelFileError(str(err)) from err
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{meta_path} is not valid JSON ({err})") from err
    if not isinstance(metadata, dict) or metadata.get("format") != HOURLY_MODEL_FORMAT:
        raise ModelFileError(f"{meta_path} is not a {HOURLY_MODEL_FORMAT} description")
    try:
        saved = joblib.load(path)
        builder, pipeline = saved["builder"], saved["pipeline"]
    except Exception as err:  # unpickling can fail in many ways; all mean an unusable file
        raise ModelFileError(
            f"cannot load {path} ({type(err).__name__}: {err}); re-run classify --task hourly"
        ) from err
    return HourlyModel(builder, pipeline, float(metadata["threshold"]), metadata)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
WRITER_THREADS = 1
"""Threads that create the prediction files, beside the caller's scoring. One: creating a file
takes its folder's lock, so a second thread in the same folder mostly spins on it (40,336 files
on the reference machine's ext4: about 1.0 s of CPU with one thread, 1.0-4.7 s with two)."""
WRITE_BATCH_FILES = 512
"""Prediction files per writer task."""
_PREDICTION_LINE = "%g|%d"
_PREDICTION_FILE_HEADER = "|".join(PREDICTION_HEADER) + "\n"


def write_challenge_predictions(
    patient_ids: np.ndarray, predictions: pd.DataFrame, folder: Path
) -> int:
    """One `<patient>.psv` per patient in `folder` (all or nothing), with the header
    `PredictedProbability|PredictedLabel` and one `%g|%d` line per hour, as Challenge entries
    wrote them. `patient_ids` is each row's patient, hours contiguous. Returns the file count."""
    with challenge_prediction_files(folder) as files:
        files.add(patient_ids, predictions)
    return files.n_files


class ChallengePredictionFiles:
    """Prediction files being written into a staging folder (`challenge_prediction_files`).

    `add` queues the files of some patients and returns at once: a background thread
    (`WRITER_THREADS`) formats and writes them while the caller scores the next patients.
    `os.open` relative to the folder's descriptor skips resolving the path for every file.
    """

    def __init__(self, folder_fd: int, pool: ThreadPoolExecutor):
        self._folder_fd = folder_fd
        self._pool = pool
        self._pending: list = []
        self.n_files = 0
        """Files queued so far (one per patient)."""

    def add(self, patient_ids: np.ndarray, predictions: pd.DataFrame) -> None:
        """Queue one file per patient of these rows: `patient_ids` is each row's patient, each
        patient's hours contiguous, in order and all in this call."""
        ids = np.asarray(patient_ids)
        if ids.size == 0:
            return
        probability = predictions[PREDICTION_HEADER[0]].to_numpy()
        label = predictions[PREDICTION_HEADER[1]].to_numpy()
        starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
        bounds = np.r_[starts, ids.size]
        for first in range(0, starts.size, WRITE_BATCH_FILES):
            last = min(first + WRITE_BATCH_FILES, starts.size)
            rows = slice(int(bounds[first]), int(bounds[last]))
            self._pending.append(
                self._pool.submit(
                    self._write,
                    ids[starts[first:last]].tolist(),
                    (bounds[first : last + 1] - bounds[first]).tolist(),
                    probability[rows],
                    label[rows],
                )
            )
        self.n_files += int(starts.size)

    def _write(self, names: list[str], bounds: list[int], probability, label) -> None:
        """Write the files of `names`; file i holds rows bounds[i]:bounds[i + 1]."""
        lines = list(
            map(_PREDICTION_LINE.__mod__, zip(probability.tolist(), label.tolist(), strict=True))
        )
        for name, start, end in zip(names, bounds[:-1], bounds[1:], strict=True):
            text = _PREDICTION_FILE_HEADER + "\n".join(lines[start:end]) + "\n"
            fd = os.open(f"{name}.psv", _NEW_FILE, 0o644, dir_fd=self._folder_fd)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    def _finish(self) -> None:
        """Wait for every queued file; raise the first writer's error, if any."""
        for pending in self._pending:
            pending.result()


@contextmanager
def challenge_prediction_files(folder: Path) -> Iterator[ChallengePredictionFiles]:
    """`ChallengePredictionFiles` to `add` predictions to; when the block ends without error,
    every file lands in `folder` (a new folder appears whole, in one rename; into an existing
    folder each file is moved in whole); on any error none does."""
    with staged_directory(Path(folder)) as stage:
        folder_fd = os.open(stage, os.O_RDONLY)
        pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="prediction-files")
        files = ChallengePredictionFiles(folder_fd, pool)
        try:
            yield files
            files._finish()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            os.close(folder_fd)


# --- The run -----------------------------------------------------------------------------------


@dataclass
class HourlyCandidate:
    model: str
    oversample: str
    pipeline: Pipeline
    fit_seconds: float
    threshold: float = float("nan")
    val_utility: float = float("nan")
    test: HourlyScore | None = None

    @property
    def name(self) -> str:
        return f"{self.model}+{self.oversample}"


@dataclass
class HourlyResult:
    """Everything a run produced, as written to the output folder."""

    candidates: list[HourlyCandidate]
    best: HourlyCandidate
    rules: dict[str, HourlyScore]
    """Test scores of qsofa, sirs, never and always."""
    best_rule: str
    metrics: dict
    model: HourlyModel


def run_hourly(
    data: Path | HourlyTable,
    out_dir: Path,
    config: HourlyConfig | None = None,
    progress: ProgressFn | None = None,
) -> HourlyResult:
    """Run the protocol of the module docstring and write its outputs into `out_dir` (all or
    nothing). `data` is a `data prepare` folder or an HourlyTable read from one."""
    config = config or HourlyConfig()
    notify = progress or (lambda _d, _done, _total: None)
    seed = config.settings.seed
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    table = data if isinstance(data, HourlyTable) else load_hourly(data)
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    notify("hourly features (fitted on training patients)", 0, 1)
    frame = table.frame
    builder, features = build_features(table)
    timings["features"] = time.perf_counter() - clock
    labels = frame[LABEL].to_numpy()
    ids = frame[PATIENT].to_numpy()

    fit_rows = training_rows(table, config.max_train_hours, seed)
    pairs = [(o, m) for o in config.oversample for m in config.models]
    candidates = []
    for done, (oversample, model) in enumerate(pairs):
        notify(
            f"{MODEL_LABELS[model]} with {OVERSAMPLER_LABELS[oversample]} on {fit_rows.size:,} "
            "training hours",
            done,
            len(pairs),
        )
        start = time.perf_counter()
        pipeline = fit_hours(model, oversample, config.settings, features, labels, fit_rows)
        seconds = time.perf_counter() - start
        timings[f"fit {model}+{oversample}"] = seconds
        candidates.append(HourlyCandidate(model, oversample, pipeline, seconds))

    notify("thresholds on validation, scores on test", len(pairs), len(pairs))
    clock = time.perf_counter()
    val, test = table.rows("val"), table.rows("test")
    n_test_patients = int(pd.unique(ids[test]).size)
    weights = bootstrap_weights(n_test_patients, config.n_boot, seed)
    X_val, X_test = features.iloc[val], features.iloc[test]
    for c in candidates:
        val_scores = hour_probabilities(c.pipeline, X_val)
        c.threshold, c.val_utility = choose_utility_threshold(ids[val], labels[val], val_scores)
        test_scores = hour_probabilities(c.pipeline, X_test)
        c.test = score_alarms(
            ids[test], labels[test], test_scores >= c.threshold, test_scores, weights
        )
    best = max(candidates, key=lambda c: c.val_utility)

    rules, rule_val = {}, {}
    for rule in RULES:
        val_counts = rule_criteria(X_val, rule)
        rule_val[rule] = score_alarms(
            ids[val], labels[val], val_counts >= RULE_ALARM_CRITERIA
        ).utility.value
        counts = rule_criteria(X_test, rule)
        rules[rule] = score_alarms(
            ids[test], labels[test], counts >= RULE_ALARM_CRITERIA, counts, weights
        )
    for rule, alarm in (("never", False), ("always", True)):
        rules[rule] = score_alarms(
            ids[test], labels[test], np.full(test.size, alarm), None, weights
        )
    best_rule = max(RULES, key=lambda r: rule_val[r])
    timings["evaluate"] = time.perf_counter() - clock

    metrics = _metrics_document(
        table, config, builder, fit_rows, candidates, best, rules, rule_val, best_rule
    )
    model = HourlyModel(
        builder,
        best.pipeline,
        best.threshold,
        {
            "model": best.model,
            "oversample_used_in_training": best.oversample,
            "threshold_rule": "maximises the validation normalised utility",
            "selected_on": "validation normalised utility",
            "validation_utility": best.val_utility,
            "test": best.test.to_dict(),
            "trained_on": {"data": str(table.source), "hours": int(fit_rows.size)},
            "seed": seed,
        },
    )
    clock = time.perf_counter()
    with staged_directory(Path(out_dir)) as stage:
        comparison_frame(candidates, rules).to_csv(stage / "comparison.csv", index=False)
        (stage / "comparison.md").write_text(comparison_text(metrics))
        save_hourly_model(model, stage / "model")
        timings["write"] = time.perf_counter() - clock
        metrics["timings_seconds"] = {k: round(v, 2) for k, v in timings.items()}
        write_json_atomic(stage / "metrics.json", metrics)
    return HourlyResult(candidates, best, rules, best_rule, metrics, model)


def oversampling_effects(candidates: Sequence[HourlyCandidate]) -> list[dict]:
    """Test utility of each model with oversampling minus without, with the paired interval."""
    plain = {c.model: c for c in candidates if c.oversample == "none"}
    effects = []
    for c in candidates:
        if c.oversample == "none" or c.model not in plain:
            continue
        diff = paired_utility_difference(c.test, plain[c.model].test)
        effects.append(
            {
                "model": c.model,
                "oversample": c.oversample,
                "difference_vs_none": diff.to_dict(),
                "verdict": verdict(diff),
            }
        )
    return effects


def _metrics_document(
    table, config, builder, fit_rows, candidates, best, rules, rule_val, best_rule
) -> dict:
    frame = table.frame
    septic = frame.groupby(PATIENT, sort=False)[LABEL].max()
    counts = {}
    for name in SPLITS:
        rows = table.rows(name)
        patients = pd.unique(frame[PATIENT].to_numpy()[rows])
        counts[name] = {
            "patients": int(patients.size),
            "septic_patients": int(septic.loc[patients].sum()),
            "hours": int(rows.size),
            "septic_hours": int(frame[LABEL].to_numpy()[rows].sum()),
        }
    config_dict = asdict(config)
    config_dict["models"], config_dict["oversample"] = list(config.models), list(config.oversample)
    return {
        "task": "hourly",
        "data": {
            "hourly": str(table.source / HOURLY_FILE),
            "n_features": len(builder.feature_names_out_),
            "splits": counts,
            "training_hours_fitted": int(fit_rows.size),
        },
        "protocol": {
            "features": "each hour from that hour and the hours before it (HourlyFeatureBuilder "
            "fitted on training patients)",
            "train": "training patients' hours only; oversampling inside the pipeline's fit",
            "threshold": "per model, maximising the validation normalised utility",
            "select": "best model by validation normalised utility",
            "rules": f"qSOFA and SIRS alarm at >= {RULE_ALARM_CRITERIA} criteria (no tuning); "
            "qSOFA without mentation (not in the data)",
            "test": "normalised utility (PhysioNet/CinC 2019) on test patients, 95% percentile "
            f"bootstrap intervals over {config.n_boot} patient resamples, paired across rows",
        },
        "config": config_dict,
        "best": {
            "model": best.model,
            "oversample": best.oversample,
            "threshold": best.threshold,
            "validation_utility": best.val_utility,
            "test": best.test.to_dict(),
        },
        "candidates": [
            {
                "model": c.model,
                "oversample": c.oversample,
                "fit_seconds": round(c.fit_seconds, 2),
                "threshold": c.threshold,
                "validation_utility": c.val_utility,
                "test": c.test.to_dict(),
            }
            for c in candidates
        ],
        "rules": {
            name: {
                "label": RULE_LABELS.get(name, f"{name} alarm"),
                "validation_utility": rule_val.get(name),
                "test": score.to_dict(),
            }
            for name, score in rules.items()
        },
        "best_rule": best_rule,
        "oversampling_effect": oversampling_effects(candidates),
        "model_vs_best_rule": [
            {
                "model": c.model,
                "oversample": c.oversample,
                "rule": best_rule,
                "difference": (d := paired_utility_difference(c.test, rules[best_rule])).to_dict(),
                "verdict": verdict(d),
            }
            for c in candidates
        ],
    }


CSV_ESTIMATE_PARTS = (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))
"""How an Estimate spreads over a CSV row: column suffix, attribute."""


def comparison_frame(
    candidates: Sequence[HourlyCandidate], rules: Mapping[str, HourlyScore]
) -> pd.DataFrame:
    """One row per model and rule: test utility with interval, AUROC, AUPRC, alarm share."""
    rows = []
    entries = [(c.model, c.oversample, c.threshold, c.test) for c in candidates]
    entries += [(name, "rule", np.nan, score) for name, score in rules.items()]
    for name, oversample, threshold, score in entries:
        rows.append(
            {
                "model": name,
                "oversample": oversample,
                "threshold": threshold,
                "utility": score.utility.value,
                "utility_ci_low": score.utility.ci_low,
                "utility_ci_high": score.utility.ci_high,
                **{
                    f"{name}{part}": None if e is None else getattr(e, attr)
                    for name, e in (("auroc", score.auroc), ("auprc", score.auprc))
                    for part, attr in (
                        ("", "value"),
                        ("_ci_low", "ci_low"),
                        ("_ci_high", "ci_high"),
                    )
                },
                "alarm_share": score.alarm_share,
            }
        )
    return pd.DataFrame(rows)


def comparison_text(metrics: dict) -> str:
    """The run's tables in Markdown: test utility per model and rule, then the paired
    differences."""

    def interval(e: Mapping[str, float | None] | None) -> str:
        return "-" if e is None else format_estimate(e)

    out = [
        "# Hourly early warning: PhysioNet/CinC 2019 normalised utility, test patients",
        "",
        "| model | oversampling | threshold | utility [95% CI] | AUROC [95% CI] | AUPRC [95% CI] "
        "| alarm share |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in metrics["candidates"]:
        t = c["test"]
        star = (
            " *"
            if (c["model"], c["oversample"])
            == (
                metrics["best"]["model"],
                metrics["best"]["oversample"],
            )
            else ""
        )
        out.append(
            f"| {MODEL_LABELS[c['model']]}{star} | {OVERSAMPLER_LABELS[c['oversample']]} | "
            f"{c['threshold']:.4f} | {interval(t['utility'])} | {interval(t['auroc'])} | "
            f"{interval(t['auprc'])} | {t['alarm_share']:.3f} |"
        )
    for rule in metrics["rules"].values():
        t = rule["test"]
        out.append(
            f"| {rule['label']} | - | - | {interval(t['utility'])} | {interval(t['auroc'])} | "
            f"{interval(t['auprc'])} | {t['alarm_share']:.3f} |"
        )
    out += [
        "",
        "`*` selected on validation utility. Never alarming scores 0 by definition.",
        "",
        "## Does oversampling help? (utility with - without, paired bootstrap)",
        "",
    ]
    out += [
        f"- {MODEL_LABELS[e['model']]}, {OVERSAMPLER_LABELS[e['oversample']]}: "
        f"{interval(e['difference_vs_none'])}: {e['verdict']}"
        for e in metrics["oversampling_effect"]
    ] or ["- no oversampling compared"]
    out += ["", f"## Model minus the best rule ({metrics['best_rule']}, chosen on validation)", ""]
    out += [
        f"- {MODEL_LABELS[e['model']]}, {OVERSAMPLER_LABELS[e['oversample']]}: "
        f"{interval(e['difference'])}: {e['verdict']}"
        for e in metrics["model_vs_best_rule"]
    ]
    return "\n".join(out) + "\n"


def score_psv_folder(
    model: HourlyModel,
    table: pa.Table | pd.DataFrame,
    out_dir: Path,
    chunk_hours: int = PREDICT_CHUNK_HOURS,
) -> int:
    """Score a canonical hourly table read from a folder of `.psv` files (the reader's Arrow
    table, or a DataFrame) and write one prediction file per patient into `out_dir` (all or
    nothing). Returns the number of files. The label column is not read: it may be null.

    Whole stays are scored about `chunk_hours` at a time, each chunk's files written by a
    background thread while the next chunk is scored. Each hour's features and probability
    depend on its own stay only, so the files are byte for byte those of scoring the whole table
    at once (`predict_hours` then `write_challenge_predictions`); memory stays that of a chunk
    (the whole cohort's features are about 1.4 GB), which also spares the kernel's page faults.
    """
    if chunk_hours < 1:
        raise ValueError(f"chunk_hours must be at least 1, got {chunk_hours}")
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    table, ids = _arrow_in_stay_order(table)
    stay_starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1] if ids.size else ids
    with challenge_prediction_files(out_dir) as files:
        for start, stop in _whole_stay_chunks(stay_starts, ids.size, chunk_hours):
            # split_blocks: each column its own block, so no 2-D copy of the chunk is made
            hours = table.slice(start, stop - start).to_pandas(split_blocks=True)
            files.add(ids[start:stop], model.predict_hours(hours))
    return files.n_files


def _whole_stay_chunks(
    stay_starts: np.ndarray, n_rows: int, size: int
) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges that cover `n_rows` rows in order, each made of whole stays
    (`stay_starts`: the first row of each stay) and at most `size` rows, unless a single stay is
    longer."""
    bounds = np.r_[stay_starts, n_rows].astype(np.int64)
    start = 0
    while start < n_rows:
        stop = int(bounds[np.searchsorted(bounds, start + size, side="right") - 1])
        if stop <= start:  # one stay longer than `size`: a chunk of its own
            stop = int(bounds[np.searchsorted(bounds, start, side="right")])
        yield start, stop
        start = stop


def _arrow_in_stay_order(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """`table` in `in_stay_order`'s order (the reader's tables already are: then no copy) and
    each row's patient id."""
    keys = table.select([PATIENT, TIME]).to_pandas()
    keys["row"] = np.arange(len(keys))
    ordered = in_stay_order(keys)
    if ordered is not keys:
        table = table.take(pa.array(ordered["row"].to_numpy()))
    return table, ordered[PATIENT].to_numpy()
