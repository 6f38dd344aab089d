"""The greedy policy of a trained checkpoint, served from the bare RLModule (no Ray needed).

RLlib's env-to-module connectors do not run when a bare RLModule is served, so the observation
normalisation training used (`BoxNormalization`, inside the env creator) is applied here again,
from the same env's Box bounds.

`load_policy` checks the checkpoint against its manifest before RLlib unpickles anything
(`training.rl.run_dir.verify_checkpoint`), then refuses options or a module that do not fit: each
error names the file and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from training.rl.envs import make_raw_env, normalization_constants, normalize
from training.rl.options import RLOptions, load_options, resolved_env_kwargs
from training.rl.run_dir import MODULE_SUBDIR, OPTIONS_FILE, CheckpointError, verify_checkpoint

Q_LEARNERS = ("dqn", "cql")
"""The algorithms whose network gives Q-values (RLlib's DQN module); the others give logits."""


class GreedyPolicy:
    """The greedy policy of a trained checkpoint, callable on one raw observation: argmax_a of
    the network's action scores, Q(s, a) for DQN and the policy's logits for PPO, APPO and
    IMPALA (RLlib's `explore=False` takes the same argmax of the logits)."""

    def __init__(self, module, options: RLOptions, observation_space: gym.spaces.Box) -> None:
        self.module = module
        self.options = options
        self.observation_space = observation_space
        self.center_, self.scale_ = normalization_constants(observation_space)

    @property
    def has_q_values(self) -> bool:
        """Whether the scores are Q-values (DQN, CQL) rather than logits of a policy."""
        return self.options.algo in Q_LEARNERS

    def prepare(self, observations: np.ndarray) -> np.ndarray:
        """Raw observations (env units) -> the network's input, as in training."""
        obs = np.asarray(observations, dtype=np.float32)
        if self.options.normalize_obs:
            obs = normalize(obs, self.center_, self.scale_)
        return obs

    def scores(self, observations: np.ndarray) -> np.ndarray:
        """Action scores, shape (batch, actions), for a batch of raw observations: Q-values
        (DQN) or the policy's logits (PPO, APPO, IMPALA)."""
        import torch
        from ray.rllib.core.columns import Columns

        batch = {Columns.OBS: torch.from_numpy(self.prepare(np.atleast_2d(observations)))}
        with torch.no_grad():
            if self.has_q_values:
                return self.module.compute_q_values(batch)["qf_preds"].cpu().numpy()
            return self.module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].cpu().numpy()

    def q_values(self, observations: np.ndarray) -> np.ndarray:
        """Q-values, shape (batch, actions) (DQN only)."""
        if not self.has_q_values:
            raise ValueError(f"a {self.options.algo} policy has no Q-values; use probabilities")
        return self.scores(observations)

    def probabilities(self, observations: np.ndarray) -> np.ndarray:
        """The policy's action probabilities, shape (batch, actions) (PPO, APPO, IMPALA: the
        softmax of the logits; the greedy action is their argmax)."""
        if self.has_q_values:
            raise ValueError("a DQN policy has Q-values, not action probabilities")
        logits = self.scores(observations)
        logits = logits - logits.max(axis=-1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=-1, keepdims=True)

    def actions(self, observations: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of raw observations."""
        return np.argmax(self.scores(observations), axis=-1)

    def __call__(self, observation: np.ndarray) -> int:
        return int(self.actions(np.asarray(observation)[None])[0])


MODULE_CLASSES = {
    "dqn": ("DefaultDQNTorchRLModule",),
    "ppo": ("DefaultPPOTorchRLModule",),
    "impala": ("DefaultPPOTorchRLModule",),  # IMPALA trains RLlib's PPO module
    "appo": ("DefaultAPPOTorchRLModule",),
    "bc": ("DefaultBCTorchRLModule",),
    "marwil": ("DefaultPPOTorchRLModule",),  # MARWIL trains RLlib's PPO module (policy + value)
    "cql": ("DefaultDQNTorchRLModule",),  # discrete CQL trains RLlib's DQN module
}
"""The RLModule class each algorithm's checkpoint holds (RLlib's defaults)."""


def check_algorithm(checkpoint: str | Path, algo: str | None) -> RLOptions:
    """The checkpoint's options, after checking that it was trained by `algo` (None: any). The
    algorithm is read from the checkpoint's own `options.yaml` (covered by its manifest), before
    RLlib unpickles anything."""
    checkpoint = Path(checkpoint)
    verify_checkpoint(checkpoint)
    options = checkpoint_options(checkpoint)
    if algo is not None and options.algo != algo:
        raise CheckpointError(
            f"{checkpoint} was trained with {options.algo} ({checkpoint / OPTIONS_FILE}: "
            f"algo: {options.algo}), not {algo}; pass --algo {options.algo} or leave --algo out"
        )
    return options


def load_policy(checkpoint: str | Path, algo: str | None = None) -> GreedyPolicy:
    """The greedy policy of an algorithm checkpoint written by `sepsis-rl train`, of any
    algorithm (`algo`: refuse a checkpoint of another one).

    Raises FileNotFoundError for a missing folder; CheckpointError or ManifestError (both
    ValueError) for a folder that is not an intact checkpoint of ours, options that are not
    valid, a checkpoint of another algorithm than `algo`, or a module that is not the one its
    algorithm writes or does not fit the options' environment.
    """
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint)
    options = check_algorithm(checkpoint, algo)
    space, n_actions = _spaces_of(options, checkpoint / OPTIONS_FILE)
    module_dir = checkpoint / MODULE_SUBDIR
    expected = MODULE_CLASSES[options.algo]
    try:
        module = RLModule.from_checkpoint(str(module_dir.resolve()))
    except Exception as err:  # unpickling fails in many ways; all mean an unusable checkpoint
        raise CheckpointError(
            f"cannot load the RLModule from {module_dir} ({type(err).__name__}: {err}); "
            f"expected the {options.algo} module `sepsis-rl train` wrote ({expected[0]})"
        ) from err
    if type(module).__name__ not in expected:
        raise CheckpointError(
            f"{module_dir} holds a {type(module).__name__}, not the {options.algo} module "
            f"({', '.join(expected)}) that {checkpoint / OPTIONS_FILE} says trained it"
        )
    module.eval()
    policy = GreedyPolicy(module, options, space)
    _check_fits(policy, n_actions, module_dir)
    return policy


def checkpoint_options(checkpoint: str | Path) -> RLOptions:
    """The options inside a checkpoint, with the fields serving needs checked for type."""
    path = Path(checkpoint) / OPTIONS_FILE
    options = load_options(path)
    expected = {
        "env": (str, "a Gymnasium id (text)"),
        "env_kwargs": ((dict, type(None)), "a mapping of gymnasium.make arguments, or null"),
        "normalize_obs": (bool, "true or false"),
    }
    for name, (types, what) in expected.items():
        value = getattr(options, name)
        if not isinstance(value, types) or (name == "env" and not value.strip()):
            raise CheckpointError(
                f"{path}: {name} is {value!r} ({type(value).__name__}), expected {what}"
            )
    return options


def _spaces_of(options: RLOptions, options_file: Path) -> tuple[gym.spaces.Box, int]:
    """The raw observation space and the number of actions of the options' environment."""
    try:
        env = make_raw_env({"env_id": options.env, "env_kwargs": resolved_env_kwargs(options)})
    except (gym.error.Error, ModuleNotFoundError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{options_file}: cannot make env {options.env!r} with env_kwargs "
            f"{options.env_kwargs!r} ({type(err).__name__}: {err})"
        ) from err
    space, actions = env.observation_space, env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box) or not isinstance(actions, gym.spaces.Discrete):
        raise CheckpointError(
            f"{options_file}: env {options.env!r} has {space} observations and {actions} "
            "actions; a DQN policy needs Box observations and Discrete actions"
        )
    return space, int(actions.n)


def _check_fits(policy: GreedyPolicy, n_actions: int, module_dir: Path) -> None:
    """Refuse a module whose input or output does not fit the environment it claims."""
    probe = np.zeros((1, *policy.observation_space.shape), dtype=np.float32)
    try:
        q = policy.scores(probe)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{module_dir}: the network does not take {policy.options.env}'s observations of "
            f"shape {policy.observation_space.shape} ({type(err).__name__}: {err})"
        ) from err
    if q.shape != (1, n_actions):
        raise CheckpointError(
            f"{module_dir}: the network gives {q.shape[-1]} action scores, expected one per action "
            f"of {policy.options.env} ({n_actions})"
        )


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


LEARNED = "learned"
"""Name of the learned greedy policy in reports and figures."""


POLICY_NAMES = {
    LEARNED: "Learned policy (greedy)",
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
