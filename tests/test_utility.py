"""The Challenge's normalised utility, checked on cases computed by hand.

Utility per hour (d = hour - t_sepsis, t_sepsis = first SepsisLabel = 1 row + 6):
alarm at d <= -6: max(d/6 + 2, -0.05); alarm at -6 < d <= 3: 1/3 - d/9;
silence at -6 < d <= 3: -4/3 - 2d/9; anything after d = 3: 0; non-septic alarm -0.05.
Two sums used below, over a record that spans d = -12 .. 3 (16 rows):
  alarms d = -12..-6: 0 + 1/6 + 2/6 + 3/6 + 4/6 + 5/6 + 1 = 21/6 = 3.5
  alarms d = -5..3:   9 * 1/3 - (-5-4-3-2-1+0+1+2+3)/9 = 3 + 1 = 4        -> U_best 7.5
  silence d = -5..3:  9 * (-4/3) - 2 * (-9)/9 = -12 + 2 = -10              -> U_inaction -10
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training.classification.metrics import bootstrap_weights
from training.classification.utility import (
    hourly_auroc_auprc,
    normalised_utility,
    patient_utilities,
    row_utilities,
    utility_by_threshold,
    utility_interval,
)


def septic_labels(n_rows: int, first_label: int) -> np.ndarray:
    """A septic record: SepsisLabel 1 from row `first_label` to the end."""
    labels = np.zeros(n_rows, dtype=int)
    labels[first_label:] = 1
    return labels


def table(*patients: tuple[np.ndarray, np.ndarray]):
    """(patient ids, labels, predictions) of records given as (labels, predictions) pairs."""
    ids = np.concatenate([np.full(len(y), f"p{i}") for i, (y, _) in enumerate(patients)])
    labels = np.concatenate([y for y, _ in patients])
    predictions = np.concatenate([p for _, p in patients])
    return ids, labels, predictions


# A septic record spanning d = -12 .. 3: 16 rows, first label at row 6 (d = -6).
SPAN = septic_labels(16, 6)


def test_the_scorers_documented_example():
    # labels [0,0,0,0,1,1]: t_sepsis = 4 + 6 = 10; alarms at rows 2..5 are d = -8, -7, -6, -5:
    # (-8/6 + 2) + (-7/6 + 2) + 1 + (1/3 + 5/9) = 0.6667 + 0.8333 + 1 + 0.8889 = 3.3889
    utility = row_utilities([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]).sum()
    assert round(utility, 4) == 3.3889


def test_record_spanning_the_scored_hours_has_best_7_5_and_inaction_minus_10():
    parts = patient_utilities(np.zeros(16), SPAN, SPAN)
    best = np.ones(16, dtype=int)  # every row is in d = -12..3: alarm throughout
    assert row_utilities(SPAN, best).sum() == pytest.approx(7.5)
    assert row_utilities(SPAN, np.zeros(16, int)).sum() == pytest.approx(-10)
    assert parts.best[0] == pytest.approx(7.5)
    assert parts.inaction[0] == pytest.approx(-10)


def test_perfect_predictions_score_1_and_never_alarming_scores_0():
    # A septic record longer than the scored span, one labelled from its first hour, and a
    # non-septic one. The perfect alarms: rows with d in -12..3 of septic records.
    long_septic = septic_labels(30, 14)  # t_sepsis = 20: d = -20 .. 9
    early = septic_labels(10, 0)  # t_sepsis = 6: d = -6 .. 3
    calm = np.zeros(12, dtype=int)
    perfect = [
        (long_septic, ((np.arange(30) >= 8) & (np.arange(30) <= 23)).astype(int)),
        (early, np.ones(10, int)),
        (calm, np.zeros(12, int)),
    ]
    assert normalised_utility(*table(*perfect)).score == pytest.approx(1.0)
    never = [(y, np.zeros_like(y)) for y, _ in perfect]
    score = normalised_utility(*table(*never))
    assert score.score == 0.0
    assert score.observed == score.inaction


def test_always_positive_pays_for_early_and_false_alarms():
    # Septic, 20 rows, first label at row 10: t_sepsis = 16, d = -16 .. 3.
    #   d = -16..-13: 4 alarms before the window, -0.05 each = -0.2; d = -12..3: 7.5 -> 7.3
    # Non-septic, 10 rows: 10 false alarms, -0.05 each = -0.5.
    # U_obs = 6.8, U_best = 7.5 + 0, U_inaction = -10 + 0:
    #   score = (6.8 + 10) / (7.5 + 10) = 16.8 / 17.5 = 0.96
    septic = septic_labels(20, 10)
    calm = np.zeros(10, dtype=int)
    score = normalised_utility(*table((septic, np.ones(20, int)), (calm, np.ones(10, int))))
    assert score.observed == pytest.approx(6.8)
    assert score.best == pytest.approx(7.5)
    assert score.inaction == pytest.approx(-10)
    assert score.score == pytest.approx(0.96)
    assert (score.n_patients, score.n_septic) == (2, 1)


def test_always_negative_loses_the_missed_hours():
    # Same septic record: silence costs only at d = -5..3: -10; the early hours cost nothing.
    septic = septic_labels(20, 10)
    assert row_utilities(septic, np.zeros(20, int)).sum() == pytest.approx(-10)


def test_patient_without_sepsis():
    # 5 hours: each alarm -0.05, silence 0; best and inaction are both 0.
    calm = np.zeros(5, dtype=int)
    assert row_utilities(calm, np.ones(5, int)).sum() == pytest.approx(-0.25)
    assert row_utilities(calm, [0, 1, 0, 0, 1]).sum() == pytest.approx(-0.10)
    assert row_utilities(calm, np.zeros(5, int)).sum() == 0.0
    parts = patient_utilities(np.zeros(5), calm, np.ones(5, int))
    assert (parts.best[0], parts.inaction[0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="no septic patient"):
        normalised_utility(np.zeros(5), calm, np.ones(5, int))


def test_onset_near_the_start_of_the_stay():
    # Labelled from the first hour: t_sepsis = 6, rows d = -6 .. 3 (10 rows).
    #   best: alarm at d = -6 (1) + d = -5..3 (4) = 5; inaction: silence d = -5..3 = -10.
    #   Alarms from row 2 (d = -4..3): 8/3 - (-4)/9 = 28/9; silence at d = -6 (0) and
    #   d = -5 (-4/3 + 10/9 = -2/9) -> 26/9 = 2.8889
    early = septic_labels(10, 0)
    parts = patient_utilities(np.zeros(10), early, (np.arange(10) >= 2).astype(int))
    assert parts.best[0] == pytest.approx(5.0)
    assert parts.inaction[0] == pytest.approx(-10.0)
    assert parts.observed[0] == pytest.approx(26 / 9)


def test_onset_at_the_end_of_the_stay():
    # Only the last of 10 rows is labelled: t_sepsis = 9 + 6 = 15, rows d = -15 .. -6.
    #   inaction 0 (no hour after d = -6); best: alarms d = -12..-6 = 3.5;
    #   always alarming: d = -15, -14, -13 at -0.05 each (-0.15) + 3.5 = 3.35
    late = septic_labels(10, 9)
    parts = patient_utilities(np.zeros(10), late, np.ones(10, int))
    assert parts.inaction[0] == 0.0
    assert parts.best[0] == pytest.approx(3.5)
    assert parts.observed[0] == pytest.approx(3.35)


def test_hours_after_the_scored_window_count_nothing():
    # 20 rows, first label at row 6: t_sepsis = 12, rows 16..19 are d = 4..7.
    septic = septic_labels(20, 6)
    alarms_until_d3 = (np.arange(20) <= 15).astype(int)
    per_hour = row_utilities(septic, np.ones(20, int))
    assert (per_hour[16:] == 0).all()
    assert row_utilities(septic, alarms_until_d3).sum() == pytest.approx(per_hour.sum())


@pytest.mark.parametrize(
    ("alarm_row", "expected"),
    [
        # 24 rows, first label at row 14: t_sepsis = 20, d = row - 20. Silence elsewhere.
        # early, d = -15: -0.05 + silence at d = -5..3 (-10) = -10.05
        (5, -10.05),
        # on time, d = -6: 1 + (-10) = -9
        (14, -9.0),
        # late, d = +2: alarm 1/3 - 2/9 = 1/9; silence at the other late hours:
        #   -10 - (-4/3 - 4/9) = -10 + 16/9; total 1/9 - 10 + 16/9 = -10 + 17/9 = -8.1111
        (22, -10 + 17 / 9),
    ],
    ids=["early", "on-time", "late"],
)
def test_one_alarm_early_on_time_or_late(alarm_row, expected):
    septic = septic_labels(24, 14)
    alarm = np.zeros(24, dtype=int)
    alarm[alarm_row] = 1
    assert row_utilities(septic, alarm).sum() == pytest.approx(expected)
    assert patient_utilities(np.zeros(24), septic, alarm).observed[0] == pytest.approx(expected)


def random_cohort(rng: np.random.Generator, n_patients: int):
    """Records of 1-60 hours: non-septic, labelled from the first hour, at the last hour, or in
    between; alarms at a random rate per record."""
    ids, labels, predictions = [], [], []
    for i in range(n_patients):
        n = int(rng.integers(1, 61))
        y = np.zeros(n, dtype=int)
        kind = rng.integers(4)
        if kind == 1:
            y[:] = 1
        elif kind == 2:
            y[-1] = 1
        elif kind == 3:
            y[rng.integers(n) :] = 1
        ids.append(np.full(n, i))
        labels.append(y)
        predictions.append((rng.random(n) < rng.random()).astype(int))
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(predictions)


def test_table_version_equals_the_per_patient_loop():
    rng = np.random.default_rng(3)
    ids, labels, predictions = random_cohort(rng, 400)
    parts = patient_utilities(ids, labels, predictions)
    expected_obs, expected_best, expected_inaction = [], [], []
    for patient in np.unique(ids):
        y, p = labels[ids == patient], predictions[ids == patient]
        best = np.zeros_like(y)
        if y.any():  # the scorer's best predictions: rows t_sepsis - 12 .. t_sepsis + 3
            t_sepsis = int(np.argmax(y)) + 6
            best[max(0, t_sepsis - 12) : min(t_sepsis + 3 + 1, y.size)] = 1
        expected_obs.append(row_utilities(y, p).sum())
        expected_best.append(row_utilities(y, best).sum())
        expected_inaction.append(row_utilities(y, np.zeros_like(y)).sum())
    np.testing.assert_allclose(parts.observed, expected_obs, atol=1e-12)
    np.testing.assert_allclose(parts.best, expected_best, atol=1e-12)
    np.testing.assert_allclose(parts.inaction, expected_inaction, atol=1e-12)
    score = normalised_utility(ids, labels, predictions)
    ratio = (sum(expected_obs) - sum(expected_inaction)) / (
        sum(expected_best) - sum(expected_inaction)
    )
    assert score.score == pytest.approx(ratio)


def test_threshold_sweep_equals_scoring_each_threshold():
    rng = np.random.default_rng(4)
    ids, labels, _ = random_cohort(rng, 300)
    probabilities = np.round(rng.random(labels.size) * 0.6 + 0.3 * labels, 2)  # with ties
    thresholds = np.array([0.0, 0.05, 0.3, 0.31, 0.5, 0.77, 0.9, 1.01])
    swept = utility_by_threshold(ids, labels, probabilities, thresholds)
    one_by_one = [
        normalised_utility(ids, labels, (probabilities >= t).astype(int)).score for t in thresholds
    ]
    np.testing.assert_allclose(swept, one_by_one, atol=1e-12)
    assert swept[-1] == 0.0  # no alarm at all


def test_patients_split_across_the_table_are_refused():
    ids = np.array(["a", "a", "b", "a"])
    with pytest.raises(ValueError, match="patient a has rows in several places"):
        normalised_utility(ids, [0, 0, 1, 1], [0, 0, 0, 0])


def test_probabilities_are_refused_as_predictions():
    with pytest.raises(ValueError, match="0 or 1"):
        row_utilities([0, 1], [0.2, 0.9])


def test_bootstrap_statistic_is_the_ratio_of_resampled_sums():
    # Patient 0: the always-alarming septic record above (obs 7.3, best 7.5, inaction -10);
    # patient 1: a non-septic record alarming 10 times (obs -0.5, best 0, inaction 0).
    #   weights [1, 1]: (6.8 + 10) / 17.5 = 0.96
    #   weights [2, 1]: (14.6 - 0.5 + 20) / 35 = 34.1 / 35 = 0.974286
    #   weights [0, 2]: no septic patient drawn: undefined
    ids, labels, predictions = table(
        (septic_labels(20, 10), np.ones(20, int)), (np.zeros(10, int), np.ones(10, int))
    )
    weights = np.array([[1.0, 1.0], [2.0, 1.0], [0.0, 2.0]])
    estimate = utility_interval(ids, labels, predictions, weights=weights)
    assert estimate.value == pytest.approx(0.96)
    assert estimate.undefined_share == pytest.approx(1 / 3)
    assert 0.96 <= estimate.ci_low < estimate.ci_high <= 34.1 / 35


def test_bootstrap_interval_surrounds_the_score():
    rng = np.random.default_rng(5)
    ids, labels, predictions = random_cohort(rng, 300)
    estimate = utility_interval(ids, labels, predictions, n_boot=300, random_state=1)
    assert estimate.value == pytest.approx(normalised_utility(ids, labels, predictions).score)
    assert estimate.ci_low < estimate.value < estimate.ci_high
    same = utility_interval(
        ids, labels, predictions, weights=bootstrap_weights(300, 300, random_state=1)
    )
    assert (same.ci_low, same.ci_high) == (estimate.ci_low, estimate.ci_high)


def test_hourly_auroc_auprc_by_hand():
    # y = [0, 0, 1, 1], p = [0.1, 0.4, 0.35, 0.8]. Thresholds 1, .8, .4, .35, .1:
    #   TPR 0, .5, .5, 1, 1; TNR 1, 1, .5, .5, 0; PPV 1, 1, .5, 2/3, .5
    #   AUROC = .5*.5*(1+1) + .5*.5*(.5+.5) = .75; AUPRC = .5*1 + .5*2/3 = .8333
    auroc, auprc = hourly_auroc_auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert auroc == pytest.approx(0.75)
    assert auprc == pytest.approx(5 / 6)


def test_hourly_auroc_auprc_equal_the_usual_areas_inside_0_1():
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.1
    probabilities = np.clip(np.round(rng.random(5000) * 0.5 + 0.4 * labels, 2), 0.01, 0.99)
    auroc, auprc = hourly_auroc_auprc(labels, probabilities)
    assert auroc == pytest.approx(roc_auc_score(labels, probabilities))
    assert auprc == pytest.approx(average_precision_score(labels, probabilities))


def test_hourly_auc_of_0_1_probabilities_is_0_as_the_scorer_reports_it():
    # The scorer's thresholds: unique values [1, 0] -> 1 kept, 0 dropped: a single point,
    # no area. Reported as the Challenge reports it.
    assert hourly_auroc_auprc([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == (0.0, 0.0)
