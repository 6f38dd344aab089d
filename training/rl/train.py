"""The training loop of every algorithm: budgets, metrics, checkpoints (DQN: with the replay
buffer), resume.

The run's folder and its checkpoint layout are described in `training.rl.run_dir`.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sepsis_rl.common.files import copy_to_storage, write_json_atomic
from sepsis_rl.common.ray_local import init_ray
from training.rl.algorithms import build_config, configure_learner_process, uses_replay_buffer
from training.rl.options import RLOptions, save_options
from training.rl.results import (
    METRIC_FIELDS,
    IterationMetrics,
    episode_returns_of,
    evaluated,
    metrics_of,
)
from training.rl.run_dir import RunDir, is_checkpoint, restore_checkpoint, save_checkpoint


@dataclass
class TrainResult:
    """Where a run stopped and what it left behind."""

    out_dir: str
    stop_reason: str
    iterations: int
    env_steps: int
    episodes: int
    elapsed_s: float
    best_eval_return: float
    last_checkpoint: str
    best_checkpoint: str | None
    replay_buffer_timesteps: int


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after an iteration; `checkpoints/last` and `summary.json`
    were written first, so `--resume` continues from there. `result` says where it stopped.

    A KeyboardInterrupt, so that callers which stop on Ctrl-C (the study) stop on it too."""

    def __init__(self, result: TrainResult) -> None:
        super().__init__(result.stop_reason)
        self.result = result


INTERRUPTED = "interrupted"
"""How `TrainResult.stop_reason` starts when a signal stopped the run."""


class StopRequest:
    """The signal (SIGINT, SIGTERM) that asked the run to stop, if any."""

    def __init__(self) -> None:
        self.signal: str | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While training, Ctrl-C (SIGINT) and SIGTERM ask the loop to stop after the current
    iteration (then it saves `last`) instead of interrupting RLlib mid-update; a second Ctrl-C
    stops at once. Signal handlers can only be set in the main thread; elsewhere (a Tune trial,
    a thread) the request is never set and the caller's own handling applies."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, keeping the last saved checkpoint
        request.signal = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def budget_reached(options: RLOptions, metrics: IterationMetrics, elapsed_s: float) -> str | None:
    """Which budget (if any) the run has used up."""
    if options.episodes is not None and metrics.episodes >= options.episodes:
        return f"episodes >= {options.episodes}"
    if options.env_steps is not None and metrics.env_steps >= options.env_steps:
        return f"env_steps >= {options.env_steps}"
    if options.time_budget_s is not None and elapsed_s >= options.time_budget_s:
        return f"time >= {options.time_budget_s:g} s"
    return None


class MetricsWriter:
    """Appends iteration metrics to CSV, JSON lines and TensorBoard; episode returns to CSV."""

    def __init__(self, run: RunDir) -> None:
        from tensorboardX import SummaryWriter

        self.run = run
        self.tb = SummaryWriter(str(run.tensorboard))

    def write(self, metrics: IterationMetrics, episode_returns: list[float]) -> None:
        row = asdict(metrics)
        _append_csv(self.run.metrics_csv, METRIC_FIELDS, [row])
        with self.run.metrics_jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "iteration" and isinstance(value, int | float) and math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, metrics.env_steps)
        _append_csv(
            self.run.episodes_csv,
            ["iteration", "env_steps", "episode_return"],
            [
                {
                    "iteration": metrics.iteration,
                    "env_steps": metrics.env_steps,
                    "episode_return": r,
                }
                for r in episode_returns
            ],
        )
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _append_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def train(
    options: RLOptions,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_iteration: Callable[[IterationMetrics], None] | None = None,
    sync_uri: str | None = None,
    ray_address: str | None = None,
) -> TrainResult:
    """Train `options.algo` until a budget is used up; write metrics and checkpoints under
    `out_dir`.

    With `resume=True` the run continues from `out_dir/checkpoints/last` (DQN: with its replay
    buffer).
    `sync_uri` (s3://, gs://, file://) receives a copy of the run folder with every `last`
    checkpoint and at the end.

    However the run stops (a budget, Ctrl-C, SIGTERM) after at least one iteration, it writes
    `checkpoints/last` and `summary.json`; stopped by a signal it then raises
    `TrainingInterrupted`.
    """
    run = RunDir(out_dir)
    prepare_run_dir(run, options, resume)
    init_ray(ray_address)
    configure_learner_process(options)
    algo = build_config(options).build_algo()
    writer = MetricsWriter(run)
    start = time.monotonic()
    try:
        best = restore_run(algo, run) if resume else Best(-math.inf, existing_best(run))
        with stop_on_signals() as stop:
            metrics, stop_reason = train_until_budget(
                algo, options, run, writer, best, start, on_iteration, sync_uri, stop
            )
        save_checkpoint(algo, run.last, options, uses_replay_buffer(options))
        outcome = TrainResult(
            out_dir=str(run.root),
            stop_reason=stop_reason,
            iterations=metrics.iteration,
            env_steps=metrics.env_steps,
            episodes=metrics.episodes,
            elapsed_s=time.monotonic() - start,
            best_eval_return=best.value,
            last_checkpoint=str(run.last),
            best_checkpoint=best.checkpoint,
            replay_buffer_timesteps=replay_timesteps(algo),
        )
        write_json_atomic(run.summary, asdict(outcome))
        if sync_uri:
            copy_to_storage(run.root.resolve(), sync_uri)
        if stop_reason.startswith(INTERRUPTED):
            raise TrainingInterrupted(outcome)
        return outcome
    finally:
        writer.close()
        algo.stop()


def replay_timesteps(algo) -> int:
    """Transitions in the algorithm's replay buffer (0 for the algorithms without one)."""
    buffer = getattr(algo, "local_replay_buffer", None)
    return buffer.get_num_timesteps() if buffer is not None else 0


@dataclass
class Best:
    """The best greedy evaluation return so far and the checkpoint that holds it."""

    value: float
    checkpoint: str | None


def prepare_run_dir(run: RunDir, options: RLOptions, resume: bool) -> None:
    """Check that `run` can be started (or resumed), then write its options."""
    if resume:
        if not is_checkpoint(run.last):
            raise FileNotFoundError(f"nothing to resume: {run.last} holds no checkpoint")
    elif run.last.exists():
        raise FileExistsError(
            f"{run.root} already holds a run; pass --resume to continue it or choose another --out"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    save_options(options, run.config)


def existing_best(run: RunDir) -> str | None:
    """The run's `best` checkpoint, if one was written."""
    return str(run.best) if run.best.exists() else None


def restore_run(algo, run: RunDir) -> Best:
    """Restore the algorithm and its replay buffer from `last`; the best return so far."""
    restore_checkpoint(algo, run.last)
    value = -math.inf
    if run.summary.exists():
        value = json.loads(run.summary.read_text()).get("best_eval_return", -math.inf)
    return Best(value, existing_best(run))


def train_until_budget(
    algo,
    options: RLOptions,
    run: RunDir,
    writer: MetricsWriter,
    best: Best,
    start: float,
    on_iteration: Callable[[IterationMetrics], None] | None,
    sync_uri: str | None,
    stop: StopRequest | None = None,
) -> tuple[IterationMetrics, str]:
    """Train iteration by iteration, keeping `best` and `last`, until a budget is used up or
    `stop` is requested. Returns the last iteration's metrics and what stopped the run."""
    last_eval = float("nan")
    while True:
        result = algo.train()
        metrics = metrics_of(result, options, last_eval)
        last_eval = metrics.eval_return_mean
        writer.write(metrics, episode_returns_of(result))
        improved = math.isfinite(metrics.eval_return_mean) and metrics.eval_return_mean > best.value
        if evaluated(result) and improved:
            best.value = metrics.eval_return_mean
            best.checkpoint = str(save_checkpoint(algo, run.best, options, False))
        if on_iteration is not None:
            on_iteration(metrics)
        reason = budget_reached(options, metrics, time.monotonic() - start)
        if stop is not None and stop.signal is not None:
            reason = f"{INTERRUPTED} ({stop.signal})"
        if reason is not None:
            return metrics, reason
        if metrics.iteration % max(1, options.checkpoint_every) == 0:
            save_checkpoint(algo, run.last, options, uses_replay_buffer(options))
            if sync_uri:
                copy_to_storage(run.root.resolve(), sync_uri)
