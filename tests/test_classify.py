"""The classify protocol on a small generated cohort: every model, every oversampling mode.

Runs the real CTGAN (one epoch), SMOTE and the four models on the `data prepare` output of a
3,000-stay synthetic cohort (`prepared_dir` in conftest), with small model budgets.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling.base import BaseOverSampler
from imblearn.pipeline import Pipeline
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from sepsis_rl.cli import app
from sepsis_rl.common.manifest import write_manifest
from training.classification.candidates import fit_candidate
from training.classification.experiment import run_classification
from training.classification.features import DataFolderError, load_features
from training.classification.leakage import (
    LeakageError,
    RowRecorder,
    check_no_leakage,
    instrument,
    row_fingerprints,
)
from training.classification.model_file import (
    MODEL_KIND,
    FeatureMismatchError,
    ModelFileError,
    load_model,
)
from training.classification.models import MODELS, OVERSAMPLERS, ClassifierSettings, build_pipeline
from training.classification.options import ClassifyConfig

SMALL = ClassifierSettings(
    seed=3,
    ctgan_epochs=1,
    ctgan_batch_size=100,
    rf_trees=30,
    xgb_rounds=40,
    svm_components=50,
)


@pytest.fixture(scope="module")
def table(prepared_dir):
    return load_features(prepared_dir)


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("classify")
    result = run_classification(prepared_dir, out, ClassifyConfig(n_boot=200, settings=SMALL))
    return result, out


# -- the full run ---------------------------------------------------------------------------------


def test_every_model_and_oversampling_mode_is_trained_and_written(run):
    result, out = run
    assert {(c.model, c.oversample) for c in result.candidates} == {
        (m, o) for m in MODELS for o in OVERSAMPLERS
    }
    for name in (
        "metrics.json",
        "comparison.csv",
        "comparison.md",
        "roc_pr_curves.png",
        "calibration.png",
        "fidelity.json",
        "fidelity.md",
        "model/best_model.joblib",
        "model/best_model.json",
    ):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == len(MODELS) * len(OVERSAMPLERS)
    assert {"pr_auc", "pr_auc_ci_low", "pr_auc_ci_high", "brier_ci_high"} <= set(table.columns)


def test_test_figures_are_on_the_real_test_patients_only(run, table):
    result, out = run
    _, y_test, _ = table.part("test")
    metrics = json.loads((out / "metrics.json").read_text())
    for candidate in metrics["candidates"]:
        assert candidate["test"]["n"] == len(y_test)
        assert candidate["test"]["n_positive"] == int(y_test.sum())
        for name in ("roc_auc", "pr_auc", "recall", "brier"):
            est = candidate["test"][name]
            assert est["ci_low"] <= est["value"] <= est["ci_high"], (candidate["model"], name)
    baseline = metrics["trivial_baseline"]["test"]
    assert baseline["accuracy"]["value"] == pytest.approx(1 - y_test.mean())
    assert baseline["pr_auc"]["value"] == pytest.approx(y_test.mean())
    assert metrics["test_prevalence"]["value"] == pytest.approx(y_test.mean())


def test_best_model_is_the_best_on_validation(run):
    result, _ = run
    best_val = max(c.val.estimates["pr_auc"].value for c in result.candidates)
    assert result.best.val.estimates["pr_auc"].value == best_val


def test_every_fitted_step_passed_the_leakage_audit(run, table):
    result, _ = run
    n_train = len(table.part("train")[1])
    for c in result.candidates:
        audit = c.leakage_audit
        assert audit["passed"]
        assert "model" in audit["steps_checked"]
        first = audit["steps_checked"][0]
        assert audit["rows_seen"][first] == n_train
        if c.oversample != "none":
            assert "oversample" in audit["steps_checked"]
            assert audit["rows_seen"]["model"] > n_train  # generated rows reach the model


def test_oversampling_effects_are_paired_differences(run):
    result, _ = run
    effects = result.metrics["oversampling_effect"]
    assert {(e["model"], e["oversample"]) for e in effects} == {
        (m, o) for m in MODELS for o in ("smote", "ctgan")
    }
    for effect in effects:
        d = effect["difference_vs_none"]
        assert d["ci_low"] <= d["value"] <= d["ci_high"]


def test_saved_model_scores_like_the_fitted_one(run, table):
    result, out = run
    X_test, _, ids = table.part("test")
    model = load_model(out / "model")
    assert model.feature_names == table.feature_names
    assert model.threshold == result.best.threshold
    features = table.frame[table.frame["split"] == "test"]
    scores = model.predict_table(features)
    assert scores["patient_id"].tolist() == ids
    np.testing.assert_allclose(scores["probability"], result.best.test_scores)
    np.testing.assert_array_equal(
        scores["sepsis_predicted"], result.best.test_scores >= result.best.threshold
    )
    shuffled = features[list(reversed(features.columns))]  # column order does not matter
    np.testing.assert_allclose(model.predict_table(shuffled)["probability"], scores["probability"])
    saved = load_model(out / "model").pipeline
    assert not any(hasattr(step, "fit_resample") for _, step in saved.steps)


def test_score_is_a_deprecated_alias_of_predict_table(run, table):
    _, out = run
    model = load_model(out / "model")
    features = table.frame[table.frame["split"] == "test"]
    with pytest.deprecated_call(match="predict_table"):
        scores = model.score(features)
    pd.testing.assert_frame_equal(scores, model.predict_table(features))


def test_scoring_with_the_wrong_features_says_what_is_wrong(run, table):
    _, out = run
    model = load_model(out / "model")
    features = table.frame[table.frame["split"] == "test"]
    with pytest.raises(FeatureMismatchError, match="missing 1 column.*HR__mean"):
        model.predict_table(features.drop(columns=["HR__mean"]))
    with pytest.raises(FeatureMismatchError, match="unexpected 1 column.*Lactate__max"):
        model.predict_table(features.assign(Lactate__max=1.0))
    with pytest.raises(FeatureMismatchError, match="missing values"):
        model.predict_table(features.assign(HR__mean=np.nan))


def test_corrupt_or_missing_model_files_are_reported(run, tmp_path):
    _, out = run
    copy = tmp_path / "model"
    shutil.copytree(out / "model", copy)
    with (copy / "best_model.joblib").open("r+b") as stream:
        stream.seek(100)
        stream.write(b"\x00garbage\x00")
    with pytest.raises(ModelFileError, match=r"best_model\.joblib is damaged or was replaced"):
        load_model(copy)
    shutil.copy2(out / "model" / "best_model.joblib", copy / "best_model.joblib")
    (copy / "best_model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"best_model\.json is damaged or was replaced"):
        load_model(copy)
    write_manifest(copy, MODEL_KIND)  # past the manifest, the description itself is checked
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(copy)
    (copy / "best_model.json").unlink()
    with pytest.raises(ModelFileError, match=r"best_model\.json is missing"):
        load_model(copy)


# -- leakage: the check passes on the real flow and fails on leaky pipelines --------------------


def test_no_validation_or_test_patient_reaches_any_fitted_step(run, table):
    """Inspect, step by step, the rows each fitted step of every candidate was fitted on."""
    result, _ = run
    X_train, y_train, _ = table.part("train")
    held = {split: table.part(split) for split in ("val", "test")}
    raw_train = set(row_fingerprints(X_train))
    raw_held = {split: set(row_fingerprints(part[0])) for split, part in held.items()}
    for candidate in result.candidates:
        pipeline = candidate.instrumented
        recorders = [(n, s) for n, s in pipeline.steps if isinstance(s, RowRecorder)]
        first_name, first = recorders[0]
        # The first fitted step (the oversampler or the scaler) saw exactly the training rows.
        assert set(first.seen_) == raw_train, (candidate.name, first_name)
        assert first.n_seen_ == len(y_train)
        for split, fingerprints in raw_held.items():
            assert not fingerprints & set(first.seen_), (candidate.name, split)
        # Later steps see transformed rows; the audit maps held-out rows into their space.
        rows = {split: part[0] for split, part in held.items()}
        ids = {split: part[2] for split, part in held.items()}
        audit = check_no_leakage(pipeline, X_train, rows, ids)
        assert audit.steps_checked == [name for name, _ in recorders]


class HeldOutRowsOverSampler(BaseOverSampler):
    """A deliberately leaky sampler: its 'new' minority rows are copies of `pool` rows."""

    _parameter_constraints: dict = {
        **BaseOverSampler._parameter_constraints,
        "pool": "no_validation",
    }

    def __init__(self, pool=None, sampling_strategy="auto"):
        super().__init__(sampling_strategy=sampling_strategy)
        self.pool = pool

    def _fit_resample(self, X, y):
        pool = np.asarray(self.pool, dtype=float)
        n = min(self.sampling_strategy_[1], len(pool))
        return np.vstack([X, pool[:n]]), np.r_[y, np.ones(n, dtype=y.dtype)]


def _septic_rows(table, split):
    X, y, ids = table.part(split)
    return X[y == 1], [i for i, label in zip(ids, y, strict=True) if label == 1]


def test_leak_check_catches_a_sampler_that_copies_test_patients(table):
    X_train, y_train, _ = table.part("train")
    X_test, _, test_ids = table.part("test")
    pool, pool_ids = _septic_rows(table, "test")
    leaky = instrument(
        Pipeline(
            [
                ("oversample", HeldOutRowsOverSampler(pool=pool)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(max_iter=500)),
            ]
        )
    ).fit(X_train, y_train)
    with pytest.raises(LeakageError, match=r"test patient\(s\) reached fitted step 'scale'") as err:
        check_no_leakage(leaky, X_train, {"test": X_test}, {"test": test_ids})
    assert pool_ids[0] in str(err.value)


def test_leak_check_sees_leaks_after_scaling_too(table):
    """A leak behind a scaler is recognised in the scaled space the step receives."""
    X_train, y_train, _ = table.part("train")
    X_val, _, val_ids = table.part("val")
    pool, _ = _septic_rows(table, "val")
    scaler = StandardScaler().set_output(transform="pandas").fit(X_train)
    leaky = instrument(
        Pipeline(
            [
                ("scale", StandardScaler().set_output(transform="pandas")),
                ("oversample", HeldOutRowsOverSampler(pool=scaler.transform(pool))),
                ("model", LogisticRegression(max_iter=500)),
            ]
        )
    ).fit(X_train, y_train)
    with pytest.raises(LeakageError, match=r"val patient\(s\) reached fitted step 'model'"):
        check_no_leakage(leaky, X_train, {"val": X_val}, {"val": val_ids})


def test_leak_check_catches_fitting_on_validation_patients(table):
    X_train, y_train, _ = table.part("train")
    X_val, y_val, val_ids = table.part("val")
    pipeline = instrument(build_pipeline("logreg", "none", SMALL)).fit(
        pd.concat([X_train, X_val]), np.r_[y_train, y_val]
    )
    with pytest.raises(LeakageError, match="not training patients"):
        check_no_leakage(pipeline, X_train, {"val": X_val}, {"val": val_ids})


def test_the_same_sampler_fed_training_rows_passes(table):
    """Control for the two tests above: the check does not fail on every pipeline."""
    X_train, y_train, _ = table.part("train")
    X_test, _, test_ids = table.part("test")
    pool = X_train[y_train == 1]
    honest = instrument(
        Pipeline(
            [
                ("oversample", HeldOutRowsOverSampler(pool=pool)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(max_iter=500)),
            ]
        )
    ).fit(X_train, y_train)
    check_no_leakage(honest, X_train, {"test": X_test}, {"test": test_ids})


def test_fit_candidate_is_reproducible_for_a_seed(table):
    X_test, _, _ = table.part("test")
    a = fit_candidate("xgboost", "smote", table, SMALL).pipeline.predict_proba(X_test)
    b = fit_candidate("xgboost", "smote", table, SMALL).pipeline.predict_proba(X_test)
    np.testing.assert_array_equal(a, b)


# -- bad input ------------------------------------------------------------------------------------


def _copy_prepared(prepared_dir, tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    for name in ("features.parquet", "split.csv"):
        shutil.copy(prepared_dir / name, target / name)
    return target


def test_cli_rejects_a_folder_without_features(tmp_path):
    (tmp_path / "raw").mkdir()
    result = CliRunner().invoke(
        app, ["classify", "--data", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "features.parquet is missing" in result.output
    assert "sepsis-rl data prepare" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_rejects_a_single_class_training_set(prepared_dir, tmp_path):
    data = _copy_prepared(prepared_dir, tmp_path)
    features = pd.read_parquet(data / "features.parquet")
    features = features[~((features["split"] == "train") & (features["label"] == 1))]
    features.to_parquet(data / "features.parquet")
    result = CliRunner().invoke(
        app, ["classify", "--data", str(data), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "every train patient has label 0" in result.output


def test_bad_tables_are_reported_with_the_fix(prepared_dir, tmp_path):
    data = _copy_prepared(prepared_dir, tmp_path)
    features = pd.read_parquet(data / "features.parquet")
    features.loc[features.index[0], "HR__mean"] = np.nan
    features.to_parquet(data / "features.parquet")
    with pytest.raises(DataFolderError, match="missing or infinite values in \\['HR__mean'\\]"):
        load_features(data)
    (data / "split.csv").unlink()
    features.dropna().to_parquet(data / "features.parquet")
    with pytest.raises(DataFolderError, match="split.csv is missing"):
        load_features(data)


def test_cli_score_reports_a_corrupt_model(run, prepared_dir, tmp_path):
    _, out = run
    copy = tmp_path / "model"
    shutil.copytree(out / "model", copy)
    (copy / "best_model.joblib").write_bytes(b"not a model")
    result = CliRunner().invoke(
        app,
        [
            "classify-score",
            "--model",
            str(copy),
            "--features",
            str(prepared_dir / "features.parquet"),
        ],
    )
    assert result.exit_code == 2
    assert "re-run `sepsis-rl classify`" in result.output


def test_cli_rejects_unknown_options(prepared_dir, tmp_path):
    result = CliRunner().invoke(
        app,
        ["classify", "--data", str(prepared_dir), "--out", str(tmp_path), "--models", "knn"],
    )
    assert result.exit_code == 2
    assert "models[0] = 'knn': expected one of 'logreg'" in result.output
