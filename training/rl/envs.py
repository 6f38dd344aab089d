"""The environment of a run, as every env runner, the evaluation and `recommend` build it.

The environment is created inside every env runner by `make_env`, registered with Ray under
`ENV_NAME`: it calls `gymnasium.make(env_id, **env_kwargs)` there, so an id in Gymnasium's
`module:EnvId-v0` form imports its module in each runner process, and it wraps the env in
`BoxNormalization`, the fixed affine map evaluation and `recommend` apply again outside RLlib.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sepsis_env.ids import needs_sepsis_env_import, resolve_env_id
from training.rl.options import RLOptions, resolved_env_kwargs

ENV_NAME = "sepsis_rl_env"
"""The name under which `make_env` is registered with Ray's registry."""


UNBOUNDED = 1e6
"""A Box bound larger than this in magnitude is treated as unbounded: that coordinate is passed
through unscaled (CartPole's velocities are bounded by float32's max)."""


class BoxNormalization(gym.ObservationWrapper):
    """Maps each bounded Box coordinate affinely onto [-1, 1]; unbounded ones pass unchanged.

    The map depends only on the env's declared bounds, so training (inside RLlib's env runners),
    evaluation and `recommend` (outside RLlib, with a bare RLModule) apply exactly the same one.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"BoxNormalization needs a Box observation space, got {space}")
        self.center_, self.scale_ = normalization_constants(space)
        bounded = (np.abs(space.low) < UNBOUNDED) & (np.abs(space.high) < UNBOUNDED)
        low = np.where(bounded, -1.0, space.low).astype(np.float32)
        high = np.where(bounded, 1.0, space.high).astype(np.float32)
        self.observation_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return normalize(observation, self.center_, self.scale_)


def normalization_constants(space: gym.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """Center and half-width per coordinate; (0, 1) for unbounded coordinates."""
    low = np.asarray(space.low, dtype=np.float64)
    high = np.asarray(space.high, dtype=np.float64)
    bounded = (np.abs(low) < UNBOUNDED) & (np.abs(high) < UNBOUNDED) & (high > low)
    low, high = np.where(bounded, low, -1.0), np.where(bounded, high, 1.0)
    center = np.where(bounded, (low + high) / 2.0, 0.0)
    scale = np.where(bounded, (high - low) / 2.0, 1.0)
    return center.astype(np.float32), scale.astype(np.float32)


def normalize(observation: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The affine map of `BoxNormalization`, for one observation or a batch."""
    return ((np.asarray(observation, dtype=np.float32) - center) / scale).astype(np.float32)


def make_raw_env(env_config: dict[str, Any]) -> gym.Env:
    """The unwrapped-by-us Gymnasium env: `gymnasium.make(env_id, **env_kwargs)`."""
    env_id = resolve_env_id(env_config["env_id"])
    if needs_sepsis_env_import(env_id):
        import sepsis_env  # noqa: F401  registers SepsisEnv-v0

    return gym.make(env_id, **env_config.get("env_kwargs", {}))


def make_env(env_config: dict[str, Any]) -> gym.Env:
    """Env creator run in every env runner: the raw env, normalised if asked."""
    env = make_raw_env(env_config)
    if env_config.get("normalize_obs", True):
        env = BoxNormalization(env)
    scale = env_config.get("reward_scale", 1.0)
    if scale != 1.0:
        env = gym.wrappers.TransformReward(env, lambda reward: scale * reward)
    return env


def env_config_of(options: RLOptions) -> dict[str, Any]:
    """The `env_config` dict handed to `make_env` in each runner."""
    return {
        "env_id": options.env,
        "env_kwargs": resolved_env_kwargs(options),
        "normalize_obs": options.normalize_obs,
        "reward_scale": options.reward_scale,
    }


def register_env() -> None:
    """Register `make_env` under `ENV_NAME` (call in the driver before building the algorithm)."""
    from ray.tune.registry import register_env as ray_register_env

    ray_register_env(ENV_NAME, make_env)


def evaluation_env_config_of(options: RLOptions) -> dict[str, Any]:
    """The `env_config` of the greedy evaluation during training (validation patients)."""
    config = {**env_config_of(options), "reward_scale": 1.0}
    if options.evaluation_split is not None and "split" in config["env_kwargs"]:
        config["env_kwargs"]["split"] = options.evaluation_split
    return config


def evaluation_env_kwargs(options: RLOptions, split: str) -> dict:
    """The training env's `gymnasium.make` arguments with the patient split replaced."""
    kwargs = resolved_env_kwargs(options)
    kwargs["split"] = split
    return kwargs
