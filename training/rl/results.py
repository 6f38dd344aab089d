"""RLlib result keys, read and written in one place: the per-iteration metrics of a run.

RLlib's own keys are the constants of `ray.rllib.utils.metrics`; the keys this project adds to
evaluation results (`SURVIVAL_KEY`, ...) are defined here, beside the function that logs them
where RLlib reads evaluation results back (`report_evaluation`) and the one that reads every key
back into one flat row of `metrics.csv` (`metrics_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    FAULT_TOLERANCE_STATS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
)
from ray.tune.result import TIME_THIS_ITER_S, TIME_TOTAL_S, TRAINING_ITERATION

from training.rl.options import RLOptions

EPISODE_RETURNS_KEY = "episode_returns"
"""Result key (under `env_runners`) of the list of returns of the episodes ended this iteration
(logged by `training.rl.callbacks.log_episode_return` and by `report_evaluation`)."""
SURVIVAL_KEY = "survival"
"""Evaluation-result key: fraction of validation episodes survived under the greedy policy."""
RETURN_VS_PROTOCOL_KEY = "return_minus_protocol"
"""Evaluation-result key: mean paired return difference to the clinician protocol."""
SURVIVAL_VS_PROTOCOL_KEY = "survival_minus_protocol"
"""Evaluation-result key: paired survival difference to the clinician protocol."""
EXACT_VALUE_KEY = "exact_value"
"""Evaluation-result key of the exact value on ICU-Sepsis (equal to `episode_return_mean`)."""
GAP_CLOSED_KEY = "gap_closed"
"""Evaluation-result key of the fraction of the random-to-optimal gap closed (ICU-Sepsis)."""
LEARNING_RATE_KEY = "default_optimizer_learning_rate"
"""Learner-result key of the current learning rate (RLlib names it after the optimizer)."""
QF_LOSS_KEY = "qf_loss"
"""Learner-result key of DQN's TD loss (`ray.rllib.algorithms.dqn.dqn_learner.QF_LOSS_KEY`;
imported lazily there, so it is restated here)."""
TOTAL_LOSS_KEY = "total_loss"
"""Learner-result key of the policy-gradient algorithms' whole loss (policy, value, entropy;
`ray.rllib.core.learner.learner.TOTAL_LOSS_KEY`)."""
FAULT_TOLERANCE_HEALTHY = "num_healthy_workers"
"""Key (under `fault_tolerance`) of the env runners alive this iteration."""


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
    "loss",
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
    loss: float  # DQN: the TD loss; PPO, APPO, IMPALA: the total loss
    learning_rate: float
    epsilon: float  # DQN's exploration; NaN for the policy-gradient algorithms
    updates: int
    healthy_env_runners: int


def epsilon_at(options: RLOptions, env_steps: int) -> float:
    """Epsilon of DQN's linear schedule after `env_steps` (RLlib does not report it); NaN for
    the policy-gradient algorithms, which explore by sampling their policy."""
    if options.algo != "dqn":
        return float("nan")
    frac = min(1.0, env_steps / max(1, options.epsilon_timesteps))
    return options.epsilon_start + frac * (options.epsilon_end - options.epsilon_start)


def update_batch_size(options: RLOptions) -> int:
    """Transitions per learner update of `options.algo` (PPO: a minibatch)."""
    if options.algo == "dqn":
        return options.train_batch_size
    if options.algo == "ppo":
        return options.ppo.minibatch_size
    return getattr(options, options.algo).train_batch_size


def metrics_of(result: dict[str, Any], options: RLOptions, last_eval: float) -> IterationMetrics:
    """The flat per-iteration metrics from an RLlib result dict."""
    runners = result.get(ENV_RUNNER_RESULTS, {})
    learner = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
    env_steps = int(result.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0) or 0)
    evaluation = result.get(EVALUATION_RESULTS, {}).get(ENV_RUNNER_RESULTS, {})
    eval_return = evaluation.get(EPISODE_RETURN_MEAN, last_eval)
    iter_time = float(result.get(TIME_THIS_ITER_S, 0.0) or 0.0)
    sampled = float(runners.get(NUM_ENV_STEPS_SAMPLED, 0.0) or 0.0)
    trained = int(learner.get(NUM_MODULE_STEPS_TRAINED_LIFETIME, 0) or 0)
    healthy = result.get(FAULT_TOLERANCE_STATS, {}).get(FAULT_TOLERANCE_HEALTHY)
    return IterationMetrics(
        iteration=int(result[TRAINING_ITERATION]),
        env_steps=env_steps,
        episodes=int(runners.get(NUM_EPISODES_LIFETIME, 0) or 0),
        time_s=float(result.get(TIME_TOTAL_S, 0.0)),
        steps_per_s=sampled / iter_time if iter_time > 0 else float("nan"),
        episode_return_mean=_float(runners.get(EPISODE_RETURN_MEAN)),
        episode_len_mean=_float(runners.get(EPISODE_LEN_MEAN)),
        eval_return_mean=_float(eval_return),
        eval_return_minus_protocol=_float(evaluation.get(RETURN_VS_PROTOCOL_KEY)),
        eval_survival_minus_protocol=_float(evaluation.get(SURVIVAL_VS_PROTOCOL_KEY)),
        loss=_float(learner.get(QF_LOSS_KEY if options.algo == "dqn" else TOTAL_LOSS_KEY)),
        learning_rate=_float(learner.get(LEARNING_RATE_KEY)),
        epsilon=epsilon_at(options, env_steps),
        updates=trained // max(1, update_batch_size(options)),
        healthy_env_runners=int(options.num_env_runners if healthy is None else healthy),
    )


def episode_returns_of(result: dict[str, Any]) -> list[float]:
    """The return of every training episode that ended in this iteration."""
    return [float(r) for r in as_list(result.get(ENV_RUNNER_RESULTS, {}).get(EPISODE_RETURNS_KEY))]


def evaluation_returns_of(result: dict[str, Any]) -> list[float]:
    """The return of every evaluation episode of this iteration (empty when none ran)."""
    evaluation = result.get(EVALUATION_RESULTS, {}).get(ENV_RUNNER_RESULTS, {})
    return [float(r) for r in as_list(evaluation.get(EPISODE_RETURNS_KEY))]


def evaluated(result: dict[str, Any]) -> bool:
    """Whether this iteration ran an evaluation."""
    return EVALUATION_RESULTS in result


def report_evaluation(
    algorithm, results: dict[str, float], episode_returns: list[float] | None = None
) -> None:
    """Log a custom evaluation's results where RLlib reads evaluation results back: its metrics
    merge evaluation results as env-runner results, so they are reduced in a logger of their own
    and merged like an env runner's. `episode_returns` go where the `on_episode_end` callback
    puts sampled episodes' returns (`EPISODE_RETURNS_KEY`), for intervals over episodes."""
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    logger = MetricsLogger()
    for key, value in results.items():
        logger.log_value(key, value, reduce="mean", window=1)
    for value in episode_returns or []:
        logger.log_value(EPISODE_RETURNS_KEY, value, reduce="item_series")
    algorithm.metrics.aggregate([logger.reduce()], key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS))


def results_of(results: dict[str, float]) -> dict[str, Any]:
    """The dict a custom evaluation function returns (RLlib nests it under `evaluation`)."""
    return {ENV_RUNNER_RESULTS: results}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


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
