"""Logged episodes: behaviour probabilities are exact, rollouts are the env's own, tables import
with every bad cell named, and the command writes a whole logs folder or nothing.

Everything here runs the real envs and the real readers on a small budget (no Ray), except the
one check that RLlib's reader takes the written Parquet, marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import sepsis_env
from sepsis_env.policies import clinician_protocol, evaluate
from sepsis_rl.cli.offline_logs import logs_app
from training.rl.offline.data import (
    ACTION_LOGP,
    BEHAVIOUR_PROBS,
    COLUMNS,
    DATA_SUBDIR,
    PART_FILE,
    LogsError,
    read_logs,
    write_logs,
)
from training.rl.offline.logs import (
    CLINICIAN_NOISE,
    TableError,
    import_table,
    mix_uniform,
    sample_actions,
    simulate_logs,
    stay_returns,
)

N_ACTIONS = len(sepsis_env.ACTION_NAMES)
SEPSIS = "SepsisEnv-v0"

needs_icu_sepsis = pytest.mark.skipif(
    importlib.util.find_spec("icu_sepsis") is None,
    reason="the optional icu-sepsis package is not installed",
)


def protocol_actions(obs: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([clinician_protocol(o, rng) for o in obs])


def check_stays(steps) -> None:
    """Each stay's steps count from 0, its next states are its following states, and only its
    last row ends it (terminated or truncated, never both)."""
    last = np.append(steps.stay[1:] != steps.stay[:-1], True)
    starts = np.flatnonzero(np.append(True, steps.stay[1:] != steps.stay[:-1]))
    assert np.all(np.diff(steps.stay) >= 0)
    assert np.all(steps.step[starts] == 0)
    assert np.all(np.diff(steps.step)[~last[:-1]] == 1)
    np.testing.assert_array_equal(steps.next_obs[:-1][~last[:-1]], steps.obs[1:][~last[:-1]])
    ended = steps.terminated | steps.truncated
    np.testing.assert_array_equal(ended, last)
    assert not np.any(steps.terminated & steps.truncated)


# --------------------------------------------------------------------------------------------
# Behaviour probabilities
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinician_logs():
    return simulate_logs(SEPSIS, "clinicians", 200, seed=4, epsilon=0.2)


def test_logged_probability_is_the_mixture_recomputed(clinician_logs) -> None:
    steps, info = clinician_logs
    probs = steps.behaviour_probs.astype(np.float64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # Recompute mu' from its definition: the protocol, CLINICIAN_NOISE of uniform, then epsilon.
    protocol = np.eye(N_ACTIONS)[protocol_actions(steps.obs)]
    clinicians = (1 - CLINICIAN_NOISE) * protocol + CLINICIAN_NOISE / N_ACTIONS
    expected = (1 - 0.2) * clinicians + 0.2 / N_ACTIONS
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    logged = expected[np.arange(len(steps)), steps.actions]
    np.testing.assert_allclose(steps.behaviour_prob, logged, rtol=1e-6)
    assert info.behaviour == "clinicians" and info.epsilon == 0.2 and info.n_actions == N_ACTIONS
    assert info.env == SEPSIS and info.env_kwargs == {"split": "train"} and info.gamma == 0.99
    check_stays(steps)


def test_protocol_logs_the_protocols_action_with_its_mixture_probability() -> None:
    epsilon = 0.3
    steps, _ = simulate_logs(SEPSIS, "protocol", 300, seed=1, epsilon=epsilon)
    chosen = steps.actions == protocol_actions(steps.obs)
    np.testing.assert_allclose(steps.behaviour_prob[chosen], (1 - epsilon) + epsilon / N_ACTIONS)
    np.testing.assert_allclose(steps.behaviour_prob[~chosen], epsilon / N_ACTIONS)
    # Off-protocol actions are drawn as often as mu' says: epsilon * 7/8 of the steps.
    n, p = len(steps), epsilon * (N_ACTIONS - 1) / N_ACTIONS
    assert abs((~chosen).mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_without_epsilon_the_protocol_is_logged_with_probability_one() -> None:
    steps, _ = simulate_logs(SEPSIS, "protocol", 50, seed=2)
    np.testing.assert_array_equal(steps.actions, protocol_actions(steps.obs))
    np.testing.assert_array_equal(steps.behaviour_prob, 1.0)


def test_protocol_rollouts_are_the_envs_own_episodes() -> None:
    """Stay i is the episode `evaluate` runs from seed + i: same patients, same returns."""
    steps, info = simulate_logs(SEPSIS, "protocol", 40, seed=7)
    env = gym.make(SEPSIS, **info.env_kwargs)
    reference = evaluate(clinician_protocol, env, episodes=40, seed=7)
    np.testing.assert_allclose(stay_returns(steps), reference.returns, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.bincount(steps.stay), reference.lengths)
    check_stays(steps)


def test_random_behaviour_is_uniform_whatever_epsilon() -> None:
    steps, _ = simulate_logs(SEPSIS, "random", 30, seed=0, epsilon=0.5)
    np.testing.assert_allclose(steps.behaviour_probs, 1.0 / N_ACTIONS)
    np.testing.assert_allclose(steps.behaviour_prob, 1.0 / N_ACTIONS)


def test_epsilon_mixture() -> None:
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(mix_uniform(probs, 0.0), probs)
    np.testing.assert_allclose(mix_uniform(probs, 1.0), 0.25)
    np.testing.assert_allclose(mix_uniform(probs, 0.2)[0], [0.85, 0.05, 0.05, 0.05])
    np.testing.assert_allclose(mix_uniform(probs, 0.2).sum(axis=1), 1.0)


def test_actions_are_drawn_with_their_probabilities_and_never_with_zero() -> None:
    row = np.array([0.0, 0.7, 0.0, 0.3])
    actions = sample_actions(np.tile(row, (20_000, 1)), np.random.default_rng(0))
    counts = np.bincount(actions, minlength=4) / len(actions)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] - 0.7) < 0.015


def test_same_seed_same_logs_other_seed_other_logs() -> None:
    a, _ = simulate_logs(SEPSIS, "clinicians", 20, seed=5, epsilon=0.1)
    b, _ = simulate_logs(SEPSIS, "clinicians", 20, seed=5, epsilon=0.1)
    c, _ = simulate_logs(SEPSIS, "clinicians", 20, seed=6, epsilon=0.1)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert len(a) != len(c) or not np.array_equal(a.obs, c.obs)


def test_behaviour_not_defined_for_the_env_is_refused() -> None:
    with pytest.raises(LogsError, match="neither protocol, clinicians, random nor an existing"):
        simulate_logs(SEPSIS, "no/such/checkpoint", 5)
    with pytest.raises(LogsError, match="CartPole-v1"):
        simulate_logs("CartPole-v1", "random", 5)
    with pytest.raises(ValueError, match="epsilon"):
        simulate_logs(SEPSIS, "random", 5, epsilon=1.5)


@needs_icu_sepsis
def test_icu_sepsis_clinicians_log_the_expert_policy_in_package_actions() -> None:
    from sepsis_env import icu_sepsis

    epsilon = 0.1
    steps, info = simulate_logs("icu-sepsis", "clinicians", 1500, seed=3, epsilon=epsilon)
    mdp = icu_sepsis.ICUSepsisMDP.from_package("mean")
    states = steps.obs.argmax(axis=1)  # one-hot observation
    expected = mix_uniform(mdp.expert_policy[states], epsilon)
    np.testing.assert_allclose(steps.behaviour_probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        steps.behaviour_prob, expected[np.arange(len(steps)), steps.actions], rtol=1e-6
    )
    assert np.all(steps.behaviour_prob > 0)
    assert info.n_actions == icu_sepsis.NUM_ACTIONS and info.gamma == 1.0
    assert info.env_kwargs["action_set"] == "all"
    check_stays(steps)
    # Gamma 1, reward 1 on survival: the logged survival rate estimates the mixture's exact value.
    returns = stay_returns(steps)
    policy = mix_uniform(icu_sepsis.expert_policy(mdp), epsilon)
    exact = icu_sepsis.policy_value(mdp, policy)
    assert abs(returns.mean() - exact) < 4 * np.sqrt(exact * (1 - exact) / len(returns))


@pytest.mark.slow
def test_checkpoint_behaviour_logs_its_greedy_action(tiny_sepsis_run) -> None:
    """Needs Ray to train the session's tiny DQN checkpoint (about 12 s)."""
    from training.rl.policy import load_policy

    checkpoint = tiny_sepsis_run / "checkpoints" / "last"
    epsilon = 0.2
    steps, info = simulate_logs(SEPSIS, str(checkpoint), 30, seed=0, epsilon=epsilon, algo="dqn")
    greedy = load_policy(checkpoint).actions(steps.obs)
    expected = mix_uniform(np.eye(N_ACTIONS)[greedy], epsilon)
    np.testing.assert_allclose(steps.behaviour_probs, expected, rtol=1e-6)
    np.testing.assert_allclose(
        steps.behaviour_prob, expected[np.arange(len(steps)), steps.actions], rtol=1e-6
    )
    assert info.behaviour == str(checkpoint)
    with pytest.raises(LogsError, match="not ppo"):
        simulate_logs(SEPSIS, str(checkpoint), 3, algo="ppo")


@needs_icu_sepsis
def test_icu_sepsis_refuses_protocol_and_other_action_sets() -> None:
    with pytest.raises(LogsError, match="ICU-Sepsis has none"):
        simulate_logs("icu-sepsis", "protocol", 5)
    with pytest.raises(LogsError, match="action_set 'all'"):
        simulate_logs("icu-sepsis", "random", 5, env_kwargs={"action_set": "admissible"})


# --------------------------------------------------------------------------------------------
# On disk
# --------------------------------------------------------------------------------------------


def test_written_logs_read_back_unchanged(clinician_logs, tmp_path) -> None:
    steps, info = clinician_logs
    write_logs(steps, info, tmp_path)
    again, info_again = read_logs(tmp_path)
    assert info_again == info
    for name in ("stay", "step", "actions", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(again, name), getattr(steps, name))
    np.testing.assert_array_equal(again.stay_ids, steps.stay_ids)
    np.testing.assert_allclose(again.obs, steps.obs)
    np.testing.assert_allclose(again.next_obs, steps.next_obs)
    np.testing.assert_allclose(again.behaviour_prob, steps.behaviour_prob, rtol=1e-6)
    np.testing.assert_allclose(again.behaviour_probs, steps.behaviour_probs)


def test_parquet_has_rllibs_columns(clinician_logs, tmp_path) -> None:
    import pyarrow.parquet as pq

    steps, info = clinician_logs
    write_logs(steps, info, tmp_path)
    schema = pq.read_schema(tmp_path / DATA_SUBDIR / PART_FILE)
    assert set(COLUMNS) | {ACTION_LOGP, BEHAVIOUR_PROBS} <= set(schema.names)
    assert schema.field("obs").type.list_size == len(sepsis_env.OBS_NAMES)


@pytest.mark.slow
def test_rllib_reads_the_written_parquet(clinician_logs, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    steps, info = clinician_logs
    write_logs(steps, info, tmp_path)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = ray.data.read_parquet(str(tmp_path / DATA_SUBDIR)).take(2)
    finally:
        ray.shutdown()
    assert len(rows) == 2
    assert set(COLUMNS) <= set(rows[0])
    assert len(rows[0]["obs"]) == len(sepsis_env.OBS_NAMES)


# --------------------------------------------------------------------------------------------
# Imported tables
# --------------------------------------------------------------------------------------------


def stays_frame() -> pd.DataFrame:
    """Two stays, rows out of order: stay b dies after 2 steps, stay a's record stops after 3."""
    return pd.DataFrame(
        {
            "stay_id": ["b", "a", "a", "b", "a"],
            "step": [1, 0, 2, 0, 1],
            "map": [55.0, 70.0, 72.0, 60.0, 71.0],
            "lactate": [4.0, 1.0, 1.2, 3.0, 1.1],
            "action": [2, 0, 1, 2, 0],
            "reward": [-15.0, 0.0, 0.5, 0.0, 0.0],
            "terminal": [1, 0, 0, 0, 0],
            "behaviour_prob": [0.9, 0.5, 0.25, 0.8, 0.5],
        }
    )


def check_imported(steps, info, path: Path, n_actions: int = 3) -> None:
    np.testing.assert_array_equal(steps.stay_ids, ["a", "b"])
    np.testing.assert_array_equal(steps.stay, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(steps.step, [0, 1, 2, 0, 1])
    np.testing.assert_allclose(steps.obs[:, 0], [70, 71, 72, 60, 55])
    # The next state is the next row of the stay; a stay's last row repeats its own state.
    np.testing.assert_allclose(steps.next_obs[:, 0], [71, 72, 72, 55, 55])
    np.testing.assert_array_equal(steps.terminated, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(steps.truncated, [0, 0, 1, 0, 0])
    np.testing.assert_allclose(steps.behaviour_prob, [0.5, 0.5, 0.25, 0.8, 0.9])
    np.testing.assert_array_equal(steps.actions, [0, 0, 1, 2, 2])
    assert info.obs_names == ["map", "lactate"] and info.n_actions == n_actions
    assert info.obs_low == [55.0, 1.0] and info.obs_high == [72.0, 4.0]
    assert info.env == "imported" and info.source == str(path) and info.episodes == 2


def test_import_csv(tmp_path) -> None:
    path = tmp_path / "stays.csv"
    stays_frame().to_csv(path, index=False)
    steps, info = import_table(path)
    check_imported(steps, info, path)


def test_import_parquet_with_state_columns_and_text_flags(tmp_path) -> None:
    frame = stays_frame().assign(
        terminal=lambda f: f["terminal"].map({1: "true", 0: "False"}), other=1.0
    )
    path = tmp_path / "stays.parquet"
    frame.to_parquet(path)
    steps, info = import_table(path, state_columns=["map", "lactate"], n_actions=4, gamma=0.9)
    check_imported(steps, info, path, n_actions=4)
    assert info.gamma == 0.9


def test_import_without_behaviour_prob_leaves_it_unknown(tmp_path) -> None:
    path = tmp_path / "stays.csv"
    stays_frame().drop(columns="behaviour_prob").to_csv(path, index=False)
    steps, info = import_table(path, n_actions=5)
    assert np.isnan(steps.behaviour_prob).all() and info.n_actions == 5
    write_logs(steps, info, tmp_path / "logs")
    again, _ = read_logs(tmp_path / "logs")
    assert np.isnan(again.behaviour_prob).all()


BAD_TABLES = [
    # (id, change to the good table, where: line or None, column or None, message part)
    ("missing-column", lambda f: f.drop(columns="reward"), 1, None, "missing column(s) reward"),
    ("non-numeric-state", lambda f: f.assign(map=["55", "x", "72", "60", "71"]), 3, "map", "'x'"),
    ("missing-state", lambda f: f.assign(lactate=["4", "1", "", "3", "1.1"]), 4, "lactate", "''"),
    ("fractional-action", lambda f: f.assign(action=["2", "0.5", "1", "2", "0"]), 3, "action",
     "integer action"),
    ("negative-action", lambda f: f.assign(action=[2, 0, -1, 2, 0]), 4, "action", "negative"),
    ("step-repeated", lambda f: f.assign(step=[1, 0, 1, 0, 1]), 6, "step", "twice"),
    ("step-gap", lambda f: f.assign(step=[1, 0, 3, 0, 1]), 4, "step", "consecutive"),
    ("terminal-early", lambda f: f.assign(terminal=[0, 0, 0, 1, 0]), 5, "terminal", "later steps"),
    ("two-terminals", lambda f: f.assign(terminal=[1, 0, 0, 1, 0]), 5, "terminal", "later steps"),
    ("terminal-not-a-flag", lambda f: f.assign(terminal=["1", "0", "yes", "0", "0"]), 4,
     "terminal", "'yes'"),
    ("prob-zero", lambda f: f.assign(behaviour_prob=[0.9, 0.5, 0.0, 0.8, 0.5]), 4,
     "behaviour_prob", "(0, 1]"),
    ("prob-above-one", lambda f: f.assign(behaviour_prob=[1.5, 0.5, 0.2, 0.8, 0.5]), 2,
     "behaviour_prob", "(0, 1]"),
    ("empty", lambda f: f.iloc[:0], 2, None, "empty table"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "line", "column", "message"),
    [case[1:] for case in BAD_TABLES],
    ids=[case[0] for case in BAD_TABLES],
)
def test_bad_csv_names_file_line_and_column(tmp_path, change, line, column, message) -> None:
    path = tmp_path / "stays.csv"
    change(stays_frame()).to_csv(path, index=False)
    with pytest.raises(TableError) as caught:
        import_table(path)
    err = caught.value
    assert (err.path, err.line, err.column) == (str(path), line, column)
    assert message in str(err)
    assert str(path) in str(err) and f"line {line}" in str(err)


def test_bad_parquet_names_the_row_index(tmp_path) -> None:
    path = tmp_path / "stays.parquet"
    stays_frame().assign(action=[2, 0, 7, 2, 0]).to_parquet(path)
    with pytest.raises(TableError, match=r"stays\.parquet, row index 2, column action: action 7"):
        import_table(path, n_actions=3)


def test_bad_state_columns_are_named(tmp_path) -> None:
    path = tmp_path / "stays.csv"
    stays_frame().to_csv(path, index=False)
    with pytest.raises(TableError, match="state column.s. heart_rate not in the table"):
        import_table(path, state_columns=["map", "heart_rate"])
    with pytest.raises(TableError, match="action cannot be a state column"):
        import_table(path, state_columns=["map", "action"])
    (tmp_path / "stays.xlsx").write_bytes(b"PK")
    with pytest.raises(TableError, match=r"expected a \.csv or \.parquet"):
        import_table(tmp_path / "stays.xlsx")


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def run(*args: str):
    app = typer.Typer()
    app.add_typer(logs_app, name="logs")

    @app.callback()
    def root() -> None:
        """Stands in for the `sepsis-rl` root app."""

    return CliRunner().invoke(app, ["logs", *args])


def test_command_writes_logs_and_a_summary(tmp_path) -> None:
    out = tmp_path / "logs"
    result = run(
        "--env", SEPSIS, "--behaviour", "clinicians", "--episodes", "30", "--epsilon", "0.1",
        "--seed", "3", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "30 stays" in result.output and "return per stay" in result.output
    steps, info = read_logs(out)
    assert steps.n_stays == 30 and info.seed == 3 and info.epsilon == 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # no staging folder left
    # Existing logs are kept unless --force.
    again = run("--env", SEPSIS, "--behaviour", "random", "--episodes", "5", "--out", str(out))
    assert again.exit_code == 2 and "already holds logs" in again.output
    assert read_logs(out)[1].behaviour == "clinicians"


def test_import_command(tmp_path) -> None:
    table, out = tmp_path / "stays.csv", tmp_path / "logs"
    stays_frame().to_csv(table, index=False)
    result = run("import", "--table", str(table), "--out", str(out), "--state-columns", "map")
    assert result.exit_code == 0, result.output
    steps, info = read_logs(out)
    assert info.obs_names == ["map"] and steps.obs.shape == (5, 1)


SIMULATE = ["--episodes", "5"]
BAD_COMMANDS = [
    ("unknown-env", ["--env", "CartPole-v1", "--behaviour", "random", *SIMULATE], ["CartPole-v1"]),
    ("no-env", ["--behaviour", "random", *SIMULATE], ["missing --env"]),
    ("no-checkpoint", ["--env", SEPSIS, "--behaviour", "nowhere/ckpt", *SIMULATE],
     ["nowhere/ckpt"]),
    ("epsilon", ["--env", SEPSIS, "--behaviour", "random", "--epsilon", "2"], ["--epsilon"]),
    ("episodes", ["--env", SEPSIS, "--behaviour", "random", "--episodes", "0"], ["--episodes"]),
    ("env-kwarg", ["--env", SEPSIS, "--behaviour", "random", "--env-kwarg", "colour=red",
                   *SIMULATE], ["colour"]),
    ("bad-table", ["import", "--table", "{table}", "--state-columns", "map,heart_rate"],
     ["stays.csv", "heart_rate"]),
    ("bad-cell", ["import", "--table", "{bad}"], ["bad.csv", "line 3", "column map", "'x'"]),
    ("no-table", ["import", "--table", "{tmp}/none.csv"], ["none.csv", "no such file"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expect"), [c[1:] for c in BAD_COMMANDS], ids=[c[0] for c in BAD_COMMANDS]
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, expect) -> None:
    table, bad, out = tmp_path / "stays.csv", tmp_path / "bad.csv", tmp_path / "logs"
    stays_frame().to_csv(table, index=False)
    stays_frame().assign(map=["55", "x", "72", "60", "71"]).to_csv(bad, index=False)
    result = run(*(a.format(table=table, bad=bad, tmp=tmp_path) for a in args), "--out", str(out))
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split()).lower()  # the console wraps long messages
    for part in expect:
        assert part.lower() in output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "stays.csv"]


def test_out_that_is_a_file_is_refused(tmp_path) -> None:
    out = tmp_path / "logs"
    out.write_text("not a folder")
    result = run("--env", SEPSIS, "--behaviour", "random", *SIMULATE, "--out", str(out))
    assert result.exit_code == 2 and "not a folder" in result.output
    assert out.read_text() == "not a folder"


@needs_icu_sepsis
def test_command_icu_sepsis(tmp_path) -> None:
    out = tmp_path / "icu"
    result = run(
        "--env", "icu-sepsis", "--behaviour", "clinicians", "--episodes", "50", "--out", str(out)
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps, info = read_logs(out)
    assert info.env == "icu-sepsis" and info.n_actions == 25 and steps.n_stays == 50
    refused = run("--env", "icu-sepsis", "--behaviour", "protocol", "--out", str(tmp_path / "x"))
    assert refused.exit_code == 2 and "ICU-Sepsis has none" in refused.output
    assert not (tmp_path / "x").exists()
