"""Per-patient features for the classifiers, from hours that never see the label window.

Windows. A septic patient's features come only from hours before their first `SepsisLabel = 1`
(the label switches on 6 h before onset, so those hours already "know" the answer); patients
labelled from their first hour have no such hours and are excluded and counted. Windows are capped
at `max_hours` (the last hours before the cut). Non-septic windows get lengths whose distribution
equals that of the septic training windows (`_matched_lengths`) and are placed at a random point of
the stay, so that window length alone does not predict the label.

Statistics per kept measurement over the cleaned (imputed) window rows: mean, min, max, last,
standard deviation, trend (least-squares slope per hour) and the fraction of window hours with a
real observation (from the raw table), plus the demographics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from data_prep.cleaning import age_in_years
from data_prep.schema import LABEL, MEASUREMENTS, PATIENT
from data_prep.seeding import rng_for

DEFAULT_MAX_WINDOW_H = 24
FEATURE_STATS = ("mean", "min", "max", "last", "std", "trend", "frac_obs")
ROW = "_row"  # positional row id of the raw hourly table, carried through cleaning


def patient_blocks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end row of each contiguous patient block."""
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [len(ids)]]).astype(np.int64)
    return starts, ends


def feature_windows(
    hourly: pd.DataFrame,
    split: pd.DataFrame,
    max_hours: int = DEFAULT_MAX_WINDOW_H,
    seed: int = 0,
) -> pd.DataFrame:
    """Choose each patient's feature window on the raw hourly table.

    Returns one row per patient: `patient_id`, `split`, `label`, `n_rows`, `start`, `end` (row
    positions in `hourly`, end exclusive) and `excluded` (a reason, or "" when usable). The
    septic window lengths that non-septic windows copy come from training patients only.
    """
    if max_hours < 1:
        raise ValueError(f"max window must be at least 1 hour, got {max_hours}")
    ids = hourly[PATIENT].to_numpy()
    starts, ends = patient_blocks(ids)
    n_rows = ends - starts
    labels = hourly[LABEL].to_numpy()
    # Position of the first labelled hour within each stay (n_rows when never labelled).
    cum = np.cumsum(labels)
    before = np.concatenate([[0], cum])[starts]
    seen_by_end = cum[ends - 1] - before
    positive = seen_by_end > 0
    labelled_rows = np.flatnonzero(labels == 1)
    first_pos = np.full(len(starts), -1)
    if labelled_rows.size:
        owner = np.searchsorted(starts, labelled_rows, side="right") - 1
        first_idx = np.unique(owner, return_index=True)
        first_pos[first_idx[0]] = labelled_rows[first_idx[1]] - starts[first_idx[0]]
    table = pd.DataFrame({PATIENT: ids[starts], "n_rows": n_rows, "label": positive.astype(int)})
    table = table.merge(split[[PATIENT, "split"]], on=PATIENT, how="left", validate="one_to_one")
    if table["split"].isna().any():
        raise ValueError(
            f"patient {table.loc[table['split'].isna(), PATIENT].iloc[0]} is not in the split"
        )

    rng = rng_for(seed, "feature-windows")
    length = np.zeros(len(starts), dtype=np.int64)
    cut = np.zeros(len(starts), dtype=np.int64)  # window end, relative to the stay start
    septic = positive
    length[septic] = np.minimum(first_pos[septic], max_hours)
    cut[septic] = first_pos[septic]
    reference = np.sort(length[septic & (table["split"] == "train").to_numpy() & (length > 0)])
    if reference.size == 0:
        raise ValueError(
            "no septic training patient has an hour before their label window: cannot match "
            "window lengths (is the training split empty of septic stays?)"
        )
    calm = ~septic
    length[calm] = _matched_lengths(reference, n_rows[calm], rng)
    slack = n_rows[calm] - length[calm]
    cut[calm] = length[calm] + np.floor(rng.random(calm.sum()) * (slack + 1)).astype(np.int64)

    table["start"] = starts + cut - length
    table["end"] = starts + cut
    table["excluded"] = np.where(septic & (length == 0), "labelled from first hour", "")
    return table


def _matched_lengths(reference: np.ndarray, n_rows: np.ndarray, rng) -> np.ndarray:
    """Window lengths for non-septic stays whose distribution equals `reference`'s.

    Quotas per length come from the reference; the longest lengths are handed out first, each to
    randomly chosen stays long enough to hold it, so short stays end up with the short lengths
    instead of pulling the whole distribution down. Stays left over (when a quota cannot be met)
    take a reference length capped at their own length.
    """
    values, counts = np.unique(reference, return_counts=True)
    quota = np.floor(counts / counts.sum() * n_rows.size).astype(np.int64)
    extra = rng.choice(values.size, n_rows.size - quota.sum(), p=counts / counts.sum())
    quota += np.bincount(extra, minlength=values.size)
    order = rng.permutation(n_rows.size)
    length = np.zeros(n_rows.size, dtype=np.int64)
    for value, wanted in zip(values[::-1], quota[::-1], strict=True):
        candidates = order[(length[order] == 0) & (n_rows[order] >= value)]
        length[candidates[:wanted]] = value
    left = length == 0
    length[left] = np.minimum(rng.choice(reference, left.sum()), n_rows[left])
    return length


def window_rows(windows: pd.DataFrame) -> np.ndarray:
    """Positions of every row inside a usable window, patient by patient."""
    usable = windows[windows["excluded"] == ""]
    lengths = (usable["end"] - usable["start"]).to_numpy()
    offsets = np.repeat(usable["start"].to_numpy() - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
    return np.arange(lengths.sum()) + offsets


class PatientFeatureBuilder(TransformerMixin, BaseEstimator):
    """Aggregate window rows (cleaned, with the raw table's observation flags) into one row per
    patient. Input columns: `patient_id`, the kept measurements, `<var>__observed` flags, and the
    demographics. Fitted attributes: `measurements_` (kept measurement columns) and
    `hosp_adm_median_` (fills the rare missing HospAdmTime).
    """

    def __init__(self, stats: tuple[str, ...] = FEATURE_STATS):
        self.stats = stats

    def fit(self, X: pd.DataFrame, y=None) -> PatientFeatureBuilder:
        unknown = set(self.stats) - set(FEATURE_STATS)
        if unknown:
            raise ValueError(f"unknown feature statistics {sorted(unknown)}; use {FEATURE_STATS}")
        self.measurements_ = [c for c in MEASUREMENTS if c in X.columns]
        hosp = X.groupby(PATIENT, sort=False)["HospAdmTime"].first()
        self.hosp_adm_median_ = float(hosp.median()) if hosp.notna().any() else 0.0
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        ids = X[PATIENT].to_numpy()
        starts, ends = patient_blocks(ids)
        n = (ends - starts).astype(float)
        t = (np.arange(len(ids)) - np.repeat(starts, ends - starts)).astype(float)
        t_mean = np.add.reduceat(t, starts) / n
        t_centered = t - np.repeat(t_mean, ends - starts)
        t_ss = np.add.reduceat(t_centered**2, starts)
        out: dict[str, np.ndarray] = {PATIENT: ids[starts]}
        for name in self.measurements_:
            x = X[name].to_numpy(dtype=float)
            total = np.add.reduceat(x, starts)
            mean = total / n
            if "mean" in self.stats:
                out[f"{name}__mean"] = mean
            if "min" in self.stats:
                out[f"{name}__min"] = np.minimum.reduceat(x, starts)
            if "max" in self.stats:
                out[f"{name}__max"] = np.maximum.reduceat(x, starts)
            if "last" in self.stats:
                out[f"{name}__last"] = x[ends - 1]
            centered = x - np.repeat(mean, ends - starts)
            if "std" in self.stats:
                var = np.add.reduceat(centered**2, starts) / np.maximum(n - 1, 1)
                out[f"{name}__std"] = np.sqrt(var)
            if "trend" in self.stats:
                cov = np.add.reduceat(t_centered * centered, starts)
                out[f"{name}__trend"] = np.divide(cov, t_ss, out=np.zeros_like(cov), where=t_ss > 0)
            if "frac_obs" in self.stats:
                observed = X[f"{name}__observed"].to_numpy(dtype=float)
                out[f"{name}__frac_obs"] = np.add.reduceat(observed, starts) / n
        first = X.iloc[starts]
        unit1 = first["Unit1"].to_numpy(dtype=float)
        out["Age"] = age_in_years(first["Age"])
        out["Gender"] = first["Gender"].to_numpy(dtype=float)
        out["Unit1"] = np.nan_to_num(unit1, nan=0.0)
        out["Unit2"] = np.nan_to_num(first["Unit2"].to_numpy(dtype=float), nan=0.0)
        out["unit_known"] = (~np.isnan(unit1)).astype(float)
        out["HospAdmTime"] = np.nan_to_num(
            first["HospAdmTime"].to_numpy(dtype=float), nan=self.hosp_adm_median_
        )
        return pd.DataFrame(out)
