"""Hourly early warning (`classify --task hourly`): causal predictions, utility-chosen thresholds,
clinical rules, the Challenge's prediction files, and bad input refused before any work.

Real components on the project's synthetic cohorts (`prepared_dir`: 3,000 stays), small budgets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from data_prep.hourly_features import HourlyFeatureBuilder
from data_prep.reader import read_cohort
from data_prep.schema import CANONICAL_COLUMNS, LABEL, PATIENT, SEPARATOR, TIME
from data_prep.synth import generate_cohort, write_psv_files
from sepsis_rl.cli import app
from training.classification.hourly import (
    PREDICTION_HEADER,
    RULE_ALARM_CRITERIA,
    HourlyConfig,
    choose_utility_threshold,
    load_hourly,
    load_hourly_model,
    rule_criteria,
    run_hourly,
    score_psv_folder,
    training_rows,
    write_challenge_predictions,
)
from training.classification.models import ClassifierSettings
from training.classification.utility import normalised_utility

SMALL = ClassifierSettings(xgb_rounds=40, logreg_c=0.1, seed=3)


@pytest.fixture(scope="module")
def hourly_run(prepared_dir, tmp_path_factory):
    """One real hourly run: XGBoost and logistic regression, with and without SMOTE."""
    out = tmp_path_factory.mktemp("hourly") / "run"
    config = HourlyConfig(
        models=("xgboost", "logreg"), oversample=("none", "smote"), n_boot=100, settings=SMALL
    )
    return run_hourly(prepared_dir, out, config), out


def stay(patient: str, n_hours: int, **values) -> pd.DataFrame:
    """A canonical-table stay with every measurement missing except `values` (name -> list)."""
    frame = pd.DataFrame(np.nan, index=range(n_hours), columns=list(CANONICAL_COLUMNS))
    frame[PATIENT] = patient
    frame["set"] = "A"
    frame[TIME] = np.arange(1, n_hours + 1)
    frame[LABEL] = 0
    frame[["Age", "Gender", "Unit1", "Unit2", "HospAdmTime"]] = [70.0, 1, 1.0, 0.0, -3.0]
    for name, series in values.items():
        frame[name] = np.asarray(series, dtype=float)
    return frame


def test_qsofa_and_sirs_count_criteria_from_carried_forward_vitals():
    nan = np.nan
    table = stay(
        "p1",
        4,
        Resp=[22, nan, 21, 30],  # qSOFA at 22; SIRS above 20
        SBP=[100, nan, nan, 101],  # qSOFA at or below 100
        HR=[91, 90, nan, nan],
        Temp=[nan, 35.9, nan, 37.0],
        WBC=[nan, nan, 12.5, nan],
    )
    features = HourlyFeatureBuilder().fit(table).transform(table)
    assert rule_criteria(features, "qsofa").tolist() == [2, 2, 1, 1]
    # hour 1: resp 22 > 20, HR 91; hour 2: + temp 35.9; hour 3: HR 90 carried, resp 21, temp,
    # WBC 12.5; hour 4: resp 30, WBC carried, HR 90 and temp 37.0 not met.
    assert rule_criteria(features, "sirs").tolist() == [2, 2, 3, 2]
    assert RULE_ALARM_CRITERIA == 2


def test_threshold_chosen_on_validation_gives_the_utility_it_reports():
    cohort = generate_cohort(150, seed=4).sort_values([PATIENT, TIME]).reset_index(drop=True)
    labels = cohort[LABEL].to_numpy()
    scores = np.random.default_rng(0).random(labels.size) * 0.5 + labels * 0.3
    threshold, utility = choose_utility_threshold(cohort[PATIENT], labels, scores)
    direct = normalised_utility(cohort[PATIENT], labels, (scores >= threshold).astype(int))
    assert direct.score == pytest.approx(utility)
    assert utility > 0  # beats never alarming: the scores carry the label


def test_training_rows_are_training_patients_only_and_keep_every_septic_hour(prepared_dir):
    table = load_hourly(prepared_dir)
    rows = training_rows(table, max_train_hours=20_000, seed=0)
    assert set(table.split[rows]) == {"train"}
    train = table.rows("train")
    septic = train[table.frame[LABEL].to_numpy()[train] == 1]
    assert np.isin(septic, rows).all()
    assert rows.size == 20_000 < train.size


def test_run_writes_results_and_the_model_beats_never_alarming(hourly_run):
    result, out = hourly_run
    for name in ("metrics.json", "comparison.csv", "comparison.md", "model/MANIFEST.json"):
        assert (out / name).is_file(), name
    metrics = result.metrics
    assert {r for r in metrics["rules"]} == {"qsofa", "sirs", "never", "always"}
    assert metrics["rules"]["never"]["test"]["utility"]["value"] == 0.0
    effects = {(e["model"], e["oversample"]) for e in metrics["oversampling_effect"]}
    assert effects == {("xgboost", "smote"), ("logreg", "smote")}
    assert len(metrics["model_vs_best_rule"]) == 4
    best = result.best.test.utility
    assert best.ci_low > 0 and best.ci_low <= best.value <= best.ci_high
    assert result.best.val_utility == max(c.val_utility for c in result.candidates)


def test_no_hour_sees_its_own_future_in_predictions(hourly_run, prepared_dir):
    result, out = hourly_run
    model = load_hourly_model(out / "model")
    table = load_hourly(prepared_dir).frame
    patient = table.groupby(PATIENT)[TIME].size().loc[lambda n: n >= 30].index[0]
    one = table[table[PATIENT] == patient].reset_index(drop=True)
    before = model.predict_hours(one)
    changed = one.copy()
    cut = 15
    for name in ("HR", "Resp", "SBP", "Temp", "WBC", "Lactate", "MAP"):
        changed.loc[cut:, name] = changed.loc[cut:, name].fillna(50.0) * 1.7 + 11.0
    after = model.predict_hours(changed)
    pd.testing.assert_frame_equal(before.iloc[:cut], after.iloc[:cut])
    assert not np.allclose(before[PREDICTION_HEADER[0]][cut:], after[PREDICTION_HEADER[0]][cut:])


def test_bedside_scoring_one_hour_at_a_time_equals_the_whole_file(hourly_run, prepared_dir):
    result, out = hourly_run
    model = load_hourly_model(out / "model")
    table = load_hourly(prepared_dir).frame
    patient = table.loc[table[LABEL] == 1, PATIENT].iloc[0]
    one = table[table[PATIENT] == patient].reset_index(drop=True)
    whole = model.predict_hours(one)
    bedside = model.bedside(patient)
    hourly = [bedside.add_hour(row) for row in one.to_dict("records")]
    probabilities = np.array([p for p, _ in hourly])
    np.testing.assert_allclose(probabilities, whole[PREDICTION_HEADER[0]], rtol=0, atol=1e-12)
    assert [label for _, label in hourly] == whole[PREDICTION_HEADER[1]].tolist()


def test_classify_score_writes_challenge_files_one_line_per_hour(hourly_run, tmp_path):
    _, out = hourly_run
    psv = tmp_path / "psv"
    cohort = generate_cohort(20, seed=8)
    write_psv_files(cohort, psv)
    result = CliRunner().invoke(
        app,
        ["classify-score", "--task", "hourly", "--model", str(out / "model"), "--input", str(psv),
         "--out", str(tmp_path / "pred")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    inputs = sorted(psv.rglob("*.psv"))
    outputs = sorted((tmp_path / "pred").glob("*.psv"))
    assert [p.name for p in outputs] == sorted(p.name for p in inputs)
    model = load_hourly_model(out / "model")
    table = read_cohort(psv).table.to_pandas()
    for path in inputs[:5]:
        lines = (tmp_path / "pred" / path.name).read_text().splitlines()
        assert lines[0] == "PredictedProbability|PredictedLabel"
        n_rows = len(path.read_text().splitlines()) - 1
        assert len(lines) - 1 == n_rows
        written = pd.read_csv(tmp_path / "pred" / path.name, sep="|")
        expected = model.predict_hours(table[table[PATIENT] == path.stem])
        np.testing.assert_allclose(written.iloc[:, 0], expected.iloc[:, 0], rtol=1e-5)
        assert (written.iloc[:, 1].to_numpy() == expected.iloc[:, 1].to_numpy()).all()


def drop_label_column(folder: Path) -> None:
    """Rewrite every .psv file under `folder` without its last column (SepsisLabel), as the
    Challenge's hidden test files were."""
    for path in folder.rglob("*.psv"):
        lines = path.read_text().splitlines()
        path.write_text("".join(line.rsplit(SEPARATOR, 1)[0] + "\n" for line in lines))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def score_cli(model: Path, psv: Path, out: Path):
    return CliRunner().invoke(
        app,
        ["classify-score", "--task", "hourly", "--model", str(model), "--input", str(psv),
         "--out", str(out)],
    )  # fmt: skip


def test_classify_score_reads_challenge_test_files_without_labels(hourly_run, tmp_path):
    _, out = hourly_run
    labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
    cohort = generate_cohort(25, seed=12)
    write_psv_files(cohort, labelled)
    write_psv_files(cohort, unlabelled)
    drop_label_column(unlabelled)
    first = next(unlabelled.rglob("*.psv")).read_text().splitlines()[0]
    assert len(first.split(SEPARATOR)) == 40 and LABEL not in first

    with_labels = score_cli(out / "model", labelled, tmp_path / "pred_labelled")
    without = score_cli(out / "model", unlabelled, tmp_path / "pred_unlabelled")
    assert with_labels.exit_code == 0, with_labels.output
    assert without.exit_code == 0, without.output
    assert "without SepsisLabel" in without.output
    assert "without SepsisLabel" not in with_labels.output
    predicted = folder_bytes(tmp_path / "pred_unlabelled")
    assert len(predicted) == cohort[PATIENT].nunique()
    assert predicted == folder_bytes(tmp_path / "pred_labelled")


def test_bad_value_in_an_unlabelled_file_is_refused_with_file_line_and_column(hourly_run, tmp_path):
    _, out = hourly_run
    psv = tmp_path / "psv"
    write_psv_files(generate_cohort(5, seed=13), psv)
    drop_label_column(psv)
    victim = sorted(psv.rglob("*.psv"))[1]
    lines = victim.read_text().splitlines()
    fields = lines[2].split(SEPARATOR)
    fields[3] = "12O"  # SBP
    lines[2] = SEPARATOR.join(fields)
    victim.write_text("\n".join(lines) + "\n")
    result = score_cli(out / "model", psv, tmp_path / "pred")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert victim.name in message and "line 3" in message and "column 4 (SBP)" in message
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("chunk_hours", [1, 97, 100_000])
def test_scoring_in_chunks_writes_the_files_of_scoring_all_at_once(
    hourly_run, tmp_path, chunk_hours
):
    _, out = hourly_run
    model = load_hourly_model(out / "model")
    write_psv_files(generate_cohort(60, seed=14), tmp_path / "psv")
    table = read_cohort(tmp_path / "psv").table
    whole = table.to_pandas()
    predictions = model.predict_hours(whole)
    expected = {}  # the Challenge's driver.py: the header, then "%g|%d" per hour
    for patient, rows in predictions.groupby(whole[PATIENT].to_numpy(), sort=False):
        lines = [f"{p:g}|{label:d}\n" for p, label in rows.itertuples(index=False)]
        expected[f"{patient}.psv"] = ("|".join(PREDICTION_HEADER) + "\n" + "".join(lines)).encode()

    chunked = tmp_path / f"chunks_of_{chunk_hours}"
    assert score_psv_folder(model, table, chunked, chunk_hours=chunk_hours) == len(expected)
    assert folder_bytes(chunked) == expected
    write_challenge_predictions(whole[PATIENT], predictions, tmp_path / "whole")
    assert folder_bytes(tmp_path / "whole") == expected


def test_scoring_a_shuffled_table_writes_the_same_files(hourly_run, small_cohort, tmp_path):
    _, out = hourly_run
    model = load_hourly_model(out / "model")
    score_psv_folder(model, small_cohort, tmp_path / "ordered", chunk_hours=500)
    shuffled = small_cohort.sample(frac=1.0, random_state=0)
    score_psv_folder(model, shuffled, tmp_path / "shuffled", chunk_hours=500)
    assert folder_bytes(tmp_path / "shuffled") == folder_bytes(tmp_path / "ordered")


def test_bad_psv_exits_2_naming_file_line_and_column_and_writes_nothing(hourly_run, tmp_path):
    _, out = hourly_run
    psv = tmp_path / "psv"
    write_psv_files(generate_cohort(5, seed=9), psv)
    victim = sorted(psv.rglob("*.psv"))[2]
    lines = victim.read_text().splitlines()
    fields = lines[3].split("|")
    fields[0] = "fast"
    lines[3] = "|".join(fields)
    victim.write_text("\n".join(lines) + "\n")
    target = tmp_path / "pred"
    result = CliRunner().invoke(
        app,
        ["classify-score", "--task", "hourly", "--model", str(out / "model"), "--input", str(psv),
         "--out", str(target)],
    )  # fmt: skip
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert victim.name in message and "line 4" in message and "column 1 (HR)" in message
    assert not target.exists()


def test_classify_hourly_refuses_a_folder_without_prepared_data(tmp_path: Path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["classify", "--task", "hourly", "--data", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "hourly.parquet is missing" in " ".join(result.output.split())
    assert not out.exists()


def test_classify_hourly_refuses_a_model_it_does_not_have(prepared_dir, tmp_path: Path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["classify", "--task", "hourly", "--data", str(prepared_dir), "--out", str(out),
         "--models", "svm"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "svm" in result.output
    assert not out.exists()


def test_tune_hourly_maximises_validation_utility_and_refits_once(prepared_dir, tmp_path):
    storage = tmp_path / "tune"
    result = CliRunner().invoke(
        app,
        ["tune", "classifiers", "--task", "hourly", "--data", str(prepared_dir),
         "--num-samples", "3", "--models", "logreg", "--oversample", "none",
         "--storage", str(storage), "--name", "h"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(storage / "h" / "trials.csv")
    assert len(trials) == 3 and trials["val_utility"].is_monotonic_decreasing
    best = json.loads((storage / "h" / "best.json").read_text())["best"]
    assert best["val_utility"] == pytest.approx(trials["val_utility"].max())
    assert trials["logreg_c"].iloc[-1] != trials["logreg_c"].iloc[0]  # the search moved
    metrics = json.loads((storage / "h" / "final" / "metrics.json").read_text())
    assert metrics["task"] == "hourly"
    assert metrics["best"]["model"] == "logreg"
    assert metrics["config"]["settings"]["logreg_c"] == pytest.approx(best["params"]["logreg_c"])
    analyzed = CliRunner().invoke(app, ["analyze", str(storage / "h")])
    assert analyzed.exit_code == 2  # analyze reads Ray Tune searches; this one is ranked already
    assert "--task hourly" in analyzed.output and "trials.csv" in analyzed.output


def test_tune_hourly_refuses_bad_data_before_any_trial(tmp_path):
    result = CliRunner().invoke(
        app,
        ["tune", "classifiers", "--task", "hourly", "--data", str(tmp_path),
         "--storage", str(tmp_path / "tune")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "hourly.parquet is missing" in " ".join(result.output.split())
    assert not (tmp_path / "tune").exists()


def test_auroc_auprc_intervals_resample_patients_as_the_challenge_scores_hours():
    """Each bootstrap draw of the hourly AUROC/AUPRC is the Challenge's figure on the resampled
    patients' hours (a patient drawn twice counts every hour twice), ties included; the point
    is the plain one; constant scores rank nothing."""
    from training.classification.hourly import score_alarms
    from training.classification.utility import hourly_auroc_auprc

    rng = np.random.default_rng(3)
    lengths = [5, 9, 3, 12, 7, 4]
    patients = np.repeat(np.arange(len(lengths)), lengths)
    ids = np.array([f"p{p:06d}" for p in patients])
    labels = np.concatenate([(np.arange(n) >= n - 3) * (i % 2) for i, n in enumerate(lengths)])
    scores = np.round(rng.uniform(0.05, 0.95, patients.size), 1)  # coarse: many ties
    drawn = np.array([2.0, 0.0, 1.0, 1.0, 0.0, 2.0])  # how often each patient is drawn
    weights = np.tile(drawn, (200, 1))  # every resample the same: the interval is that draw

    score = score_alarms(ids, labels, scores >= 0.5, scores, weights)
    hours = np.concatenate([np.flatnonzero(patients == p) for p in range(6)
                            for _ in range(int(drawn[p]))])  # fmt: skip
    expected = hourly_auroc_auprc(labels[hours], scores[hours])
    point = hourly_auroc_auprc(labels, scores)
    for estimate, value, plain in zip((score.auroc, score.auprc), expected, point, strict=True):
        assert estimate.ci_low == pytest.approx(value, abs=1e-12)
        assert estimate.ci_high == pytest.approx(value, abs=1e-12)
        assert estimate.value == pytest.approx(plain, abs=1e-12)
    flat = score_alarms(ids, labels, scores >= 0.5, np.full(ids.size, 0.3), weights)
    assert flat.auroc is None and flat.auprc is None
    unweighted = score_alarms(ids, labels, scores >= 0.5, scores)
    assert unweighted.auroc.value == pytest.approx(point[0]) and np.isnan(unweighted.auroc.ci_low)
