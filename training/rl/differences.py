"""Where the learned policy and the best hand rule choose differently, and what each difference is
worth: the evidence behind "the learned policy does (not) beat the age-adaptive protocol".

Two analyses on the test episodes `evaluate` runs (SepsisEnv only; the rule reads SepsisEnv's
observation):

* **disagreement**: in the states the learned policy met, how often the rule would give a
  treatment the learned policy withholds ("rule gives, learned not") or the reverse, per treatment
  (oxygen, ventilation, vasopressors), overall and per age group, with the learned network's own
  score gap between its action and the rule's (Q-values for DQN, logits for the policy-gradient
  algorithms: how much it prefers its own choice);
* **swaps**: the learned policy with one treatment decision taken from the rule instead, evaluated
  on the same paired episodes: the paired change in return and survival says which disagreement
  costs or earns outcomes, where the disagreement table only says how often they differ.

Both ask one question the headline comparison cannot answer: *where* the two policies part, and
whether the learned policy's choice there is the better one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sepsis_env.env import AGE_GROUPS, OBS_INDEX, age_group
from sepsis_env.physiology import OXYGEN_OF_ACTION, VASOPRESSORS_OF_ACTION, VENTILATION_OF_ACTION
from sepsis_rl.common.intervals import mean_interval, proportion_interval

TREATMENTS = ("oxygen", "ventilation", "vasopressors")
"""The three treatment decisions every action is made of, in the order of `TREATMENT_FLAGS`."""

TREATMENT_FLAGS = np.array(
    [OXYGEN_OF_ACTION, VENTILATION_OF_ACTION, VASOPRESSORS_OF_ACTION], dtype=bool
).T
"""(actions, 3): whether each action gives oxygen, ventilation, vasopressors."""

_ACTION_OF_CODE = np.zeros(8, dtype=np.int64)
for _action, (_o, _v, _p) in enumerate(TREATMENT_FLAGS):
    _ACTION_OF_CODE[4 * _o + 2 * _v + _p] = _action


def actions_of_flags(flags: np.ndarray) -> np.ndarray:
    """Action indices of (n, 3) treatment flags (oxygen, ventilation, vasopressors)."""
    flags = np.asarray(flags, dtype=np.int64)
    return _ACTION_OF_CODE[4 * flags[:, 0] + 2 * flags[:, 1] + flags[:, 2]]


def rule_actions(rule, observations: np.ndarray) -> np.ndarray:
    """A deterministic per-observation rule (`rule(obs, rng) -> action`) on every row."""
    rng = np.random.default_rng(0)  # the hand rules ignore it
    return np.array([int(rule(o, rng)) for o in observations], dtype=np.int64)


def swap_treatment(learned: np.ndarray, rule: np.ndarray, treatment: int) -> np.ndarray:
    """The learned actions with the decision on `treatment` (index into `TREATMENTS`) taken from
    the rule's actions."""
    flags = TREATMENT_FLAGS[np.asarray(learned)].copy()
    flags[:, treatment] = TREATMENT_FLAGS[np.asarray(rule)][:, treatment]
    return actions_of_flags(flags)


def _groups(ages: np.ndarray) -> dict[str, np.ndarray]:
    index = np.array([age_group(a) for a in ages], dtype=np.int64)
    return {"overall": np.ones(len(ages), dtype=bool)} | {
        label: index == g for g, (label, _, _) in enumerate(AGE_GROUPS)
    }


def disagreement(
    observations: np.ndarray, learned: np.ndarray, rule: np.ndarray, scores: np.ndarray
) -> list[dict[str, Any]]:
    """One row per (age group, treatment): the states, the share where the rule gives the
    treatment and the learned policy does not (and the reverse), each with a 95% interval, and the
    mean score gap score(s, learned action) - score(s, rule's action) (Q-values or logits) over
    the states where they
    differ on that treatment (>= 0: the learned action is the argmax), with its 95% interval."""
    learned_flags, rule_flags = TREATMENT_FLAGS[learned], TREATMENT_FLAGS[rule]
    rows = np.arange(len(learned))
    gap = scores[rows, learned] - scores[rows, rule]
    out = []
    for group, mask in _groups(observations[:, OBS_INDEX["Age"]]).items():
        for t, treatment in enumerate(TREATMENTS):
            rule_only = rule_flags[mask, t] & ~learned_flags[mask, t]
            learned_only = learned_flags[mask, t] & ~rule_flags[mask, t]
            differ = rule_only | learned_only
            out.append(
                {
                    "group": group,
                    "treatment": treatment,
                    "states": int(mask.sum()),
                    "rule_gives_learned_not": proportion_interval(rule_only),
                    "learned_gives_rule_not": proportion_interval(learned_only),
                    "score_gap_mean": mean_interval(gap[mask][differ])
                    if differ.any()
                    else (float("nan"),) * 3,
                }
            )
    return out


def swap_evaluations(policy, rule, env_id: str, env_kwargs: dict, episodes: int, seed: int):
    """Paired evaluations of the learned greedy policy (`GreedyPolicy`), the rule, and the learned
    policy with each treatment decision taken from the rule, on episodes `seed ..
    seed + episodes - 1` of a `vector_entry_point` env (so they equal `evaluate`'s episodes).
    Returns {name: Evaluation}; the swap of treatment T is named `"rule's T"`."""
    import gymnasium as gym

    from sepsis_env.policies import evaluate_vector

    envs = gym.make_vec(
        env_id, num_envs=episodes, vectorization_mode="vector_entry_point", **env_kwargs
    )

    def learned(obs: np.ndarray, _rows: np.ndarray) -> np.ndarray:
        return policy.actions(obs)

    def by_rule(obs: np.ndarray, _rows: np.ndarray) -> np.ndarray:
        return rule_actions(rule, obs)

    def swapped(t: int):
        def act(obs: np.ndarray, _rows: np.ndarray) -> np.ndarray:
            return swap_treatment(policy.actions(obs), rule_actions(rule, obs), t)

        return act

    batch_policies = {"learned": learned, "rule": by_rule} | {
        f"rule's {treatment}": swapped(t) for t, treatment in enumerate(TREATMENTS)
    }
    try:
        return {name: evaluate_vector(p, envs, seed) for name, p in batch_policies.items()}
    finally:
        envs.close()


def swap_table(evaluations: dict) -> list[dict[str, Any]]:
    """Each policy of `swap_evaluations` minus the learned policy (paired, 95% CIs), on return
    and survival, overall and per age group."""
    from sepsis_env.policies import paired_difference

    learned = evaluations["learned"]
    out = []
    for name, evaluation in evaluations.items():
        if name == "learned":
            continue
        for group, mask in _groups(learned.age).items():
            out.append(
                {
                    "policy": name,
                    "group": group,
                    "episodes": int(mask.sum()),
                    "return": paired_difference(evaluation, learned, "return", mask),
                    "survival": paired_difference(evaluation, learned, "survival", mask),
                }
            )
    return out


def differences_to_rule(
    policy, rule, steps: dict, env_id: str, env_kwargs: dict, episodes: int, seed: int
) -> dict[str, Any]:
    """Both analyses, JSON-ready: `{"disagreement": rows, "swaps": rows}` (see `disagreement`,
    `swap_table`), plus the per-state arrays the figure draws under `"states"` (not JSON)."""
    obs, learned = steps["obs"], steps["actions"]
    rule_on_states = rule_actions(rule, obs)
    q = policy.scores(obs) if len(obs) else np.zeros((0, len(TREATMENT_FLAGS)))
    return {
        "disagreement": disagreement(obs, learned, rule_on_states, q),
        "swaps": swap_table(swap_evaluations(policy, rule, env_id, env_kwargs, episodes, seed)),
        "states": {"obs": obs, "learned": learned, "rule": rule_on_states},
    }
