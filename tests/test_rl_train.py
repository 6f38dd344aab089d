"""DQN training on real RLlib with tiny budgets: config, learning, resume with buffer, faults.

The env is `test_rl_toyenv:SignGame-v0` (random play 5 per episode, optimum 10), given in
Gymnasium's `module:EnvId-v0` form so each env runner has to import the module itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from training.rl.dqn import build_dqn_config
from training.rl.envs import BoxNormalization
from training.rl.fast_dqn import FastDQN, buffer_class_of
from training.rl.options import RLOptions, load_options
from training.rl.replay import (
    N_STEP,
    NEXT_OBS,
    OBS,
    REWARDS,
    TERMINATEDS,
    PrioritizedTransitionBuffer,
)

TESTS_DIR = Path(__file__).parent
TOY_ENV = "test_rl_toyenv:SignGame-v0"
SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TINY = {
    "num_env_runners": 1,
    "num_cpus_per_env_runner": 0.5,
    "num_steps_sampled_before_learning_starts": 500,
    "epsilon_timesteps": 1500,
    "min_sample_timesteps_per_iteration": 500,
    "evaluation_interval": 1,
    "evaluation_episodes": 20,
    "checkpoint_every": 2,
    "training_intensity": 8,
    "replay_capacity": 20_000,
}


def _env_with_tests_on_path() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def test_config_is_dueling_double_q_with_prioritized_n_step_replay() -> None:
    config = build_dqn_config(RLOptions(env="CartPole-v1", n_step=3, rollout_fragment_length=16))
    assert config.dueling is True
    assert config.double_q is True
    assert config.algo_class is FastDQN
    assert config.replay_buffer_config["type"] == "training.rl.replay.PrioritizedTransitionBuffer"
    assert buffer_class_of(config.replay_buffer_config["type"]) is PrioritizedTransitionBuffer
    assert config.replay_buffer_config["priority_epsilon"] == 0.01
    assert config.replay_buffer_config["alpha"] == 0.6
    assert config.replay_buffer_config["beta"] == 0.4
    assert config.n_step == 3
    assert config.rollout_fragment_length == 16
    assert config.restart_failed_env_runners is True
    assert config.enable_rl_module_and_learner and config.enable_env_runner_and_connector_v2
    assert config.model_config["fcnet_hiddens"] == [128, 128]
    assert config.epsilon == [(0, 1.0), (10_000, 0.02)]
    schedule = [[0, 1e-3], [100_000, 1e-4]]
    assert build_dqn_config(RLOptions(env="CartPole-v1", lr=schedule)).lr == schedule


def test_options_come_from_yaml_or_json_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("lr: 0.001\nfcnet_hiddens: [64, 32]\nenv: CartPole-v1\n")
    (tmp_path / "b.json").write_text(json.dumps({"gamma": 0.9, "n_step": 5}))
    a = load_options(tmp_path / "a.yaml", {"lr": 0.01, "seed": 7})
    assert (a.lr, a.fcnet_hiddens, a.seed, a.env) == (0.01, [64, 32], 7, "CartPole-v1")
    b = load_options(tmp_path / "b.json")
    assert (b.gamma, b.n_step, b.lr) == (0.9, 5, RLOptions().lr)
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_options(tmp_path / "bad.yaml")


def test_normalisation_maps_bounds_to_unit_interval_and_keeps_unbounded() -> None:
    cartpole = BoxNormalization(gym.make("CartPole-v1"))
    # x in [-4.8, 4.8] is scaled; the velocities are unbounded and pass through.
    obs = np.array([2.4, 3.0, 0.0, -7.0], dtype=np.float32)
    assert np.allclose(cartpole.observation(obs), [0.5, 3.0, 0.0, -7.0])
    space = cartpole.observation_space
    assert space.low[0] == -1 and space.high[0] == 1 and space.high[1] > 1e30


def test_cli_training_beats_random_then_resumes_with_its_replay_buffer(
    tmp_path: Path, greedy_mean_return
) -> None:
    out = tmp_path / "run"
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    cmd = [str(SEPSIS_RL), "train", "--env", TOY_ENV, "--out", str(out), "--seed", "3"]
    mirror = tmp_path / "shared_storage"
    first = subprocess.run(
        [*cmd, "--env-steps", "3000", *sets, "--sync-to", f"file://{mirror}"],
        env=_env_with_tests_on_path(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] >= 3000
    buffered = summary["replay_buffer_timesteps"]
    assert (mirror / "checkpoints" / "last" / "replay_buffer.pkl").exists()  # --sync-to
    assert buffered == summary["env_steps"]  # capacity not reached: every step is kept

    # The greedy policy served from the bare RLModule (normalising like training) beats random.
    sys.path.insert(0, str(TESTS_DIR))
    from training.rl.policy import load_policy

    policy = load_policy(out / "checkpoints" / "last")
    # random play earns 5.0 +- 0.05 over these 100 episodes
    assert greedy_mean_return(policy, TOY_ENV, episodes=100, seed=1000) >= 7.5
    best = load_policy(out / "checkpoints" / "best")
    assert greedy_mean_return(best, TOY_ENV, episodes=100, seed=1000) >= 7.5

    # Resume: the buffer comes back and learning goes on from the first resumed iteration.
    second = subprocess.run(
        [*cmd, "--resume", "--env-steps", "4000"],
        env=_env_with_tests_on_path(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["iteration"]) == list(range(1, len(metrics) + 1))
    resumed = metrics[metrics["env_steps"] > summary["env_steps"]]
    assert len(resumed) >= 1 and np.isfinite(resumed["loss"].iloc[0])
    after = json.loads((out / "summary.json").read_text())
    new_steps = after["env_steps"] - summary["env_steps"]
    assert after["replay_buffer_timesteps"] == buffered + new_steps
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) == after["episodes"]


@pytest.fixture()
def local_ray():
    """A local Ray on loopback that sees tests/ (for the toy env); shut down afterwards."""
    import ray

    os.environ["PYTHONPATH"] = _env_with_tests_on_path()["PYTHONPATH"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_buffer_size_after_restore_equals_before(tmp_path: Path, local_ray) -> None:
    from training.rl.run_dir import restore_checkpoint, save_checkpoint

    options = RLOptions(env=TOY_ENV, **{**TINY, "evaluation_interval": 0})
    algo = build_dqn_config(options).build_algo()
    try:
        for _ in range(2):
            algo.train()
        before = algo.local_replay_buffer.get_num_timesteps()
        assert before >= 1000
        save_checkpoint(algo, tmp_path / "last", options, with_buffer=True)
    finally:
        algo.stop()
    fresh = build_dqn_config(options).build_algo()
    try:
        assert fresh.local_replay_buffer.get_num_timesteps() == 0
        assert restore_checkpoint(fresh, tmp_path / "last") == before
        result = fresh.train()
        assert fresh.local_replay_buffer.get_num_timesteps() > before
        assert np.isfinite(result["learners"]["default_policy"]["qf_loss"])
    finally:
        fresh.stop()


def test_killed_env_runner_is_replaced_and_training_continues(tmp_path: Path, local_ray) -> None:
    from training.rl.train import train

    pid_dir = tmp_path / "pids"
    options = RLOptions(
        env=TOY_ENV,
        **{
            **TINY,
            "num_env_runners": 2,
            "evaluation_interval": 0,
            "delay_between_env_runner_restarts_s": 1.0,
            "env_kwargs": {"pid_dir": str(pid_dir)},
        },
        episodes=None,
        env_steps=3500,
    )
    killed: list[int] = []
    healthy: list[int] = []

    def kill_one_runner(metrics) -> None:
        healthy.append(metrics.healthy_env_runners)
        if metrics.iteration == 2:
            runner_pids = sorted(
                int(p.name) for p in pid_dir.iterdir() if int(p.name) != os.getpid()
            )
            os.kill(runner_pids[0], signal.SIGKILL)
            killed.append(runner_pids[0])

    result = train(options, tmp_path / "run", on_iteration=kill_one_runner)
    assert killed, "no env runner was killed"
    assert result.env_steps >= 3500
    new_pids = {int(p.name) for p in pid_dir.iterdir()} - {os.getpid(), *killed}
    assert len(new_pids) >= 2, "no replacement env runner created its env"
    assert healthy[-1] == 2


def _episode(rewards: list[float]) -> SingleAgentEpisode:
    steps = len(rewards)
    return SingleAgentEpisode(
        observations=[np.array([t], np.float32) for t in range(steps + 1)],
        actions=[0] * steps,
        rewards=rewards,
        terminated=True,
        len_lookback_buffer=0,
        observation_space=gym.spaces.Box(0, 100, (1,)),
        action_space=gym.spaces.Discrete(2),
    )


def test_replay_includes_the_last_transitions_of_an_episode_with_shorter_returns() -> None:
    """With n = 3 the two transitions that meet the terminal reward directly are replayed too
    (RLlib 2.60's episode buffer never samples them), with 2- and 1-step returns that end at the
    terminal reward and do not bootstrap."""
    buffer = PrioritizedTransitionBuffer(capacity=100, n_step=3, gamma=0.9, seed=0)
    buffer.add([_episode([0.0] * 4 + [1.0])])
    sample = buffer.sample(500)
    by_start = {
        int(obs[0]): (float(ret), int(nxt[0]), int(n), bool(term))
        for obs, ret, nxt, n, term in zip(
            sample[OBS],
            sample[REWARDS],
            sample[NEXT_OBS],
            sample[N_STEP],
            sample[TERMINATEDS],
            strict=True,
        )
    }
    assert by_start == {
        0: (0.0, 3, 3, False),
        1: (0.0, 4, 3, False),
        2: (pytest.approx(0.81), 5, 3, True),
        3: (pytest.approx(0.9), 5, 2, True),
        4: (1.0, 5, 1, True),
    }
