"""ICU-Sepsis: the env, the exact evaluator against published values and sampling, and training.

Everything but the missing-package test needs the optional `icu-sepsis` package and is skipped
with that reason when it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from sepsis_env import icu_sepsis
from sepsis_env.icu_sepsis import (
    GYM_ID,
    NUM_ACTIONS,
    NUM_STATES,
    ExactEvaluator,
    ICUSepsisMDP,
    ICUSepsisNotInstalledError,
)

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("icu_sepsis") is None,
    reason=f"the optional icu-sepsis package is not installed ({icu_sepsis.INSTALL_HINT})",
)

# Value iteration on the shipped matrices (the package README rounds them to 0.88 and 0.78).
OPTIMAL_VALUE = 0.8751
RANDOM_VALUE = 0.7801


@pytest.fixture(scope="module")
def evaluator() -> ExactEvaluator:
    return ExactEvaluator("mean")


def sampled_mean_return(policy: np.ndarray, episodes: int, seed: int, **env_kwargs) -> float:
    """Monte Carlo estimate of a deterministic policy's return in the env itself."""
    env = gym.make(GYM_ID, **env_kwargs)
    rng = np.random.default_rng(seed)
    returns = np.empty(episodes)
    for episode in range(episodes):
        _, info = env.reset(seed=int(rng.integers(2**31)))
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(int(policy[info["state"]]))
            total += reward
            done = terminated or truncated
        returns[episode] = total
    env.close()
    return float(returns.mean())


def test_missing_package_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "icu_sepsis", None)  # makes `import icu_sepsis` fail
    with pytest.raises(ICUSepsisNotInstalledError, match=r'pip install -e "\.\[icu-sepsis\]"'):
        icu_sepsis.require_icu_sepsis()
    assert not icu_sepsis.icu_sepsis_available()
    # Training says so in the driver, before env runners fail on it; other envs are unaffected.
    from training.rl.dqn import build_dqn_config
    from training.rl.options import RLOptions

    with pytest.raises(ICUSepsisNotInstalledError, match="icu-sepsis"):
        build_dqn_config(RLOptions(env="icu-sepsis"))
    assert build_dqn_config(RLOptions(env="CartPole-v1")).custom_evaluation_function is None


def test_alias_and_ids_name_the_benchmark() -> None:
    from sepsis_env import ids

    assert ids.resolve_env_id("icu-sepsis") == GYM_ID
    assert ids.resolve_env_id("CartPole-v1") == "CartPole-v1"
    assert all(ids.is_icu_sepsis(name) for name in ("icu-sepsis", GYM_ID, "ICUSepsis-v0"))
    assert not ids.is_icu_sepsis("SepsisEnv-v0")
    assert all(ids.is_sepsis_env(name) for name in ("SepsisEnv-v0", "sepsis_env:SepsisEnv-v0"))
    assert not ids.is_sepsis_env("icu-sepsis")


@needs_package
def test_evaluator_reproduces_optimal_and_random_values(evaluator) -> None:
    reference = evaluator.baselines_
    assert reference.optimal == pytest.approx(OPTIMAL_VALUE, abs=5e-5)
    assert reference.random == pytest.approx(RANDOM_VALUE, abs=5e-5)
    # The clinicians' policy is no better than random here (the package reports 0.78 for both).
    assert reference.expert == pytest.approx(0.78, abs=5e-3)
    # Value iteration's fixed point and the exact value of its greedy policy agree.
    values, policy = icu_sepsis.value_iteration(evaluator.mdp_)
    assert evaluator.mdp_.initial @ values == pytest.approx(reference.optimal, abs=1e-9)
    assert evaluator.value(policy) == pytest.approx(reference.optimal, abs=1e-9)


@needs_package
def test_no_policy_beats_the_optimum_and_the_gap_is_measured_from_random(evaluator) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        policy = rng.integers(NUM_ACTIONS, size=NUM_STATES)
        assert evaluator.value(policy) < evaluator.baselines_.optimal
    report = evaluator.report(evaluator.baselines_.optimal_policy)
    assert report.gap_closed == pytest.approx(1.0)
    assert report.agreement_with_optimal == pytest.approx(1.0)
    assert evaluator.report(icu_sepsis.random_policy(evaluator.mdp_)).gap_closed == pytest.approx(
        0.0, abs=1e-9
    )


@needs_package
@pytest.mark.parametrize("strategy", ["mean", "terminate"])
def test_exact_value_matches_the_env_sampled(strategy) -> None:
    mdp = ICUSepsisMDP.from_package(strategy)
    # Always "no fluids, no vasopressors" except action 12 (both at level 2), which is
    # inadmissible in most states: the two strategies give very different values.
    policy = np.where(np.arange(NUM_STATES) % 2 == 0, 0, 12)
    exact = icu_sepsis.policy_value(mdp, policy)
    episodes = 6000
    sampled = sampled_mean_return(policy, episodes, seed=1, inadmissible_action_strategy=strategy)
    standard_error = np.sqrt(exact * (1 - exact) / episodes)
    assert abs(sampled - exact) < 4 * standard_error


@needs_package
def test_terminate_strategy_punishes_inadmissible_actions(evaluator) -> None:
    terminate = ICUSepsisMDP.from_package("terminate")
    uniform = icu_sepsis.random_policy(terminate)
    assert icu_sepsis.policy_value(terminate, uniform) < 0.05
    # The optimal policy needs no inadmissible action, so the optimum does not change.
    _, policy = icu_sepsis.value_iteration(terminate)
    assert icu_sepsis.policy_value(terminate, policy) == pytest.approx(
        evaluator.baselines_.optimal, abs=1e-6
    )


@needs_package
def test_policies_of_the_wrong_shape_or_range_are_refused(evaluator) -> None:
    mdp = evaluator.mdp_
    with pytest.raises(ValueError, match="716 actions"):
        icu_sepsis.policy_value(mdp, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 24\]"):
        icu_sepsis.policy_value(mdp, np.full(NUM_STATES, 25))
    with pytest.raises(ValueError, match="summing to 1"):
        icu_sepsis.policy_value(mdp, np.full((NUM_STATES, NUM_ACTIONS), 0.5))
    raising = ICUSepsisMDP.from_package("raise_exception")
    with pytest.raises(ValueError, match="inadmissible"):
        icu_sepsis.policy_value(raising, icu_sepsis.random_policy(raising))


@needs_package
def test_env_passes_checks_and_seeds_reproduce_rollouts() -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(GYM_ID)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (NUM_STATES,)
    assert env.action_space == gym.spaces.Discrete(NUM_ACTIONS)
    assert env.spec.max_episode_steps == icu_sepsis.MAX_EPISODE_STEPS

    def rollout(seed: int) -> list[int]:
        obs, info = env.reset(seed=seed)
        states = [info["state"]]
        assert obs[info["state"]] == 1.0 and obs.sum() == 1.0
        for t in range(50):
            obs, _, terminated, truncated, info = env.step(t % NUM_ACTIONS)
            states.append(info["state"])
            if terminated or truncated:
                break
        return states

    assert rollout(7) == rollout(7)
    assert len({tuple(rollout(seed)) for seed in range(10)}) > 1


@needs_package
def test_feature_observation_is_the_package_state_vector() -> None:
    env = gym.make(GYM_ID, observation="features")
    obs, info = env.reset(seed=3)
    assert obs.shape == (icu_sepsis.NUM_STATE_FEATURES,)
    np.testing.assert_allclose(obs, info["state_vector"], rtol=1e-6)
    both = gym.make(GYM_ID, observation="onehot+features")
    assert both.observation_space.shape == (NUM_STATES + icu_sepsis.NUM_STATE_FEATURES,)
    with pytest.raises(ValueError, match="observation"):
        gym.make(GYM_ID, observation="pixels")


# --------------------------------------------------------------------------------------------
# Training on real RLlib (tiny budget): env runners, exact evaluation during and after training
# --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ICU_CONFIG = REPO / "training" / "configs" / "icu_sepsis.yaml"
SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TINY_ICU = {
    "num_env_runners": 1,
    "num_cpus_per_env_runner": 0.5,
    "num_envs_per_env_runner": 2,
    "rollout_fragment_length": 32,
    "num_steps_sampled_before_learning_starts": 1000,
    "min_sample_timesteps_per_iteration": 1000,
    "replay_capacity": 10_000,
    "train_batch_size": 64,
    "fcnet_hiddens": [32],
    "head_fcnet_hiddens": [16],
    "evaluation_interval": 1,
    "checkpoint_every": 100,
}


@needs_package
def test_only_icu_sepsis_runs_get_the_exact_evaluator() -> None:
    from training.rl.dqn import build_dqn_config
    from training.rl.options import RLOptions

    assert build_dqn_config(RLOptions(env="CartPole-v1")).custom_evaluation_function is None
    config = build_dqn_config(RLOptions(env="icu-sepsis", normalize_obs=False))
    assert callable(config.custom_evaluation_function)


@needs_package
def test_cli_training_in_env_runners_yields_a_policy_with_an_exact_value(
    tmp_path: Path, evaluator
) -> None:
    import pandas as pd

    from training.rl.icu_sepsis import evaluate_checkpoint

    out = tmp_path / "run"
    sets = [arg for k, v in TINY_ICU.items() for arg in ("--set", f"{k}={v}")]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [str(SEPSIS_RL), "train", "--env", "icu-sepsis", "--config", str(ICU_CONFIG)]
    run = subprocess.run(
        [*cmd, "--out", str(out), "--env-steps", "3000", "--seed", "2", *sets],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["env_steps"].iloc[-1] >= 3000
    # Sampling happened in the remote env runner, which had to build the env itself.
    assert (metrics["healthy_env_runners"] == 1).all()
    assert metrics["episode_return_mean"].between(0, 1).all()
    # Every iteration's evaluation is the exact value of the greedy policy at that point...
    assert metrics["eval_return_mean"].between(0, evaluator.baselines_.optimal).all()
    assert np.isfinite(metrics["loss"].iloc[-1])  # the learner did update the network
    # ...and the last one is the exact value of the policy saved in checkpoints/last.
    actions, report = evaluate_checkpoint(out / "checkpoints" / "last")
    assert actions.shape == (NUM_STATES,) and actions.dtype == np.int64
    assert actions.min() >= 0 and actions.max() < NUM_ACTIONS
    assert report.value == pytest.approx(metrics["eval_return_mean"].iloc[-1], abs=1e-9)
    assert report.value == pytest.approx(evaluator.value(actions), abs=1e-12)
    assert report.optimal == pytest.approx(OPTIMAL_VALUE, abs=5e-5)

    # `sepsis-rl evaluate --env icu-sepsis` prints the same exact value and exports the policy.
    exported = tmp_path / "policy.npy"
    shown = subprocess.run(
        [str(SEPSIS_RL), "evaluate", "--env", "icu-sepsis", "--checkpoint"]
        + [str(out / "checkpoints" / "last"), "--export-policy", str(exported)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"{report.value:.4f}" in shown.stdout and f"{OPTIMAL_VALUE:.4f}" in shown.stdout
    np.testing.assert_array_equal(np.load(exported), actions)
    assert (out / "eval" / "icu_sepsis_learning_curve.png").stat().st_size > 10_000


@needs_package
def test_admissible_action_set_takes_only_admissible_actions_and_keeps_near_optimum(
    evaluator,
) -> None:
    table = icu_sepsis.action_table(6)
    mdp = evaluator.mdp_
    live = np.arange(NUM_STATES) < icu_sepsis.STATE_DEATH
    assert mdp.admissible[np.arange(NUM_STATES)[live, None], table[live]].all()
    # The optimum restricted to these actions is within 0.001 of the full optimum; with all
    # admissible actions (at most 13 per state) it is the full optimum.
    _, restricted = icu_sepsis.value_iteration(mdp, actions=table)
    assert evaluator.value(restricted) == pytest.approx(0.8743, abs=1e-4)
    _, full = icu_sepsis.value_iteration(mdp, actions=icu_sepsis.action_table(13))
    assert evaluator.value(full) == pytest.approx(OPTIMAL_VALUE, abs=5e-5)

    env = gym.make(GYM_ID, action_set="admissible", max_actions=6)
    assert env.action_space == gym.spaces.Discrete(6)
    _, info = env.reset(seed=5)
    for step in range(30):
        state = info["state"]
        _, _, terminated, truncated, info = env.step(step % 6)
        assert info["package_action"] == table[state, step % 6]
        if terminated or truncated:
            break
    # A greedy table in agent actions is translated to package actions for evaluation.
    agent_actions = np.arange(NUM_STATES) % 6
    package = icu_sepsis.greedy_policy_table(
        lambda obs: agent_actions[np.argmax(obs, axis=1)], "onehot", "admissible", 6
    )
    np.testing.assert_array_equal(package, table[np.arange(NUM_STATES), agent_actions])
