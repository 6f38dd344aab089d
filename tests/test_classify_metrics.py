"""Bootstrap metrics: equal to scikit-learn's, CIs that cover, a threshold rule, a baseline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from training.classification.metrics import (
    METRICS,
    UNDEFINED_MARK,
    Estimate,
    bootstrap_weights,
    choose_threshold,
    evaluate,
    metric_draws,
    paired_difference,
    trivial_baseline,
)


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.07).astype(int)
    scores = np.round(np.clip(rng.normal(0.3 + 0.25 * y, 0.15), 0, 1), 2)  # many ties
    return y, scores


def sklearn_metrics(y, scores, threshold):
    pred = (scores >= threshold).astype(int)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "specificity": skm.recall_score(1 - y, 1 - pred),
        "f1": skm.f1_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, scores),
        "pr_auc": skm.average_precision_score(y, scores),
        "brier": skm.brier_score_loss(y, scores),
    }


def test_point_estimates_equal_scikit_learn(scored):
    y, scores = scored
    ours = metric_draws(y, scores, 0.45, np.ones((1, len(y))))
    for name, expected in sklearn_metrics(y, scores, 0.45).items():
        assert ours[name][0] == pytest.approx(expected, abs=1e-12), name


def test_each_bootstrap_draw_equals_metrics_on_the_resampled_patients(scored):
    y, scores = scored
    weights = bootstrap_weights(len(y), 3, random_state=1)
    draws = metric_draws(y, scores, 0.45, weights)
    for row in range(3):
        idx = np.repeat(np.arange(len(y)), weights[row].astype(int))
        for name, expected in sklearn_metrics(y[idx], scores[idx], 0.45).items():
            assert draws[name][row] == pytest.approx(expected, abs=1e-12), (row, name)


def test_intervals_cover_the_truth_for_a_known_rate():
    """Recall of a classifier that catches each positive with probability 0.7: the 95% CI
    should contain 0.7 in about 95% of repeated studies (here at least 85 of 100)."""
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        y = (rng.random(600) < 0.1).astype(int)
        caught = rng.random(600) < 0.7
        scores = np.where(y == 1, caught.astype(float), rng.random(600) * 0.5)
        est = evaluate(y, scores, 0.9, n_boot=300, random_state=seed).estimates["recall"]
        covered += est.ci_low <= 0.7 <= est.ci_high
    assert covered >= 85


def test_undefined_precision_is_reported_not_invented(scored):
    y, scores = scored
    weights = bootstrap_weights(len(y), 50, random_state=0)
    baseline = trivial_baseline(y, train_prevalence=0.07, weights=weights)
    assert np.isnan(baseline.estimates["precision"].value)
    assert baseline.estimates["precision"].format() == "n/a"
    assert baseline.estimates["accuracy"].value == pytest.approx(1 - y.mean())
    assert baseline.estimates["recall"].value == 0.0
    assert baseline.estimates["roc_auc"].value == 0.5
    assert baseline.estimates["pr_auc"].value == pytest.approx(y.mean())


def test_threshold_maximises_f1_on_validation(scored):
    y, scores = scored
    chosen = choose_threshold(y, scores, "f1")
    best = max(skm.f1_score(y, scores >= t) for t in np.unique(scores))
    assert skm.f1_score(y, scores >= chosen) == pytest.approx(best)
    youden = choose_threshold(y, scores, "youden")
    j = max(
        skm.recall_score(y, scores >= t) + skm.recall_score(1 - y, scores < t) - 1
        for t in np.unique(scores)
    )
    achieved = skm.recall_score(y, scores >= youden) + skm.recall_score(1 - y, scores < youden) - 1
    assert achieved == pytest.approx(j)
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(10), np.linspace(0, 1, 10))


def test_paired_difference_uses_shared_resamples(scored):
    y, scores = scored
    weights = bootstrap_weights(len(y), 200, random_state=0)
    a = evaluate(y, scores, 0.45, weights=weights)
    same = paired_difference(a, a, "pr_auc")
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    noisy = evaluate(y, np.clip(scores + 0.2 * (y - 0.5), 0, 1), 0.45, weights=weights)
    better = paired_difference(noisy, a, "pr_auc")
    assert better.ci_low > 0  # a clearly better ranking is detected
    for name in METRICS:
        assert a.estimates[name].ci_low <= a.estimates[name].value <= a.estimates[name].ci_high


def test_bootstrap_is_fast_enough_for_a_full_test_set():
    import time

    rng = np.random.default_rng(0)
    y = (rng.random(6000) < 0.07).astype(int)
    scores = rng.random(6000)
    start = time.perf_counter()
    evaluate(y, scores, 0.5, n_boot=1000)
    assert time.perf_counter() - start < 30  # about 2 s on an idle core


def test_an_interval_resting_on_too_few_draws_is_marked():
    assert Estimate(0.5123, 0.4714, 0.5531).format() == "0.512 [0.471, 0.553]"
    assert (
        Estimate(0.5, 0.4, 0.6, undefined_share=0.2).format()
        == f"0.500 [0.400, 0.600]{UNDEFINED_MARK}"
    )
    assert Estimate(float("nan"), 0.4, 0.6, undefined_share=0.2).format() == "n/a"
