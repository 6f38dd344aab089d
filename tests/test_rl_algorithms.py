"""PPO, APPO and IMPALA beside DQN: each builds from the one registry, trains through the project's
loop, learns (its greedy policy improves on its untrained one on a small budget), and its
checkpoint says which algorithm made it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from training.rl.algorithms import BUILDERS, build_config
from training.rl.options import ALGORITHMS, options_from_dict

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

TOY = "test_rl_toyenv:SignGame-v0"

SMALL = {
    "ppo": {"ppo": {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 4, "lr": 1e-3}},
    "appo": {"appo": {"train_batch_size": 128, "lr": 1e-3}},
    "impala": {"impala": {"train_batch_size": 128, "lr": 1e-3}},
}
"""Budgets small enough for a test: a few hundred env steps per update."""


def test_every_algorithm_has_a_builder_and_its_config_validates() -> None:
    assert set(BUILDERS) == set(ALGORITHMS)
    for algo in ALGORITHMS:
        options = options_from_dict({"algo": algo, "env": "CartPole-v1", **SMALL.get(algo, {})})
        config = build_config(options)
        config.validate()
        assert config.num_learners == 0, algo  # never a remote learner unless asked
        assert config.evaluation_config["explore"] is False, algo
        assert config.seed == options.seed


def test_the_algorithms_own_options_reach_the_config() -> None:
    ppo = build_config(options_from_dict({"algo": "ppo", "ppo": {"lr": 2e-3, "clip_param": 0.1,
                                                                  "gae_lambda": 0.9}}))  # fmt: skip
    assert (ppo.lr, ppo.clip_param, ppo.lambda_) == (2e-3, 0.1, 0.9)
    assert ppo.model_config["vf_share_layers"] is False  # explicit, not RLlib's silent True
    appo = build_config(options_from_dict({"algo": "appo", "appo": {"clip_param": 0.3}}))
    assert appo.clip_param == 0.3 and appo.min_time_s_per_iteration == 0
    impala = build_config(options_from_dict({"algo": "impala", "gamma": 0.9}))
    assert impala.gamma == 0.9 and impala.num_aggregator_actors_per_learner == 0


def _greedy_return(policy, greedy_mean_return) -> float:
    return greedy_mean_return(policy, TOY, 100, 0)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "appo", "impala"])
def test_each_policy_gradient_algorithm_learns_the_toy_task(
    algo: str, tmp_path: Path, greedy_mean_return, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untrained, the greedy policy answers about half right (SignGame: 5 of 10); after a short
    real training run through `train` its checkpoint's greedy policy answers at least 3 of 4."""
    import gymnasium as gym
    import ray

    from training.rl.policy import GreedyPolicy, load_policy
    from training.rl.train import train

    options = options_from_dict(
        {"algo": algo, "env": TOY, "num_env_runners": 1, "num_cpus_per_env_runner": 0.5,
         "evaluation_interval": 0, "episodes": None, "env_steps": 6000, "time_budget_s": 90,
         "fcnet_hiddens": [32], "head_fcnet_hiddens": [16], **SMALL[algo]}
    )  # fmt: skip
    # The env runners import the toy env's module themselves (`module:EnvId-v0`).
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        untrained = build_config(options).build_algo()
        space = gym.make(TOY).observation_space
        before = _greedy_return(GreedyPolicy(untrained.get_module(), options, space).__call__,
                                greedy_mean_return)  # fmt: skip
        untrained.stop()
        train(options, tmp_path / "run")
    finally:
        ray.shutdown()
    policy = load_policy(tmp_path / "run" / "checkpoints" / "last", algo)
    after = _greedy_return(policy, greedy_mean_return)
    assert after >= 7.5 and after > before + 2.0, (before, after)  # the DQN test's bar
    probabilities = policy.probabilities(np.array([[3.0], [-3.0]], dtype=np.float32))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[0, 1] > 0.5 > probabilities[1, 1]  # x > 0: say 1; x < 0: say 0
    assert policy.options.algo == algo


def test_a_checkpoint_of_another_algorithm_is_refused_by_name(tiny_sepsis_run: Path) -> None:
    """The checkpoint's own options.yaml says which algorithm made it: asking for another one is
    a clear error before RLlib loads anything."""
    from training.rl.policy import check_algorithm, load_policy
    from training.rl.run_dir import CheckpointError

    checkpoint = tiny_sepsis_run / "checkpoints" / "last"
    assert check_algorithm(checkpoint, "dqn").algo == "dqn"
    with pytest.raises(CheckpointError, match="trained with dqn .* not ppo; pass --algo dqn"):
        load_policy(checkpoint, "ppo")
