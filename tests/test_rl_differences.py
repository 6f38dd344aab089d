"""Where the learned policy and the hand rule differ (`training.rl.differences`), checked on real
policies whose differences are known by construction: the age-adaptive protocol is the clinician
protocol with another vasopressor decision, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from sepsis_env.policies import age_adaptive_protocol, clinician_protocol, evaluate
from training.rl.differences import (
    TREATMENT_FLAGS,
    TREATMENTS,
    actions_of_flags,
    disagreement,
    rule_actions,
    swap_evaluations,
    swap_table,
    swap_treatment,
)


class RuleAsGreedy:
    """A hand rule behind the `actions(observations)` interface of `GreedyPolicy`."""

    def __init__(self, rule) -> None:
        self.rule = rule

    def actions(self, observations: np.ndarray) -> np.ndarray:
        return rule_actions(self.rule, observations)


def test_every_action_is_its_treatment_flags() -> None:
    actions = np.arange(len(TREATMENT_FLAGS))
    assert np.array_equal(actions_of_flags(TREATMENT_FLAGS[actions]), actions)
    assert len({tuple(f) for f in TREATMENT_FLAGS}) == 8


def test_a_swap_changes_only_its_treatment() -> None:
    everything, nothing = actions_of_flags([[1, 1, 1]])[0], actions_of_flags([[0, 0, 0]])[0]
    learned, rule = np.array([everything, nothing]), np.array([nothing, everything])
    for t in range(len(TREATMENTS)):
        flags = TREATMENT_FLAGS[swap_treatment(learned, rule, t)]
        expected = TREATMENT_FLAGS[learned].copy()
        expected[:, t] = ~expected[:, t]
        assert np.array_equal(flags, expected), TREATMENTS[t]


def test_disagreement_counts_each_direction_and_the_score_gap() -> None:
    """Four states of a 30-year-old: the rule gives vasopressors where the learned policy does not
    in one, the reverse in another, and they agree in two."""
    from sepsis_env.env import OBS_INDEX, OBS_NAMES

    obs = np.zeros((4, len(OBS_NAMES)), dtype=np.float32)
    obs[:, OBS_INDEX["Age"]] = 30.0
    vaso, none = actions_of_flags([[0, 0, 1]])[0], actions_of_flags([[0, 0, 0]])[0]
    learned = np.array([none, vaso, vaso, none])
    rule = np.array([vaso, none, vaso, none])
    q = np.zeros((4, 8))
    q[0, none], q[0, vaso] = 2.0, 1.5  # gap 0.5
    q[1, vaso], q[1, none] = 1.0, 0.0  # gap 1.0
    rows = disagreement(obs, learned, rule, q)
    overall = {r["treatment"]: r for r in rows if r["group"] == "overall"}
    assert overall["vasopressors"]["states"] == 4
    assert overall["vasopressors"]["rule_gives_learned_not"][0] == pytest.approx(0.25)
    assert overall["vasopressors"]["learned_gives_rule_not"][0] == pytest.approx(0.25)
    assert overall["vasopressors"]["score_gap_mean"][0] == pytest.approx(0.75)
    assert overall["oxygen"]["rule_gives_learned_not"][0] == 0.0
    assert np.isnan(overall["oxygen"]["score_gap_mean"][0])
    assert {r["states"] for r in rows if r["group"] == "41-65"} == {0}


def test_swaps_recover_the_rule_where_it_differs_and_nothing_elsewhere() -> None:
    """The age-adaptive protocol differs from the clinician protocol only in vasopressors: the
    protocol with the rule's vasopressor decision *is* the rule, episode by episode, and taking
    the rule's oxygen or ventilation decision changes nothing. The vector evaluation equals the
    one-episode-at-a-time one `evaluate` runs."""
    import gymnasium as gym

    episodes, seed, kwargs = 60, 7, {"split": "test"}
    evaluations = swap_evaluations(
        RuleAsGreedy(clinician_protocol), age_adaptive_protocol, "SepsisEnv-v0", kwargs,
        episodes, seed,
    )  # fmt: skip
    env = gym.make("SepsisEnv-v0", **kwargs)
    alone = evaluate(clinician_protocol, env, episodes, seed)
    env.close()
    assert np.array_equal(evaluations["learned"].returns, alone.returns)
    rule = evaluations["rule"]
    assert np.array_equal(evaluations["rule's vasopressors"].returns, rule.returns)
    for treatment in ("oxygen", "ventilation"):
        assert np.array_equal(evaluations[f"rule's {treatment}"].returns, alone.returns)
    assert not np.array_equal(rule.returns, alone.returns)  # the rule does differ somewhere
    table = swap_table(evaluations)
    overall = {r["policy"]: r for r in table if r["group"] == "overall"}
    assert overall["rule's oxygen"]["survival"] == (0.0, 0.0, 0.0)
    assert overall["rule's oxygen"]["episodes"] == episodes
    vaso, same = overall["rule's vasopressors"], overall["rule"]
    assert vaso["return"] == pytest.approx(same["return"])
