"""The DQN training loop: budgets, metrics, checkpoints with the replay buffer, resume.

A run directory holds everything of one run:

    config.yaml                   the effective `RLOptions`
    metrics.csv, metrics.jsonl    one row per training iteration
    episodes.csv                  the return of every training episode
    tensorboard/                  the same metrics for TensorBoard
    checkpoints/last/             RLlib checkpoint + replay_buffer.pkl + options.yaml
    checkpoints/best/             RLlib checkpoint of the best greedy evaluation return
    summary.json                  why and where the run stopped

RLlib's new-stack checkpoints leave the replay buffer out, so a resumed run would restart
learning from an empty buffer while its step counter says learning started long ago. `last/`
therefore also holds the pickled state of `algo.local_replay_buffer`, restored on `--resume`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.rl_config import (
    EPISODE_RETURNS_KEY,
    RLOptions,
    build_dqn_config,
    configure_learner_process,
    load_options,
    save_options,
)
from training.rl_validation import RETURN_VS_PROTOCOL_KEY, SURVIVAL_VS_PROTOCOL_KEY

OPTIONS_FILE = "options.yaml"
"""Options of the run, copied into every checkpoint so a checkpoint alone can be served."""
BUFFER_FILE = "replay_buffer.pkl"
"""The pickled replay-buffer state inside `checkpoints/last/`."""
MODULE_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")
"""Where the RLModule lives inside an RLlib algorithm checkpoint."""
METRIC_FIELDS = [
    "iteration",
    "env_steps",
    "episodes",
    "time_s",
    "steps_per_s",
    "episode_return_mean",
    "episode_len_mean",
    "eval_return_mean",
    "eval_return_minus_protocol",
    "eval_survival_minus_protocol",
    "qf_loss",
    "learning_rate",
    "epsilon",
    "updates",
    "healthy_env_runners",
]


@dataclass
class IterationMetrics:
    """What one training iteration reports (one row of metrics.csv)."""

    iteration: int
    env_steps: int
    episodes: int
    time_s: float
    steps_per_s: float
    episode_return_mean: float
    episode_len_mean: float
    eval_return_mean: float
    eval_return_minus_protocol: float  # SepsisEnv: paired, on the validation episodes
    eval_survival_minus_protocol: float
    qf_loss: float
    learning_rate: float
    epsilon: float
    updates: int
    healthy_env_runners: int


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


class RunDir:
    """Paths of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics_csv = self.root / "metrics.csv"
        self.metrics_jsonl = self.root / "metrics.jsonl"
        self.episodes_csv = self.root / "episodes.csv"
        self.tensorboard = self.root / "tensorboard"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last"
        self.best = self.checkpoints / "best"
        self.summary = self.root / "summary.json"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (`address`, or RAY_ADDRESS as set inside `ray job submit`), or start
    a local Ray bound to loopback only."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # Without this Ray binds its services to the machine's default interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)


def epsilon_at(options: RLOptions, env_steps: int) -> float:
    """Epsilon of the linear schedule after `env_steps` (RLlib does not report it)."""
    frac = min(1.0, env_steps / max(1, options.epsilon_timesteps))
    return options.epsilon_start + frac * (options.epsilon_end - options.epsilon_start)


def metrics_of(result: dict[str, Any], options: RLOptions, last_eval: float) -> IterationMetrics:
    """The flat per-iteration metrics from an RLlib result dict."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get("default_policy", {})
    env_steps = int(result.get("num_env_steps_sampled_lifetime", 0) or 0)
    evaluation = result.get("evaluation", {}).get("env_runners", {})
    eval_return = evaluation.get("episode_return_mean", last_eval)
    iter_time = float(result.get("time_this_iter_s", 0.0) or 0.0)
    sampled = float(runners.get("num_env_steps_sampled", 0.0) or 0.0)
    return IterationMetrics(
        iteration=int(result["training_iteration"]),
        env_steps=env_steps,
        episodes=int(runners.get("num_episodes_lifetime", 0) or 0),
        time_s=float(result.get("time_total_s", 0.0)),
        steps_per_s=sampled / iter_time if iter_time > 0 else float("nan"),
        episode_return_mean=_float(runners.get("episode_return_mean")),
        episode_len_mean=_float(runners.get("episode_len_mean")),
        eval_return_mean=_float(eval_return),
        eval_return_minus_protocol=_float(evaluation.get(RETURN_VS_PROTOCOL_KEY)),
        eval_survival_minus_protocol=_float(evaluation.get(SURVIVAL_VS_PROTOCOL_KEY)),
        qf_loss=_float(learner.get("qf_loss")),
        learning_rate=_float(learner.get("default_optimizer_learning_rate")),
        epsilon=epsilon_at(options, env_steps),
        updates=int(learner.get("num_module_steps_trained_lifetime", 0) or 0)
        // max(1, options.train_batch_size),
        healthy_env_runners=int(
            result.get("fault_tolerance", {}).get("num_healthy_workers", options.num_env_runners)
        ),
    )


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


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


def save_checkpoint(algo, path: Path, options: RLOptions, with_buffer: bool) -> Path:
    """Write an RLlib checkpoint (plus options, plus the replay buffer) atomically to `path`."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    save_options(options, tmp / OPTIONS_FILE)
    if with_buffer:
        with (tmp / BUFFER_FILE).open("wb") as f:
            pickle.dump(algo.local_replay_buffer.get_state(), f, protocol=pickle.HIGHEST_PROTOCOL)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def restore_checkpoint(algo, path: Path) -> int:
    """Restore algorithm state and, if saved, the replay buffer; returns the buffer's size."""
    algo.restore_from_path(str(path.resolve()))
    buffer_file = path / BUFFER_FILE
    if buffer_file.exists():
        with buffer_file.open("rb") as f:
            algo.local_replay_buffer.set_state(pickle.load(f))
    return algo.local_replay_buffer.get_num_timesteps()


def sync_to(run: RunDir, uri: str) -> None:
    """Mirror the run directory to shared storage (`s3://...`, `gs://...`, `file://...`)."""
    import pyarrow.fs

    pyarrow.fs.copy_files(str(run.root.resolve()), uri)


def load_run_options(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> RLOptions:
    """The options a run was started with (its config.yaml), with `overrides` on top."""
    run = RunDir(out_dir)
    if not run.config.exists():
        raise FileNotFoundError(
            f"{run.config} not found: {out_dir} is not a run directory to resume"
        )
    return load_options(run.config, overrides)


def train(
    options: RLOptions,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_iteration: Callable[[IterationMetrics], None] | None = None,
    sync_uri: str | None = None,
    ray_address: str | None = None,
) -> TrainResult:
    """Train DQN until a budget is used up; write metrics and checkpoints under `out_dir`.

    With `resume=True` the run continues from `out_dir/checkpoints/last` with its replay buffer.
    """
    run = RunDir(out_dir)
    if resume:
        if not (run.last / "rllib_checkpoint.json").exists():
            raise FileNotFoundError(f"nothing to resume: {run.last} holds no checkpoint")
    elif run.last.exists():
        raise FileExistsError(
            f"{run.root} already holds a run; pass --resume to continue it or choose another --out"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    save_options(options, run.config)

    init_ray(ray_address)
    configure_learner_process(options)
    algo = build_dqn_config(options).build_algo()
    writer = MetricsWriter(run)
    start = time.monotonic()
    best_eval = -math.inf
    best_checkpoint: str | None = str(run.best) if run.best.exists() else None
    if resume:
        restore_checkpoint(algo, run.last)
        if run.summary.exists():
            best_eval = json.loads(run.summary.read_text()).get("best_eval_return", -math.inf)
    metrics: IterationMetrics | None = None
    stop_reason = "no iteration run"
    last_eval = float("nan")
    try:
        while True:
            result = algo.train()
            metrics = metrics_of(result, options, last_eval)
            last_eval = metrics.eval_return_mean
            returns = result.get("env_runners", {}).get(EPISODE_RETURNS_KEY, [])
            writer.write(metrics, [float(r) for r in as_list(returns)])
            evaluated = "evaluation" in result and math.isfinite(metrics.eval_return_mean)
            if evaluated and metrics.eval_return_mean > best_eval:
                best_eval = metrics.eval_return_mean
                best_checkpoint = str(save_checkpoint(algo, run.best, options, False))
            if on_iteration is not None:
                on_iteration(metrics)
            reason = budget_reached(options, metrics, time.monotonic() - start)
            if reason is not None:
                stop_reason = reason
                break
            if metrics.iteration % max(1, options.checkpoint_every) == 0:
                save_checkpoint(algo, run.last, options, True)
                if sync_uri:
                    sync_to(run, sync_uri)
        save_checkpoint(algo, run.last, options, True)
        outcome = TrainResult(
            out_dir=str(run.root),
            stop_reason=stop_reason,
            iterations=metrics.iteration,
            env_steps=metrics.env_steps,
            episodes=metrics.episodes,
            elapsed_s=time.monotonic() - start,
            best_eval_return=best_eval,
            last_checkpoint=str(run.last),
            best_checkpoint=best_checkpoint,
            replay_buffer_timesteps=algo.local_replay_buffer.get_num_timesteps(),
        )
        run.summary.write_text(json.dumps(asdict(outcome), indent=2))
        if sync_uri:
            sync_to(run, sync_uri)
        return outcome
    finally:
        writer.close()
        algo.stop()


def as_list(value: Any) -> list[Any]:
    """A metric RLlib reports as None, a scalar, a sequence or a deque, as a list."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    try:
        return list(value)
    except TypeError:
        return [value]
