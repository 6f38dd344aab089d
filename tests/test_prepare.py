"""`data prepare`: patient split, leakage-free fitting, feature windows, environment cohort."""

from __future__ import annotations

import json

import gymnasium as gym
import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

import sepsis_env  # noqa: F401
from data_prep.env_cohort import ENV_COLUMNS, add_ctgan_patients, builtin_env_cohort
from data_prep.features import feature_windows
from data_prep.prepare import OUTPUT_FILES, PrepareOptions, prepare
from data_prep.schema import LABEL, MEASUREMENTS, PATIENT
from data_prep.split import patient_labels, read_split, split_patients
from data_prep.synth import generate_cohort


def test_every_output_is_written(prepared_dir):
    assert sorted(p.name for p in prepared_dir.iterdir()) == sorted(OUTPUT_FILES)
    report = json.loads((prepared_dir / "report.json").read_text())
    assert report["raw"]["patients"] == 3000
    assert "Temp" in report["cleaning"]["dropped_columns"]  # 66 % missing > 50 %
    assert "HR" in report["cleaning"]["kept_measurements"]
    assert (prepared_dir / "summary.md").read_text().startswith("# Data preparation summary")


def test_no_patient_in_two_splits_and_splits_are_stratified(prepared_dir):
    split = read_split(prepared_dir / "split.csv")
    assert split[PATIENT].is_unique
    features = pd.read_parquet(prepared_dir / "features.parquet")
    assert features[PATIENT].is_unique
    merged = features.merge(split, on=PATIENT, suffixes=("", "_saved"))
    assert (merged["split"] == merged["split_saved"]).all()
    prevalence = split.groupby("split")["label"].mean()
    assert prevalence.max() - prevalence.min() < 0.01
    assert split["split"].value_counts(normalize=True)["train"] == pytest.approx(0.7, abs=0.01)


def test_split_is_seeded():
    labels = pd.Series(
        np.r_[np.zeros(90), np.ones(10)].astype(int), index=[f"p{i}" for i in range(100)]
    )
    a, b = split_patients(labels, seed=1), split_patients(labels, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(split_patients(labels, seed=2)["split"])


def _fitted_state(folder):
    saved = joblib.load(folder / "preprocessing.joblib")
    steps = saved["cleaning"].named_steps
    return {
        "missing": steps["drop_missing"].missing_fraction_,
        "lower": steps["outliers"].lower_.to_dict(),
        "upper": steps["outliers"].upper_.to_dict(),
        "medians": steps["impute"].medians_.to_dict(),
        "hosp": saved["features"].hosp_adm_median_,
    }


def _perturbed_copy(prepared_dir, tmp_path, rows_to_change, statics=True):
    """Rewrite the canonical table with wild values in chosen rows; prepare it again."""
    hourly = pq.read_table(prepared_dir / "hourly.parquet").to_pandas()
    change = rows_to_change(hourly)
    for name in MEASUREMENTS:
        hourly.loc[change, name] = hourly.loc[change, name] * 7 + 123
    if statics:  # whole patients only: statics are constant within a stay
        hourly.loc[change, "HospAdmTime"] = -9999.0
    source = tmp_path / "perturbed.parquet"
    pq.write_table(pa.Table.from_pandas(hourly, preserve_index=False), source)
    out = tmp_path / "out"
    prepare(source, out)
    return out


def test_no_fitted_statistic_sees_validation_or_test_patients(prepared_dir, tmp_path):
    split = read_split(prepared_dir / "split.csv")
    held_out = set(split.loc[split["split"] != "train", PATIENT])
    out = _perturbed_copy(prepared_dir, tmp_path, lambda h: h[PATIENT].isin(held_out))
    assert _fitted_state(out) == _fitted_state(prepared_dir)
    before = pd.read_parquet(prepared_dir / "features.parquet").set_index(PATIENT)
    after = pd.read_parquet(out / "features.parquet").set_index(PATIENT)
    train = before.index[before["split"] == "train"]
    pd.testing.assert_frame_equal(after.loc[train], before.loc[train])
    assert not after.drop(index=train).equals(before.drop(index=train))  # the change was real


def test_no_feature_is_computed_from_a_labelled_hour(prepared_dir, tmp_path):
    out = _perturbed_copy(prepared_dir, tmp_path, lambda h: h[LABEL] == 1, statics=False)
    before = pd.read_parquet(prepared_dir / "features.parquet")
    after = pd.read_parquet(out / "features.parquet")
    pd.testing.assert_frame_equal(after, before)


def test_patients_labelled_from_first_hour_are_excluded_and_counted(prepared_dir):
    report = json.loads((prepared_dir / "report.json").read_text())
    hourly = pq.read_table(prepared_dir / "hourly.parquet").to_pandas()
    first_rows = hourly.groupby(PATIENT, sort=False).head(1)
    from_first = set(first_rows.loc[first_rows[LABEL] == 1, PATIENT])
    assert report["windows"]["excluded_labelled_from_first_hour"] == len(from_first) > 0
    features = pd.read_parquet(prepared_dir / "features.parquet")
    assert not from_first & set(features[PATIENT])


def test_window_length_alone_does_not_predict_the_label():
    hourly = generate_cohort(8000, seed=21)
    split = split_patients(patient_labels(hourly), seed=21)
    windows = feature_windows(hourly, split, seed=21)
    usable = windows[windows["excluded"] == ""]
    length = usable["end"] - usable["start"]
    assert roc_auc_score(usable["label"], length) == pytest.approx(0.5, abs=0.05)
    # Without the matching, the raw pre-onset length would give the label away.
    stay = usable["n_rows"]
    assert abs(roc_auc_score(usable["label"], stay) - 0.5) > 0.1


def test_outlier_drop_reports_what_it_removed_per_class(tmp_path, small_psv_dir):
    report = prepare(small_psv_dir, tmp_path / "out", PrepareOptions(outliers="drop"))
    removed = report["cleaning"]["outliers"]["rows_with_any_outlier"]
    assert report["raw"]["rows"] - report["after_outliers"]["rows"] == sum(removed.values())
    assert removed["label_1"] > 0
    # Dropping costs septic rows more than other rows: the report must make that visible.
    share_1 = removed["label_1"] / report["raw"]["rows_label_1"]
    share_0 = removed["label_0"] / (report["raw"]["rows"] - report["raw"]["rows_label_1"])
    assert share_1 > share_0
    assert "abnormal vitals that mark sepsis" in (tmp_path / "out" / "summary.md").read_text()


def test_environment_cohort(prepared_dir):
    cohort = pd.read_parquet(prepared_dir / "env_cohort.parquet")
    assert tuple(cohort.columns) == ENV_COLUMNS
    assert not cohort.isna().any().any()
    split = read_split(prepared_dir / "split.csv").set_index(PATIENT)
    assert (split.loc[cohort[PATIENT], "label"] == 1).all()
    assert (split.loc[cohort[PATIENT], "split"].to_numpy() == cohort["split"].to_numpy()).all()
    assert cohort["Age"].min() >= 18


def test_builtin_env_cohort_is_deterministic():
    a, b = builtin_env_cohort(400, seed=3), builtin_env_cohort(400, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["split"]) == {"train", "val", "test"}
    assert (a["MAP"] < 65).any()  # some patients start in shock


def test_failed_prepare_leaves_nothing_behind(tmp_path, small_cohort):
    """A cohort that fails after reading and splitting (no lactate anywhere, which the
    environment cohort needs) leaves no output and no staging folder."""
    from data_prep.synth import write_psv_files

    raw = tmp_path / "raw"
    hourly = small_cohort.copy()
    hourly["Lactate"] = np.nan
    write_psv_files(hourly, raw)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="Lactate"):
        prepare(raw, out, PrepareOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_splits_look_alike_to_a_classifier(prepared_dir):
    """Nothing but chance may tell a test patient's features from a training patient's: a
    classifier asked to find the test split must be at AUROC 0.5 (this caught the split and the
    window placement sharing one random stream)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = pd.read_parquet(prepared_dir / "features.parquet")
    X = features.drop(columns=[PATIENT, "split", "label"])
    is_test = (features["split"] == "test").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(model, X, is_test, cv=5, method="predict_proba")[:, 1]
    assert roc_auc_score(is_test, scores) == pytest.approx(0.5, abs=0.05)
    windows = features.groupby(["split", "label"])["HR__frac_obs"].mean()
    assert windows.xs(0, level="label").max() - windows.xs(0, level="label").min() < 0.02


def test_ctgan_patients_join_the_environment_cohort_in_training_only():
    real = builtin_env_cohort(n_patients=300, seed=0)
    cohort = add_ctgan_patients(real, 40, epochs=1, seed=0)
    generated = cohort[cohort["source"] == "ctgan"]
    assert list(cohort.columns) == list(ENV_COLUMNS)
    assert len(generated) == 40 and (generated["split"] == "train").all()
    assert generated[PATIENT].str.startswith("ctgan-").all()
    pd.testing.assert_frame_equal(cohort[cohort["source"] == "real"], real)
    # Within the real training patients' range, sex a category, reproducible for a seed.
    train = real[real["split"] == "train"]
    for column in ("Age", "HR", "MAP", "Lactate"):
        assert generated[column].between(train[column].min(), train[column].max()).all()
    assert set(generated["Gender"]) <= {0, 1}
    again = add_ctgan_patients(real, 40, epochs=1, seed=0)
    pd.testing.assert_frame_equal(cohort, again)
    # Evaluation splits never start from a generated patient.
    env = gym.make("SepsisEnv-v0", cohort=cohort, split="test")
    ids = {env.reset(seed=s)[1]["patient_id"] for s in range(300)}
    assert not any(i.startswith("ctgan-") for i in ids)
    train_env = gym.make("SepsisEnv-v0", cohort=cohort, split="train")
    ids = {train_env.reset(seed=s)[1]["patient_id"] for s in range(300)}
    assert any(i.startswith("ctgan-") for i in ids)


def test_prepare_writes_ctgan_patients_when_asked(tmp_path, small_psv_dir):
    options = PrepareOptions(env_ctgan_patients=25, env_ctgan_epochs=1)
    report = prepare(small_psv_dir, tmp_path / "out", options)
    cohort = pd.read_parquet(tmp_path / "out" / "env_cohort.parquet")
    assert (cohort["source"] == "ctgan").sum() == report["env_cohort_ctgan"] == 25
    assert sum(report["env_cohort"].values()) == (cohort["source"] == "real").sum()
    assert "25 CTGAN-generated patients" in (tmp_path / "out" / "summary.md").read_text()


def test_copy_to_storage_creates_the_destination_for_a_flat_folder(tmp_path):
    """Arrow's copy_files alone fails on a local destination for a folder without sub-folders
    (what `run --upload` copies after each stage, and `tune` for `analysis/`)."""
    from sepsis_rl.common.files import copy_to_storage

    stage = tmp_path / "evaluation"
    stage.mkdir()
    (stage / "evaluation.json").write_text("{}")
    copy_to_storage(stage, (tmp_path / "shared" / "study" / "evaluation").as_uri())
    assert (tmp_path / "shared" / "study" / "evaluation" / "evaluation.json").read_text() == "{}"
