"""SepsisEnv runs are evaluated during training on many validation patients, paired, in one batch.

RLlib's own evaluation samples a few dozen episodes with fresh randomness each time. Their mean
return is too noisy to choose a checkpoint by: with 50 episodes per evaluation, `checkpoints/best`
was worse on the test patients than the last checkpoint in all three runs we checked (the best of
many noisy scores is mostly the luckiest). So for SepsisEnv, `validation_function_for` gives
RLlib a `custom_evaluation_function` that, in the driver:

* runs `evaluation_episodes` episodes of the greedy policy on the validation patients
  (`evaluation_split`) in the native vector env, all at once, the network acting on the whole
  batch each step (`sepsis_env.policies.evaluate_vector`; 1,000 episodes take well under a second);
* uses the same episodes (patients and random streams, `VALIDATION_SEED`) at every evaluation,
  so two checkpoints' scores differ by their policies, not by their luck (common random numbers);
* runs the clinician protocol once on those episodes and reports the paired differences to it.

The reported `episode_return_mean` is what `checkpoints/best` is chosen by. The test patients are
never touched during training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from training.rl_config import (
    RLOptions,
    evaluation_env_config_of,
    evaluation_episodes_of,
    is_sepsis_env,
)

VALIDATION_SEED = 20_000
"""Seed of the validation episodes (episode i starts from `reset(seed=VALIDATION_SEED + i)`)."""
SURVIVAL_KEY = "survival"
"""Evaluation-result key: fraction of validation episodes survived under the greedy policy."""
RETURN_VS_PROTOCOL_KEY = "return_minus_protocol"
"""Evaluation-result key: mean paired return difference to the clinician protocol."""
SURVIVAL_VS_PROTOCOL_KEY = "survival_minus_protocol"
"""Evaluation-result key: paired survival difference to the clinician protocol."""

EvaluationFunction = Callable[[Any, Any], tuple[dict[str, Any], int, int]]


def validation_function_for(options: RLOptions) -> EvaluationFunction | None:
    """The paired validation evaluation for SepsisEnv runs on a patient split; None otherwise."""
    config = evaluation_env_config_of(options)
    if not is_sepsis_env(options.env) or "split" not in config["env_kwargs"]:
        return None
    if evaluation_episodes_of(options) < 1:
        raise ValueError(f"evaluation_episodes must be >= 1, got {options.evaluation_episodes}")
    return ValidationEvaluation(options)


class ValidationEvaluation:
    """RLlib `custom_evaluation_function`: the greedy policy against the protocol on the same
    validation episodes every time (see the module docstring). Built lazily in the driver."""

    def __init__(self, options: RLOptions) -> None:
        self.options = options
        self._envs = None
        self._protocol = None

    def _setup(self) -> None:
        import gymnasium as gym

        import sepsis_env  # noqa: F401  registers SepsisEnv-v0 in this process
        from sepsis_env.policies import clinician_protocol, evaluate_vector, per_row

        config = evaluation_env_config_of(self.options)
        episodes = evaluation_episodes_of(self.options)
        self._envs = gym.make_vec(
            config["env_id"],
            num_envs=episodes,
            vectorization_mode="vector_entry_point",
            **config["env_kwargs"],
        )
        protocol = per_row(clinician_protocol, episodes, VALIDATION_SEED)
        self._protocol = evaluate_vector(protocol, self._envs, VALIDATION_SEED)

    def __call__(self, algorithm, eval_workers) -> tuple[dict[str, Any], int, int]:
        from sepsis_env.policies import evaluate_vector, paired_difference
        from training.rl_eval import GreedyPolicy

        if self._envs is None:
            self._setup()
        module = evaluation_module(algorithm, eval_workers)
        policy = GreedyPolicy(module, self.options, self._envs.single_observation_space)
        seed = VALIDATION_SEED
        was_training = module.training
        module.eval()
        try:
            greedy = evaluate_vector(lambda obs, _: policy.actions(obs), self._envs, seed)
        finally:
            module.train(was_training)
        results: dict[str, Any] = {
            "episode_return_mean": float(np.mean(greedy.returns)),
            "episode_len_mean": float(np.mean(greedy.lengths)),
            SURVIVAL_KEY: float(np.mean(greedy.survived)),
            RETURN_VS_PROTOCOL_KEY: paired_difference(greedy, self._protocol, "return")[0],
            SURVIVAL_VS_PROTOCOL_KEY: paired_difference(greedy, self._protocol, "survival")[0],
        }
        report_evaluation(algorithm, results, episode_returns=greedy.returns.tolist())
        return results_of(results), int(greedy.lengths.sum()), len(greedy.returns)


def evaluation_module(algorithm, eval_workers):
    """The RLModule a custom evaluation should act with: the evaluation runner's (weights synced
    from the learner before RLlib calls the function), else the algorithm's."""
    runner = getattr(eval_workers, "local_env_runner", None) if eval_workers else None
    return runner.module if runner is not None else algorithm.get_module()


def report_evaluation(
    algorithm, results: dict[str, float], episode_returns: list[float] | None = None
) -> None:
    """Log a custom evaluation's results where RLlib reads evaluation results back: its metrics
    merge evaluation results as env-runner results, so they are reduced in a logger of their own
    and merged like an env runner's. `episode_returns` go where the `on_episode_end` callback
    puts sampled episodes' returns (`EPISODE_RETURNS_KEY`), for intervals over episodes."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EVALUATION_RESULTS
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from training.rl_config import EPISODE_RETURNS_KEY

    logger = MetricsLogger()
    for key, value in results.items():
        logger.log_value(key, value, reduce="mean", window=1)
    for value in episode_returns or []:
        logger.log_value(EPISODE_RETURNS_KEY, value, reduce="item_series")
    algorithm.metrics.aggregate([logger.reduce()], key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS))


def results_of(results: dict[str, float]) -> dict[str, Any]:
    """The dict a custom evaluation function returns (RLlib nests it under `evaluation`)."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS

    return {ENV_RUNNER_RESULTS: results}
