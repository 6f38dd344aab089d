"""What must be true of SepsisEnv over many seeded episodes (issue 3), on the default cohort.

Every policy meets the same 2,000 patients and random streams (seed 0), so differences are paired.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sepsis_env  # noqa: F401
from sepsis_env.policies import (
    BASELINES,
    Evaluation,
    clinician_protocol,
    evaluate,
    evaluate_vector,
    paired_difference,
    per_row,
)
from sepsis_rl.common.intervals import mean_interval

EPISODES = 2000
SEED = 0


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return gym.make("SepsisEnv-v0")


@pytest.fixture(scope="module")
def results(env: gym.Env) -> dict[str, Evaluation]:
    return {name: evaluate(policy, env, EPISODES, SEED) for name, policy in BASELINES.items()}


def better(a: Evaluation, b: Evaluation, metric: str) -> bool:
    """a beats b on `metric`: the paired 95 % interval of a - b lies above zero."""
    _, low, _ = paired_difference(a, b, metric)
    return low > 0


@pytest.mark.parametrize("baseline", ["random", "no_treatment"])
def test_protocol_beats_random_and_no_treatment(results, baseline: str) -> None:
    protocol = results["protocol"]
    assert better(protocol, results[baseline], "return")
    assert better(protocol, results[baseline], "survival")


def test_untreated_shock_kills_at_least_twice_as_often_as_the_protocol(results) -> None:
    protocol, untreated = results["protocol"], results["no_treatment"]
    shock = protocol.start_map < 65
    assert np.array_equal(shock, untreated.start_map < 65)  # same patients
    assert shock.sum() >= 100
    assert untreated.died[shock].mean() >= 2 * protocol.died[shock].mean()
    # Not by chance: the paired 95 % interval of (untreated death - 2 x protocol death) is > 0.
    _, low, _ = mean_interval(untreated.died[shock] - 2.0 * protocol.died[shock])
    assert low > 0


def test_treating_everything_always_is_worse_than_the_protocol(results) -> None:
    protocol, everything = results["protocol"], results["all_treatments"]
    assert better(protocol, everything, "return")
    assert better(protocol, everything, "survival")


def test_protocol_mortality_is_clinically_plausible(results) -> None:
    death, low, high = results["protocol"].metrics()["death"]
    assert low >= 0.10 and high <= 0.35, (death, low, high)


def test_episodes_end_by_death_discharge_and_time_limit(results) -> None:
    protocol = results["protocol"]
    shares = np.bincount(protocol.outcome, minlength=3) / EPISODES
    # 0: alive at the time limit (truncated), 1: died, 2: discharged
    assert shares.min() >= 0.02, shares
    assert np.all(protocol.lengths[protocol.outcome == 0] == 30)


def test_protocol_mortality_rises_with_age_group(env: gym.Env) -> None:
    protocol = evaluate(clinician_protocol, env, 2 * EPISODES, SEED + 10_000)
    groups = protocol.age_group
    rates = [protocol.died[groups == g].mean() for g in range(3)]
    assert rates[0] < rates[1] < rates[2], rates
    assert rates[2] > 1.5 * rates[0], rates


def test_age_adaptive_policy_beats_the_protocol(results) -> None:
    """Headroom for learning: a policy built from the observation alone does better."""
    adaptive, protocol = results["age_adaptive"], results["protocol"]
    assert better(adaptive, protocol, "return")
    assert better(adaptive, protocol, "survival")


def test_evaluation_reports_overall_and_age_groups_with_intervals(results) -> None:
    summary = results["protocol"].summary()
    assert list(summary) == ["overall", "18-40", "41-65", "66+"]
    assert sum(summary[g]["episodes"][0] for g in ("18-40", "41-65", "66+")) == EPISODES
    for metrics in summary.values():
        for key in ("return", "survival", "discharge", "death", "length", "vasopressor_steps"):
            est, low, high = metrics[key]
            assert low <= est <= high
    rates = summary["overall"]
    assert rates["survival"][0] + rates["death"][0] == pytest.approx(1.0)
    assert results["no_treatment"].treatment_steps.sum() == 0
    everything = results["all_treatments"]
    assert np.all(everything.treatment_steps == everything.lengths[:, None])


def test_paired_difference_needs_the_same_patients(env: gym.Env, results) -> None:
    # Episode i is reset with seed + i: a seed at least EPISODES away gives disjoint episodes.
    other = evaluate(clinician_protocol, env, EPISODES, SEED + EPISODES)
    with pytest.raises(ValueError, match="same seed"):
        paired_difference(other, results["protocol"])
    est, low, high = paired_difference(results["protocol"], results["protocol"])
    assert est == low == high == 0.0


@pytest.mark.parametrize("name", ["protocol", "random"])
def test_vector_evaluation_reproduces_the_episodes_one_by_one(results, name: str) -> None:
    """All 2,000 episodes stepped together in the vector env equal `evaluate`'s, also for a
    policy with its own randomness (per-episode generators)."""
    envs = gym.make_vec("SepsisEnv-v0", num_envs=EPISODES, vectorization_mode="vector_entry_point")
    batched = evaluate_vector(per_row(BASELINES[name], EPISODES, SEED), envs, SEED)
    one_by_one = results[name]
    for column in ("returns", "lengths", "outcome", "patient_index", "action_counts", "age"):
        assert np.array_equal(getattr(batched, column), getattr(one_by_one, column)), column
    assert paired_difference(batched, one_by_one) == (0.0, 0.0, 0.0)
