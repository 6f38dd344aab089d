"""Both searches for real on Ray Tune with tiny budgets, through the `sepsis-rl` command line:
search, analyse, export the best configuration, train from it; interrupt a search and resume it.

Each command runs in its own process (as a user runs it) and stops the Ray it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuning.analysis import load_analysis

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).parent
SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TOY_ENV = "test_rl_toyenv:SignGame-v0"
TIMEOUT = 900


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    return env


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEPSIS_RL), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _result_rows(trial: Path) -> list[dict]:
    path = trial / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_classifier_search_analyse_and_classify_from_the_best_config(
    prepared_dir: Path, tmp_path: Path
) -> None:
    _ok(
        _run(
            "tune",
            "classifiers",
            "--data",
            str(prepared_dir),
            "--models",
            "logreg,xgboost",
            "--oversample",
            "none,smote",
            "--folds",
            "2",
            "--num-samples",
            "3",
            "--time-budget",
            "0",
            "--seed",
            "1",
            "--storage",
            str(tmp_path / "tune"),
            cwd=tmp_path,
        )
    )
    folder = tmp_path / "tune" / "classifiers"
    trials = sorted(p for p in folder.glob("trial_*") if p.is_dir())
    assert len(trials) == 3
    # The untuned default is always among the trials (Optuna evaluates it first; with two trials
    # running at once, which one reports first is a race, so only membership is checked).
    tried = [json.loads((t / "params.json").read_text()) for t in trials]
    assert ("logreg", "none") in {(p["model"], p["oversample"]) for p in tried}
    for trial in trials:
        rows = _result_rows(trial)
        assert [r["training_iteration"] for r in rows] == list(range(1, len(rows) + 1))
        assert 1 <= len(rows) <= 2  # one report per fold; ASHA may stop after the first
        assert 0.0 <= rows[-1]["cv_pr_auc"] <= 1.0

    out = folder / "analysis"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 3 and set(table["status"]) <= {"completed", "stopped early"}
    summary = (out / "summary.md").read_text()
    assert "Gain over the default configuration" in summary
    assert "scored once on the test patients" in summary
    final = json.loads((folder / "final" / "metrics.json").read_text())
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert final["best"]["model"] == best["models"][0]
    assert best["models"][0] == table.iloc[0]["model"]

    # `analyze` on a copy of the folder, as after copying it from a cluster.
    copy = tmp_path / "copied"
    shutil.copytree(folder, copy)
    _ok(_run("analyze", str(copy), "--out", str(tmp_path / "reanalysed"), cwd=tmp_path))
    assert (tmp_path / "reanalysed" / "best_config.yaml").read_text() == (
        out / "best_config.yaml"
    ).read_text()

    # `classify --config` trains exactly the exported configuration.
    _ok(
        _run(
            "classify",
            "--data",
            str(prepared_dir),
            "--out",
            str(tmp_path / "classify"),
            "--config",
            str(out / "best_config.yaml"),
            "--bootstrap",
            "100",
            "--no-fidelity",
            cwd=tmp_path,
        )
    )
    metrics = json.loads((tmp_path / "classify" / "metrics.json").read_text())
    assert [(c["model"], c["oversample"]) for c in metrics["candidates"]] == [
        (best["models"][0], best["oversample"][0])
    ]


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(
    prepared_dir: Path, tmp_path: Path
) -> None:
    args = [
        "tune",
        "classifiers",
        "--data",
        str(prepared_dir),
        "--models",
        "logreg",
        "--oversample",
        "none,smote",
        "--folds",
        "3",
        "--num-samples",
        "6",
        "--repeats",
        "2",
        "--scheduler",
        "fifo",
        "--time-budget",
        "0",
        "--storage",
        str(tmp_path / "tune"),
        "--no-refit",
    ]
    folder = tmp_path / "tune" / "classifiers"
    process = subprocess.Popen(
        [str(SEPSIS_RL), *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    finished_before: dict[str, int] = {}
    while time.monotonic() < deadline and process.poll() is None:
        finished_before = {
            t.name: len(_result_rows(t))
            for t in folder.glob("trial_*")
            if len(_result_rows(t)) == 3
        }
        if finished_before:
            break
        time.sleep(0.5)
    assert process.poll() is None, "the search ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "--resume" in stderr
    state = json.loads((folder / "trials.json").read_text())
    assert state["finished"] is False

    result = _ok(_run(*args, "--resume", cwd=tmp_path))
    state = json.loads((folder / "trials.json").read_text())
    assert state["finished"] is True
    assert len(state["trials"]) == 12
    assert {t["status"] for t in state["trials"]} == {"TERMINATED"}
    for name, rows in finished_before.items():
        assert len(_result_rows(folder / name)) == rows, f"{name} was run again"
    for trial in folder.glob("trial_*"):
        # Tune reports at least once: a trial running at the interrupt may repeat the iteration
        # after its last registered checkpoint; the analysis keeps the latest report of each.
        iterations = [r["training_iteration"] for r in _result_rows(trial)]
        assert sorted(set(iterations)) == [1, 2, 3] and iterations[-1] == 3, iterations
    for trial in load_analysis(folder).trials:
        assert list(trial.history["training_iteration"]) == [1, 2, 3]
    # Six configurations x two seeds: the analysis shows the spread across seeds.
    assert (folder / "analysis" / "seed_spread.png").stat().st_size > 0
    assert "Spread across seeds" in result.stdout


def test_rl_search_scores_the_greedy_policy_and_train_accepts_the_best_config(
    tmp_path: Path,
) -> None:
    base = {
        "env": TOY_ENV,
        "num_env_runners": 1,
        "num_cpus_per_env_runner": 0.5,
        "num_steps_sampled_before_learning_starts": 200,
        "min_sample_timesteps_per_iteration": 300,
        "training_intensity": 4,
        "replay_capacity": 5000,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    _ok(
        _run(
            "tune",
            "rl",
            "--config",
            "base.yaml",
            "--num-samples",
            "3",
            "--iterations-per-trial",
            "2",
            "--eval-episodes",
            "5",
            "--time-budget",
            "0",
            "--storage",
            "tune",
            cwd=tmp_path,
        )
    )
    folder = tmp_path / "tune" / "rl"
    trials = [t for t in folder.glob("trial_*") if t.is_dir()]
    assert len(trials) == 3
    for trial in trials:
        for row in _result_rows(trial):
            # Scored by 5 greedy evaluation episodes of 10 steps: a return in [0, 10].
            assert row["eval_episodes"] == 5
            assert 0.0 <= row["eval_return"] <= 10.0
        assert (sorted(trial.glob("checkpoint_*"))[-1] / "algo" / "replay_buffer.pkl").is_file()
    out = folder / "analysis"
    exported = yaml.safe_load((out / "best_config.yaml").read_text())
    best_row = pd.read_csv(out / "trials.csv").iloc[0]
    assert exported["lr"] == pytest.approx(best_row["lr"])
    assert exported["env"] == TOY_ENV and exported["min_sample_timesteps_per_iteration"] == 300

    _ok(
        _run(
            "train",
            "--config",
            str(out / "best_config.yaml"),
            "--out",
            "run",
            "--env-steps",
            "300",
            cwd=tmp_path,
        )
    )
    trained = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for key in ("lr", "gamma", "n_step", "replay_alpha", "fcnet_hiddens", "train_batch_size"):
        assert trained[key] == exported[key], key


def test_population_based_training_runs_and_perturbs(tmp_path: Path) -> None:
    base = {
        "env": TOY_ENV,
        "num_env_runners": 0,
        "num_steps_sampled_before_learning_starts": 100,
        "min_sample_timesteps_per_iteration": 200,
        "training_intensity": 2,
        "replay_capacity": 2000,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    _ok(
        _run(
            "tune",
            "rl",
            "--config",
            "base.yaml",
            "--scheduler",
            "pbt",
            "--num-samples",
            "2",
            "--iterations-per-trial",
            "3",
            "--perturbation-interval",
            "1",
            "--eval-episodes",
            "3",
            "--time-budget",
            "0",
            "--storage",
            "tune",
            cwd=tmp_path,
        )
    )
    folder = tmp_path / "tune" / "rl"
    table = pd.read_csv(folder / "analysis" / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    search = json.loads((folder / "search.json").read_text())
    assert search["scheduler"] == "pbt"
    for trial in folder.glob("trial_*"):
        for row in _result_rows(trial):
            # Whatever PBT perturbed stays inside the searched ranges.
            assert 0.9 <= row["config"]["gamma"] <= 0.999
            assert 0.2 <= row["config"]["replay_beta"] <= 1.0


def test_a_trial_whose_worker_dies_is_retried_from_its_checkpoint(
    prepared_dir: Path, tmp_path: Path
) -> None:
    """FailureConfig for real: the process running a trial is killed after its first fold; Tune
    restarts the trial from that fold's checkpoint and the search ends normally."""
    args = [
        "tune", "classifiers", "--data", str(prepared_dir), "--models", "logreg",
        "--oversample", "ctgan", "--folds", "5", "--num-samples", "1", "--scheduler", "fifo",
        "--time-budget", "0", "--max-failures", "1", "--storage", str(tmp_path / "tune"),
        "--no-refit",
    ]  # fmt: skip
    folder = tmp_path / "tune" / "classifiers"
    process = subprocess.Popen(
        [str(SEPSIS_RL), *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    workers: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        if any(len(_result_rows(t)) >= 1 for t in folder.glob("trial_*")):
            workers = _processes_titled("ray::ImplicitFunc")
            if workers:
                break
        time.sleep(0.2)
    assert workers, "no trial worker to kill (the trial ended too soon, or never started)"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stdout[-2000:] + stderr[-2000:]
    state = json.loads((folder / "trials.json").read_text())
    assert state["finished"] and [t["status"] for t in state["trials"]] == ["TERMINATED"]
    (trial,) = load_analysis(folder).trials
    assert trial.status == "completed" and trial.steps == 5
    assert "recovered after a failure" in (trial.error or "")
    iterations = [r["training_iteration"] for r in _result_rows(trial.folder)]
    assert iterations[0] == 1 and sorted(set(iterations)) == [1, 2, 3, 4, 5]
    assert iterations.count(1) == 1, "the retry started over instead of from its checkpoint"


def _processes_titled(prefix: str) -> list[int]:
    """PIDs whose command line (Ray sets it to the actor's task) starts with `prefix`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text.startswith(prefix):
            found.append(int(cmdline.parent.name))
    return found
