"""Offline training: a policy learned from a logs folder only (`sepsis-rl train --offline DIR`).

    train_offline(logs_dir, options, out) -> out

1. `load_offline_data` reads the logs (`training.rl.offline.data`), splits the stays into train,
   validation and test (`split_stays`, seeded by `options.seed`), and turns each split into the
   network's inputs: raw observations normalised from the logs' bounds exactly as online
   training normalises them (`training.rl.envs.normalize`), and for MARWIL the Monte-Carlo
   return of the rest of each stay. Only the train stays are trained on; the validation stays
   choose `checkpoints/best`; the test stays are never read here.
2. `build_offline_config` is the RLlib config of `options.algo`: BC or MARWIL
   (`training.rl.offline.marwil`) or discrete CQL (`training.rl.offline.cql`), all learning
   in this process (one local learner, no env runners, no Ray Data: nothing acts in the env
   while training, and no Ray cluster is needed).
3. Every `evaluation_interval` iterations (and at the last one) the policy is scored on the
   validation stays: `val_loss` is the mean negative log-likelihood of the logged actions (BC,
   MARWIL) or the mean Huber TD error of the online Q-network's one-step Bellman residual
   (CQL); the lowest is kept as `checkpoints/best`. `val_agreement`, the fraction of validation
   steps where the greedy action is the logged one, is recorded too but selects nothing.

The run folder has the layout of an online run (`training.rl.run_dir`: config.yaml, metrics.csv,
metrics.jsonl, tensorboard/, checkpoints/best and last with options.yaml and MANIFEST.json,
summary.json), plus `offline.json` (the logs, their info and the split sizes). The options in it
name the env the logs come from, so `sepsis-rl evaluate` and `recommend` load the checkpoint as
any other (`training.rl.policy.load_policy`). metrics.csv has the columns `OFFLINE_METRIC_FIELDS`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sepsis_rl.common.files import write_json_atomic
from training.rl.envs import UNBOUNDED, make_raw_env, normalization_constants, normalize
from training.rl.offline.data import LoggedSteps, LogsError, LogsInfo, read_logs, split_stays
from training.rl.options import OFFLINE_ALGORITHMS, RLOptions, is_offline, resolved_env_kwargs
from training.rl.run_dir import RunDir, save_checkpoint

OFFLINE_FILE = "offline.json"
"""What a run learned from: the logs folder, its `LogsInfo` and the split sizes."""

OBS, NEXT_OBS, ACTIONS, REWARDS = "obs", "new_obs", "actions", "rewards"
TERMINATEDS, TRUNCATEDS, VALUE_TARGETS = "terminateds", "truncateds", "value_targets"
"""Batch keys: RLlib's names (`ray.rllib.core.columns.Columns`; restated, Ray loads lazily)."""

OFFLINE_METRIC_FIELDS = [
    "iteration",
    "updates",
    "transitions",
    "time_s",
    "loss",
    "learning_rate",
    "val_loss",
    "val_agreement",
    "env_steps",
    "eval_return_mean",
]
"""Columns of an offline run's metrics.csv (`val_*`: NaN in iterations without validation).
`env_steps` (always 0: nothing samples the env) and `eval_return_mean` (always NaN: no episodes
are run) are the online columns that readers of any run's metrics.csv look for."""

LOSS_KEYS = {"bc": "policy_loss", "marwil": "total_loss", "cql": "qf_loss"}
"""Learner-result key of each algorithm's training loss (CQL: the TD loss, without penalty)."""


# -- the data --------------------------------------------------------------------------------------
@dataclass
class OfflineData:
    """The logs of a run, split by stay and ready for the network."""

    logs_dir: Path
    info: LogsInfo
    raw_space: gym.spaces.Box
    """The observation space the logs declare (raw units); the network sees it normalised."""
    train: dict[str, np.ndarray]
    """Transitions of the train stays (OBS, NEXT_OBS normalised; VALUE_TARGETS: MC returns)."""
    val: dict[str, np.ndarray]
    """The same for the validation stays."""
    stays: dict[str, int]
    """Number of stays in each split (train, val, test)."""


def load_offline_data(logs_dir: str | Path, options: RLOptions) -> tuple[RLOptions, OfflineData]:
    """The options of the run (the env and its kwargs taken from the logs) and its data.

    Raises `LogsError` (a ValueError) for a folder that is not readable logs, or logs that do
    not fit the env they name; ValueError for an algorithm that does not learn offline."""
    if not is_offline(options.algo):
        raise ValueError(
            f"train --offline learns with {', '.join(OFFLINE_ALGORITHMS)}, not {options.algo}; "
            f"pass --algo {' | '.join(OFFLINE_ALGORITHMS)}"
        )
    logs_dir = Path(logs_dir)
    steps, info = read_logs(logs_dir)
    options = options_for_logs(options, info, logs_dir)
    raw_space = gym.spaces.Box(
        np.asarray(info.obs_low, np.float32), np.asarray(info.obs_high, np.float32)
    )
    check_logs_fit_env(steps, info, raw_space, options, logs_dir)
    split = split_stays(steps.n_stays, options.seed)
    if len(split["train"]) == 0 or len(split["val"]) == 0:
        raise LogsError(
            f"{logs_dir}: {steps.n_stays} stays are too few to split into train and validation "
            "stays; log at least 10 episodes"
        )
    center, scale = normalization_constants(raw_space)
    if not options.normalize_obs:
        center, scale = np.zeros_like(center), np.ones_like(scale)

    def batch_of(split_name: str) -> dict[str, np.ndarray]:
        part = steps.select_stays(split[split_name])
        return transitions_of(part, center, scale, options.gamma)

    data = OfflineData(
        logs_dir=logs_dir,
        info=info,
        raw_space=raw_space,
        train=batch_of("train"),
        val=batch_of("val"),
        stays={name: int(len(stays)) for name, stays in split.items()},
    )
    return options, data


def options_for_logs(options: RLOptions, info: LogsInfo, logs_dir: Path) -> RLOptions:
    """`options` with the env the logs come from (so that a checkpoint is served on it);
    imported logs keep the options' env, which must then fit them."""
    if info.env == "imported":
        return options
    from training.rl.options import options_from_dict

    try:
        return options_from_dict({"env": info.env, "env_kwargs": dict(info.env_kwargs)}, options)
    except ValueError as err:
        raise LogsError(f"{logs_dir}: the logs' env {info.env!r} is not usable: {err}") from None


def check_logs_fit_env(
    steps: LoggedSteps, info: LogsInfo, raw_space: gym.spaces.Box, options: RLOptions, where: Path
) -> None:
    """Refuse logs whose observations, bounds or actions differ from the env a checkpoint will
    be served on: the served policy normalises with that env's bounds."""
    env = make_raw_env({"env_id": options.env, "env_kwargs": resolved_env_kwargs(options)})
    space, actions = env.observation_space, env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box) or space.shape != raw_space.shape:
        raise LogsError(
            f"{where}: the logs hold observations of shape {raw_space.shape}, env "
            f"{options.env} has {space}"
        )
    env_constants = normalization_constants(space)
    log_constants = normalization_constants(raw_space)
    if not all(np.allclose(a, b) for a, b in zip(env_constants, log_constants, strict=True)):
        raise LogsError(
            f"{where}: the logs' observation bounds (logs.json obs_low/obs_high) differ from "
            f"env {options.env}'s, so a trained policy would be served with another "
            "normalisation; train on logs of that env (imported logs: name an env with the "
            "same bounds, --set env=ID)"
        )
    if not isinstance(actions, gym.spaces.Discrete) or int(actions.n) != info.n_actions:
        raise LogsError(
            f"{where}: the logs have {info.n_actions} actions, env {options.env} has {actions}"
        )
    if len(steps) and (steps.actions.min() < 0 or steps.actions.max() >= info.n_actions):
        raise LogsError(
            f"{where}: logged actions span {steps.actions.min()}..{steps.actions.max()}, "
            f"outside 0..{info.n_actions - 1}"
        )


def transitions_of(
    steps: LoggedSteps, center: np.ndarray, scale: np.ndarray, gamma: float
) -> dict[str, np.ndarray]:
    """The steps as a batch of the network's inputs, with every key any algorithm reads."""
    return {
        OBS: normalize(steps.obs, center, scale),
        NEXT_OBS: normalize(steps.next_obs, center, scale),
        ACTIONS: steps.actions.astype(np.int64),
        REWARDS: steps.rewards.astype(np.float32),
        TERMINATEDS: steps.terminated.astype(bool),
        TRUNCATEDS: steps.truncated.astype(bool),
        VALUE_TARGETS: returns_to_go(steps.rewards, steps.stay, gamma),
    }


def returns_to_go(rewards: np.ndarray, stay: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma G_{t+1} within each stay, for rows sorted by (stay, step); a stay's
    last logged step has G = r (a truncated stay is not bootstrapped: Monte Carlo)."""
    n = len(rewards)
    g = np.asarray(rewards, dtype=np.float64).copy()
    if n == 0:
        return g.astype(np.float32)
    last_row = np.flatnonzero(np.r_[stay[1:] != stay[:-1], True])  # each stay's last row
    steps_to_end = last_row[np.searchsorted(last_row, np.arange(n))] - np.arange(n)
    order = np.argsort(steps_to_end, kind="stable")
    edges = np.searchsorted(steps_to_end[order], np.arange(steps_to_end.max() + 2))
    for k in range(1, steps_to_end.max() + 1):  # one vector step per distance to the stay's end
        rows = order[edges[k] : edges[k + 1]]
        g[rows] += gamma * g[rows + 1]
    return g.astype(np.float32)


def batch_for(algo: str, transitions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys `algo`'s learner reads."""
    keys = {
        "bc": (OBS, ACTIONS),
        "marwil": (OBS, ACTIONS, VALUE_TARGETS),
        "cql": (OBS, NEXT_OBS, ACTIONS, REWARDS, TERMINATEDS, TRUNCATEDS),
    }[algo]
    return {key: transitions[key] for key in keys}


# -- the RLlib config ------------------------------------------------------------------------------
def network_space(raw_space: gym.spaces.Box, options: RLOptions) -> gym.spaces.Box:
    """The observation space the network sees: `BoxNormalization`'s when normalising."""
    if not options.normalize_obs:
        return raw_space
    bounded = (np.abs(raw_space.low) < UNBOUNDED) & (np.abs(raw_space.high) < UNBOUNDED)
    low = np.where(bounded, -1.0, raw_space.low).astype(np.float32)
    high = np.where(bounded, 1.0, raw_space.high).astype(np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


def build_offline_config(options: RLOptions, raw_space: gym.spaces.Box, n_actions: int):
    """The RLlib config of an offline run of `options.algo` (bc, marwil, cql)."""
    from training.rl.config_parts import policy_gradient_model, q_network_model

    own = getattr(options, options.algo)
    if options.algo == "cql":
        from training.rl.offline.cql import DiscreteCQLConfig

        config = DiscreteCQLConfig().training(
            cql_alpha=own.cql_alpha,
            updates_per_iteration=own.updates_per_iteration,
            dueling=options.dueling,
            double_q=options.double_q,
            lr=own.lr,
            gamma=options.gamma,
            n_step=1,
            train_batch_size=own.train_batch_size,
            target_network_update_freq=own.target_network_update_freq,
            tau=options.tau,
            grad_clip=options.grad_clip,
            num_steps_sampled_before_learning_starts=0,
        )
        model = q_network_model(options)
    else:
        from training.rl.offline.marwil import LoggedBCConfig, LoggedMARWILConfig

        if options.algo == "bc":
            config = LoggedBCConfig().training(lr=own.lr)
        else:
            config = LoggedMARWILConfig().training(
                lr=own.lr,
                gamma=options.gamma,
                beta=own.beta,
                vf_coeff=own.vf_coeff,
                moving_average_sqd_adv_norm_start=own.moving_average_sqd_adv_norm_start,
                moving_average_sqd_adv_norm_update_rate=own.moving_average_sqd_adv_norm_update_rate,
            )
        config.training(
            train_batch_size_per_learner=own.train_batch_size,
            updates_per_iteration=own.updates_per_iteration,
        )
        model = policy_gradient_model(options)
    return (
        config.environment(
            observation_space=network_space(raw_space, options),
            action_space=gym.spaces.Discrete(n_actions),
        )
        .framework("torch")
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)  # the driver learns: validation reads its module directly
        .rl_module(model_config=model)
        .evaluation(evaluation_interval=None)
        .reporting(min_sample_timesteps_per_iteration=0, min_time_s_per_iteration=0)
        .debugging(seed=options.seed)
    )


# -- validation ------------------------------------------------------------------------------------
def validation_scores(module, algo: str, val: dict[str, np.ndarray], gamma: float) -> dict:
    """`val_loss` (BC, MARWIL: mean negative log-likelihood of the logged actions; CQL: mean
    Huber loss of the one-step Bellman residual r + gamma (1 - terminated) max_a' Q(s', a') -
    Q(s, a) of the online network) and `val_agreement` (greedy action == logged action) on
    the validation transitions."""
    import torch

    obs = torch.from_numpy(val[OBS])
    actions = torch.from_numpy(val[ACTIONS])
    with torch.no_grad():
        if algo == "cql":
            scores = module.compute_q_values({OBS: obs})["qf_preds"]
            q_next = module.compute_q_values({OBS: torch.from_numpy(val[NEXT_OBS])})["qf_preds"]
            alive = 1.0 - torch.from_numpy(val[TERMINATEDS].astype(np.float32))
            target = torch.from_numpy(val[REWARDS]) + gamma * alive * q_next.max(-1).values
            q_logged = scores.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            loss = torch.nn.functional.huber_loss(q_logged, target, delta=1.0)
        else:
            scores = module.forward_inference({OBS: obs})["action_dist_inputs"]
            logp = torch.log_softmax(scores, dim=-1).gather(-1, actions.unsqueeze(-1))
            loss = -logp.mean()
        agreement = (scores.argmax(-1) == actions).float().mean()
    return {"val_loss": float(loss), "val_agreement": float(agreement)}


def learner_module(algo):
    """The RLModule of the driver's learner (`algo.get_module()` reads env runners, which an
    offline algorithm has none of)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    return algo.learner_group._learner.module[DEFAULT_MODULE_ID]


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class OfflineSummary:
    """Where an offline run stopped and what it left behind (`summary.json`)."""

    out_dir: str
    algo: str
    logs_dir: str
    stop_reason: str
    iterations: int
    updates: int
    transitions: int
    elapsed_s: float
    best_val_loss: float
    best_iteration: int
    best_val_agreement: float
    initial_val_loss: float
    initial_val_agreement: float
    last_checkpoint: str
    best_checkpoint: str


class OfflineMetricsWriter:
    """Appends each iteration's row to metrics.csv, metrics.jsonl and TensorBoard."""

    def __init__(self, run: RunDir) -> None:
        from tensorboardX import SummaryWriter

        self.run = run
        self.tb = SummaryWriter(str(run.tensorboard))

    def write(self, row: dict[str, Any]) -> None:
        new = not self.run.metrics_csv.exists()
        with self.run.metrics_csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=OFFLINE_METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        with self.run.metrics_jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "iteration" and isinstance(value, int | float) and math.isfinite(value):
                self.tb.add_scalar(f"offline/{key}", value, row["iteration"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def train_offline(
    logs_dir: str | Path,
    options: RLOptions,
    out: str | Path,
    *,
    data: OfflineData | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train `options.algo` (bc, marwil, cql) on the train stays of the logs in `logs_dir` for
    `<algo>.iterations` iterations (or `time_budget_s`), keeping the checkpoint with the lowest
    validation loss as `checkpoints/best`; returns the run folder `out` (`summary.json` says
    how the run went). `data`: the result of `load_offline_data` (read here when None)."""
    from sepsis_rl.common.ray_local import LOOPBACK_ENV
    from training.rl.config_parts import configure_learner_process
    from training.rl.train import prepare_run_dir

    if data is None:
        options, data = load_offline_data(logs_dir, options)
    run = RunDir(out)
    prepare_run_dir(run, options, resume=False)
    write_json_atomic(
        run.root / OFFLINE_FILE,
        {"logs_dir": str(Path(logs_dir).resolve()), "info": asdict(data.info), **data.stays},
    )
    # No Ray is started: the one learner runs in this process and nothing samples an env. Should
    # RLlib start one anyway, it binds to loopback only.
    os.environ.setdefault(LOOPBACK_ENV, "0")
    configure_learner_process(options)
    algo = build_offline_config(options, data.raw_space, data.info.n_actions).build_algo()
    writer = OfflineMetricsWriter(run)
    start = time.monotonic()
    try:
        algo.load_transitions(batch_for(options.algo, data.train))

        def validate() -> dict[str, float]:
            return validation_scores(learner_module(algo), options.algo, data.val, options.gamma)

        initial = validate()
        last, best, reason = train_iterations(algo, options, run, writer, validate, on_iteration)
        save_checkpoint(algo, run.last, options, False)
        summary = OfflineSummary(
            out_dir=str(run.root),
            algo=options.algo,
            logs_dir=str(logs_dir),
            stop_reason=reason,
            iterations=last["iteration"],
            updates=last["updates"],
            transitions=last["transitions"],
            elapsed_s=time.monotonic() - start,
            best_val_loss=best["val_loss"],
            best_iteration=best["iteration"],
            best_val_agreement=best["val_agreement"],
            initial_val_loss=initial["val_loss"],
            initial_val_agreement=initial["val_agreement"],
            last_checkpoint=str(run.last),
            best_checkpoint=str(run.best),
        )
        write_json_atomic(run.summary, asdict(summary))
        return run.root
    finally:
        writer.close()
        algo.stop()


def train_iterations(
    algo,
    options: RLOptions,
    run: RunDir,
    writer: OfflineMetricsWriter,
    validate: Callable[[], dict[str, float]],
    on_iteration: Callable[[dict[str, Any]], None] | None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Train until the iterations or the time budget are used up (or Ctrl-C / SIGTERM), saving
    `best` at each lower validation loss and `last` every `checkpoint_every` iterations.
    Returns the last row, the best row and what stopped the run."""
    from training.rl.train import INTERRUPTED, stop_on_signals

    iterations = getattr(options, options.algo).iterations
    best: dict[str, Any] = {"val_loss": math.inf, "val_agreement": math.nan, "iteration": 0}
    start = time.monotonic()
    with stop_on_signals() as stop:
        for iteration in range(1, iterations + 1):
            result = algo.train()
            row = offline_metrics(result, options, iteration, time.monotonic() - start)
            reason = stop_reason(options, iteration, iterations, time.monotonic() - start)
            if stop.signal is not None:
                reason = f"{INTERRUPTED} ({stop.signal})"
            if should_validate(options, iteration, iterations) or reason is not None:
                row.update(validate())  # the last iteration is always validated: best exists
                if row["val_loss"] < best["val_loss"]:
                    best = dict(row)
                    save_checkpoint(algo, run.best, options, False)
            writer.write(row)
            if on_iteration is not None:
                on_iteration(row)
            if reason is not None:
                if best["iteration"] == 0:  # no finite validation loss (diverged): keep the last
                    best = dict(row)
                    save_checkpoint(algo, run.best, options, False)
                return row, best, reason
            if iteration % max(1, options.checkpoint_every) == 0:
                save_checkpoint(algo, run.last, options, False)
    raise AssertionError("unreachable: the last iteration always stops the run")


def should_validate(options: RLOptions, iteration: int, iterations: int) -> bool:
    """Validate every `evaluation_interval` iterations (0: only at the last one) and at the
    last one."""
    interval = options.evaluation_interval
    return iteration == iterations or (interval > 0 and iteration % interval == 0)


def stop_reason(
    options: RLOptions, iteration: int, iterations: int, elapsed_s: float
) -> str | None:
    """Which budget (if any) the run has used up."""
    if iteration >= iterations:
        return f"iterations >= {iterations}"
    if options.time_budget_s is not None and elapsed_s >= options.time_budget_s:
        return f"time >= {options.time_budget_s:g} s"
    return None


def offline_metrics(
    result: dict[str, Any], options: RLOptions, iteration: int, elapsed_s: float
) -> dict[str, Any]:
    """One row of metrics.csv from an RLlib result (validation columns NaN until filled)."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import LEARNER_RESULTS

    from training.rl.results import LEARNING_RATE_KEY

    learner = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
    own = getattr(options, options.algo)
    updates = iteration * own.updates_per_iteration
    return {
        "iteration": iteration,
        "updates": updates,
        "transitions": updates * own.train_batch_size,
        "time_s": elapsed_s,
        "loss": _float(learner.get(LOSS_KEYS[options.algo])),
        "learning_rate": _float(learner.get(LEARNING_RATE_KEY)),
        "val_loss": math.nan,
        "val_agreement": math.nan,
        "env_steps": 0,
        "eval_return_mean": math.nan,
    }


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
