"""Inputs that used to get through, or to fail unclearly: each is refused before the work with a
message that says what was wrong, where, and what to do.

Command-line behaviour runs the real `sepsis-rl` console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.env_cohort import build_env_cohort
from data_prep.reader import DataFormatError, read_cohort
from data_prep.schema import LABEL, PATIENT, SOURCE_SET
from data_prep.split import patient_labels, split_patients
from data_prep.synth import generate_cohort, write_psv_files
from training.rl.recommend import PatientError, read_patient_file

SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
CLI_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "300"}


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEPSIS_RL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=CLI_ENV,
    )


# --- SepsisLabel: one block of 1s to the end of the stay ---


def septic_stay_with_a_relapse(small_cohort: pd.DataFrame) -> pd.DataFrame:
    """The first septic stay of the small cohort, labelled 0 -> 1 -> 0."""
    septic = small_cohort.groupby(PATIENT, sort=False)[LABEL].max()
    patient = septic[septic == 1].index[0]
    stay = small_cohort[small_cohort[PATIENT] == patient].copy()
    ones = np.flatnonzero(stay[LABEL].to_numpy() == 1)
    assert len(ones) >= 3
    stay.iloc[ones[-1], stay.columns.get_loc(LABEL)] = 0  # 0 ... 0 1 1 ... 1 0
    return stay


def test_a_label_that_drops_from_1_to_0_is_refused_with_file_line_column_and_patient(
    tmp_path: Path, small_cohort: pd.DataFrame
) -> None:
    stay = septic_stay_with_a_relapse(small_cohort)
    write_psv_files(stay, tmp_path)
    (psv,) = tmp_path.rglob("*.psv")
    with pytest.raises(DataFormatError) as caught:
        read_cohort(tmp_path)
    err = caught.value
    lines = psv.read_text().splitlines()
    labels = [line.rsplit("|", 1)[1] for line in lines]
    assert labels[err.line - 2] == "1" and labels[err.line - 1] == "0"  # the first drop
    assert err.path == str(psv) and err.column == 41
    assert f"patient {psv.stem}" in str(err) and "SepsisLabel drops from 1 to 0" in str(err)


def test_a_label_drop_in_a_consolidated_csv_names_the_patient_and_line(
    tmp_path: Path, small_cohort: pd.DataFrame
) -> None:
    stay = septic_stay_with_a_relapse(small_cohort)
    table = stay.drop(columns=[SOURCE_SET]).rename(columns={PATIENT: "Patient_ID"})
    table["Hour"] = np.arange(len(table))
    path = tmp_path / "all.csv"
    table.to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="drops from 1 to 0") as caught:
        read_cohort(path)
    drop = len(table) - 1  # 0-based row of the last row, the one set back to 0
    assert caught.value.line == drop + 2
    assert f"patient {stay[PATIENT].iloc[0]}" in str(caught.value)


def test_labels_as_the_release_writes_them_are_accepted(small_psv_dir: Path) -> None:
    read = read_cohort(small_psv_dir)
    assert read.table.num_rows > 0


# --- the environment cohort ---


def test_an_env_cohort_without_a_needed_measurement_says_what_and_where(tmp_path: Path) -> None:
    hourly = generate_cohort(300, seed=4)
    hourly[["Temp", "Lactate"]] = np.nan
    split = split_patients(patient_labels(hourly), seed=0)
    with pytest.raises(ValueError) as caught:
        build_env_cohort(hourly, split)
    message = str(caught.value)
    assert "['Temp', 'Lactate']" in message and "environment" in message
    assert "lower the missing threshold" not in message
    assert "does not apply" in message


def test_prepare_refuses_such_a_cohort_on_the_command_line(tmp_path: Path) -> None:
    hourly = generate_cohort(300, seed=4)
    hourly[["Temp", "Lactate"]] = np.nan
    write_psv_files(hourly, tmp_path / "raw")
    done = run_cli("data", "prepare", "--input", "raw", "--out", "prepared", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "environment cohort" in done.stderr and "'Temp', 'Lactate'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "prepared").exists()


# --- recommend's patient file ---

PATIENT_TEXT = (
    '{\n  "HR": 112, "O2Sat": 90, "SBP": 88, "DBP": 50, "MAP": 62.7,\n'
    '  "Resp": 26, "Temp": 38.6, "Lactate": 3.1, "Age": 71\n}\n'
)


def test_a_patient_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(b"\xef\xbb\xbf" + PATIENT_TEXT.encode())
    assert read_patient_file(path)["HR"] == 112


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PATIENT_TEXT.replace('"Age": 71', '"Age": 71,\n  "HR": 60'), r"line 4: key 'HR' appears"),
        ("[112, 90]", "expected one JSON object"),
        ('"HR 112"', "got a JSON string"),
        (PATIENT_TEXT.replace("112", "NaN"), "NaN is not a number JSON allows"),
        (PATIENT_TEXT.replace("3.1", "Infinity"), "Infinity is not a number JSON allows"),
        (PATIENT_TEXT.replace("112", '{"value": 112}'), r"\['HR'\] hold nested"),
        (PATIENT_TEXT.replace("112", "[112, 110]"), r"\['HR'\] hold nested"),
        ('{"HR": 112,', "not valid JSON at line 1"),
    ],
    ids=["duplicate", "array", "string", "nan", "infinity", "object", "list", "truncated"],
)
def test_a_bad_patient_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "patient.json"
    path.write_text(text)
    with pytest.raises(PatientError, match=expected):
        read_patient_file(path)


def test_recommend_refuses_a_duplicated_key_before_loading_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "patient.json").write_text(PATIENT_TEXT.replace("90,", '90, "HR": 70,'))
    done = run_cli(
        "recommend", "--checkpoint", "no-run/checkpoints/last", "--patient", "patient.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "patient.json, line 2: key 'HR' appears more than once" in done.stderr


# --- Ctrl-C while the command starts ---


@pytest.mark.parametrize("delay_s", [0.3, 0.6, 1.0, 1.5])
def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path: Path, delay_s: float) -> None:
    process = subprocess.Popen(
        [str(SEPSIS_RL), "data", "synth", "--patients", "200000", "--out", "raw"],
        cwd=tmp_path,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


# --- classify-score: the error path exits 2, every time ---


@pytest.fixture(scope="module")
def model_and_bad_features(tmp_path_factory, prepared_dir: Path) -> tuple[Path, Path]:
    """A real, small classifier (xgboost, which starts native threads) and a features table that
    lacks three of its columns."""
    root = tmp_path_factory.mktemp("score")
    done = run_cli(
        "classify", "--data", str(prepared_dir), "--out", "cls", "--models", "xgboost",
        "--oversample", "none", "--bootstrap", "100", "--no-fidelity", cwd=root, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    features = pd.read_parquet(prepared_dir / "features.parquet")
    bad = root / "bad.parquet"
    features.drop(columns=features.columns[5:8]).to_parquet(bad, index=False)
    return root / "cls" / "model", bad


@pytest.mark.slow
def test_classify_score_with_missing_columns_exits_2_every_time(model_and_bad_features) -> None:
    model, bad = model_and_bad_features
    codes = []
    for _ in range(30):
        done = run_cli(
            "classify-score", "--model", str(model), "--features", str(bad), cwd=bad.parent
        )
        codes.append(done.returncode)
        assert "missing 3 column(s)" in done.stderr, done.stderr
        assert "terminate called" not in done.stderr
    assert codes == [2] * 30


# --- train: a Ctrl-C before the 10th iteration still leaves a checkpoint to resume ---

TESTS_DIR = Path(__file__).parent
TINY = {
    "num_env_runners": 0,
    "num_steps_sampled_before_learning_starts": 200,
    "min_sample_timesteps_per_iteration": 200,
    "evaluation_interval": 1000,
    "checkpoint_every": 10,
    "training_intensity": 4,
    "replay_capacity": 20_000,
}


@pytest.mark.slow
def test_train_interrupted_after_two_iterations_leaves_last_and_resumes(tmp_path: Path) -> None:
    env = dict(CLI_ENV, PYTHONPATH=str(TESTS_DIR), HOME=os.environ.get("HOME", "/tmp"))
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    cmd = [str(SEPSIS_RL), "train", "--env", "test_rl_toyenv:SignGame-v0", "--out", "run", *sets]
    process = subprocess.Popen(
        [*cmd, "--env-steps", "1000000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # 2 iterations
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted (SIGINT)"
    assert 2 <= summary["iterations"] < 10  # before the first periodic checkpoint
    assert (tmp_path / "run" / "checkpoints" / "last" / "replay_buffer.pkl").exists()
    assert "--resume" in err and "Traceback" not in err

    more = summary["env_steps"] + 400
    resumed = subprocess.run(
        [*cmd, "--resume", "--env-steps", str(more)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert after["env_steps"] >= more and after["iterations"] > summary["iterations"]
    rows = pd.read_csv(metrics)
    assert list(rows["iteration"]) == list(range(1, len(rows) + 1))
