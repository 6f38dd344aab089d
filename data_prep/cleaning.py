"""Cleaning steps for the hourly table, as scikit-learn estimators fitted on training patients only.

Order in `make_cleaning_pipeline`: drop mostly-missing measurements -> handle outliers (IQR rule)
-> impute (last observation carried forward within a patient, then training medians). Each step
takes and returns a canonical hourly DataFrame (rows of all patients, `patient_id` included); `fit`
must be given the training patients' rows only, which `data_prep.prepare` guarantees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from data_prep.schema import AGE_90_PLUS_CODE, MEASUREMENTS, PATIENT

DEFAULT_MISSING_THRESHOLD = 0.5  # the original study dropped variables missing in > 50 % of rows
DEFAULT_IQR_K = 1.5  # Tukey's fences: [Q1 - k IQR, Q3 + k IQR]
OUTLIER_MODES = ("clip", "drop", "none")


def _measurements_in(X: pd.DataFrame, columns: tuple[str, ...] | None) -> list[str]:
    wanted = MEASUREMENTS if columns is None else columns
    return [c for c in wanted if c in X.columns]


class MissingColumnDropper(TransformerMixin, BaseEstimator):
    """Drop measurement columns whose missing fraction on the fitting rows exceeds `threshold`.

    Fitted attributes: `missing_fraction_` (per measurement column) and `dropped_` (list).
    Demographics, ICULOS and the label are never dropped.
    """

    def __init__(self, threshold: float = DEFAULT_MISSING_THRESHOLD, columns=None):
        self.threshold = threshold
        self.columns = columns

    def fit(self, X: pd.DataFrame, y=None) -> MissingColumnDropper:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"missing threshold must be in [0, 1], got {self.threshold}")
        cols = _measurements_in(X, self.columns)
        self.missing_fraction_ = X[cols].isna().mean().to_dict()
        self.dropped_ = [c for c in cols if self.missing_fraction_[c] > self.threshold]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.drop(columns=[c for c in self.dropped_ if c in X.columns])


class IQROutlierHandler(TransformerMixin, BaseEstimator):
    """Tukey's IQR rule on the observed values of each measurement.

    `mode="clip"` clips values to the fences [Q1 - k IQR, Q3 + k IQR]; `mode="drop"` removes every
    hourly row with any observed value outside them (the original study's choice: it removes many
    of the abnormal vitals that mark sepsis); `mode="none"` passes rows through. Missing values
    are left missing. Fitted attributes: `lower_`, `upper_` (Series indexed by column).
    """

    def __init__(self, k: float = DEFAULT_IQR_K, mode: str = "clip", columns=None):
        self.k = k
        self.mode = mode
        self.columns = columns

    def fit(self, X: pd.DataFrame, y=None) -> IQROutlierHandler:
        if self.mode not in OUTLIER_MODES:
            raise ValueError(f"outlier mode must be one of {OUTLIER_MODES}, got {self.mode!r}")
        if self.k <= 0:
            raise ValueError(f"IQR multiplier k must be positive, got {self.k}")
        cols = _measurements_in(X, self.columns)
        q1 = X[cols].quantile(0.25)
        q3 = X[cols].quantile(0.75)
        self.lower_ = q1 - self.k * (q3 - q1)
        self.upper_ = q3 + self.k * (q3 - q1)
        return self

    def outlier_mask(self, X: pd.DataFrame) -> pd.DataFrame:
        """Boolean frame: True where an observed value lies outside the fitted fences."""
        cols = list(self.lower_.index)
        values = X[cols]
        return (values < self.lower_) | (values > self.upper_)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        if self.mode == "none":
            return X
        cols = list(self.lower_.index)
        if self.mode == "drop":
            return X.loc[~self.outlier_mask(X).any(axis=1).to_numpy()]
        out = X.copy()
        out[cols] = X[cols].clip(self.lower_, self.upper_, axis=1)
        return out


class PatientImputer(TransformerMixin, BaseEstimator):
    """Carry each patient's last observation forward, then fill what is left with the medians of
    the fitting rows. Never carries a value from one patient to the next.

    Fitted attribute: `medians_` (Series indexed by column).
    """

    def __init__(self, columns=None):
        self.columns = columns

    def fit(self, X: pd.DataFrame, y=None) -> PatientImputer:
        cols = _measurements_in(X, self.columns)
        self.medians_ = X[cols].median()
        never_seen = self.medians_.index[self.medians_.isna()]
        if len(never_seen):
            raise ValueError(
                f"cannot impute {list(never_seen)}: no training row has a value; drop these "
                "columns (lower the missing threshold) or provide more training patients"
            )
        return self

    def carried_forward(self, X: pd.DataFrame) -> pd.DataFrame:
        """The measurements after last-observation-carried-forward within each patient."""
        cols = list(self.medians_.index)
        return X.groupby(PATIENT, sort=False)[cols].ffill()

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        cols = list(self.medians_.index)
        out[cols] = self.carried_forward(X).fillna(self.medians_)
        return out


def make_cleaning_pipeline(
    missing_threshold: float = DEFAULT_MISSING_THRESHOLD,
    iqr_k: float = DEFAULT_IQR_K,
    outliers: str = "clip",
) -> Pipeline:
    """The cleaning pipeline: drop mostly-missing columns, handle outliers, impute."""
    return Pipeline(
        [
            ("drop_missing", MissingColumnDropper(threshold=missing_threshold)),
            ("outliers", IQROutlierHandler(k=iqr_k, mode=outliers)),
            ("impute", PatientImputer()),
        ]
    )


def age_in_years(age: pd.Series | np.ndarray) -> np.ndarray:
    """Ages in years, with set B's code 100 (meaning 90 or older) read as 90."""
    values = np.asarray(age, dtype=float)
    return np.where(values == AGE_90_PLUS_CODE, 90.0, values)
