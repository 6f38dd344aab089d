"""Hourly early-warning features: each hour sees only itself and the hours before it.

The reference for every value is `naive_hourly_features` in `benchmarks/bench_hourly.py` (pandas
forward fill and groupby-rolling, written from the definitions); hand-made stays pin the edge
cases.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from data_prep.hourly_features import HourlyFeatureBuilder
from data_prep.schema import CANONICAL_COLUMNS, LABEL, MEASUREMENTS, PATIENT, TIME
from data_prep.synth import generate_cohort

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hourly.py"


def _naive():
    spec = importlib.util.spec_from_file_location("bench_hourly", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.naive_hourly_features


naive_hourly_features = _naive()


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return generate_cohort(300, seed=21)


@pytest.fixture(scope="module")
def builder(cohort) -> HourlyFeatureBuilder:
    return HourlyFeatureBuilder().fit(cohort)


def stay(patient: str, n_hours: int, first_iculos: int = 1, **values) -> pd.DataFrame:
    """A canonical-table stay with every measurement missing except `values` (name -> list)."""
    frame = pd.DataFrame(np.nan, index=range(n_hours), columns=list(CANONICAL_COLUMNS))
    frame[PATIENT] = patient
    frame["set"] = "A"
    frame[TIME] = np.arange(first_iculos, first_iculos + n_hours)
    frame[LABEL] = 0
    frame[["Age", "Gender", "Unit1", "Unit2", "HospAdmTime"]] = [70.0, 1, 1.0, 0.0, -3.0]
    for name, series in values.items():
        frame[name] = np.asarray(series, dtype=float)
    return frame


def stays(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def bits(frame: pd.DataFrame) -> np.ndarray:
    return frame.to_numpy(np.float32).view(np.uint32)


def test_no_hour_sees_its_future(cohort, builder):
    """Change every value of each chosen stay after a random hour k: no feature of any hour up
    to k changes by a single bit, nor any hour of the other stays."""
    rng = np.random.default_rng(0)
    before = builder.transform(cohort)
    changed = cohort.copy()
    ids = cohort[PATIENT].to_numpy()
    hour = cohort.groupby(PATIENT, sort=False).cumcount().to_numpy()
    chosen = rng.choice(np.unique(ids), 40, replace=False)
    cut = dict(zip(chosen, rng.integers(0, 30, chosen.size), strict=True))
    later = np.array([p in cut and h > cut[p] for p, h in zip(ids, hour, strict=True)])
    n_later = int(later.sum())
    for name in MEASUREMENTS:
        noise = rng.normal(100, 50, n_later)
        noise[rng.random(n_later) < 0.4] = np.nan  # missingness changes too
        changed.loc[later, name] = noise
    changed.loc[later, LABEL] = 1 - changed.loc[later, LABEL]
    after = builder.transform(changed)
    assert not np.array_equal(bits(before[later]), bits(after[later]))  # the change shows later
    assert np.array_equal(bits(before[~later]), bits(after[~later]))


def test_dropping_later_hours_changes_no_earlier_feature(cohort, builder):
    """Cut stays short (as if scoring at the bedside at hour k): the features of the hours kept
    are the same bits as when the whole stay is known."""
    rng = np.random.default_rng(1)
    hour = cohort.groupby(PATIENT, sort=False).cumcount()
    ids = cohort[PATIENT].unique()
    last_kept = cohort[PATIENT].map(dict(zip(ids, rng.integers(0, 40, ids.size), strict=True)))
    kept = (hour <= last_kept).to_numpy()
    full = builder.transform(cohort)
    truncated = builder.transform(cohort[kept])
    assert np.array_equal(bits(full[kept]), bits(truncated))
    assert truncated.index.equals(cohort.index[kept])


def test_equals_the_naive_pandas_version(cohort, builder):
    fast = builder.transform(cohort)
    naive = naive_hourly_features(cohort, builder)
    assert list(fast.columns) == list(naive.columns)
    np.testing.assert_allclose(
        fast.to_numpy(np.float64), naive.to_numpy(np.float64), rtol=1e-5, atol=1e-4
    )
    assert fast.isna().equals(naive.isna())


def test_fit_chooses_rolling_labs_from_the_training_table(cohort):
    builder = HourlyFeatureBuilder(rolling_min_observed=0.08).fit(cohort)
    rates = cohort[list(MEASUREMENTS)].notna().mean()
    frequent_labs = [c for c in builder.rolling_columns_ if c not in MEASUREMENTS[:8]]
    assert frequent_labs and all(rates[c] >= 0.08 for c in frequent_labs)
    assert builder.rolling_columns_[:8] == list(MEASUREMENTS[:8])  # every vital, always
    everything = HourlyFeatureBuilder(rolling_min_observed=0.0).fit(cohort)
    assert everything.rolling_columns_ == list(MEASUREMENTS)
    # Fitting reads no label: a table without SepsisLabel fits to the same state.
    unlabelled = HourlyFeatureBuilder().fit(cohort.drop(columns=LABEL))
    assert unlabelled.rolling_columns_ == builder.rolling_columns_
    assert clone(builder).get_params() == builder.get_params()


def test_rolling_statistics_by_hand():
    # HR over 9 hours: 80, -, 90, 100, -, -, -, -, 70.
    # Hour 8: 6 h window = hours 3..8 -> {100, 70}: mean 85, min 70, max 100,
    #   std sqrt((15^2 + 15^2) / 1) = 21.2132; 24 h window = hours 0..8 -> {80, 90, 100, 70}:
    #   mean 85, std sqrt((25 + 25 + 225 + 225) / 3) = 12.9099; delta_6h = 70 - last at hour 2
    #   (90) = -20; 4 measurements so far and in 24 h.
    # Hour 7: last 100, measured 4 h earlier; delta_6h = 100 - last at hour 1 (80) = 20;
    #   6 h window = hours 2..7 -> {90, 100}: std sqrt(2 * 5^2) = 7.0711.
    hr = [80, np.nan, 90, 100, np.nan, np.nan, np.nan, np.nan, 70]
    table = stay("p1", 9, HR=hr, MAP=np.full(9, 75.0))
    features = HourlyFeatureBuilder().fit(table).transform(table)
    at8, at7 = features.iloc[8], features.iloc[7]
    assert at8["HR__mean_6h"] == 85 and at8["HR__min_6h"] == 70 and at8["HR__max_6h"] == 100
    assert at8["HR__std_6h"] == pytest.approx(21.2132, abs=1e-4)
    assert at8["HR__mean_24h"] == 85
    assert at8["HR__std_24h"] == pytest.approx(12.9099, abs=1e-4)
    assert at8["HR__delta_6h"] == -20
    assert at8["HR__n_obs"] == 4 and at8["HR__n_obs_24h"] == 4 and at8["HR__hours_since"] == 0
    assert at7["HR__last"] == 100 and at7["HR__hours_since"] == 4
    assert at7["HR__delta_6h"] == 20
    assert at7["HR__std_6h"] == pytest.approx(7.0711, abs=1e-4)
    assert features["MAP__std_24h"].iloc[1:].eq(0).all()  # a constant series: exactly 0
    assert features["ICULOS"].tolist() == list(range(1, 10))


def test_a_stay_of_one_hour():
    table = stays(stay("p1", 12, HR=np.arange(12) + 60.0), stay("p2", 1, HR=[88.0]))
    features = HourlyFeatureBuilder().fit(table).transform(table)
    one = features.iloc[-1]
    assert one["HR__last"] == 88 and one["HR__hours_since"] == 0 and one["HR__n_obs"] == 1
    assert one["HR__mean_6h"] == 88 and one["HR__min_24h"] == 88
    assert np.isnan(one["HR__std_6h"])  # one value has no spread
    assert np.isnan(one["HR__delta_6h"])  # no hour 6 h earlier in this stay
    assert one["HR__n_obs_24h"] == 1


def test_a_column_missing_throughout():
    table = stays(stay("p1", 10, HR=np.full(10, 80.0)), stay("p2", 5))
    features = HourlyFeatureBuilder().fit(table).transform(table)
    for stat in ("last", "hours_since", "delta_6h", "mean_6h", "min_24h", "max_24h", "std_24h"):
        assert features[f"Temp__{stat}"].isna().all(), stat
    assert (features["Temp__n_obs"] == 0).all() and (features["Temp__n_obs_24h"] == 0).all()
    assert features["HR__last"].iloc[10:].isna().all()  # p2 never had HR: nothing carried over


def test_first_measurement_late_in_the_stay():
    # Temp first measured at hour 5 (36.6), again at hour 8 (38.1); stay starts at ICULOS 3.
    temp = [np.nan] * 5 + [36.6, np.nan, np.nan, 38.1, np.nan]
    table = stay("p1", 10, first_iculos=3, Temp=temp)
    features = HourlyFeatureBuilder().fit(table).transform(table)
    early = features.iloc[:5]
    assert early["Temp__last"].isna().all() and early["Temp__hours_since"].isna().all()
    assert (early["Temp__n_obs"] == 0).all() and early["Temp__mean_24h"].isna().all()
    assert features["Temp__hours_since"].iloc[5:].tolist() == [0, 1, 2, 0, 1]
    assert features["Temp__n_obs"].iloc[5:].tolist() == [1, 1, 1, 2, 2]
    assert features["Temp__last"].iloc[7] == pytest.approx(36.6)
    # hour 9's 6 h window (hours 4..9) holds both values; hour 5's delta looks back to hour -1
    assert features["Temp__mean_6h"].iloc[9] == pytest.approx((36.6 + 38.1) / 2)
    assert np.isnan(features["Temp__delta_6h"].iloc[5])
    # hour 9 - 6 = hour 3: nothing measured yet, so no change can be computed
    assert np.isnan(features["Temp__delta_6h"].iloc[9])
    assert features["ICULOS"].iloc[0] == 3


def test_statics_follow_the_patient_feature_conventions():
    table = stays(stay("p1", 3), stay("p2", 2))
    table.loc[3:, ["Age", "Unit1", "Unit2", "HospAdmTime"]] = [100.0, np.nan, np.nan, np.nan]
    features = HourlyFeatureBuilder().fit(table).transform(table)
    p2 = features.iloc[3]
    assert p2["Age"] == 90  # set B writes 90 and over as 100
    assert (p2["Unit1"], p2["Unit2"], p2["unit_known"]) == (0, 0, 0)
    assert p2["HospAdmTime"] == -3.0  # the training median of the stays' values (-3, NaN)


def test_unsorted_or_gapped_tables_are_refused():
    builder = HourlyFeatureBuilder().fit(stays(stay("p1", 3), stay("p2", 3)))
    split = stays(stay("p1", 2), stay("p2", 2), stay("p1", 2, first_iculos=3))
    with pytest.raises(ValueError, match="patient p1 has rows in several places"):
        builder.transform(split)
    gap = stay("p1", 4)
    gap[TIME] = [1, 2, 4, 5]
    with pytest.raises(ValueError, match="patient p1: ICULOS goes from 2 to 4 at row 2"):
        builder.transform(gap)
