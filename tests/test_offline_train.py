"""Offline training (`sepsis-rl train --offline LOGS --algo bc|marwil|cql`) learns from logged
decisions only: CQL's penalty is its formula, MARWIL's value targets are each stay's own
discounted returns, only the train stays are trained on, each algorithm learns what its logs
teach on a toy task, its checkpoint serves like an online one, and bad input is refused before
any work.

The logs come from `SignGame` (tests/test_rl_toyenv.py: say the sign of x, reward 1 when right),
written with `training.rl.offline.data.write_logs` by a behaviour that picks the right action with
probability `p_right`. Offline training starts no Ray (one learner in this process, no env
runners); each run trains a few hundred updates in a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.rl.offline.cql import cql_penalty
from training.rl.offline.data import LoggedSteps, LogsError, LogsInfo, split_stays, write_logs
from training.rl.offline.train import (
    ACTIONS,
    OBS,
    OFFLINE_METRIC_FIELDS,
    VALUE_TARGETS,
    load_offline_data,
    returns_to_go,
    train_offline,
)
from training.rl.options import options_from_dict

TOY_ENV = "test_rl_toyenv:SignGame-v0"
STEPS = 10
"""SignGame's episode length (its time limit)."""
GRID = np.linspace(-4.0, 4.0, 80, dtype=np.float32)[:, None]
"""Observations to read a learned policy on; the right action is 1 where x > 0."""
RIGHT = (GRID[:, 0] > 0).astype(np.int64)


def sign_logs(out: Path, p_right: float, stays: int = 60, seed: int = 0) -> Path:
    """Logs of `stays` SignGame episodes whose behaviour says the right sign with probability
    `p_right` (1: the optimal policy, deterministic)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4.0, 4.0, size=(stays, STEPS + 1)).astype(np.float32)
    right = (x[:, :-1] > 0).astype(np.int64)
    says_right = rng.random((stays, STEPS)) < p_right
    actions = np.where(says_right, right, 1 - right)
    n = stays * STEPS
    truncated = np.zeros((stays, STEPS), dtype=bool)
    truncated[:, -1] = True
    steps = LoggedSteps(
        stay_ids=np.array([f"stay{i:03d}" for i in range(stays)]),
        stay=np.repeat(np.arange(stays), STEPS),
        step=np.tile(np.arange(STEPS), stays),
        obs=x[:, :-1].reshape(n, 1),
        actions=actions.reshape(n),
        rewards=(actions == right).astype(np.float32).reshape(n),
        next_obs=x[:, 1:].reshape(n, 1),
        terminated=np.zeros(n, dtype=bool),
        truncated=truncated.reshape(n),
        behaviour_prob=np.where(says_right, p_right, 1 - p_right).reshape(n).astype(float),
    )
    info = LogsInfo(
        env=TOY_ENV,
        n_actions=2,
        obs_low=[-5.0],
        obs_high=[5.0],
        gamma=0.5,
        behaviour=f"right with probability {p_right}",
        seed=seed,
        episodes=stays,
    )
    out.mkdir(parents=True)
    write_logs(steps, info, out)
    return out


def toy_options(algo: str, **own):
    """Small networks, gamma 0.5 (short credit horizon), `own` options of the algorithm."""
    return options_from_dict(
        {
            "algo": algo,
            "gamma": 0.5,
            "fcnet_hiddens": [32],
            "head_fcnet_hiddens": [32],
            "evaluation_interval": 1,
            algo: {"iterations": 4, "updates_per_iteration": 100, **own},
        }
    )


# -- no Ray ----------------------------------------------------------------------------------------
def test_cql_penalty_is_mean_logsumexp_minus_logged_q() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    actions = torch.tensor([2, 0, 1])
    by_hand = np.mean(
        [
            math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0,
            math.log(3.0) - 0.0,
            math.log(math.exp(5) + math.exp(-1) + math.exp(2)) - (-1.0),
        ]
    )
    assert float(cql_penalty(q, actions)) == pytest.approx(by_hand, rel=1e-6)
    # Weighted: each row's gap times its weight, then the mean.
    weights = torch.tensor([1.0, 0.0, 2.0])
    gaps = torch.logsumexp(q, -1) - q[torch.arange(3), actions]
    assert float(cql_penalty(q, actions, weights)) == pytest.approx(
        float((weights * gaps).mean()), rel=1e-6
    )
    # Unchanged when every Q(s, .) moves by the same amount; positive unless one action dominates.
    assert float(cql_penalty(q + 7.0, actions)) == pytest.approx(by_hand, rel=1e-5)
    assert float(cql_penalty(torch.tensor([[100.0, 0.0]]), torch.tensor([0]))) < 1e-6


def test_cql_learner_loss_is_td_loss_plus_alpha_times_penalty() -> None:
    """The learner adds exactly alpha x the penalty of its own Q(s, .) to DQN's loss."""
    import gymnasium as gym
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    from training.rl.offline.cql import DiscreteCQLConfig

    obs_space, act_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32), gym.spaces.Discrete(4)
    config = (
        DiscreteCQLConfig()
        .environment(observation_space=obs_space, action_space=act_space)
        .training(cql_alpha=0.0, train_batch_size=8)
        .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": [16]})
        .debugging(seed=0)
    )
    learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (obs_space, act_space)})
    rng = np.random.default_rng(0)
    batch = {
        Columns.OBS: torch.from_numpy(rng.uniform(-1, 1, (8, 3)).astype(np.float32)),
        Columns.NEXT_OBS: torch.from_numpy(rng.uniform(-1, 1, (8, 3)).astype(np.float32)),
        Columns.ACTIONS: torch.from_numpy(rng.integers(0, 4, 8)),
        Columns.REWARDS: torch.from_numpy(rng.random(8).astype(np.float32)),
        Columns.TERMINATEDS: torch.zeros(8, dtype=torch.bool),
        Columns.TRUNCATEDS: torch.zeros(8, dtype=torch.bool),
        "weights": torch.ones(8),
        "n_step": torch.ones(8),
    }
    module = learner.module[DEFAULT_MODULE_ID]
    with torch.no_grad():
        fwd_out = module.forward_train(batch)

        def loss(alpha: float) -> float:
            with_alpha = config.copy(copy_frozen=False).training(cql_alpha=alpha)
            return float(
                learner.compute_loss_for_module(
                    module_id=DEFAULT_MODULE_ID, config=with_alpha, batch=batch, fwd_out=fwd_out
                )
            )

        penalty = float(cql_penalty(fwd_out["qf_preds"], batch[Columns.ACTIONS]))
    assert penalty > 0
    assert loss(0.5) - loss(0.0) == pytest.approx(0.5 * penalty, rel=1e-4)


def test_returns_to_go_are_discounted_within_each_stay() -> None:
    rewards = np.array([1.0, 0.0, 2.0, 5.0, 1.0, 1.0], dtype=np.float32)
    stay = np.array([0, 0, 0, 1, 2, 2])
    g = returns_to_go(rewards, stay, gamma=0.5)
    expected = [1 + 0.5 * (0 + 0.5 * 2), 0 + 0.5 * 2, 2, 5, 1 + 0.5 * 1, 1]
    np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_only_train_stays_are_trained_on(tmp_path: Path) -> None:
    """The train batch holds exactly the train split's steps; validation has its own stays;
    observations are normalised from the logs' bounds (x / 5 for SignGame's Box(-5, 5))."""
    logs = sign_logs(tmp_path / "logs", p_right=1.0, stays=40)
    options, data = load_offline_data(logs, toy_options("bc"))
    split = split_stays(40, options.seed)
    assert data.stays == {name: len(stays) for name, stays in split.items()}
    assert len(data.train[ACTIONS]) == STEPS * len(split["train"])
    assert len(data.val[ACTIONS]) == STEPS * len(split["val"])
    from training.rl.offline.data import read_logs

    steps, _ = read_logs(logs)
    train_obs = steps.select_stays(split["train"]).obs / 5.0
    np.testing.assert_allclose(data.train[OBS], train_obs, rtol=1e-6)
    held_out = np.concatenate([split["val"], split["test"]])
    assert not np.isin(steps.select_stays(held_out).obs / 5.0, data.train[OBS]).any()
    assert options.env == TOY_ENV  # the checkpoint will be served on the logs' env
    assert data.train[VALUE_TARGETS].max() <= 1 / (1 - 0.5) + 1e-6


def test_logs_that_do_not_fit_their_env_are_refused(tmp_path: Path) -> None:
    logs = sign_logs(tmp_path / "logs", p_right=1.0, stays=20)
    info = json.loads((logs / "logs.json").read_text())
    (logs / "logs.json").write_text(json.dumps({**info, "n_actions": 3}))
    with pytest.raises(LogsError, match="3 actions"):
        load_offline_data(logs, toy_options("bc"))


# -- the command line refuses before any work ------------------------------------------------------
def invoke(*args: str):
    from sepsis_rl.cli import app

    return CliRunner().invoke(app, ["train", *args])


def test_offline_with_an_online_algorithm_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    logs = sign_logs(tmp_path / "logs", p_right=1.0, stays=20)
    out = tmp_path / "run"
    result = invoke("--offline", str(logs), "--algo", "dqn", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "bc | marwil | cql" in result.output and "not dqn" in result.output
    assert not out.exists()


def test_offline_from_a_missing_logs_folder_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("--offline", str(tmp_path / "nowhere"), "--algo", "bc", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "not a logs folder" in result.output
    assert not out.exists()


def test_an_offline_algorithm_without_logs_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("--algo", "cql", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "--offline" in result.output
    assert not out.exists()


def test_online_flags_are_refused_with_offline(tmp_path: Path) -> None:
    logs = sign_logs(tmp_path / "logs", p_right=1.0, stays=20)
    out = tmp_path / "run"
    result = invoke("--offline", str(logs), "--algo", "bc", "--episodes", "5", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "--episodes" in result.output
    assert not out.exists()


# -- training (no Ray: the learner runs in this process) -------------------------------------------
def trained(tmp_path: Path, algo: str, p_right: float, **own):
    """Train `algo` on fresh logs; the run folder, its summary and its best checkpoint's policy."""
    from training.rl.policy import load_policy

    logs = sign_logs(tmp_path / f"logs_{algo}", p_right=p_right)
    run = train_offline(logs, toy_options(algo, **own), tmp_path / f"run_{algo}")
    summary = json.loads((run / "summary.json").read_text())
    return run, summary, load_policy(run / "checkpoints" / "best", algo)


def right_rate(policy) -> float:
    """Fraction of the grid where the greedy action is the rewarded one."""
    return float((policy.actions(GRID) == RIGHT).mean())


def test_bc_copies_a_deterministic_behaviour(tmp_path: Path) -> None:
    run, summary, policy = trained(tmp_path, "bc", p_right=1.0)
    assert summary["best_val_agreement"] > 0.9
    assert summary["best_val_loss"] < summary["initial_val_loss"]
    assert right_rate(policy) > 0.9
    assert not policy.has_q_values
    np.testing.assert_allclose(policy.probabilities(GRID).sum(-1), 1.0, rtol=1e-5)
    # The run folder of an online run, plus what it learned from.
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "summary.json", "offline.json"):
        assert (run / name).is_file(), name
    for checkpoint in ("best", "last"):
        assert (run / "checkpoints" / checkpoint / "MANIFEST.json").is_file()
        assert (run / "checkpoints" / checkpoint / "options.yaml").is_file()
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == OFFLINE_METRIC_FIELDS
    assert json.loads((run / "offline.json").read_text())["train"] == 42


def test_checkpoints_refuse_another_algorithm(tmp_path: Path) -> None:
    from training.rl.policy import load_policy
    from training.rl.run_dir import CheckpointError

    run, _, _ = trained(tmp_path, "bc", p_right=1.0, iterations=1)
    with pytest.raises(CheckpointError, match="trained with bc"):
        load_policy(run / "checkpoints" / "best", "cql")
    assert load_policy(run / "checkpoints" / "last").options.algo == "bc"


def test_marwil_takes_the_rewarded_action_where_bc_copies_mistakes(tmp_path: Path) -> None:
    """Logs that say the wrong sign 70% of the time: BC learns the mistake, MARWIL's advantage
    weights (Monte-Carlo returns) turn it around."""
    _, _, bc = trained(tmp_path, "bc", p_right=0.3)
    _, _, marwil = trained(
        tmp_path,
        "marwil",
        p_right=0.3,
        moving_average_sqd_adv_norm_start=0.25,
        moving_average_sqd_adv_norm_update_rate=0.01,
    )
    assert right_rate(bc) < 0.2
    assert right_rate(marwil) > 0.8  # 0.91-1.0 over log seeds 0-3


def test_cql_prefers_the_rewarded_action_from_random_logs(tmp_path: Path) -> None:
    _, summary, cql = trained(tmp_path, "cql", p_right=0.5, target_network_update_freq=1000)
    assert cql.has_q_values
    assert right_rate(cql) > 0.9
    q = cql.q_values(np.array([[-3.0], [3.0]], dtype=np.float32))
    assert q[0, 0] > q[0, 1] and q[1, 1] > q[1, 0]
    assert math.isfinite(summary["best_val_loss"])
