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
from ray.rllib.utils.metrics import EPISODE_LEN_MEAN, EPISODE_RETURN_MEAN

from sepsis_env.ids import is_sepsis_env
from training.rl.envs import evaluation_env_config_of
from training.rl.options import RLOptions, evaluation_episodes_of
from training.rl.results import (
    RETURN_VS_PROTOCOL_KEY,
    SURVIVAL_KEY,
    SURVIVAL_VS_PROTOCOL_KEY,
    report_evaluation,
    results_of,
)

VALIDATION_SEED = 20_000
"""Seed of the validation episodes (episode i starts from `reset(seed=VALIDATION_SEED + i)`)."""
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

    def __getstate__(self) -> dict:
        """Pickled without its vector env and protocol results (rebuilt on first use): RLlib
        pickles the config, this function in it, into every checkpoint and Tune trial."""
        return {"options": self.options, "_envs": None, "_protocol": None}

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
        from training.rl.policy import GreedyPolicy, evaluation_module

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
            EPISODE_RETURN_MEAN: float(np.mean(greedy.returns)),
            EPISODE_LEN_MEAN: float(np.mean(greedy.lengths)),
            SURVIVAL_KEY: float(np.mean(greedy.survived)),
            RETURN_VS_PROTOCOL_KEY: paired_difference(greedy, self._protocol, "return")[0],
            SURVIVAL_VS_PROTOCOL_KEY: paired_difference(greedy, self._protocol, "survival")[0],
        }
        report_evaluation(algorithm, results, episode_returns=greedy.returns.tolist())
        return results_of(results), int(greedy.lengths.sum()), len(greedy.returns)


def custom_evaluation_for(options: RLOptions) -> EvaluationFunction | None:
    """The evaluation during training that fits the env: ICU-Sepsis (known dynamics) is valued
    exactly, SepsisEnv by paired validation episodes in its vector env; other envs by RLlib's own
    sampled episodes (None)."""
    from training.rl.icu_sepsis import exact_evaluation_for

    return exact_evaluation_for(options) or validation_function_for(options)
