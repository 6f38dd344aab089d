"""Baseline policies for SepsisEnv and a paired evaluation of any policy.

A policy is a callable `policy(obs, rng) -> action`: `obs` is one observation of `SepsisEnv`
(float32 array in the order of `OBS_NAMES`), `rng` a `numpy.random.Generator` the policy may use
for its own randomness, and the action an int in 0-7 (`ACTION_NAMES`). A trained network is
wrapped as `lambda obs, rng: int(net(obs).argmax())`.

`evaluate` runs episode i from `env.reset(seed=seed + i)` with the policy's generator seeded by
`(seed, i)`. The environment draws the patient and all of its randomness for the episode from
that seed, independently of the actions, so two policies evaluated with the same `seed` meet the
same patients under the same random events (common random numbers), and their per-episode
results can be compared pairwise (`paired_difference`).

`evaluate_vector` runs the same episodes in the native vector env, all copies at once (copy i
is reset with `seed + i`, exactly as `evaluate` resets episode i), so a network acts on a whole
batch of observations per step; `per_row` adapts a per-observation policy to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from sepsis_env.env import ACTION_NAMES, AGE_GROUPS, OBS_INDEX, OUTCOMES, age_group
from sepsis_env.physiology import (
    MAP_TARGET_MMHG,
    OXYGEN_OF_ACTION,
    RESP_FATIGUE_PER_MIN,
    SPO2_STABLE_PCT,
    VASOPRESSOR_MAP_GAIN_MMHG,
    VASOPRESSORS_OF_ACTION,
    VENTILATION_OF_ACTION,
    age_response,
    perfusion_map,
)
from sepsis_rl.common.intervals import Interval, format_interval, mean_interval, proportion_interval

Policy = Callable[[np.ndarray, np.random.Generator], int]
BatchPolicy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""`policy(observations, episodes) -> actions`: the observations of several running episodes,
shape (n, len(OBS_NAMES)), the indices of those episodes, shape (n,), and an action for each."""

_ACTION_OF_FLAGS = {
    (int(o), int(v), int(p)): a
    for a, (o, v, p) in enumerate(
        zip(OXYGEN_OF_ACTION, VENTILATION_OF_ACTION, VASOPRESSORS_OF_ACTION, strict=True)
    )
}


def action_of(oxygen: bool, ventilation: bool, vasopressors: bool) -> int:
    """The action index that gives exactly these treatments."""
    return _ACTION_OF_FLAGS[(int(oxygen), int(ventilation), int(vasopressors))]


HR, SPO2, MAP, RESP = OBS_INDEX["HR"], OBS_INDEX["O2Sat"], OBS_INDEX["MAP"], OBS_INDEX["Resp"]
AGE = OBS_INDEX["Age"]
ON_OXYGEN, ON_VENT, ON_VASO = (
    OBS_INDEX["oxygen"],
    OBS_INDEX["ventilation"],
    OBS_INDEX["vasopressors"],
)
VENT_HOURS = OBS_INDEX["ventilation_hours"]


# --- Thresholds of the clinician protocol --------------------------------------------------------
# The clinical thresholds it shares with the physiology are read from there (MAP_TARGET_MMHG,
# SPO2_STABLE_PCT, RESP_FATIGUE_PER_MIN); these are the protocol's own.
SPO2_OXYGEN_WEAN_PCT = 96.0  # %: top of the 92-96 % SpO2 target (SPO2_STABLE_PCT): oxygen off
SPO2_VENTILATE_BELOW_PCT = 88.0  # %: below the ARDSNet oxygenation goal (SpO2 88-95 %): intubate
SPO2_VENTILATION_WEAN_PCT = 95.0  # %: top of the ARDSNet goal: the ventilator can be weaned
VENTILATION_MIN_HOURS = 24.0  # h: first daily spontaneous breathing trial (Girard 2008, ABC trial)
MAP_VASOPRESSOR_WEAN_MMHG = 80.0  # mmHg: SEPSISPAM's high target (80-85), more than organs need


# --- Baselines -----------------------------------------------------------------------------------
def random_policy(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Uniformly random action."""
    return int(rng.integers(len(ACTION_NAMES)))


def no_treatment(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Never give organ support (antibiotics only)."""
    return 0


def all_treatments(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Oxygen, ventilation and vasopressors at every step."""
    return 7


@dataclass(frozen=True)
class ClinicianProtocol:
    """A bedside protocol: start each support at a threshold, wean it when the target is met.

    * oxygen when SpO2 < `oxygen_below`; weaned once SpO2 >= `oxygen_wean_at`;
    * ventilation for severe hypoxaemia (SpO2 < `ventilate_below`) or Resp > `ventilate_resp_above`;
      weaned after at least `ventilation_min_hours` once SpO2 >= `ventilation_wean_at`;
    * vasopressors when MAP < `vasopressors_below` (65 mmHg, Surviving Sepsis Campaign); weaned
      once the MAP on vasopressors is >= `vasopressors_wean_at`.
    """

    oxygen_below: float = SPO2_STABLE_PCT  # bottom of the SpO2 target 92-96 %
    oxygen_wean_at: float = SPO2_OXYGEN_WEAN_PCT
    ventilate_below: float = SPO2_VENTILATE_BELOW_PCT
    ventilate_resp_above: float = RESP_FATIGUE_PER_MIN
    ventilation_min_hours: float = VENTILATION_MIN_HOURS
    ventilation_wean_at: float = SPO2_VENTILATION_WEAN_PCT
    vasopressors_below: float = MAP_TARGET_MMHG
    vasopressors_wean_at: float = MAP_VASOPRESSOR_WEAN_MMHG

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> int:
        spo2, mean_ap, resp = obs[SPO2], obs[MAP], obs[RESP]
        if obs[ON_VENT] > 0.5:
            ventilation = not (
                obs[VENT_HOURS] >= self.ventilation_min_hours and spo2 >= self.ventilation_wean_at
            )
        else:
            ventilation = spo2 < self.ventilate_below or resp > self.ventilate_resp_above
        oxygen_threshold = self.oxygen_wean_at if obs[ON_OXYGEN] > 0.5 else self.oxygen_below
        oxygen = spo2 < oxygen_threshold
        if obs[ON_VASO] > 0.5:
            vasopressors = mean_ap < self.vasopressors_wean_at
        else:
            vasopressors = mean_ap < self.vasopressors_below
        return action_of(oxygen, ventilation, vasopressors)


clinician_protocol = ClinicianProtocol()
"""The clinician protocol with its default thresholds."""


@dataclass(frozen=True)
class AgeAdaptiveProtocol:
    """The clinician protocol, except that vasopressors are weaned only once the MAP on them
    exceeds the target by the vasopressor effect expected at the patient's age.

    The fixed protocol weans at MAP >= 80 whatever the age; in a young patient, whose MAP the drug
    raises by ~28 mmHg, that leaves a MAP in the 50s, so the protocol cycles vasopressors on and off
    and the patient accrues hypotensive damage; in an old patient the drug adds less. Knowing how
    response falls with age removes that cycling. It uses only the observation (age and MAP) and
    a pharmacological prior, so a learning agent could find it: it is the tests' proof that the
    environment leaves headroom above the protocol.
    """

    base: ClinicianProtocol = ClinicianProtocol()
    wean_margin: float = 0.0  # mmHg above target + expected effect
    age_map_target: bool = True  # start vasopressors below the age-adjusted perfusion MAP

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> int:
        action = self.base(obs, rng)
        age = float(obs[AGE])
        target = perfusion_map(age, max) if self.age_map_target else MAP_TARGET_MMHG
        if obs[ON_VASO] > 0.5:
            expected_gain = VASOPRESSOR_MAP_GAIN_MMHG * age_response(age, max)
            vasopressors = obs[MAP] < target + expected_gain + self.wean_margin
        else:
            vasopressors = obs[MAP] < target
        oxygen, ventilation = OXYGEN_OF_ACTION[action], VENTILATION_OF_ACTION[action]
        return action_of(bool(oxygen), bool(ventilation), bool(vasopressors))


age_adaptive_protocol = AgeAdaptiveProtocol()
"""The age-adaptive protocol (headroom above the clinician protocol)."""

BASELINES: dict[str, Policy] = {
    "random": random_policy,
    "no_treatment": no_treatment,
    "all_treatments": all_treatments,
    "protocol": clinician_protocol,
    "age_adaptive": age_adaptive_protocol,
}


# --- Evaluation ----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Per-episode results of one policy; episode i is the same patient and random stream for
    every policy evaluated with the same seed and environment."""

    returns: np.ndarray
    lengths: np.ndarray
    outcome: np.ndarray  # index into OUTCOMES: 0 alive at the time limit, 1 died, 2 discharged
    age: np.ndarray
    start_map: np.ndarray  # MAP of the first observation, mmHg
    patient_index: np.ndarray
    treatment_steps: np.ndarray  # (episodes, 3): steps with oxygen, ventilation, vasopressors
    action_counts: np.ndarray  # (episodes, 8)
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def died(self) -> np.ndarray:
        return self.outcome == OUTCOMES.index("died")

    @property
    def discharged(self) -> np.ndarray:
        return self.outcome == OUTCOMES.index("discharged")

    @property
    def survived(self) -> np.ndarray:
        return ~self.died

    @property
    def age_group(self) -> np.ndarray:
        return np.array([age_group(a) for a in self.age])

    def metrics(self, mask: np.ndarray | None = None) -> dict[str, Interval]:
        """Mean return, survival, discharge and death rates, mean length and mean treatment
        steps, each as (estimate, 95 % lower, 95 % upper), over the episodes in `mask`: means
        with `mean_interval`, rates with `proportion_interval`."""
        m = np.ones(len(self.returns), dtype=bool) if mask is None else mask
        steps = self.treatment_steps[m]
        return {
            "episodes": (float(m.sum()),) * 3,
            "return": mean_interval(self.returns[m]),
            "survival": proportion_interval(self.survived[m]),
            "discharge": proportion_interval(self.discharged[m]),
            "death": proportion_interval(self.died[m]),
            "length": mean_interval(self.lengths[m]),
            "oxygen_steps": mean_interval(steps[:, 0]),
            "ventilation_steps": mean_interval(steps[:, 1]),
            "vasopressor_steps": mean_interval(steps[:, 2]),
        }

    def summary(self) -> dict[str, dict[str, Interval]]:
        """`metrics` overall and per age group (`AGE_GROUPS` labels)."""
        groups = self.age_group
        out = {"overall": self.metrics()}
        for g, (label, _, _) in enumerate(AGE_GROUPS):
            out[label] = self.metrics(groups == g)
        return out

    def format(self) -> str:
        """The summary as an aligned text table."""
        lines = []
        for name, metrics in self.summary().items():
            n = int(metrics["episodes"][0])
            parts = [f"{name:>8} n={n:<5}"]
            for key in ("return", "survival", "discharge", "death", "length"):
                parts.append(f"{key} {format_interval(metrics[key])}")
            lines.append("  ".join(parts))
        return "\n".join(lines)


def evaluate(policy: Policy, env: gym.Env, episodes: int = 1000, seed: int = 0) -> Evaluation:
    """Run `episodes` episodes of `policy` in `env` (episode i reset with `seed + i`).

    Two evaluations share episodes when their seeds are less than `episodes` apart; for an
    independent sample, keep the seeds at least `episodes` apart (the project evaluates test
    patients from seed 0 and validation patients from `training.rl.validation.VALIDATION_SEED`).

    `env` should carry the time limit (make it with `gymnasium.make`). Returns per-episode
    arrays; use `Evaluation.summary()` for rates with 95 % CIs and `paired_difference` to compare
    two policies evaluated with the same seed.
    """
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    outcome = np.zeros(episodes, dtype=np.int8)
    age = np.zeros(episodes)
    start_map = np.zeros(episodes)
    patient_index = np.zeros(episodes, dtype=np.int64)
    action_counts = np.zeros((episodes, len(ACTION_NAMES)), dtype=np.int64)
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        rng = np.random.default_rng([seed, i])
        age[i] = obs[AGE]
        start_map[i] = obs[MAP]
        patient_index[i] = info["patient_index"]
        total, steps, done = 0.0, 0, False
        while not done:
            action = int(policy(obs, rng))
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            steps += 1
            action_counts[i, action] += 1
            done = terminated or truncated
        returns[i] = total
        lengths[i] = steps
        outcome[i] = OUTCOMES.index(info["outcome"])
    return Evaluation(
        returns,
        lengths,
        outcome,
        age,
        start_map,
        patient_index,
        _treatment_steps(action_counts),
        action_counts,
        seed,
    )


_TREATMENT_FLAGS = np.array(
    [OXYGEN_OF_ACTION, VENTILATION_OF_ACTION, VASOPRESSORS_OF_ACTION], dtype=np.int64
).T
"""(8, 3): whether each action gives oxygen, ventilation, vasopressors."""


def _treatment_steps(action_counts: np.ndarray) -> np.ndarray:
    """(episodes, 3) steps with oxygen, ventilation, vasopressors, from (episodes, 8) counts."""
    return action_counts @ _TREATMENT_FLAGS


def per_row(policy: Policy, episodes: int, seed: int = 0) -> BatchPolicy:
    """A per-observation policy acting on the rows of a batch: row i uses the generator
    `evaluate` gives episode i (seeded by `(seed, i)`), so `evaluate_vector` reproduces it."""
    rngs = [np.random.default_rng([seed, i]) for i in range(episodes)]

    def act(observations: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
        return np.array(
            [policy(o, rngs[i]) for o, i in zip(observations, episode_index, strict=True)],
            dtype=np.int64,
        )

    return act


def evaluate_vector(policy: BatchPolicy, env: gym.vector.VectorEnv, seed: int = 0) -> Evaluation:
    """`evaluate` with one episode per copy of `env` (a `SepsisEnv-v0` vector env made with
    `vectorization_mode="vector_entry_point"`), all copies stepped together: episode i starts
    from `reset(seed=seed + i)`, so the results equal `evaluate(..., seed=seed)` with
    `episodes=env.num_envs` for the same policy (a per-observation one through `per_row`)."""
    n = env.num_envs
    obs, info = env.reset(seed=seed)
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    outcome = np.zeros(n, dtype=np.int8)
    action_counts = np.zeros((n, len(ACTION_NAMES)), dtype=np.int64)
    age, start_map = obs[:, AGE].astype(float), obs[:, MAP].astype(float)
    patient_index = np.asarray(info["patient_index"]).copy()
    running = np.ones(n, dtype=bool)
    actions = np.zeros(n, dtype=np.int64)  # ended copies autoreset; what they get is ignored
    while running.any():
        rows = np.flatnonzero(running)
        actions[rows] = policy(obs[rows], rows)
        obs, reward, terminated, truncated, info = env.step(actions)
        returns[rows] += reward[rows]
        lengths[rows] += 1
        action_counts[rows, actions[rows]] += 1
        ended = rows[(terminated | truncated)[rows]]
        outcome[ended] = np.asarray(info["outcome"])[ended]
        running[ended] = False
    return Evaluation(
        returns, lengths, outcome, age, start_map, patient_index, _treatment_steps(action_counts),
        action_counts, seed,
    )  # fmt: skip


def paired_difference(
    a: Evaluation, b: Evaluation, metric: str = "return", mask: np.ndarray | None = None
) -> Interval:
    """Mean per-episode difference a - b of `metric` ("return", "survival", "discharge", "death",
    "length") with a paired 95 % interval (`mean_interval` of the differences). Both must come
    from the same env and seed."""
    if a.seed != b.seed or len(a.returns) != len(b.returns):
        raise ValueError("paired comparison needs evaluations with the same seed and episodes")
    if not np.array_equal(a.patient_index, b.patient_index):
        raise ValueError("paired comparison needs the same patients (same env and cohort)")
    values = {
        "return": lambda e: e.returns,
        "survival": lambda e: e.survived.astype(float),
        "discharge": lambda e: e.discharged.astype(float),
        "death": lambda e: e.died.astype(float),
        "length": lambda e: e.lengths.astype(float),
    }[metric]
    diff = values(a) - values(b)
    return mean_interval(diff if mask is None else diff[mask])
