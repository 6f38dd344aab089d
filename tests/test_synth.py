"""The synthetic cohort: real format, deterministic, and faithful to the reference's figures."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from data_prep.schema import HEADER_LINE, LABEL, LABS, PATIENT, SPECS, VITALS
from data_prep.synth import generate_cohort, write_psv_files

# Reference figures (data reference, sections 1-3) and the tolerances the generator must meet.
REFERENCE_PREVALENCE = 0.0727  # septic stays
REFERENCE_POSITIVE_ROWS = 0.0180  # rows labelled 1
REFERENCE_MEDIAN_ROWS = 38  # rows per stay


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return generate_cohort(12_000, seed=3)


def test_same_seed_same_cohort_other_seed_other_cohort():
    a, b, c = generate_cohort(200, seed=1), generate_cohort(200, seed=1), generate_cohort(200, 2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["HR"].equals(c["HR"])


def test_files_are_in_the_exact_release_format(tmp_path):
    write_psv_files(generate_cohort(50, seed=4), tmp_path)
    files = sorted(tmp_path.rglob("*.psv"))
    assert {f.parent.name for f in files} <= {"training_setA", "training_setB"}
    token = re.compile(r"NaN|-?\d+(\.\d{1,2})?")
    for f in files:
        text = f.read_text()
        assert text.startswith(HEADER_LINE + "\n") and text.endswith("\n")
        assert "\r" not in text and " " not in text
        for line in text.split("\n")[1:-1]:
            fields = line.split("|")
            assert len(fields) == 41
            assert all(token.fullmatch(t) for t in fields), line
            assert not any(t.endswith(".0") for t in fields)  # integers without a point


def test_cohort_matches_reference_figures(cohort):
    stays = cohort.groupby(PATIENT, sort=False)
    septic = stays[LABEL].max()
    assert septic.mean() == pytest.approx(REFERENCE_PREVALENCE, abs=0.01)
    assert cohort[LABEL].mean() == pytest.approx(REFERENCE_POSITIVE_ROWS, abs=0.003)
    assert stays.size().median() == pytest.approx(REFERENCE_MEDIAN_ROWS, abs=3)
    assert stays.size().min() >= 8 and cohort["ICULOS"].max() <= 336
    label0 = cohort[cohort[LABEL] == 0]
    for name in VITALS + LABS:
        spec = SPECS[name]
        for set_name, ref in (("A", spec.missing_a), ("B", spec.missing_b)):
            missing = 100 * cohort.loc[cohort["set"] == set_name, name].isna().mean()
            assert missing == pytest.approx(ref, abs=1.5), (name, set_name)
        if name == "EtCO2":
            continue
        iqr = spec.q3 - spec.q1
        assert label0[name].median() == pytest.approx(spec.median, abs=0.15 * iqr), name


def test_septic_stays_follow_the_label_rule_and_deteriorate(cohort):
    for _pid, stay in cohort[cohort.groupby(PATIENT)[LABEL].transform("max") == 1].groupby(PATIENT):
        labels = stay[LABEL].to_numpy()
        first = int(np.argmax(labels))
        assert labels[first:].all(), "label must be one block to the end"
        truncated = stay["ICULOS"].max() == 336  # records end at two weeks
        assert 8 <= labels.sum() <= 10 or first == 0 or truncated
    label1 = cohort[cohort[LABEL] == 1]
    label0 = cohort[cohort[LABEL] == 0]
    assert label1["HR"].median() > label0["HR"].median() + 3
    assert label1["Resp"].median() > label0["Resp"].median()


def test_site_quirks(cohort):
    a, b = cohort[cohort["set"] == "A"], cohort[cohort["set"] == "B"]
    assert a["EtCO2"].isna().all() and b["EtCO2"].notna().any()
    assert (b["Age"] == 100).any() and (b["Age"] % 1 == 0).all()
    assert (b["Calcium"] < 2).mean() > 0.0 and (a["Calcium"] < 2).sum() == 0
    empty_rows = cohort[list(VITALS + LABS)].isna().all(axis=1)
    assert 0.05 < empty_rows.mean() < 0.12
    static = cohort.groupby(PATIENT)[["Age", "Gender", "HospAdmTime"]].nunique()
    assert (static <= 1).all().all()


def test_hourly_vitals_are_autocorrelated(cohort):
    hr = cohort[[PATIENT, "HR"]].dropna()
    same = hr[PATIENT].to_numpy()[1:] == hr[PATIENT].to_numpy()[:-1]
    x = hr["HR"].to_numpy()
    r = np.corrcoef(x[1:][same], x[:-1][same])[0, 1]
    assert r > 0.6


def test_synth_refuses_to_replace_existing_sets_without_force(tmp_path):
    from typer.testing import CliRunner

    from sepsis_rl.cli import app

    kept = tmp_path / "training_setA" / "p000001.psv"
    kept.parent.mkdir()
    kept.write_text("a downloaded file\n")
    args = ["data", "synth", "--patients", "20", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--force" in result.output and kept.read_text() == "a downloaded file\n"
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("*.psv"))) == 20
