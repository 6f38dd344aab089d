"""A tiny registered env for the RL tests, importable as `test_rl_toyenv:SignGame-v0`.

It is trained through Gymnasium's `module:EnvId-v0` form: with `tests/` on PYTHONPATH the module is
imported by `gymnasium.make` inside every env runner, never by the test driver beforehand.
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import register, registry
from gymnasium.utils.env_checker import check_env

ENV_ID = "SignGame-v0"
EPISODE_STEPS = 10


class SignGame(gym.Env[np.ndarray, np.int64]):
    """Say the sign of x: observation x ~ U(-4, 4) in a Box(-5, 5); action 1 if x > 0 else 0.

    Reward 1 for the right answer, 0 otherwise; 10 steps per episode (truncated by the time
    limit). Random play earns 5 per episode on average, the optimal policy 10. Inputs are on a
    scale of a few units so that the bounds-based normalisation matters (it maps x to x / 5).

    `pid_dir`: if given, every instance writes a file named after its process id there, so a
    test can find (and kill) the env-runner processes.
    """

    def __init__(self, pid_dir: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-5.0, 5.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._x = 0.0
        if pid_dir is not None:
            Path(pid_dir).mkdir(parents=True, exist_ok=True)
            (Path(pid_dir) / str(os.getpid())).touch()

    def _obs(self) -> np.ndarray:
        return np.array([self._x], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x = float(self.np_random.uniform(-4.0, 4.0))
        return self._obs(), {}

    def step(self, action):
        reward = 1.0 if int(action) == int(self._x > 0) else 0.0
        self._x = float(self.np_random.uniform(-4.0, 4.0))
        return self._obs(), reward, False, False, {}


if ENV_ID not in registry:
    register(id=ENV_ID, entry_point=SignGame, max_episode_steps=EPISODE_STEPS)


def test_sign_game_passes_check_env() -> None:
    check_env(SignGame(), skip_render_check=True)


def test_random_play_earns_half() -> None:
    env = gym.make(ENV_ID)
    rng = np.random.default_rng(0)
    returns = []
    for episode in range(200):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(int(rng.integers(2)))
            total += r
            done = term or trunc
        returns.append(total)
    assert 4.5 < np.mean(returns) < 5.5
