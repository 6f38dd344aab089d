"""The greedy policy of a trained checkpoint, served from the bare RLModule (no Ray needed).

RLlib's env-to-module connectors do not run when a bare RLModule is served, so the observation
normalisation training used (`BoxNormalization`, inside the env creator) is applied here again,
from the same env's Box bounds.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from training.rl.envs import make_raw_env, normalization_constants, normalize
from training.rl.options import RLOptions, load_options, resolved_env_kwargs
from training.rl.run_dir import MODULE_SUBDIR, OPTIONS_FILE


class GreedyPolicy:
    """argmax_a Q(s, a) of a trained DQN checkpoint; callable on one raw observation."""

    def __init__(self, module, options: RLOptions, observation_space: gym.spaces.Box) -> None:
        self.module = module
        self.options = options
        self.observation_space = observation_space
        self.center_, self.scale_ = normalization_constants(observation_space)

    def prepare(self, observations: np.ndarray) -> np.ndarray:
        """Raw observations (env units) -> the network's input, as in training."""
        obs = np.asarray(observations, dtype=np.float32)
        if self.options.normalize_obs:
            obs = normalize(obs, self.center_, self.scale_)
        return obs

    def q_values(self, observations: np.ndarray) -> np.ndarray:
        """Q-values, shape (batch, actions), for a batch of raw observations."""
        import torch
        from ray.rllib.core.columns import Columns

        obs = self.prepare(np.atleast_2d(observations))
        with torch.no_grad():
            out = self.module.compute_q_values({Columns.OBS: torch.from_numpy(obs)})
        return out["qf_preds"].cpu().numpy()

    def actions(self, observations: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of raw observations."""
        return np.argmax(self.q_values(observations), axis=-1)

    def __call__(self, observation: np.ndarray) -> int:
        return int(self.actions(np.asarray(observation)[None])[0])


def load_policy(checkpoint: str | Path) -> GreedyPolicy:
    """The greedy policy of an algorithm checkpoint written by `sepsis-rl train`."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint)
    module_dir = checkpoint / MODULE_SUBDIR
    options_file = checkpoint / OPTIONS_FILE
    if not module_dir.is_dir() or not options_file.exists():
        raise FileNotFoundError(
            f"{checkpoint} is not a checkpoint written by `sepsis-rl train` "
            f"(expected {MODULE_SUBDIR} and {OPTIONS_FILE} inside it); "
            "pass a run's checkpoints/last or checkpoints/best"
        )
    options = load_options(options_file)
    module = RLModule.from_checkpoint(str(module_dir.resolve()))
    module.eval()
    env = make_raw_env({"env_id": options.env, "env_kwargs": resolved_env_kwargs(options)})
    space = env.observation_space
    env.close()
    return GreedyPolicy(module, options, space)


def evaluation_module(algorithm, eval_workers):
    """The RLModule a custom evaluation should act with: the evaluation runner's (weights synced
    from the learner before RLlib calls the function), else the algorithm's."""
    runner = getattr(eval_workers, "local_env_runner", None) if eval_workers else None
    return runner.module if runner is not None else algorithm.get_module()


EVAL_POLICIES = ("random", "no_treatment", "all_treatments", "protocol", "age_adaptive")
"""Baselines of `sepsis_env.policies.BASELINES` the learned policy is compared with, the
clinician protocol and the best hand rule we know (the age-adaptive protocol) among them."""


REFERENCE = "protocol"
"""The policy differences are taken against."""


HAND_RULE = "age_adaptive"
"""The best hand rule we know (`sepsis_env.policies.AgeAdaptiveProtocol`): it reads only the
observation and a pharmacological prior, so a learned policy should reach it."""


LEARNED = "dqn"
"""Name of the learned greedy policy in reports and figures."""


POLICY_NAMES = {
    LEARNED: "Learned policy (DQN, greedy)",
    "protocol": "Clinician protocol",
    "age_adaptive": "Age-adaptive protocol (hand rule)",
    "random": "Random",
    "no_treatment": "No treatment",
    "all_treatments": "All treatments always",
}
"""How each policy is called in figures and the report."""


def sepsis_policies(policy: GreedyPolicy) -> dict:
    """The learned greedy policy and the baselines, as `policy(obs, rng) -> action` callables."""
    from sepsis_env.policies import BASELINES

    policies = {LEARNED: lambda obs, rng: policy(obs)}
    policies.update({name: BASELINES[name] for name in EVAL_POLICIES})
    return policies
