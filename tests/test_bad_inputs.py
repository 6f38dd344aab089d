"""Bad input, command by command: each case must exit 2, name the place (file, line, column,
field, patient) in its message, print no traceback, and leave its output exactly as it was.

The table runs the real command line in-process (Typer's runner, the same app the console script
calls); every case is refused before any long work, so the whole table takes seconds. Cases that
need a trained checkpoint or model share one real, tiny one.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepsis_rl.cli import app

PSV_HEADER = (
    "HR|O2Sat|Temp|SBP|MAP|DBP|Resp|EtCO2|BaseExcess|HCO3|FiO2|pH|PaCO2|SaO2|AST|BUN|"
    "Alkalinephos|Calcium|Chloride|Creatinine|Bilirubin_direct|Glucose|Lactate|Magnesium|"
    "Phosphate|Potassium|Bilirubin_total|TroponinI|Hct|Hgb|PTT|WBC|Fibrinogen|Platelets|Age|"
    "Gender|Unit1|Unit2|HospAdmTime|ICULOS|SepsisLabel"
)


def psv_row(hour: int, label: int, hr: str = "80") -> str:
    values = [hr, "97", "37", "120", "80", "60", "18"] + ["NaN"] * 27
    values += ["65", "1", "1", "0", "-5", str(hour + 1), str(label)]
    return "|".join(values)


def psv(rows: list[str]) -> str:
    return "\n".join([PSV_HEADER, *rows]) + "\n"


@dataclass
class Case:
    """One bad input: `args` after `sepsis-rl`, with `{tmp}`, `{out}`, `{checkpoint}` and
    `{model}` filled in; `files` written under `{tmp}` first; `expect`: substrings the output must
    contain (case-insensitive), naming what was wrong and where."""

    id: str
    args: list[str]
    expect: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    out: str = "absent"  # the --out before the run: "absent", "file" or "folder" (with a file)


GOOD_PATIENT = '{"HR": 112, "O2Sat": 90, "SBP": 88, "DBP": 50, "MAP": 62.7, "Resp": 26, '
GOOD_PATIENT += '"Temp": 38.6, "Lactate": 3.1, "Age": 71}'

CASES = [
    # --- data synth --------------------------------------------------------------------------
    Case("synth-zero-patients", ["data", "synth", "--out", "{out}", "--patients", "0"],
         ["--patients"]),
    Case("synth-prevalence-above-1", ["data", "synth", "--out", "{out}", "--prevalence", "1.5"],
         ["--prevalence"]),
    Case("synth-out-is-a-file", ["data", "synth", "--out", "{out}", "--patients", "50"],
         ["{out}", "not a folder"], out="file"),
    # --- data prepare ------------------------------------------------------------------------
    Case("prepare-input-missing", ["data", "prepare", "--input", "{tmp}/nowhere", "--out", "{out}"],
         ["nowhere"]),
    Case("prepare-bad-header", ["data", "prepare", "--input", "{tmp}/raw", "--out", "{out}"],
         ["p000001.psv", "line 1"],
         files={"raw/p000001.psv": "HR|O2Sat|Bogus\n80|97|1\n"}),
    Case("prepare-non-numeric", ["data", "prepare", "--input", "{tmp}/raw", "--out", "{out}"],
         ["p000001.psv", "line 3", "HR"],
         files={"raw/p000001.psv": psv([psv_row(0, 0), psv_row(1, 0, hr="fast")])}),
    Case("prepare-label-drops-back", ["data", "prepare", "--input", "{tmp}/raw", "--out", "{out}"],
         ["p000001.psv", "line 4", "SepsisLabel"],
         files={"raw/p000001.psv": psv([psv_row(0, 0), psv_row(1, 1), psv_row(2, 0)])}),
    Case("prepare-zip-slip", ["data", "prepare", "--input", "{tmp}/evil.zip", "--out", "{out}"],
         ["evil.zip", ".."], files={"evil.zip": b"zip:../p000001.psv"}),
    Case("prepare-outliers-unknown", ["data", "prepare", "--input", "{tmp}/raw", "--out", "{out}",
                                      "--outliers", "squash"], ["outliers", "squash"],
         files={"raw/p000001.psv": psv([psv_row(0, 0)])}),
    Case("prepare-missing-threshold-2", ["data", "prepare", "--input", "{tmp}/raw", "--out",
                                         "{out}", "--missing-threshold", "2"],
         ["missing"], files={"raw/p000001.psv": psv([psv_row(0, 0)])}),
    Case("prepare-out-is-a-file", ["data", "prepare", "--input", "{tmp}/raw", "--out", "{out}"],
         ["{out}", "not a folder"], files={"raw/p000001.psv": psv([psv_row(0, 0)])}, out="file"),
    # --- classify ----------------------------------------------------------------------------
    Case("classify-data-missing", ["classify", "--data", "{tmp}/nowhere", "--out", "{out}"],
         ["nowhere"]),
    Case("classify-data-not-prepared", ["classify", "--data", "{tmp}/empty", "--out", "{out}"],
         ["empty"], files={"empty/readme.txt": "not a prepared folder"}),
    Case("classify-out-is-a-file", ["classify", "--data", "{prepared}", "--out", "{out}"],
         ["{out}", "not a folder"], out="file"),
    Case("classify-config-unknown-key", ["classify", "--data", "{prepared}", "--out", "{out}",
                                         "--config", "{tmp}/c.yaml"],
         ["c.yaml", "oversampel"], files={"c.yaml": "oversampel: [smote]\n"}),
    Case("classify-config-bad-oversample", ["classify", "--data", "{prepared}", "--out", "{out}",
                                            "--config", "{tmp}/c.yaml"],
         ["c.yaml", "oversample"], files={"c.yaml": "oversample: [gan]\n"}),
    Case("classify-models-unknown", ["classify", "--data", "{prepared}", "--out", "{out}",
                                     "--models", "logreg,deepnet"], ["deepnet"]),
    # --- classify-score ----------------------------------------------------------------------
    Case("score-model-missing", ["classify-score", "--model", "{tmp}/nowhere", "--input",
                                 "{tmp}/t.csv"], ["nowhere"], files={"t.csv": "a,b\n1,2\n"}),
    Case("score-model-not-a-model", ["classify-score", "--model", "{tmp}/empty", "--input",
                                     "{tmp}/t.csv"], ["empty"],
         files={"t.csv": "a,b\n1,2\n", "empty/readme.txt": "x"}),
    # --- train -------------------------------------------------------------------------------
    *(
        Case(f"train-{key}-{value!s:.8}".replace(" ", ""),
             ["train", "--config", "{tmp}/c.yaml", "--out", "{out}"],
             ["c.yaml", key], files={"c.yaml": f"{key}: {value}\n"})
        for key, value in [
            ("episodes", "ten"), ("episodes", -5), ("gamma", 1.5), ("num_env_runners", -1),
            ("fcnet_hiddens", 128), ("train_batch_size", 0), ("lr", '"fast"'),
            ("time_budget_s", '"20"'), ("replay_alpha", -0.1), ("evaluation_split", "test"),
            ("epsilon_end", 2), ("learning_rate", 0.001),
        ]
    ),
    Case("train-config-not-yaml", ["train", "--config", "{tmp}/c.yaml", "--out", "{out}"],
         ["c.yaml"], files={"c.yaml": "episodes: [1, 2\n"}),
    Case("train-config-missing", ["train", "--config", "{tmp}/nowhere.yaml", "--out", "{out}"],
         ["nowhere.yaml"]),
    Case("train-env-typo", ["train", "--env", "CartPol-v1", "--out", "{out}"],
         ["CartPol", "CartPole"]),
    Case("train-out-is-a-file", ["train", "--out", "{out}", "--episodes", "5"],
         ["{out}", "not a folder"], out="file"),
    Case("train-resume-nothing", ["train", "--out", "{out}", "--resume"], ["{out}"],
         out="folder"),
    # --- evaluate ----------------------------------------------------------------------------
    Case("evaluate-checkpoint-missing", ["evaluate", "--checkpoint", "{tmp}/nowhere", "--out",
                                         "{out}"], ["nowhere"]),
    Case("evaluate-not-a-checkpoint", ["evaluate", "--checkpoint", "{tmp}/empty", "--out",
                                       "{out}"], ["empty"], files={"empty/readme.txt": "x"}),
    Case("evaluate-zero-episodes", ["evaluate", "--checkpoint", "{checkpoint}", "--out", "{out}",
                                    "--episodes", "0"], ["--episodes"]),
    Case("evaluate-negative-episodes", ["evaluate", "--checkpoint", "{checkpoint}", "--out",
                                        "{out}", "--episodes", "-5"], ["--episodes"]),
    Case("evaluate-out-is-a-file", ["evaluate", "--checkpoint", "{checkpoint}", "--out", "{out}",
                                    "--episodes", "5"], ["{out}", "not a folder"], out="file"),
    # --- recommend ---------------------------------------------------------------------------
    Case("recommend-patient-missing", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                       "{tmp}/nobody.json"], ["nobody.json"]),
    Case("recommend-duplicate-key", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                     "{tmp}/p.json"], ["p.json", "HR"],
         files={"p.json": GOOD_PATIENT[:-1] + ', "HR": 60}'}),
    Case("recommend-non-numeric", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                   "{tmp}/p.json"], ["p.json", "MAP"],
         files={"p.json": GOOD_PATIENT.replace("62.7", '"low"')}),
    Case("recommend-impossible", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                  "{tmp}/p.json"], ["p.json", "O2Sat"],
         files={"p.json": GOOD_PATIENT.replace('"O2Sat": 90', '"O2Sat": 150')}),
    Case("recommend-unknown-field", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                     "{tmp}/p.json"], ["p.json", "Heartrate"],
         files={"p.json": GOOD_PATIENT[:-1] + ', "Heartrate": 60}'}),
    Case("recommend-not-an-object", ["recommend", "--checkpoint", "{checkpoint}", "--patient",
                                     "{tmp}/p.json"], ["p.json"], files={"p.json": "[1, 2, 3]"}),
    # --- tune --------------------------------------------------------------------------------
    Case("tune-rl-config-bad", ["tune", "rl", "--config", "{tmp}/c.yaml", "--storage", "{out}"],
         ["c.yaml", "gamma"], files={"c.yaml": "gamma: 7\n"}),
    Case("tune-classifiers-data-missing", ["tune", "classifiers", "--data", "{tmp}/nowhere",
                                           "--storage", "{out}"], ["nowhere"]),
    # --- run ---------------------------------------------------------------------------------
    *(
        Case(f"run-{name}", ["run", "--config", "{tmp}/c.yaml", "--out", "{out}"],
             ["c.yaml", *where], files={"c.yaml": text})
        for name, text, where in [
            ("patients-many", "patients: many\n", ["patients"]),
            ("rl-episodes-ten", "rl: {episodes: ten}\n", ["rl.episodes"]),
            ("rl-not-a-mapping", "rl: 5\n", ["rl"]),
            ("rl-unknown-key", "rl: {episodez: 5}\n", ["episodez"]),
            ("prepare-outlier-typo", "prepare: {outlier: clip}\n", ["outlier"]),
            ("classify-oversample-gan", "classify: {oversample: [gan]}\n", ["oversample"]),
            ("classifier-settings-negative", "classifier_settings: {ctgan_epochs: -1}\n",
             ["ctgan_epochs"]),
            ("unknown-top-key", "patience: 3\n", ["patience"]),
        ]
    ),
    Case("run-out-is-a-file", ["run", "--out", "{out}", "--quick"], ["{out}", "not a folder"],
         out="file"),
]  # fmt: skip


def _fill(text: str, places: dict[str, Path]) -> str:
    for name, path in places.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too) with a hash of its content."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes) and content.startswith(b"zip:"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(content[4:].decode(), psv([psv_row(0, 0)]))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _needs(case: Case, name: str) -> bool:
    return any("{" + name + "}" in arg for arg in case.args)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_names_the_place_and_changes_nothing(
    case: Case, tmp_path: Path, runner: CliRunner, request: pytest.FixtureRequest
) -> None:
    places = {"tmp": tmp_path, "out": tmp_path / "out"}
    if _needs(case, "prepared"):
        places["prepared"] = request.getfixturevalue("prepared_dir")
    if _needs(case, "checkpoint"):
        places["checkpoint"] = request.getfixturevalue("tiny_sepsis_run") / "checkpoints" / "last"
    for name, content in case.files.items():
        _write(tmp_path / name, content)
    if case.out == "file":
        places["out"].write_text("a file the user wants kept\n")
    elif case.out == "folder":
        places["out"].mkdir()
        (places["out"] / "notes.txt").write_text("kept\n")
    before_out, before_tmp = _snapshot(places["out"]), _snapshot(tmp_path)
    result = runner.invoke(app, [_fill(a, places) for a in case.args])
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]}"
    assert "Traceback" not in output, output[-3000:]
    for expected in case.expect:
        assert _fill(expected, places).lower() in output.lower(), (expected, output[-2000:])
    assert _snapshot(places["out"]) == before_out, "the output was changed"
    assert _snapshot(tmp_path) == before_tmp, "files appeared or changed next to the output"


def test_the_table_covers_every_command_with_at_least_40_inputs() -> None:
    commands = {c.args[0] if c.args[0] not in ("data", "tune") else " ".join(c.args[:2])
                for c in CASES}  # fmt: skip
    assert len(CASES) >= 40
    assert {"data synth", "data prepare", "classify", "classify-score", "train", "evaluate",
            "recommend", "tune rl", "tune classifiers", "run"} <= commands  # fmt: skip
