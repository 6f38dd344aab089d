"""CTGANOverSampler and the fidelity report: the real CTGAN, one epoch, a few hundred rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from imblearn.pipeline import Pipeline
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from data_prep.fidelity import (
    compare_sample,
    detectability_auroc,
    fidelity_report,
    fidelity_verdict,
)
from data_prep.oversampling import CTGANOverSampler, physiological_limits
from data_prep.schema import SPECS

N_ROWS = 400
N_SEPTIC = 60
FAST = {"epochs": 1, "batch_size": 50}


def feature_table(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Patient features named like `data prepare` writes them, 15% septic.

    `HR__max` deliberately exceeds HR's physiological ceiling in training (an unclipped input):
    generated rows must still stay at or below it.
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(N_SEPTIC, dtype=int), np.zeros(N_ROWS - N_SEPTIC, dtype=int)]
    hr = rng.normal(85 + 10 * y, 12)
    X = pd.DataFrame(
        {
            "HR__mean": hr,
            "HR__max": np.where(rng.random(N_ROWS) < 0.05, 300.0, hr + rng.gamma(2, 5, N_ROWS)),
            "HR__std": rng.gamma(2, 3, N_ROWS),
            "HR__trend": rng.normal(0, 1, N_ROWS),
            "HR__frac_obs": rng.beta(5, 1, N_ROWS),
            "Lactate__max": np.where(rng.random(N_ROWS) < 0.6, 1.8, rng.lognormal(1, 0.5, N_ROWS)),
            "Age": rng.uniform(18, 90, N_ROWS).round(1),
            "Gender": rng.integers(0, 2, N_ROWS),
            "unit_known": rng.integers(0, 2, N_ROWS),
            "window_hours": rng.integers(1, 25, N_ROWS),  # integer-valued, many levels
            "constant": np.full(N_ROWS, 7.0),
        }
    )
    return X, y


@pytest.fixture(scope="module")
def resampled():
    X, y = feature_table()
    sampler = CTGANOverSampler(random_state=7, **FAST)
    X_res, y_res = sampler.fit_resample(X, y)
    return X, y, sampler, X_res, y_res


def test_physiological_limits_follow_the_schema():
    assert physiological_limits("HR__mean") == (SPECS["HR"].lo, SPECS["HR"].hi)
    assert physiological_limits("Age") == (SPECS["Age"].lo, SPECS["Age"].hi)
    assert physiological_limits("HR__frac_obs") == (0.0, 1.0)
    assert physiological_limits("HR__std")[0] == 0.0
    assert physiological_limits("HR__trend") == (-np.inf, np.inf)
    assert physiological_limits("unit_known") == (-np.inf, np.inf)


def test_balances_the_classes_and_keeps_real_rows_first(resampled):
    X, y, sampler, X_res, y_res = resampled
    assert list(X_res.columns) == list(X.columns)
    assert np.bincount(y_res).tolist() == [N_ROWS - N_SEPTIC, N_ROWS - N_SEPTIC]
    pd.testing.assert_frame_equal(X_res.iloc[:N_ROWS].reset_index(drop=True), X)
    assert sampler.n_generated_ == N_ROWS - 2 * N_SEPTIC
    assert (y_res[N_ROWS:] == 1).all()


def test_generated_rows_stay_within_training_range_and_physiology(resampled):
    X, _, _, X_res, _ = resampled
    synthetic = X_res.iloc[N_ROWS:]
    for column in X.columns:
        low, high = physiological_limits(column)
        assert synthetic[column].min() >= max(X[column].min(), low), column
        assert synthetic[column].max() <= min(X[column].max(), high), column
    assert synthetic["HR__max"].max() <= SPECS["HR"].hi < X["HR__max"].max()
    assert (synthetic["constant"] == 7.0).all()


def test_integer_and_categorical_columns_keep_their_values(resampled):
    X, y, sampler, X_res, _ = resampled
    synthetic = X_res.iloc[N_ROWS:]
    assert set(sampler.discrete_columns_) == {"Gender", "unit_known"}
    for column in ("Gender", "unit_known"):
        assert set(synthetic[column].unique()) <= set(X.loc[y == 1, column].unique())
    for column in ("Gender", "unit_known", "window_hours"):
        values = synthetic[column].to_numpy()
        assert np.array_equal(values, np.round(values)), column
    assert "window_hours" in sampler.integer_columns_


def test_same_seed_same_rows_and_global_random_state_untouched():
    X, y = feature_table()
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_before, torch_before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    first, _ = CTGANOverSampler(random_state=3, **FAST).fit_resample(X, y)
    assert np.array_equal(np.random.get_state()[1], numpy_before)
    assert torch.equal(torch.get_rng_state(), torch_before)
    again, _ = CTGANOverSampler(random_state=3, **FAST).fit_resample(X, y)
    other, _ = CTGANOverSampler(random_state=4, **FAST).fit_resample(X, y)
    pd.testing.assert_frame_equal(first, again)
    assert not first.iloc[N_ROWS:].equals(other.iloc[N_ROWS:])


def test_generate_is_reproducible_for_a_seed(resampled):
    *_, sampler, _, _ = resampled
    a = sampler.generate(50, 1, random_state=11)
    b = sampler.generate(50, 1, random_state=11)
    c = sampler.generate(50, 1, random_state=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_float_strategy_sets_the_minority_ratio():
    X, y = feature_table()
    _, y_res = CTGANOverSampler(sampling_strategy=0.5, random_state=0, **FAST).fit_resample(X, y)
    counts = np.bincount(y_res)
    assert counts[1] == int(0.5 * counts[0])


def test_runs_only_at_fit_inside_a_pipeline():
    X, y = feature_table()
    pipe = Pipeline(
        [
            ("oversample", CTGANOverSampler(random_state=0, **FAST)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    ).fit(X, y)
    assert pipe.named_steps["oversample"].n_generated_ == N_ROWS - 2 * N_SEPTIC
    assert pipe.predict_proba(X.iloc[:25]).shape == (25, 2)  # scoring adds no rows


def test_explicit_discrete_columns_and_bad_arguments():
    X, y = feature_table()
    sampler = CTGANOverSampler(discrete_columns=["Gender"], random_state=0, **FAST)
    sampler.fit_resample(X, y)
    assert sampler.discrete_columns_ == ["Gender"]
    with pytest.raises(ValueError, match="not among"):
        CTGANOverSampler(discrete_columns=["Sex"], **FAST).fit_resample(X, y)
    with pytest.raises(ValueError, match="multiple of 10"):
        CTGANOverSampler(epochs=1, batch_size=55).fit_resample(X, y)
    y_one = np.zeros(N_ROWS, dtype=int)
    y_one[0] = 1
    with pytest.raises(ValueError, match="at least 2 rows"):
        CTGANOverSampler(**FAST).fit_resample(X, y_one)


def test_fidelity_tells_a_copy_from_a_shifted_sample():
    X, _ = feature_table(seed=1)
    held_out, same = X.iloc[:200], X.iloc[200:]
    shifted = same.assign(HR__mean=same["HR__mean"] + 40)
    copy = compare_sample(held_out, held_out)
    assert copy.ks_max == 0.0 and copy.corr_max_abs_diff == 0.0
    assert detectability_auroc(held_out, same)[0] < 0.7
    auroc, (low, high) = detectability_auroc(held_out, shifted)
    assert low > 0.9 and low <= auroc <= high
    report = fidelity_report(shifted, held_out, same)
    assert report["synthetic"]["worst_features"][0] == "HR__mean"
    assert report["synthetic"]["ks_mean"] > report["reference_real"]["ks_mean"]
    assert {row["feature"] for row in report["ks_per_feature"]} == set(X.columns)


def test_fidelity_on_few_rows_still_sees_a_shift_or_says_it_cannot():
    X, _ = feature_table(seed=2)
    held_out, other = X.iloc[:25], X.iloc[100:125]
    shifted = other + 1000.0  # every feature far off: must not read as indistinguishable
    auroc, (low, _) = detectability_auroc(held_out, shifted)
    assert auroc > 0.9 and low > 0.8
    report = fidelity_report(shifted, X.iloc[:8], other)
    assert "skipped" in report and "only 8 held-out" in report["skipped"]
    assert "not measured" in fidelity_verdict(report)
