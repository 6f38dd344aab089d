"""The reader: every accepted input kind, and every malformed input with the message it gives."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_prep.reader import DataFormatError, read_cohort
from data_prep.schema import HEADER, HEADER_LINE, LABEL, PATIENT, SEPARATOR
from sepsis_rl.cli import app

SHARED_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_SAMPLE = SHARED_SAMPLE / "physionet2019_sample"


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def _first_file(folder: Path) -> Path:
    return sorted(folder.rglob("*.psv"))[0]


def _rewrite_line(path: Path, line_no: int, edit) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = edit(lines[line_no - 1])
    path.write_text("\n".join(lines))


def _set_field(line: str, column: str, value: str) -> str:
    fields = line.split("|")
    fields[HEADER.index(column)] = value
    return "|".join(fields)


def test_round_trip_synth_files_read_back_to_the_same_values(small_cohort, small_psv_dir):
    table = read_cohort(small_psv_dir).table.to_pandas()
    assert list(table.columns) == list(small_cohort.columns)
    assert len(table) == len(small_cohort)
    for name in small_cohort.columns:
        got, want = table[name].to_numpy(), small_cohort[name].to_numpy()
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got.astype(float), want, err_msg=name)
        else:
            assert (got == want).all(), name


def test_canonical_dtypes(small_psv_dir):
    schema = read_cohort(small_psv_dir).table.schema
    assert str(schema.field("ICULOS").type) == "int32"
    assert str(schema.field("SepsisLabel").type) == "int8"
    assert str(schema.field("Gender").type) == "int8"
    assert str(schema.field("HR").type) == "double"
    assert set(read_cohort(small_psv_dir).table.column("set").to_pylist()) == {"A", "B"}


def test_zip_csv_and_parquet_inputs_give_the_same_table(small_psv_dir, tmp_path):
    reference = read_cohort(small_psv_dir).table.to_pandas()
    archive = tmp_path / "cohort.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(small_psv_dir.rglob("*.psv")):
            zf.write(f, f.relative_to(small_psv_dir).as_posix())
    from_zip = read_cohort(archive).table.to_pandas()
    pd.testing.assert_frame_equal(from_zip, reference)

    _consolidated(reference).to_csv(tmp_path / "Dataset.csv", index=True)
    from_csv = read_cohort(tmp_path / "Dataset.csv").table.to_pandas()
    pd.testing.assert_frame_equal(from_csv, reference)

    pq.write_table(read_cohort(small_psv_dir).table, tmp_path / "hourly.parquet")
    from_parquet = read_cohort(tmp_path / "hourly.parquet").table.to_pandas()
    pd.testing.assert_frame_equal(from_parquet, reference)


def _consolidated(canonical: pd.DataFrame) -> pd.DataFrame:
    """The consolidated CSV that circulates: an unnamed index, Hour, the .psv columns and
    Patient_ID (written with `to_csv(index=True)`)."""
    csv = canonical.drop(columns=["set"]).copy()
    csv.insert(0, "Hour", csv.groupby(PATIENT).cumcount())
    csv["Patient_ID"] = csv.pop(PATIENT).str[1:].astype(int)
    return csv


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda p: _rewrite_line(p, 1, lambda s: s.replace("HR|", "Heart|", 1)),
            r"line 1, column 1 \(HR\): header has 'Heart', expected 'HR'",
        ),
        (
            lambda p: _rewrite_line(p, 3, lambda s: s.rsplit("|", 1)[0]),
            r"line 3: 40 fields separated by '\|', expected 41",
        ),
        (
            lambda p: _rewrite_line(p, 4, lambda s: _set_field(s, "SBP", "12O")),
            r"line 4, column 4 \(SBP\): '12O' is not a number or NaN",
        ),
        (
            lambda p: _rewrite_line(p, 5, lambda s: _set_field(s, "ICULOS", "999")),
            r"line 5, column 40 \(ICULOS\): ICULOS goes from \d+ to 999; expected \d+",
        ),
        (
            lambda p: _rewrite_line(p, 6, lambda s: _set_field(s, "Age", "12.5")),
            r"line 6, column 35 \(Age\): Age changes within the stay from [\d.]+ to 12.5",
        ),
        (
            lambda p: _rewrite_line(p, 3, lambda s: _set_field(s, "SepsisLabel", "2")),
            r"line 3, column 41 \(SepsisLabel\): SepsisLabel is 2.0; expected 0 or 1",
        ),
        (
            lambda p: p.write_text(HEADER_LINE + "\n"),
            r"line 2: no data rows after the header",
        ),
        (lambda p: p.write_text(""), r"line 1: empty file"),
        (
            lambda p: p.write_text(p.read_text().replace("|SepsisLabel", "", 1)),
            r"line 1: header has no SepsisLabel column",
        ),
        (
            lambda p: _rewrite_line(p, 2, lambda s: _set_field(s, "Gender", "NaN")),
            r"line 2, column 36 \(Gender\): Gender is nan; expected 0 \(female\) or 1",
        ),
        (
            lambda p: _rewrite_line(p, 2, lambda s: _set_field(s, "Gender", "2")),
            r"line 2, column 36 \(Gender\): Gender is 2; expected 0 \(female\) or 1",
        ),
        (
            lambda p: _rewrite_line(p, 2, lambda s: _set_field(s, "Unit1", "2")),
            r"line 2, column 37 \(Unit1\): Unit1 is 2; expected 0, 1 or NaN",
        ),
    ],
    ids=[
        "header",
        "columns",
        "token",
        "iculos",
        "static",
        "label",
        "header-only",
        "empty",
        "unlabelled",
        "gender-missing",
        "gender-code",
        "unit-code",
    ],  # fmt: skip
)
def test_malformed_file_names_file_line_and_column(small_psv_dir, tmp_path, edit, expected):
    data = _copy(small_psv_dir, tmp_path)
    bad = _first_file(data)
    edit(bad)
    with pytest.raises(DataFormatError, match=expected) as info:
        read_cohort(data)
    assert str(bad) in str(info.value)

    result = read_cohort(data, skip_bad=True)
    assert [s.path for s in result.skipped] == [str(bad)]
    patients = set(result.table.column(PATIENT).to_pylist())
    assert bad.stem not in patients
    assert len(patients) == len(list(data.rglob("*.psv"))) - 1


def test_duplicate_patient_ids_across_folders(small_psv_dir, tmp_path):
    data = _copy(small_psv_dir, tmp_path)
    original = _first_file(data)
    twin = data / "extra" / original.name
    twin.parent.mkdir()
    shutil.copy(original, twin)
    with pytest.raises(DataFormatError, match=f"duplicate patient id {original.stem}"):
        read_cohort(data)
    assert len(read_cohort(data, skip_bad=True).skipped) == 1


def test_empty_input(tmp_path):
    with pytest.raises(DataFormatError, match="empty input: no .psv files"):
        read_cohort(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_cohort(tmp_path / "nowhere")


def test_implausible_values_are_counted_not_dropped(small_psv_dir, tmp_path):
    data = _copy(small_psv_dir, tmp_path)
    target = _first_file(data)
    _rewrite_line(target, 3, lambda s: _set_field(s, "HR", "400"))
    result = read_cohort(data)
    assert result.implausible["HR"] == 1
    hr = result.table.to_pandas().query("patient_id == @target.stem")["HR"]
    assert (hr == 400).sum() == 1


def test_cli_bad_input_exits_nonzero_and_writes_nothing(small_psv_dir, tmp_path):
    data = _copy(small_psv_dir, tmp_path)
    bad = _first_file(data)
    _rewrite_line(bad, 4, lambda s: _set_field(s, "HR", "abc"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "prepare", "--input", str(data), "--out", str(out)])
    assert result.exit_code == 2
    assert "'abc' is not a number" in result.output and bad.name in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    ok = CliRunner().invoke(
        app, ["data", "prepare", "--input", str(data), "--out", str(out), "--skip-bad"]
    )
    assert ok.exit_code == 0, ok.output
    import json

    report = json.loads((out / "report.json").read_text())
    assert [s["path"] for s in report["skipped"]] == [str(bad)]


@pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="the shared real sample is not present")
def test_reads_the_real_physionet_sample_files():
    result = read_cohort(SHARED_SAMPLE)
    table = result.table.to_pandas()
    assert result.n_files == 14 and not result.skipped
    assert len(table) == 705 - 14  # 705 lines in all, one header per file
    assert table.groupby(PATIENT)["SepsisLabel"].max().sum() == 2
    assert set(table["set"]) == {"A"}


def test_windows_line_endings_are_read_like_unix_ones(small_psv_dir, tmp_path):
    source = sorted(small_psv_dir.rglob("*.psv"))[:3]
    unix, windows = tmp_path / "unix", tmp_path / "windows"
    for folder in (unix, windows):
        folder.mkdir()
    for path in source:
        (unix / path.name).write_bytes(path.read_bytes())
        (windows / path.name).write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    a = read_cohort(unix).table.to_pandas()
    b = read_cohort(windows).table.to_pandas()
    pd.testing.assert_frame_equal(a, b)


def test_consolidated_csv_errors_name_the_csv_column(small_psv_dir, tmp_path):
    csv = _consolidated(read_cohort(small_psv_dir).table.to_pandas())
    csv.loc[3, "SepsisLabel"] = 2  # data line 4 of the file (line 5 counting the header)
    csv.to_csv(tmp_path / "Dataset.csv", index=True)
    header = (tmp_path / "Dataset.csv").read_text().split("\n", 1)[0].split(",")
    with pytest.raises(DataFormatError) as err:
        read_cohort(tmp_path / "Dataset.csv")
    position = header.index("SepsisLabel") + 1
    assert f"line 5, column {position} (SepsisLabel)" in str(err.value)


def _drop_label_column(path: Path) -> None:
    """Rewrite a .psv file without its last column (SepsisLabel), as the Challenge's hidden test
    files were: 40 columns."""
    lines = path.read_text().splitlines()
    path.write_text("".join(line.rsplit(SEPARATOR, 1)[0] + "\n" for line in lines))


def test_unlabelled_files_are_read_with_a_null_label_only_when_allowed(small_psv_dir, tmp_path):
    data = _copy(small_psv_dir, tmp_path)
    files = sorted(data.rglob("*.psv"))
    unlabelled = files[::3]  # a mixed folder: every third file without the label
    for path in unlabelled:
        _drop_label_column(path)

    with pytest.raises(DataFormatError, match="line 1: header has no SepsisLabel column") as info:
        read_cohort(data)
    assert str(unlabelled[0]) in str(info.value)

    labelled = read_cohort(small_psv_dir).table.to_pandas()
    table = read_cohort(data, allow_unlabelled=True).table.to_pandas()
    assert list(table.columns) == list(labelled.columns)
    pd.testing.assert_frame_equal(table.drop(columns=LABEL), labelled.drop(columns=LABEL))
    without = table[PATIENT].isin([p.stem for p in unlabelled]).to_numpy()
    assert table[LABEL][without].isna().all()
    assert (table[LABEL][~without] == labelled[LABEL][~without]).all()

    for path in files:  # a folder of the Challenge's test files: no label anywhere
        if path not in unlabelled:
            _drop_label_column(path)
    only = read_cohort(data, allow_unlabelled=True).table
    assert only.column(LABEL).null_count == only.num_rows == len(labelled)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: _set_field(s, "SBP", "12O"),
            r"line 4, column 4 \(SBP\): '12O' is not a number or NaN",
        ),
        (lambda s: s + "|0", r"line 4: 41 fields separated by '\|', expected 40"),
        (
            lambda s: _set_field(s, "Unit1", "2"),
            r"line 4, column 37 \(Unit1\): Unit1 is 2; expected 0, 1 or NaN",
        ),
        (
            lambda s: _set_field(s, "ICULOS", "999"),
            r"line 4, column 40 \(ICULOS\): ICULOS goes from \d+ to 999",
        ),
    ],
    ids=["token", "columns", "unit-code", "iculos"],
)
def test_unlabelled_files_get_every_other_check(small_psv_dir, tmp_path, edit, expected):
    data = _copy(small_psv_dir, tmp_path)
    for path in data.rglob("*.psv"):
        _drop_label_column(path)
    bad = _first_file(data)
    _rewrite_line(bad, 4, edit)
    with pytest.raises(DataFormatError, match=expected) as info:
        read_cohort(data, allow_unlabelled=True)
    assert str(bad) in str(info.value)


def test_data_prepare_refuses_unlabelled_files_naming_the_file(small_psv_dir, tmp_path):
    data = _copy(small_psv_dir, tmp_path)
    bad = _first_file(data)
    _drop_label_column(bad)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "prepare", "--input", str(data), "--out", str(out)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert bad.name in message and "line 1" in message
    assert "header has no SepsisLabel column" in message
    assert not out.exists()
