"""What both searches share: where results go, how a search's Tuner is built, run or resumed.

An experiment folder (`<storage>/<name>/`) holds Tune's own files (one folder per trial with
`params.json`, `result.json`, `error.txt`, checkpoints; `experiment_state-*.json`) plus two of
ours, so the analysis can run on a copied folder without Ray:

    search.json    what was searched: kind, metric and mode, the space, the default point,
                   the fixed options, scheduler and budgets (written before the first trial)
    trials.json    each trial's final status and error as Tune saw them (written at the end)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepsis_rl.common.files import write_text_atomic

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.json"


class SearchError(RuntimeError):
    """A search cannot start or resume; the message says what to do."""


def is_uri(storage: str) -> bool:
    """True for `s3://...`, `gs://...`, `file://...`; False for a local path."""
    return "://" in storage


def experiment_path(storage: str, name: str) -> str:
    """`<storage>/<name>`, absolute for a local folder (Tune needs absolute paths)."""
    if is_uri(storage):
        return storage.rstrip("/") + "/" + name
    return str(Path(storage).expanduser().resolve() / name)


def storage_path(storage: str) -> str:
    """The `RunConfig.storage_path` for `storage`."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def write_text(location: str, text: str) -> None:
    """Write `text` to a local path or a URI (through pyarrow's filesystems, as Tune does)."""
    if not is_uri(location):
        write_text_atomic(Path(location), text)
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def read_text(location: str) -> str | None:
    """The text at a local path or URI, or None when it does not exist."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def concurrency_for(cpus_per_trial: float) -> int:
    """How many trials fit at once in the cluster's CPUs (at least one)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if cpus_per_trial > cpus:
        raise SearchError(
            f"a trial needs {cpus_per_trial:g} CPUs but the cluster has {cpus:g}; it would wait "
            "forever. Use fewer env runners or fewer CPUs per env runner."
        )
    return max(1, math.floor(cpus / cpus_per_trial + 1e-9))


@dataclass
class TunerSpec:
    """What a search's `tune.Tuner` is built from; both searches fill one in."""

    trainable: Any
    """The trial function with its resources (`tune.with_resources`)."""
    storage: str
    """Local folder or URI that holds the experiment."""
    name: str
    """Experiment folder name under `storage`."""
    metric: str
    """The metric trials report and are compared on."""
    mode: str
    """max or min."""
    num_trials: int
    """Trials in all: configurations x repeats."""
    time_budget_s: float | None
    """Stop proposing and running trials after this many seconds (None: no limit)."""
    max_failures: int
    """Retries of a failing trial (Tune's FailureConfig)."""
    keep_checkpoints: int | None
    """Checkpoints kept per trial, the best by `metric` (None: all of them)."""
    record: dict[str, Any]
    """What `search.json` holds (written when a new search starts)."""

    @property
    def path(self) -> str:
        """The experiment folder (local path or URI)."""
        return experiment_path(self.storage, self.name)


@dataclass
class SearchStart:
    """What only a new search needs; a resumed one restores it from the experiment folder."""

    search_alg: Any
    scheduler: Any
    param_space: dict[str, Any]
    """Fixed entries every trial gets, and Tune domains (PBT) or nothing (Optuna) to sample."""


@dataclass
class SearchOutcome:
    """How a search ended."""

    path: str
    """The experiment folder (local path or URI)."""
    finished: bool
    """False when the search was interrupted before every trial ended (resume it)."""
    trials: list[dict[str, Any]]
    """Per trial: id, status, error, last metric."""


def trial_dirname(trial: Any) -> str:
    """Short, stable trial folder names (Tune's default embeds the whole config)."""
    return f"trial_{trial.trial_id}"


def run_tuner(spec: TunerSpec, start: Callable[[], SearchStart], resume: bool) -> SearchOutcome:
    """Start a new search (`start()` gives its searcher, scheduler and parameter space) or restore
    the one at `spec.path`, run it, then record how every trial ended.

    The search finished when every trial ended and either all `spec.num_trials` exist or the
    time budget ran out; otherwise it was interrupted (Ctrl-C, SIGINT) and can be resumed.
    """
    path = spec.path
    _check_resumable(path, resume)
    tuner = restore_tuner(spec) if resume else new_tuner(spec, start())
    started = time.monotonic()
    grid = tuner.fit()
    budget_spent = (
        spec.time_budget_s is not None and time.monotonic() - started >= spec.time_budget_s
    )
    statuses = saved_statuses(path)
    trials = [_trial_record(result, spec.metric, statuses) for result in grid]
    ended = [t for t in trials if t["status"] in ("TERMINATED", "ERROR")]
    finished = len(ended) == len(trials) and (len(trials) >= spec.num_trials or budget_spent)
    write_text(
        path.rstrip("/") + "/" + TRIALS_FILE,
        json.dumps({"finished": finished, "trials": trials}, indent=2, default=str),
    )
    return SearchOutcome(path, finished, trials)


def _check_resumable(path: str, resume: bool) -> None:
    """Refuse to resume nothing, and to start a search over an existing one."""
    from ray import tune

    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise SearchError(f"nothing to resume: {path} holds no Tune experiment")
    if not resume and exists:
        raise SearchError(
            f"{path} already holds a search; pass --resume to continue it, or choose another "
            "--name or --storage"
        )


def new_tuner(spec: TunerSpec, start: SearchStart) -> Any:
    """The Tuner of a new search, after writing its `search.json`."""
    from ray import tune

    write_text(spec.path + "/" + SEARCH_FILE, json.dumps(spec.record, indent=2))
    return tune.Tuner(
        spec.trainable,
        param_space=start.param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=start.search_alg,
            scheduler=start.scheduler,
            num_samples=spec.num_trials,
            time_budget_s=spec.time_budget_s,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage_path(spec.storage),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=_checkpoint_config(spec),
            verbose=0,
        ),
    )


def _checkpoint_config(spec: TunerSpec) -> Any:
    from ray import tune

    if spec.keep_checkpoints is None:
        return tune.CheckpointConfig(num_to_keep=None)
    return tune.CheckpointConfig(
        num_to_keep=spec.keep_checkpoints,
        checkpoint_score_attribute=spec.metric,
        checkpoint_score_order=spec.mode,
    )


def restore_tuner(spec: TunerSpec) -> Any:
    """The Tuner of the interrupted search at `spec.path`, errored trials to be run again."""
    from ray import tune

    return tune.Tuner.restore(spec.path, trainable=spec.trainable, resume_errored=True)


def saved_statuses(path: str) -> dict[str, str]:
    """trial id -> status in the newest `experiment_state-*.json` under `path` (local or URI).

    This is the state `Tuner.restore` resumes from: after Ctrl-C it still says PENDING for trials
    that never ran, where the in-memory ResultGrid already calls them TERMINATED.
    """
    text = None
    if is_uri(path):
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(path)
        names = sorted(
            info.path
            for info in fs.get_file_info(pyarrow.fs.FileSelector(root))
            if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
        )
        if names:
            with fs.open_input_stream(names[-1]) as stream:
                text = stream.read().decode()
    else:
        states = sorted(Path(path).glob("experiment_state-*.json"))
        text = states[-1].read_text() if states else None
    if text is None:
        return {}
    out: dict[str, str] = {}
    for entry in json.loads(text).get("trial_data", []):
        # Each entry is [trial JSON, runtime metadata JSON].
        data = json.loads(entry[0] if isinstance(entry, list) else entry)
        out[data["trial_id"]] = data.get("status", "UNKNOWN")
    return out


def _trial_record(result: Any, metric: str, statuses: dict[str, str]) -> dict[str, Any]:
    metrics = result.metrics or {}
    # The folder names the trial; after a PBT exploit the metrics carry the donor's trial_id.
    trial_id = Path(result.path).name.removeprefix("trial_")
    error = None
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or [""]
        error = f"{type(result.error).__name__}: {lines[-1][:300]}"
    status = "ERROR" if error else statuses.get(trial_id, "UNKNOWN")
    return {
        "trial_id": trial_id,
        "path": result.path,
        "status": status,
        "error": error,
        "iterations": metrics.get("training_iteration"),
        metric: metrics.get(metric),
    }


def load_search(path: str) -> dict[str, Any]:
    """The `search.json` of an experiment folder, or SearchError."""
    text = read_text(path.rstrip("/") + "/" + SEARCH_FILE)
    if text is None:
        raise SearchError(f"{path} has no {SEARCH_FILE}: it was not written by `sepsis-rl tune`")
    return json.loads(text)
