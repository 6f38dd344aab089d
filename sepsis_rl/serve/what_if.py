"""What-if: one patient's simulated course under the learned policy, the clinician protocol and no
treatment, in SepsisEnv, paired.

SepsisEnv draws its starting patients from a cohort table, so a given patient is simulated by
handing the vector env (`sepsis_env.SepsisVectorEnv`) a cohort of exactly that one patient: every
copy admits them, with its own draw of the hidden state (infection burden, vasoplegia, lung
injury, organ damage) around the given vitals. Copy i is reset with `seed + i` for every policy,
so the three policies meet the same hidden states and the same random events (common random
numbers, as in `sepsis_env.policies.evaluate_vector`); only the treatment differs.

What the simulator cannot take from the request: the admission clips the vitals to its survivable
ranges (`sepsis_env.env.ADMISSION_LOW`/`ADMISSION_HIGH`), and every episode starts with no organ
support running and the hour counters at zero, whatever the request's treatment fields say.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sepsis_env.env import (
    ADMISSION_HIGH,
    ADMISSION_LOW,
    COHORT_VITALS,
    DEFAULT_STEP_HOURS,
    MAX_EPISODE_STEPS,
    OBS_INDEX,
    OBS_UNITS,
    OUTCOMES,
    SepsisVectorEnv,
)
from sepsis_env.policies import BatchPolicy, clinician_protocol, per_row
from sepsis_rl.common.intervals import proportion_interval

MIN_EPISODES = 10
"""Fewest simulated courses per policy a what-if accepts: fewer give no usable interval."""


MAX_EPISODES = 1000
"""Most simulated courses per policy a what-if accepts (three policies: about a second of CPU)."""


PATH_VITALS = ("MAP", "Lactate", "HR")
"""Vitals whose median course a what-if reports."""


CAVEAT = (
    "Simulator's answer (SepsisEnv), not a clinical prediction: each course starts from the "
    "given vitals (clipped to the simulator's admission ranges, no organ support running) with a "
    "hidden state drawn at random, and follows the simulator's equations "
    "(sepsis_env/physiology.py), which were written by hand, not fitted to outcomes. Use it to "
    "see how the policies differ in the simulator, never to treat a patient."
)


ENV_OPTIONS = ("reward_mode", "step_hours", "max_episode_steps")
"""The training env's `gymnasium.make` arguments that shape a simulated course; the cohort
arguments (`cohort`, `split`, `builtin_*`) are replaced by the one patient."""


def one_patient_cohort(observation: dict[str, float]) -> pd.DataFrame:
    """A SepsisEnv cohort table holding only this patient (the `COHORT_VITALS` of a checked
    observation, by name)."""
    row = {"patient_id": "request", **{name: [observation[name]] for name in COHORT_VITALS}}
    return pd.DataFrame(row)


def clipped_at_admission(observation: dict[str, float]) -> list[str]:
    """The vitals the simulator's admission clips, with the value it uses instead."""
    notes = []
    for name, low, high in zip(COHORT_VITALS, ADMISSION_LOW, ADMISSION_HIGH, strict=True):
        value = observation[name]
        if not low <= value <= high:
            used = min(max(value, low), high)
            unit = OBS_UNITS[OBS_INDEX[name]]
            notes.append(
                f"{name} {value:g} {unit} is outside the simulator's admission range "
                f"({low:g} to {high:g} {unit}); the simulated courses start from {used:g} {unit}"
            )
    return notes


def simulate(
    observation: dict[str, float],
    policies: dict[str, BatchPolicy],
    env_kwargs: dict[str, Any],
    episodes: int,
    seed: int,
) -> dict[str, Any]:
    """The what-if answer: survival with its Wilson 95 % interval and the median course of
    `PATH_VITALS` for each policy, over `episodes` paired simulated courses of one patient.

    `env_kwargs` are the training env's arguments (only `ENV_OPTIONS` are used). The median
    course at hour h is over the courses still in the ICU then (neither dead nor discharged);
    null once none is; `in_icu` counts them.
    """
    kwargs = {k: env_kwargs[k] for k in ENV_OPTIONS if k in env_kwargs}
    kwargs.setdefault("max_episode_steps", MAX_EPISODE_STEPS)
    cohort = one_patient_cohort(observation)
    results = {
        name: _run(policy, cohort, kwargs, episodes, seed) for name, policy in policies.items()
    }
    step_hours = float(kwargs.get("step_hours", DEFAULT_STEP_HOURS))
    return {
        "caveat": CAVEAT,
        "episodes": episodes,
        "horizon_hours": int(round(kwargs["max_episode_steps"] * step_hours)),
        "warnings": clipped_at_admission(observation),
        "policies": results,
    }


def baseline_policies(episodes: int, seed: int) -> dict[str, BatchPolicy]:
    """The clinician protocol and no treatment, as batch policies of `episodes` courses."""
    return {
        "protocol": per_row(clinician_protocol, episodes, seed),
        "no_treatment": lambda observations, rows: np.zeros(len(rows), dtype=np.int64),
    }


def _run(
    policy: BatchPolicy, cohort: pd.DataFrame, kwargs: dict[str, Any], episodes: int, seed: int
) -> dict[str, Any]:
    """Run `episodes` courses of one policy; survival and the median course."""
    env = SepsisVectorEnv(num_envs=episodes, cohort=cohort, **kwargs)
    obs, _ = env.reset(seed=seed)
    steps = kwargs["max_episode_steps"]
    columns = [OBS_INDEX[name] for name in PATH_VITALS]
    # course[k, i, j]: vital j of course i after k steps (NaN once the course has ended).
    course = np.full((steps + 1, episodes, len(columns)), np.nan)
    course[0] = obs[:, columns]
    died = np.zeros(episodes, dtype=bool)
    running = np.ones(episodes, dtype=bool)
    actions = np.zeros(episodes, dtype=np.int64)  # ended copies autoreset; their action is unused
    for k in range(1, steps + 1):
        if not running.any():
            break
        rows = np.flatnonzero(running)
        actions[rows] = policy(obs[rows], rows)
        obs, _, terminated, truncated, info = env.step(actions)
        ended = rows[terminated[rows]]
        died[ended] = np.asarray(info["outcome"])[ended] == OUTCOMES.index("died")
        # A course cut by the time limit is still in the ICU at that hour; one that ended is not.
        still = rows[~terminated[rows]]
        course[k, still] = obs[still][:, columns]
        running[rows[(terminated | truncated)[rows]]] = False
    survival, low, high = proportion_interval(~died)
    hours = [round(k * env.step_hours, 6) for k in range(steps + 1)]
    path: dict[str, list] = {"hour": hours}
    in_icu = np.isfinite(course[:, :, 0])
    for j, name in enumerate(PATH_VITALS):
        path[name] = [
            round(float(np.median(course[k, in_icu[k], j])), 3) if in_icu[k].any() else None
            for k in range(steps + 1)
        ]
    return {
        "survival": float(survival),
        "survival_ci": [float(low), float(high)],
        "median_path": path,
        "in_icu": [int(n) for n in in_icu.sum(axis=1)],
    }
