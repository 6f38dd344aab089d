"""Outputs are written whole or not at all: an `--out` that is a file is refused before any work,
no hidden `.partial` staging folder survives a failure, and `evaluate` moves its files into place
only when every one is complete.

The command-line cases run the real `sepsis-rl` console script in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sepsis_rl.common.files import check_output_folder, staged_directory
from training.rl.evaluate import write_evaluation

SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEPSIS_RL), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def partial_folders(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*partial*")]


# --- the staging folder ---


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_the_stage_leaves_out_as_it_was_and_no_partial(
    tmp_path: Path, error: type[BaseException]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("before")
    with pytest.raises(error), staged_directory(out) as stage:
        (stage / "new.txt").write_text("half")
        raise error()
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert partial_folders(tmp_path) == []


def test_an_out_that_is_a_file_is_refused_before_the_work_and_leaves_no_partial(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    out.write_text("a file the user keeps")
    ran = []
    refused = pytest.raises(NotADirectoryError, match="results exists and is not a folder")
    with refused, staged_directory(out) as stage:
        ran.append(stage)
    assert ran == []  # refused before the work
    assert out.read_text() == "a file the user keeps"
    assert partial_folders(tmp_path) == []


def test_an_out_that_becomes_a_file_during_the_work_leaves_no_partial(tmp_path: Path) -> None:
    out = tmp_path / "results"
    with pytest.raises(NotADirectoryError), staged_directory(out) as stage:
        (stage / "table.csv").write_text("a,b\n")
        out.write_text("appeared meanwhile")
    assert out.read_text() == "appeared meanwhile"
    assert partial_folders(tmp_path) == []


def test_an_out_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file exists"):
        check_output_folder(tmp_path / "file" / "sub")
    check_output_folder(tmp_path / "new" / "deeper")  # new folders are fine


# --- every command that writes a folder ---


@pytest.mark.parametrize(
    "command",
    [
        ["data", "synth", "--patients", "20000"],
        ["data", "prepare", "--input", "raw"],
        ["data", "download", "--base-url", "http://127.0.0.1:9/", "--limit", "1"],
        ["classify", "--data", "prepared"],
        ["train", "--env", "CartPole-v1", "--env-steps", "100"],
        ["evaluate", "--checkpoint", "run/checkpoints/last"],
        ["evaluate", "--checkpoint", "run/checkpoints/last", "--env", "icu-sepsis"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_every_command_refuses_an_out_that_is_a_file_at_once(
    tmp_path: Path, command: list[str]
) -> None:
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    started = time.monotonic()
    done = run_cli(*command, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "results.txt exists and is not a folder" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # before the work, not after it
    assert out.read_text() == "keep me"
    assert partial_folders(tmp_path) == []


def test_classify_score_refuses_an_out_that_is_a_folder_before_scoring(tmp_path: Path) -> None:
    (tmp_path / "features.csv").write_text("patient_id,HR__mean\np1,80\n")
    (tmp_path / "scores").mkdir()
    done = run_cli(
        "classify-score",
        "--model",
        "no-model",
        "--features",
        "features.csv",
        "--out",
        "scores",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "--out scores is a folder" in done.stderr
    assert list((tmp_path / "scores").iterdir()) == []


# --- evaluate ---


@pytest.mark.parametrize("episodes", ["0", "-5"])
def test_evaluate_needs_at_least_one_episode(tmp_path: Path, episodes: str) -> None:
    done = run_cli(
        "evaluate",
        "--checkpoint",
        "run/checkpoints/last",
        "--episodes",
        episodes,
        "--out",
        "eval",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "--episodes" in done.stderr and "greater than or equal to 1" in done.stderr
    assert "Traceback" not in done.stderr and "negative dimensions" not in done.stderr
    assert not (tmp_path / "eval").exists()


def test_an_evaluation_that_fails_while_writing_leaves_out_exactly_as_it_was(
    tmp_path: Path,
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "evaluation.json").write_text('{"earlier": true}')
    # A report with no episodes behind it: the JSON and CSV tables are written, then the figures
    # fail (nothing to plot), as a failure midway through the files would.
    result = {
        "report": {
            "checkpoint": str(tmp_path / "run" / "checkpoints" / "last"),
            "policies": {},
            "difference_to_protocol": {},
            "learned_minus_baseline": {},
        }
    }
    with pytest.raises(KeyError):
        write_evaluation(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json"]
    assert (out / "evaluation.json").read_text() == '{"earlier": true}'
    assert partial_folders(tmp_path) == []
