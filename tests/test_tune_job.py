"""A search submitted with `ray job submit` to a real (loopback) Ray cluster, as the README shows.

Reuses the cluster harness of `test_cluster_local.py`: a head node of our own, token auth, and
only the processes it started are stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cluster_local import head, short_dir, submit, wait_for_job  # noqa: F401  fixtures

pytestmark = pytest.mark.slow


def test_a_classifier_search_runs_as_a_ray_job(head, prepared_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    storage = tmp_path / "tune"
    job_id = submit(
        head,
        [
            "sepsis-rl", "tune", "classifiers", "--data", str(prepared_dir), "--models", "logreg",
            "--oversample", "none", "--folds", "2", "--num-samples", "2", "--time-budget", "0",
            "--storage", str(storage), "--no-refit",
        ],
    )  # fmt: skip
    status, logs = wait_for_job(head, job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    folder = storage / "classifiers"
    state = json.loads((folder / "trials.json").read_text())
    assert state["finished"] and len(state["trials"]) == 2
    assert (folder / "analysis" / "best_config.yaml").is_file()
    assert "Best configuration" in logs
