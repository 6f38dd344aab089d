"""`FastDQN` on real Ray with tiny budgets: every priority lands on its own transition with two
learners, the asked replay ratio is the one trained, and asynchronous sampling learns.

Ray runs on loopback with 2 CPUs (env runners and learners take fractions of them).
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
)

from training.rl import fast_dqn
from training.rl.dqn import build_dqn_config
from training.rl.envs import make_env
from training.rl.options import RLOptions
from training.rl.policy import GreedyPolicy
from training.rl.replay import ACTIONS, NEXT_OBS, OBS, REWARDS

TESTS_DIR = Path(__file__).parent
TOY_ENV = "test_rl_toyenv:SignGame-v0"
SMALL = {
    "num_env_runners": 1,
    "num_cpus_per_env_runner": 0.5,
    "num_envs_per_env_runner": 2,
    "rollout_fragment_length": 25,
    "evaluation_interval": 0,
    "fcnet_hiddens": [32, 32],
    "head_fcnet_hiddens": [16],
    "seed": 0,
}
"""A run small enough for 2 cores: one env runner on half a CPU, 50 env steps per round."""


@pytest.fixture()
def local_ray(monkeypatch):
    """A local Ray on loopback that sees tests/ (for the toy env); shut down afterwards."""
    import ray

    paths = [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# -- two learners: each TD error becomes the priority of its own transition ---------------------
def td_errors_by_hand(module, batch: dict[str, np.ndarray], gamma: float) -> np.ndarray:
    """|Q(s, a) - (R + gamma^n (1 - terminated) Q_target(s', argmax_a' Q(s', a')))| of each
    row, from the RLModule's own forward pass (dueling double Q, as RLlib's DQN loss)."""
    import torch
    from ray.rllib.algorithms.dqn.dqn_learner import (
        QF_NEXT_PREDS,
        QF_PREDS,
        QF_TARGET_NEXT_PREDS,
    )

    tensors = {key: torch.from_numpy(np.asarray(value)) for key, value in batch.items()}
    with torch.no_grad():
        out = module.forward_train(tensors)
    q = out[QF_PREDS].gather(1, tensors[ACTIONS].long()[:, None]).squeeze(1)
    best_next = out[QF_NEXT_PREDS].argmax(1, keepdim=True)
    q_next = out[QF_TARGET_NEXT_PREDS].gather(1, best_next).squeeze(1)
    not_terminated = 1.0 - tensors["terminateds"].float()
    target = tensors[REWARDS] + gamma ** tensors["n_step"] * not_terminated * q_next
    return (q - target).abs().numpy().astype(np.float64)


def slots_of(stored: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> np.ndarray:
    """The buffer slot of each batch row, found by its content (obs, action, return, next obs)."""
    same = (
        np.all(batch[OBS][:, None] == stored[OBS][None], axis=-1)
        & np.all(batch[NEXT_OBS][:, None] == stored[NEXT_OBS][None], axis=-1)
        & (batch[ACTIONS][:, None] == stored[ACTIONS][None])
        & (batch[REWARDS][:, None] == stored[REWARDS][None])
    )
    assert np.all(same.sum(axis=1) == 1), "a sampled row matches no stored transition, or several"
    return same.argmax(axis=1)


@pytest.mark.slow  # 20-45 s on 2 busy cores: two learner actors (torch DDP over gloo)
def test_with_two_learners_each_priority_lands_on_its_own_transition(local_ray) -> None:
    """Each of two learners computes the TD errors of its half of the batch; their concatenation
    must be in the batch's order. The TD errors are recomputed here from the learner's weights
    just before each update, and the buffer's new priorities compared transition by transition."""
    options = RLOptions(
        env="CartPole-v1",
        **SMALL,
        num_learners=2,
        num_cpus_per_learner=0.5,
        sample_async=False,
        train_batch_size=63,  # shards of 32 and 31 rows
        training_intensity=2.52,  # 2 updates per round of 50 env steps
        num_steps_sampled_before_learning_starts=200,
        min_sample_timesteps_per_iteration=100,
        n_step=3,
    )
    algo = build_dqn_config(options).build_algo()
    try:
        assert algo.learner_group.is_remote and len(algo.learner_group) == 2
        buffer = algo.local_replay_buffer
        updates: list[dict] = []
        sample, update_priorities = buffer.sample, buffer.update_priorities

        def sample_and_record(num_items, beta=None):
            state = algo.learner_group.get_state(components="learner/rl_module/default_policy")
            batch = sample(num_items, beta=beta)
            updates.append(
                {
                    "module_state": state["learner"]["rl_module"][DEFAULT_MODULE_ID],
                    "batch": {key: value.copy() for key, value in batch.items()},
                    "before": buffer.get_state(),
                }
            )
            return batch

        def update_priorities_and_record(td_errors, indices=None):
            update_priorities(td_errors, indices)
            updates[-1]["after"] = buffer.get_state()["priorities"]

        buffer.sample = sample_and_record
        buffer.update_priorities = update_priorities_and_record
        while len(updates) < 4:
            algo.train()
        del buffer.sample, buffer.update_priorities

        module = build_module_like(algo)
        for update in updates[:4]:
            module.set_state(update["module_state"])
            batch, before = update["batch"], update["before"]
            expected_td = td_errors_by_hand(module, batch, options.gamma)
            halves_swapped = np.roll(expected_td, len(expected_td) // 2)
            assert not np.allclose(halves_swapped, expected_td, rtol=1e-3)  # the check can fail

            slots = slots_of(before["data"], batch)
            expected = before["priorities"].copy()
            expected[slots] = (expected_td + buffer.priority_epsilon) ** buffer.alpha
            np.testing.assert_allclose(update["after"], expected, rtol=1e-5, atol=1e-7)
    finally:
        algo.stop()


def build_module_like(algo):
    """A fresh copy of the learners' RLModule (with target networks), for `set_state`."""
    env = make_env(algo.config.env_config)
    spec = algo.config.get_default_rl_module_spec()
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    spec.model_config = algo.config.model_config
    env.close()
    module = spec.build()
    module.make_target_networks()
    return module


# -- the replay ratio ----------------------------------------------------------------------------
def test_training_intensity_is_the_replay_ratio_trained(local_ray) -> None:
    """Transitions replayed per env step sampled, counted from the first sampling round that
    paid for updates (the one that brought the count to `num_steps_sampled_before_learning_
    starts`), equal training_intensity up to the one batch of update credit carried over."""
    intensity, batch_size, learning_starts = 3.0, 64, 500
    options = RLOptions(
        env="CartPole-v1",
        **SMALL,
        sample_async=False,
        train_batch_size=batch_size,
        training_intensity=intensity,  # about 2.3 updates per round: credit carried over
        num_steps_sampled_before_learning_starts=learning_starts,
        min_sample_timesteps_per_iteration=1000,
    )
    algo = build_dqn_config(options).build_algo()
    try:
        rounds: list[int] = []  # env steps of each sampling round, as added to the buffer
        add = algo.local_replay_buffer.add

        def add_and_count(episodes):
            rounds.append(sum(len(e) for e in episodes))
            return add(episodes)

        algo.local_replay_buffer.add = add_and_count
        for _ in range(2):
            result = algo.train()
    finally:
        algo.stop()
    env_steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
    trained = result[LEARNER_RESULTS][DEFAULT_MODULE_ID][NUM_MODULE_STEPS_TRAINED_LIFETIME]
    assert env_steps == sum(rounds) >= 2000
    first_paying_round = int(np.argmax(np.cumsum(rounds) >= learning_starts))
    paid = sum(rounds[first_paying_round:])
    assert abs(trained - intensity * paid) < batch_size
    assert trained / paid == pytest.approx(intensity, rel=0.02)


# -- asynchronous sampling ---------------------------------------------------------------------


def test_sample_async_with_one_remote_env_runner_learns_the_toy_env(
    local_ray, monkeypatch, greedy_mean_return
) -> None:
    """The env runner samples the next round while the learner updates on the last one (its
    policy one training step old); the greedy policy still learns SignGame in 3,000 env steps."""

    def no_synchronous_sampling(*args, **kwargs):
        raise AssertionError("sample_async=True sampled synchronously")

    monkeypatch.setattr(fast_dqn, "synchronous_parallel_sample", no_synchronous_sampling)
    options = RLOptions(
        env=TOY_ENV,
        **{**SMALL, "num_envs_per_env_runner": 4, "rollout_fragment_length": 16},
        sample_async=True,
        num_steps_sampled_before_learning_starts=500,
        epsilon_timesteps=1500,
        min_sample_timesteps_per_iteration=1000,
        training_intensity=8,
        replay_capacity=20_000,
    )
    algo = build_dqn_config(options).build_algo()
    try:
        for _ in range(10):
            result = algo.train()
            if result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] >= 3000:
                break
        module = algo.learner_group.get_state(components="learner/rl_module/default_policy")
        served = build_module_like(algo)
        served.set_state(module["learner"]["rl_module"][DEFAULT_MODULE_ID])
    finally:
        algo.stop()
    # the replay ratio holds with asynchronous sampling too (up to the first paying round)
    trained = result[LEARNER_RESULTS][DEFAULT_MODULE_ID][NUM_MODULE_STEPS_TRAINED_LIFETIME]
    env_steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
    paid = env_steps - options.num_steps_sampled_before_learning_starts
    assert trained / paid == pytest.approx(options.training_intensity, rel=0.05)
    raw_space = gym.make(TOY_ENV).observation_space
    policy = GreedyPolicy(served, options, raw_space)
    # random play earns 5.0 +- 0.05 over these 100 episodes, the optimum 10
    assert greedy_mean_return(policy, TOY_ENV, episodes=100, seed=1000) >= 8.0
