"""Off-policy evaluation on a two-state MDP whose values are known by hand.

s0 is the start. Action 0 earns 1, action 1 earns 0. After s0 the stay dies (terminates, reward
0) with probability DEATH, else it moves to s1, where action 1 earns 2 and action 0 earns 0,
and then it ends. gamma = 0.9, the behaviour policy is uniform and the target takes action 0 in
s0 with probability 0.9 and action 1 in s1 with probability 0.8. So V^pi(s1) = 1.6,
Q^pi(s0, .) = r(s0, .) + gamma (1 - DEATH) 1.6 = (2.152, 1.152) and V^pi = 2.052.

Observations are one-hot states (tabular FQE) or, for the MLP FQE, a noisy scalar near 0 or 1.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from training.rl.offline.data import LoggedSteps, LogsInfo, write_logs
from training.rl.offline.ope import (
    DR,
    ESTIMATORS,
    FQE,
    IS,
    LOGGED,
    PDIS,
    WDR,
    WIS,
    WPDIS,
    FQEConfig,
    OPEError,
    StayTerms,
    checkpoint_probabilities,
    evaluate_offline,
    mix_uniform,
    policy_probabilities,
    state_of_observation,
    tabular_fqe,
)

GAMMA, DEATH = 0.9, 0.2
REWARD = np.array([[1.0, 0.0], [0.0, 2.0]])
MU = np.array([[0.5, 0.5], [0.5, 0.5]])
PI = np.array([[0.9, 0.1], [0.2, 0.8]])
Q_PI = np.array([[1 + GAMMA * (1 - DEATH) * 1.6, GAMMA * (1 - DEATH) * 1.6], [0.0, 2.0]])
V_PI = float(PI[0] @ Q_PI[0])  # 2.052


def trajectories(death: float = DEATH):
    """The 6 possible stays: (states, actions, probability under MU)."""
    for a0 in (0, 1):
        yield [0], [a0], MU[0, a0] * death
        for a1 in (0, 1):
            yield [0, 1], [a0, a1], MU[0, a0] * (1 - death) * MU[1, a1]


def sampled_stays(n: int, seed: int, mu: np.ndarray = MU) -> list[tuple[list, list]]:
    rng = np.random.default_rng(seed)
    stays = []
    for _ in range(n):
        a0 = int(rng.choice(2, p=mu[0]))
        if rng.random() < DEATH:
            stays.append(([0], [a0]))
        else:
            stays.append(([0, 1], [a0, int(rng.choice(2, p=mu[1]))]))
    return stays


def observation_of(states: np.ndarray, continuous_rng: np.random.Generator | None = None):
    """One-hot rows, or a noisy scalar (state + N(0, 0.1)) when `continuous_rng` is given."""
    if continuous_rng is None:
        return np.eye(2, dtype=np.float32)[states]
    noise = continuous_rng.normal(0.0, 0.1, size=len(states))
    return (states + noise).astype(np.float32)[:, None]


def logged(stays, mu: np.ndarray = MU, continuous_seed: int | None = None) -> LoggedSteps:
    """LoggedSteps of (states, actions) stays of the two-state MDP (terminal next obs: zeros)."""
    stay, step, state, action, next_state, terminated = [], [], [], [], [], []
    for i, (states, actions) in enumerate(stays):
        for t, (s, a) in enumerate(zip(states, actions, strict=True)):
            ends = t == len(states) - 1
            stay.append(i), step.append(t), state.append(s), action.append(a)
            next_state.append(-1 if ends else states[t + 1]), terminated.append(ends)
    state, action, next_state = np.array(state), np.array(action), np.array(next_state)
    rng = None if continuous_seed is None else np.random.default_rng(continuous_seed)
    obs = observation_of(state, rng)
    next_obs = observation_of(np.maximum(next_state, 0), rng)
    next_obs[next_state < 0] = 0.0
    return LoggedSteps(
        stay_ids=np.array([f"stay{i:05d}" for i in range(len(stays))]),
        stay=np.array(stay),
        step=np.array(step),
        obs=obs,
        actions=action,
        rewards=REWARD[state, action].astype(np.float32),
        next_obs=next_obs,
        terminated=np.array(terminated),
        truncated=np.zeros(len(state), dtype=bool),
        behaviour_prob=mu[state, action].astype(np.float64),
        behaviour_probs=mu[state].astype(np.float32),
    )


def info_of(steps: LoggedSteps, behaviour: str = "random") -> LogsInfo:
    d = steps.obs.shape[1]
    return LogsInfo(
        env="two-state",
        n_actions=2,
        obs_low=[-1.0] * d,
        obs_high=[2.0] * d,
        gamma=GAMMA,
        behaviour=behaviour,
        seed=0,
        episodes=steps.n_stays,
    )


def one_hot_target(probs: np.ndarray):
    return lambda obs: probs[np.asarray(obs).argmax(axis=1)]


def threshold_target(probs: np.ndarray):
    return lambda obs: probs[(np.asarray(obs)[:, 0] > 0.5).astype(int)]


def terms_of(steps: LoggedSteps, q: np.ndarray, pi: np.ndarray = PI) -> StayTerms:
    state = steps.obs.argmax(axis=1)
    ratio = pi[state, steps.actions] / steps.behaviour_prob
    return StayTerms.build(
        steps.stay,
        steps.rewards,
        ratio,
        q[state, steps.actions],
        (pi[state] * q[state]).sum(axis=1),
        GAMMA,
        steps.n_stays,
    )


# --- exact expectations over the 6 trajectories ------------------------------------------------


@pytest.mark.parametrize("q_name", ["true Q", "zero", "random"])
def test_is_pdis_and_dr_are_unbiased_for_any_q_hat(q_name: str) -> None:
    q = {"true Q": Q_PI, "zero": np.zeros((2, 2))}.get(q_name)
    q = np.random.default_rng(0).normal(size=(2, 2)) if q is None else q
    trajs = list(trajectories())
    probability = np.array([p for _, _, p in trajs])
    assert probability.sum() == pytest.approx(1.0)
    expected = terms_of(logged([(s, a) for s, a, _ in trajs]), q).estimates(probability)
    for name in (IS, PDIS, DR):
        assert expected[name][0] == pytest.approx(V_PI, abs=1e-12), name
    assert expected[LOGGED][0] == pytest.approx(0.5 + GAMMA * (1 - DEATH) * 1.0)  # V^mu = 1.22


def test_dr_with_the_true_q_is_exact_on_every_stay_when_no_one_dies() -> None:
    q_pi = np.array([[1 + GAMMA * 1.6, GAMMA * 1.6], [0.0, 2.0]])
    v_pi = float(PI[0] @ q_pi[0])  # 2.34
    assert v_pi == pytest.approx(2.34)
    for states, actions, _ in trajectories(death=0.0):
        if len(states) < 2:
            continue  # probability 0 without deaths
        single = terms_of(logged([(states, actions)]), q_pi).estimates(np.ones(1))
        assert single[DR][0] == pytest.approx(v_pi, abs=1e-12), actions
        assert single[WDR][0] == pytest.approx(v_pi, abs=1e-12), actions


def test_a_deterministic_target_weighs_only_stays_that_follow_it() -> None:
    greedy = np.array([[1.0, 0.0], [0.0, 1.0]])
    trajs = list(trajectories())
    probability = np.array([p for _, _, p in trajs])
    steps = logged([(s, a) for s, a, _ in trajs])
    expected = terms_of(steps, np.zeros((2, 2)), greedy).estimates(probability)
    assert expected[IS][0] == pytest.approx(1 + GAMMA * (1 - DEATH) * 2)  # 2.44
    weights = terms_of(steps, np.zeros((2, 2)), greedy).per_stay[:, -1]
    assert set(np.round(weights, 12)) <= {0.0, 2.0, 4.0}  # 0 or 1/mu per step


# --- sampled logs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled() -> LoggedSteps:
    return logged(sampled_stays(2000, seed=1))


@pytest.fixture(scope="module")
def report(sampled: LoggedSteps):
    return evaluate_offline(sampled, info_of(sampled), one_hot_target(PI), bootstrap=1000, seed=0)


def test_every_estimator_on_2000_sampled_stays_is_near_the_truth_and_its_interval_covers_it(
    report,
) -> None:
    assert report.fqe == "tabular"
    assert set(report.estimates) == set(ESTIMATORS)
    for name, estimate in report.estimates.items():
        assert estimate.value == pytest.approx(V_PI, abs=0.08), name
        assert estimate.low - 1e-9 <= estimate.value <= estimate.high + 1e-9, name
        assert estimate.high - estimate.low < 0.4, name
        if name != FQE:
            assert estimate.low <= V_PI <= estimate.high, name
    # Q-hat is held fixed across resamples and every stay starts in s0: the FQE interval has
    # no width, it leaves out the error of fitting Q-hat (documented)
    assert report.estimates[FQE].high - report.estimates[FQE].low < 1e-9
    # the same draw through an independent script (memo of issue 16, section 5)
    memo = {IS: 2.055, PDIS: 2.050, WIS: 2.053, WPDIS: 2.051, FQE: 2.047}
    for name, value in memo.items():
        assert report.estimates[name].value == pytest.approx(value, abs=5e-4), name
    assert report.ess == pytest.approx(944, abs=0.5)
    assert report.logged.value == pytest.approx(1.22, abs=0.06)
    assert report.unsupported_mass == 0.0
    assert report.warnings == []


def test_tabular_fqe_recovers_the_q_values_of_the_sampled_mdp(sampled: LoggedSteps) -> None:
    state = sampled.obs.argmax(axis=1)
    next_state = sampled.next_obs.argmax(axis=1)
    q = tabular_fqe(
        state,
        sampled.actions,
        sampled.rewards.astype(np.float64),
        next_state,
        ~sampled.terminated,
        PI[state],
        GAMMA,
        n_states=2,
    )
    np.testing.assert_allclose(q, Q_PI, atol=0.05)
    np.testing.assert_allclose(q[1], [0.0, 2.0])  # s1 ends at once: its rewards are exact


def test_refitting_tabular_fqe_in_every_resample_gives_its_interval_a_width(
    sampled: LoggedSteps,
) -> None:
    result = evaluate_offline(
        sampled, info_of(sampled), one_hot_target(PI), bootstrap=300, refit_fqe=True
    )
    fqe = result.estimates[FQE]
    assert fqe.low < V_PI < fqe.high
    assert 0.02 < fqe.high - fqe.low < 0.3
    assert result.refit_fqe and "Q-hat refitted" in result.format()


def test_weighting_rows_in_tabular_fqe_is_repeating_them(sampled: LoggedSteps) -> None:
    state, next_state = sampled.obs.argmax(axis=1), sampled.next_obs.argmax(axis=1)
    weights = np.random.default_rng(0).integers(0, 3, size=len(sampled))
    rows = (state, sampled.actions, sampled.rewards, next_state, ~sampled.terminated, PI[state])
    weighted = tabular_fqe(*rows, GAMMA, n_states=2, weights=weights)
    repeat = np.repeat(np.arange(len(sampled)), weights)
    repeated = tabular_fqe(*(x[repeat] for x in rows), GAMMA, n_states=2)
    np.testing.assert_allclose(weighted, repeated)


def test_when_the_target_is_the_behaviour_every_ratio_is_one(sampled: LoggedSteps) -> None:
    result = evaluate_offline(sampled, info_of(sampled), one_hot_target(MU), bootstrap=50)
    logged_mean = result.logged.value
    for name in (IS, PDIS, WIS, WPDIS):
        assert result.estimates[name].value == pytest.approx(logged_mean, abs=1e-12), name
    assert result.ess == pytest.approx(sampled.n_stays)


def test_scaling_every_stay_weight_alike_leaves_the_weighted_estimators_unchanged(
    sampled: LoggedSteps,
) -> None:
    """Halving mu at the first step doubles every stay's weight at every step: the weighted
    estimators do not move, the unweighted ones double."""
    base = terms_of(sampled, Q_PI).estimates(np.ones(sampled.n_stays))
    first = sampled.step == 0
    halved = np.where(first, sampled.behaviour_prob / 2, sampled.behaviour_prob)
    scaled = terms_of(LoggedSteps(**{**vars(sampled), "behaviour_prob": halved}), Q_PI)
    scaled = scaled.estimates(np.ones(sampled.n_stays))
    for name in (WIS, WPDIS):
        assert scaled[name][0] == pytest.approx(base[name][0]), name
    for name in (IS, PDIS):
        assert scaled[name][0] == pytest.approx(2 * base[name][0]), name


def test_the_bootstrap_is_seeded_and_fast_on_20000_stays() -> None:
    import time

    steps = logged(sampled_stays(20_000, seed=2))
    info = info_of(steps)
    start = time.perf_counter()
    first = evaluate_offline(steps, info, one_hot_target(PI), bootstrap=1000, seed=3)
    elapsed = time.perf_counter() - start
    again = evaluate_offline(steps, info, one_hot_target(PI), bootstrap=1000, seed=3)
    assert first.to_dict() == again.to_dict()
    assert elapsed < 20
    width = first.estimates[WIS].high - first.estimates[WIS].low
    assert width < 0.1  # ten times the stays of the 2,000-stay interval, a third of its width


@pytest.fixture
def one_torch_thread():
    """Small networks run fastest on one thread (and the CI machine has two cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_mlp_fqe_on_continuous_observations_is_near_the_truth(one_torch_thread) -> None:
    steps = logged(sampled_stays(2000, seed=4), continuous_seed=5)
    config = FQEConfig(hidden=(32,), iterations=20, steps_per_iteration=50, batch_size=256)
    result = evaluate_offline(
        steps, info_of(steps), threshold_target(PI), bootstrap=200, fqe_config=config
    )
    assert result.fqe == "mlp"
    assert result.estimates[FQE].value == pytest.approx(V_PI, abs=0.15)
    assert result.estimates[DR].value == pytest.approx(V_PI, abs=0.1)
    assert result.estimates[WDR].value == pytest.approx(V_PI, abs=0.1)


def test_a_target_acting_where_the_behaviour_never_does_is_flagged() -> None:
    protocol = np.array([[0.5, 0.5], [1.0, 0.0]])  # the logs never take action 1 in s1
    steps = logged(sampled_stays(500, seed=6, mu=protocol), mu=protocol)
    result = evaluate_offline(steps, info_of(steps), one_hot_target(PI), bootstrap=100)
    share_in_s1 = float(np.mean(steps.obs[:, 1] == 1))
    assert result.unsupported_mass == pytest.approx(0.8 * share_in_s1)
    assert any("rarely contain" in w for w in result.warnings)
    # the behaviour itself takes its rare actions no more often than it does: no warning
    result = evaluate_offline(steps, info_of(steps), one_hot_target(protocol), bootstrap=0)
    assert result.unsupported_mass == 0.0 and result.warnings == []
    # the same judgement from counts alone, without the behaviour's full rows
    counted = LoggedSteps(**{**vars(steps), "behaviour_probs": None})
    result = evaluate_offline(counted, info_of(steps), one_hot_target(PI), bootstrap=0)
    assert result.unsupported_mass == pytest.approx(0.8 * share_in_s1)
    assert any("rarely contain" in w for w in result.warnings)


def test_unknown_behaviour_probabilities_leave_only_fqe(sampled: LoggedSteps) -> None:
    unknown = LoggedSteps(
        **{
            **vars(sampled),
            "behaviour_prob": np.full(len(sampled), np.nan),
            "behaviour_probs": None,
        }
    )
    result = evaluate_offline(unknown, info_of(unknown), one_hot_target(PI), bootstrap=100)
    assert result.estimates[FQE].value == pytest.approx(V_PI, abs=0.08)
    assert all(np.isnan(result.estimates[name].value) for name in (IS, WIS, DR, WDR))
    assert any("behaviour probability is unknown" in w for w in result.warnings)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["ess"] is None


class StubPolicy:
    """The parts of `training.rl.policy.GreedyPolicy` that `policy_probabilities` reads."""

    def __init__(self, has_q_values: bool, n_actions: int = 3) -> None:
        self.has_q_values = has_q_values
        self.n_actions = n_actions

    def scores(self, observations: np.ndarray) -> np.ndarray:
        scores = np.array([1.0, 3.0, 2.0] + [0.0] * (self.n_actions - 3))
        return np.tile(scores, (len(observations), 1))

    def probabilities(self, observations: np.ndarray) -> np.ndarray:
        return np.array([[0.2, 0.5, 0.3]] * len(observations))


def test_a_q_learner_is_evaluated_greedy_and_a_policy_by_its_probabilities() -> None:
    obs = np.zeros((4, 2), dtype=np.float32)
    greedy = policy_probabilities(StubPolicy(has_q_values=True))(obs)
    np.testing.assert_allclose(greedy, [[0.0, 1.0, 0.0]] * 4)
    mixed = policy_probabilities(StubPolicy(has_q_values=True), target_epsilon=0.3)(obs)
    np.testing.assert_allclose(mixed, [[0.1, 0.8, 0.1]] * 4)
    softmax = policy_probabilities(StubPolicy(has_q_values=False))(obs)
    np.testing.assert_allclose(softmax, [[0.2, 0.5, 0.3]] * 4)
    np.testing.assert_allclose(mix_uniform(softmax, 1.0), np.full((4, 3), 1 / 3))


needs_icu_sepsis = pytest.mark.skipif(
    importlib.util.find_spec("icu_sepsis") is None,
    reason="the optional icu-sepsis package is not installed",
)


@needs_icu_sepsis
def test_an_admissible_action_policy_is_folded_into_package_actions() -> None:
    from sepsis_env import icu_sepsis
    from training.rl.options import RLOptions

    policy = StubPolicy(has_q_values=True, n_actions=6)
    policy.options = RLOptions(
        env="icu-sepsis", env_kwargs={"action_set": "admissible", "max_actions": 6}
    )
    info = LogsInfo(
        env="icu-sepsis", n_actions=25, obs_low=[0.0] * 716, obs_high=[1.0] * 716, gamma=1.0,
        behaviour="clinicians",
    )  # fmt: skip
    states = np.arange(icu_sepsis.NUM_STATES)
    probs = checkpoint_probabilities(policy, info, target_epsilon=0.3)(np.eye(716)[states])
    table = icu_sepsis.action_table(6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.all(probs[states, table[:, 1]] >= 0.7)  # the greedy agent action 1, 0.7 + 0.3/6
    outside = np.ones_like(probs, dtype=bool)
    outside[states[:, None], table] = False
    assert probs[outside].max() == 0.0  # no mass on actions the agent cannot take
    with pytest.raises(OPEError, match="trained on icu-sepsis, the logs come from SepsisEnv"):
        checkpoint_probabilities(policy, LogsInfo(**{**vars(info), "env": "SepsisEnv-v0"}))


@needs_icu_sepsis
def test_icu_sepsis_logs_of_clinicians_give_their_exact_value() -> None:
    """Clinician logs (mixed with 10% random actions) evaluate the clinicians' own policy near
    its exact value, computed from the MDP's matrices."""
    from sepsis_env import icu_sepsis
    from training.rl.icu_sepsis import exact_evaluator
    from training.rl.offline.logs import simulate_logs

    steps, info = simulate_logs("icu-sepsis", "clinicians", 2000, seed=0, epsilon=0.1)
    evaluator = exact_evaluator("mean")
    clinicians = icu_sepsis.expert_policy(evaluator.mdp_)
    table = icu_sepsis.observation_table("onehot")
    result = evaluate_offline(
        steps, info, lambda obs: clinicians[state_of_observation(obs, table)], bootstrap=200
    )
    truth = evaluator.value(clinicians)  # 0.7818
    assert result.fqe == "tabular"
    for name in (WIS, FQE, DR, WDR):
        assert result.estimates[name].value == pytest.approx(truth, abs=0.03), name
    for name in (WIS, DR, WDR):
        assert result.estimates[name].low < truth < result.estimates[name].high, name


def test_a_target_that_is_not_a_distribution_is_refused(sampled: LoggedSteps) -> None:
    with pytest.raises(OPEError, match="not a distribution"):
        evaluate_offline(sampled, info_of(sampled), lambda obs: np.ones((len(obs), 2)))
    with pytest.raises(OPEError, match="shape"):
        evaluate_offline(sampled, info_of(sampled), lambda obs: np.ones((len(obs), 3)) / 3)


def test_the_report_is_json_and_a_table(report) -> None:
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["estimates"][WIS]["ci_low"] <= payload["estimates"][WIS]["value"]
    text = report.format()
    for name in ESTIMATORS:
        assert f"\n{name} " in text


# --- the command line --------------------------------------------------------------------------


def write_two_state_logs(folder: Path, n: int = 50) -> Path:
    steps = logged(sampled_stays(n, seed=7))
    folder.mkdir(parents=True)
    write_logs(steps, info_of(steps), folder)
    return folder


def test_ope_refuses_a_missing_logs_folder(tmp_path: Path) -> None:
    from sepsis_rl.cli.offline_ope import register

    app = _app(register)
    result = CliRunner().invoke(
        app, ["--policy", str(tmp_path / "none"), "--logs", str(tmp_path / "nothing")]
    )
    assert result.exit_code == 2, result.output
    assert "not a logs folder" in " ".join(result.output.split())


def test_ope_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    from sepsis_rl.cli.offline_ope import register

    logs = write_two_state_logs(tmp_path / "logs")
    result = CliRunner().invoke(
        _app(register), ["--policy", str(tmp_path / "no_checkpoint"), "--logs", str(logs)]
    )
    assert result.exit_code == 2, result.output
    assert "--policy" in result.output


def _app(register):
    import typer

    app = typer.Typer()
    register(app)
    return app


def sepsis_logs(folder: Path, stays: int, n_actions: int | None = None) -> Path:
    """Logs of random actions on SepsisEnv (uniform behaviour, probability 1/8 each)."""
    import gymnasium as gym

    import sepsis_env  # noqa: F401  registers SepsisEnv-v0

    env = gym.make("SepsisEnv-v0")
    rows: dict[str, list] = {k: [] for k in ("stay", "step", "obs", "a", "r", "next", "te", "tr")}
    rng = np.random.default_rng(0)
    for i in range(stays):
        obs, _ = env.reset(seed=i)
        done, t = False, 0
        while not done:
            action = int(rng.integers(env.action_space.n))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(
                rows, (i, t, obs, action, reward, next_obs, terminated, truncated), strict=True
            ):
                rows[key].append(value)
            obs, t, done = next_obs, t + 1, terminated or truncated
    n = len(rows["a"])
    steps = LoggedSteps(
        stay_ids=np.array([f"s{i:03d}" for i in range(stays)]),
        stay=np.array(rows["stay"]),
        step=np.array(rows["step"]),
        obs=np.array(rows["obs"], dtype=np.float32),
        actions=np.array(rows["a"]),
        rewards=np.array(rows["r"], dtype=np.float32),
        next_obs=np.array(rows["next"], dtype=np.float32),
        terminated=np.array(rows["te"]),
        truncated=np.array(rows["tr"]),
        behaviour_prob=np.full(n, 1 / env.action_space.n),
    )
    info = LogsInfo(
        env="SepsisEnv-v0",
        n_actions=n_actions or int(env.action_space.n),
        obs_low=env.observation_space.low.tolist(),
        obs_high=env.observation_space.high.tolist(),
        gamma=0.99,
        behaviour="random",
        seed=0,
        episodes=stays,
    )
    folder.mkdir(parents=True)
    write_logs(steps, info, folder)
    return folder


@pytest.mark.slow
def test_ope_evaluates_a_real_checkpoint_and_refuses_logs_it_does_not_fit(
    tiny_sepsis_run: Path, tmp_path: Path
) -> None:
    from sepsis_rl.cli.offline_ope import register

    app = _app(register)
    checkpoint = tiny_sepsis_run / "checkpoints" / "last"
    logs = sepsis_logs(tmp_path / "logs", stays=40)
    out = tmp_path / "ope.json"
    args = ["--policy", str(checkpoint), "--logs", str(logs), "--bootstrap", "200"]
    result = CliRunner().invoke(
        app, [*args, "--split", "val", "--target-epsilon", "0.1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for name in ESTIMATORS:
        assert f"\n{name} " in result.stdout
    payload = json.loads(out.read_text())
    assert payload["split"] == "val" and payload["n_stays"] == 6  # 15% of 40
    assert payload["fqe"] == "mlp"
    assert payload["estimates"][WIS]["value"] is not None

    wrong = sepsis_logs(tmp_path / "wrong", stays=2, n_actions=4)
    result = CliRunner().invoke(app, ["--policy", str(checkpoint), "--logs", str(wrong)])
    assert result.exit_code == 2
    assert "among 8 actions" in " ".join(result.output.split())
