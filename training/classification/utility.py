"""The PhysioNet/CinC Challenge 2019 normalised utility of hourly sepsis predictions.

Source: Reyna MA et al., "Early Prediction of Sepsis From Clinical Data: The PhysioNet/Computing in
Cardiology Challenge 2019", Crit Care Med 2020;48(2):210-217, and the Challenge's scorer
(`compute_prediction_utility` and `evaluate_sepsis_score` in `evaluate_sepsis_score.py`,
github.com/physionetchallenges/evaluation-2019). `row_utilities` follows the scorer branch by
branch; `hour_utilities` and `patient_utilities` compute the same numbers for a whole hourly
table with array arithmetic (no Python loop over patients), `utility_by_threshold` scores every
decision threshold of a probability in one sort, and `utility_interval` adds a bootstrap interval
over patients.

Time axis. `t` is the 0-based row index within a patient's record (one row per hour). A septic
record's onset is `t_sepsis = (first row with SepsisLabel = 1) + 6` (the label switches on 6 h
before onset); a record with no label 1 is non-septic. With `d = t - t_sepsis` (hours):

| row                 | predicted 1                               | predicted 0                  |
|---------------------|-------------------------------------------|------------------------------|
| septic, d <= -6     | max(d / 6 + 2, u_fp): 0 at -12, 1 at -6   | 0                            |
| septic, -6 < d <= 3 | 1/3 - d / 9: from 1 at -6 to 0 at +3      | -4/3 - 2 d / 9: down to -2   |
| septic, d > 3       | 0                                         | 0                            |
| non-septic          | u_fp = -0.05                              | u_tn = 0                     |

A record's utility is the sum over its rows; the cohort's is the sum over records. Normalised:
`(U_obs - U_inaction) / (U_best - U_inaction)`, where U_inaction predicts 0 everywhere and U_best
predicts 1 exactly on rows `max(0, t_sepsis - 12) .. min(t_sepsis + 3, n - 1)` of septic records:
1 is the best possible, 0 never raising an alarm, and it can be negative.

Hand checks from the scorer's documentation: labels [0,0,0,0,1,1] with predictions [0,0,1,1,1,1]
give 3.3889; a septic record spanning t_sepsis - 12 .. t_sepsis + 3 has U_best 7.5 and
U_inaction -10.

`hourly_auroc_auprc` is the Challenge's `compute_auc` over all hours: AUROC is the area under the
piecewise-linear sensitivity/specificity curve, AUPRC the area under the piecewise-constant
precision/recall curve, with the scorer's thresholds (every distinct probability, highest first,
starting at 1; a threshold of 0 is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.features import patient_blocks
from training.classification.metrics import (
    DEFAULT_BOOTSTRAP,
    Estimate,
    bootstrap_weights,
    percentile_interval,
)

# --- The Challenge's utility parameters (Reyna et al. 2020; evaluate_sepsis_score.py) ----------
DT_EARLY_H = -12
"""Earliest hour, relative to onset, at which an alarm starts to earn (h)."""
DT_OPTIMAL_H = -6
"""Hour relative to onset at which an alarm earns the most; also the label lead (h)."""
DT_LATE_H = 3
"""Last hour relative to onset that is scored at all (h)."""
MAX_U_TP = 1.0
"""Utility of a true alarm at DT_OPTIMAL_H (utility units per hour)."""
MIN_U_FN = -2.0
"""Utility of a missed alarm at DT_LATE_H (per hour)."""
U_FP = -0.05
"""Utility of a false alarm: any alarm of a non-septic record, or a septic record's alarm before
DT_EARLY_H (per hour)."""
U_TN = 0.0
"""Utility of a correct silence (per hour)."""

# Lines u = m * d + b of the scorer (d = t - t_sepsis, hours).
_M_EARLY = MAX_U_TP / (DT_OPTIMAL_H - DT_EARLY_H)  # alarm, rising: 1/6 per hour
_B_EARLY = -_M_EARLY * DT_EARLY_H  # 2
_M_LATE = -MAX_U_TP / (DT_LATE_H - DT_OPTIMAL_H)  # alarm, falling: -1/9 per hour
_B_LATE = -_M_LATE * DT_LATE_H  # 1/3
_M_MISS = MIN_U_FN / (DT_LATE_H - DT_OPTIMAL_H)  # silence, falling: -2/9 per hour
_B_MISS = -_M_MISS * DT_OPTIMAL_H  # -4/3


def _binary(name: str, values) -> np.ndarray:
    """`values` as a boolean array, refusing anything but 0 and 1 (as the scorer does)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))][0]
        raise ValueError(
            f"{name} must be 0 or 1 in every hour, found {bad}: threshold probabilities first"
        )
    return array.astype(bool)


def row_utilities(labels, predictions) -> np.ndarray:
    """Utility of each hour of one patient's record, as the Challenge's
    `compute_prediction_utility(labels, predictions, return_all_scores=True)`.

    `labels` are the record's SepsisLabel values in time order, `predictions` its 0/1 alarms.
    """
    y = _binary("labels", labels)
    p = _binary("predictions", predictions)
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} predictions: give one prediction per hour")
    septic = bool(y.any())
    t_sepsis = int(np.argmax(y)) - DT_OPTIMAL_H if septic else np.inf
    u = np.zeros(y.size)
    for t in range(y.size):
        if t > t_sepsis + DT_LATE_H:
            continue
        d = t - t_sepsis
        if septic and p[t]:
            if t <= t_sepsis + DT_OPTIMAL_H:
                u[t] = max(_M_EARLY * d + _B_EARLY, U_FP)
            else:
                u[t] = _M_LATE * d + _B_LATE
        elif p[t]:
            u[t] = U_FP
        elif septic and t > t_sepsis + DT_OPTIMAL_H:
            u[t] = _M_MISS * d + _B_MISS
        elif not septic:
            u[t] = U_TN
    return u


@dataclass(frozen=True)
class PatientUtilities:
    """Per-patient utility sums of one set of predictions, in the order patients appear."""

    patient_ids: np.ndarray
    observed: np.ndarray
    """Utility of the predictions given."""
    best: np.ndarray
    """Utility of the best possible predictions."""
    inaction: np.ndarray
    """Utility of predicting no sepsis in every hour."""
    septic: np.ndarray
    """Whether the patient has any SepsisLabel = 1."""


@dataclass(frozen=True)
class UtilityScore:
    """The normalised utility and the sums it is made of."""

    score: float
    """(U_obs - U_inaction) / (U_best - U_inaction)."""
    observed: float
    """U_obs: summed utility of the predictions."""
    best: float
    """U_best: summed utility of the best possible predictions."""
    inaction: float
    """U_inaction: summed utility of never predicting sepsis."""
    n_patients: int
    n_septic: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(vars(self))


def _row_positions(patient_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, patient index of each row) of contiguous patient blocks; refuses a patient
    whose rows are split in several blocks."""
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"patient_ids must be a non-empty 1-d array, got shape {ids.shape}")
    starts, ends = patient_blocks(ids)
    block_ids = ids[starts]
    _, first_seen, counts = np.unique(block_ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = block_ids[first_seen[counts > 1][0]]
        raise ValueError(
            f"patient {repeated} has rows in several places: sort the table by patient and "
            "hour (each patient's hours contiguous, in time order) before scoring"
        )
    owner = np.repeat(np.arange(starts.size), ends - starts)
    return starts, ends, owner


@dataclass(frozen=True)
class HourUtilities:
    """What each hour of a long table would earn with an alarm and without one."""

    starts: np.ndarray
    """First row of each patient's block."""
    alarm: np.ndarray
    """Utility of each hour if predicted 1."""
    silence: np.ndarray
    """Utility of each hour if predicted 0."""
    best_alarm: np.ndarray
    """Hours the best predictions raise an alarm in: d = -12 .. 3 of septic records."""
    septic: np.ndarray
    """Per patient: any SepsisLabel = 1."""


def hour_utilities(patient_ids, labels) -> HourUtilities:
    """Each hour's utility with and without an alarm, for a long table whose patients' hours are
    contiguous and in time order (the row's position within its patient's block is the scorer's
    `t`). Array arithmetic over all hours, no loop over patients."""
    y = _binary("labels", labels)
    ids = np.asarray(patient_ids)
    if ids.shape != y.shape:
        raise ValueError(
            f"patient_ids and labels need one value per hour; got {ids.shape}, {y.shape}"
        )
    starts, ends, owner = _row_positions(ids)
    t = np.arange(y.size) - starts[owner]
    labelled = np.logical_or.reduceat(y, starts)
    # First labelled row of each septic patient, relative to its start.
    first_label = np.full(starts.size, np.iinfo(np.int64).max // 2)
    hits = np.flatnonzero(y)
    hit_owner = owner[hits]
    first_hit = np.ones(hits.size, dtype=bool)
    first_hit[1:] = hit_owner[1:] != hit_owner[:-1]
    first_label[hit_owner[first_hit]] = hits[first_hit] - starts[hit_owner[first_hit]]
    septic = labelled[owner]
    d = (t - (first_label - DT_OPTIMAL_H)[owner]).astype(float)

    scored = septic & (d <= DT_LATE_H)
    early = scored & (d <= DT_OPTIMAL_H)
    late = scored & (d > DT_OPTIMAL_H)
    alarm = np.zeros(y.size)
    alarm[early] = np.maximum(_M_EARLY * d[early] + _B_EARLY, U_FP)
    alarm[late] = _M_LATE * d[late] + _B_LATE
    alarm[~septic] = U_FP
    silence = np.zeros(y.size)
    silence[late] = _M_MISS * d[late] + _B_MISS
    silence[~septic] = U_TN
    best_alarm = scored & (d >= DT_EARLY_H)
    return HourUtilities(starts, alarm, silence, best_alarm, labelled)


def patient_utilities(patient_ids, labels, predictions) -> PatientUtilities:
    """Utility sums per patient (observed, best, inaction) for a long hourly table.

    Rows of a patient must be contiguous and in time order; the row's position within its
    patient's block is the scorer's `t`.
    """
    p = _binary("predictions", predictions)
    hours = hour_utilities(patient_ids, labels)
    if p.size != hours.alarm.size:
        raise ValueError(f"{hours.alarm.size} hours but {p.size} predictions: give one per hour")
    observed = np.where(p, hours.alarm, hours.silence)
    best = np.where(hours.best_alarm, hours.alarm, hours.silence)
    return PatientUtilities(
        patient_ids=np.asarray(patient_ids)[hours.starts],
        observed=np.add.reduceat(observed, hours.starts),
        best=np.add.reduceat(best, hours.starts),
        inaction=np.add.reduceat(hours.silence, hours.starts),
        septic=hours.septic,
    )


def normalised_utility(patient_ids, labels, predictions) -> UtilityScore:
    """The Challenge's normalised utility of 0/1 hourly `predictions` over a long table.

    `patient_ids`, `labels` (SepsisLabel) and `predictions` have one value per hour; each
    patient's hours are contiguous and in time order. Needs at least one septic patient (without
    one, U_best = U_inaction and the score is undefined).
    """
    return _score(patient_utilities(patient_ids, labels, predictions))


def _score(parts: PatientUtilities) -> UtilityScore:
    n_septic = int(parts.septic.sum())
    if n_septic == 0:
        raise ValueError(
            "no septic patient (no SepsisLabel = 1): the normalised utility is undefined"
        )
    observed, best, inaction = (
        float(x.sum()) for x in (parts.observed, parts.best, parts.inaction)
    )
    return UtilityScore(
        score=(observed - inaction) / (best - inaction),
        observed=observed,
        best=best,
        inaction=inaction,
        n_patients=int(parts.patient_ids.size),
        n_septic=n_septic,
    )


def utility_interval(
    patient_ids,
    labels,
    predictions,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    random_state: int = 0,
    weights: np.ndarray | None = None,
) -> Estimate:
    """The normalised utility with a 95% percentile bootstrap interval over patients.

    Each resample draws patients with replacement; its statistic is the ratio of sums over the
    drawn patients, `(sum U_obs - sum U_inaction) / (sum U_best - sum U_inaction)`. Resamples
    without a septic patient are undefined (counted in `undefined_share`). Pass `weights` from
    `metrics.bootstrap_weights(n_patients, n_boot, seed)` to pair this interval with other
    metrics on the same patients (patients in the order they first appear). The weights matrix
    is n_boot x n_patients float64: 1000 draws of 8,000 test patients take 64 MB.
    """
    parts = patient_utilities(patient_ids, labels, predictions)
    point = _score(parts).score
    if weights is None:
        weights = bootstrap_weights(parts.patient_ids.size, n_boot, random_state)
    draws = utility_draws(parts, weights)
    low, high = percentile_interval(draws)
    undefined = 1.0 - np.isfinite(draws).sum() / draws.size
    return Estimate(point, low, high, float(undefined))


def utility_draws(parts: PatientUtilities, weights: np.ndarray) -> np.ndarray:
    """The normalised utility of each bootstrap resample (one row of `weights` each: how often
    each patient is drawn), NaN for a resample without a septic patient.

    Two sets of predictions scored with the same `weights` give paired draws: their difference,
    draw by draw, is the paired bootstrap of the difference in utility.
    """
    n = parts.patient_ids.size
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must have one column per patient ({n}), got {weights.shape}")
    gain = weights @ (parts.observed - parts.inaction)
    room = weights @ (parts.best - parts.inaction)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(room > 0, gain / np.where(room > 0, room, 1.0), np.nan)


def utility_by_threshold(patient_ids, labels, probabilities, thresholds) -> np.ndarray:
    """The normalised utility of `probabilities >= threshold` for every threshold, in one pass.

    U_obs at a threshold is U_inaction plus the gain (alarm - silence) of every hour at or above
    it, so one sort and one cumulative sum score all thresholds: for choosing a decision
    threshold on validation patients.
    """
    hours = hour_utilities(patient_ids, labels)
    s = np.asarray(probabilities, dtype=float)
    if s.shape != hours.alarm.shape:
        raise ValueError(f"{hours.alarm.size} hours but {s.size} probabilities: give one per hour")
    if not hours.septic.any():
        raise ValueError(
            "no septic patient (no SepsisLabel = 1): the normalised utility is undefined"
        )
    room = float(np.where(hours.best_alarm, hours.alarm - hours.silence, 0.0).sum())
    order = np.argsort(-s, kind="stable")
    gained = np.r_[0.0, np.cumsum((hours.alarm - hours.silence)[order])]
    above = np.searchsorted(-s[order], -np.asarray(thresholds, dtype=float), side="right")
    return gained[above] / room


def hourly_auroc_auprc(labels, probabilities) -> tuple[float, float]:
    """(AUROC, AUPRC) over hours, as the Challenge's `compute_auc` computes them.

    Thresholds are the distinct probabilities from the highest down, with 1 put first when
    absent and a threshold of 0 dropped; at each, hours with probability >= threshold are
    positive. AUROC: trapezoids under specificity against sensitivity; AUPRC: precision at each
    threshold times the step in recall. Consequence of the scorer's thresholds: hours with
    probability exactly 0 never count as positive, so for 0/1 probabilities both areas are 0;
    for probabilities strictly inside (0, 1) the numbers equal the usual ROC-AUC and average
    precision.
    """
    y = _binary("labels", labels)
    s = np.asarray(probabilities, dtype=float)
    if s.shape != y.shape:
        raise ValueError(f"{y.size} labels but {s.size} probabilities: give one per hour")
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("probabilities must be finite, one per hour, and not empty")
    thresholds = np.unique(s)[::-1]
    if thresholds[0] != 1:
        thresholds = np.r_[1.0, thresholds]
    if thresholds[-1] == 0:
        thresholds = thresholds[:-1]
    # Hours at or above each threshold: counts of distinct values, cumulated from the top.
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    above = np.searchsorted(-s_desc, -thresholds, side="right")
    cum_pos = np.r_[0, np.cumsum(y_desc)]
    tp = cum_pos[above].astype(float)
    fp = above - tp
    n_pos = float(y.sum())
    n_neg = y.size - n_pos
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        tnr = np.where(fp + tn > 0, tn / (fp + tn), 1.0)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    step = np.diff(tpr)
    auroc = float(np.sum(0.5 * step * (tnr[1:] + tnr[:-1])))
    auprc = float(np.sum(step * ppv[1:]))
    return auroc, auprc
