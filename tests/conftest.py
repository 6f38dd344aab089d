"""Shared fixtures: small cohorts the project generates itself (never copies of real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray must bind to loopback only on these machines (see the README's Ray section).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def small_cohort():
    """A 600-stay synthetic cohort as a canonical table (about 7% septic)."""
    from data_prep.synth import generate_cohort

    return generate_cohort(600, seed=11)


@pytest.fixture(scope="session")
def small_psv_dir(tmp_path_factory, small_cohort) -> Path:
    """The small cohort written as .psv files in the release's folder layout."""
    from data_prep.synth import write_psv_files

    out = tmp_path_factory.mktemp("psv")
    write_psv_files(small_cohort, out)
    return out


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """`data prepare` output for a 3,000-stay synthetic cohort."""
    from data_prep.prepare import prepare
    from data_prep.synth import generate_cohort, write_psv_files

    raw = tmp_path_factory.mktemp("raw3k")
    write_psv_files(generate_cohort(3000, seed=5), raw)
    out = tmp_path_factory.mktemp("prepared3k")
    prepare(raw, out)
    return out


@pytest.fixture(scope="session")
def greedy_mean_return():
    """`greedy_mean_return(policy, env_id, episodes, seed)`: the mean return of `policy(obs)` over
    `episodes` episodes of `gymnasium.make(env_id)`, episode i reset with `seed + i`."""
    import gymnasium as gym
    import numpy as np

    def mean_return(policy, env_id: str, episodes: int, seed: int) -> float:
        env = gym.make(env_id)
        returns = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += reward
                done = terminated or truncated
            returns.append(total)
        env.close()
        return float(np.mean(returns))

    return mean_return


@pytest.fixture(scope="session")
def tiny_sepsis_run(tmp_path_factory) -> Path:
    """A tiny real DQN run on SepsisEnv (one iteration, about 12 s): `checkpoints/last` with its
    buffer and manifest. Copy it before damaging it: the session shares it."""
    import ray

    from training.rl.options import RLOptions
    from training.rl.train import train

    out = tmp_path_factory.mktemp("tiny_sepsis_run") / "run"
    options = RLOptions(
        episodes=None,
        env_steps=200,
        num_env_runners=0,
        min_sample_timesteps_per_iteration=200,
        num_steps_sampled_before_learning_starts=100,
        evaluation_interval=0,
        training_intensity=1,
        replay_capacity=1000,
        fcnet_hiddens=[16],
        head_fcnet_hiddens=[16],
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train(options, out)
    finally:
        ray.shutdown()
    return out
