"""SepsisEnv: organ-support decisions for a septic ICU patient, single and vectorised."""

from __future__ import annotations

import functools
import math
from os import PathLike
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sepsis_env import physiology as ph

ACTION_NAMES: tuple[str, ...] = (
    "none",
    "oxygen",
    "ventilation",
    "vasopressors",
    "oxygen+ventilation",
    "oxygen+vasopressors",
    "ventilation+vasopressors",
    "oxygen+ventilation+vasopressors",
)
"""Names of the 8 actions, in the order of the original study."""

OBS_NAMES: tuple[str, ...] = (
    "HR", "O2Sat", "SBP", "DBP", "MAP", "Resp", "Temp", "Lactate", "Age",
    "oxygen", "ventilation", "vasopressors",
    "ventilation_hours", "vasopressor_hours", "stable_hours", "hours",
)  # fmt: skip
"""Names of the observation entries, in order."""

OBS_UNITS: tuple[str, ...] = (
    "bpm", "%", "mmHg", "mmHg", "mmHg", "/min", "degC", "mmol/L", "years",
    "0/1", "0/1", "0/1", "h", "h", "h", "h",
)  # fmt: skip
MAX_EPISODE_STEPS = 30
"""Decisions per episode: the time limit of the registered id (5 days at the default 4 h step)."""
HOURS_OBS_MAX = 720.0  # 30 days; hour counters are reported up to this value
OBS_LOW = np.array(
    [20, 50, 10, 5, 10, 4, 33, 0.1, 18, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32
)  # fmt: skip
OBS_HIGH = np.array(
    [250, 100, 300, 200, 200, 80, 43, 30, 100, 1, 1, 1] + [HOURS_OBS_MAX] * 4, dtype=np.float32
)
"""Observation bounds (physical units), e.g. for normalising inputs to a network."""
_OBS_LOW_COLUMN, _OBS_HIGH_COLUMN = OBS_LOW[:, None], OBS_HIGH[:, None]
OBS_INDEX: dict[str, int] = {name: i for i, name in enumerate(OBS_NAMES)}

AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("18-40", 18.0, 41.0),
    ("41-65", 41.0, 66.0),
    ("66+", 66.0, math.inf),
)
"""Age groups as (label, lower bound inclusive, upper bound exclusive), in years."""

OUTCOMES: tuple[str, ...] = ("alive", "died", "discharged")
"""Outcome labels; the vector env reports their index in `info["outcome"]`."""

REWARD_MODES = ("outcome", "guideline")

# --- Reward, mode "outcome" ----------------------------------------------------------------------
DISCHARGE_REWARD = 15.0  # terminal: discharged alive from the ICU
DEATH_REWARD = -15.0  # terminal: died
SCORE_SHAPING = 0.5  # reward per point the organ-dysfunction score improves in a step
OXYGEN_COST = 0.05  # nasal cannula / mask: cheap and safe
VASOPRESSOR_COST = 0.25  # central line, arterial line, ICU bed
VENTILATION_COST = 0.5  # intubation, sedation, ICU bed
ACTION_COST = tuple(
    OXYGEN_COST * o + VENTILATION_COST * v + VASOPRESSOR_COST * p
    for o, v, p in zip(
        ph.OXYGEN_OF_ACTION, ph.VENTILATION_OF_ACTION, ph.VASOPRESSORS_OF_ACTION, strict=True
    )
)
"""Treatment cost of each action (the sum of its treatments' costs)."""
# Organ-dysfunction score from the observation (SOFA-like, 0-11 points): one point per threshold.
# Thresholds the physiology also uses are read from it (hypoxaemia, Sepsis-3 lactate, fatigue).
SCORE_MAP_MMHG = (70.0, 60.0, 50.0)  # mmHg; SOFA cardiovascular: MAP < 70
SCORE_SPO2_PCT = (94.0, ph.SPO2_HYPOXAEMIA_PCT, 85.0)  # %; below oxygen target, hypoxaemia, severe
SCORE_LACTATE_MMOL_L = (ph.LACTATE_STABLE_MMOL_L, 4.0, 8.0)  # Sepsis-3 (> 2), severe (> 4, > 8)
SCORE_RESP_PER_MIN = (22.0, ph.RESP_FATIGUE_PER_MIN)  # tachypnoea (qSOFA >= 22), fatigue (> 30)

# --- Reward, mode "guideline": the original study's rule and rewards, as issue 3 states them -----
GUIDELINE_MATCH_REWARD = 3.0
GUIDELINE_MISMATCH_REWARD = -2.0
GUIDELINE_IDLE_REWARD = 0.0  # no recommendation and no treatment
GUIDELINE_UNNEEDED_REWARD = -1.0  # no recommendation but some treatment
# The study's thresholds, written out as it published them: some equal the physiology's targets
# (SpO2 92 %, MAP 65 mmHg) but are deliberately not tied to them, so that the reproduced rule does
# not move when the simulator's physiology is changed.
GUIDELINE_RESP_SEVERE = 30.0  # /min
GUIDELINE_RESP_HIGH = 20.0  # /min
GUIDELINE_SPO2_LOW = 92.0  # %
GUIDELINE_SBP_LOW, GUIDELINE_DBP_LOW, GUIDELINE_MAP_LOW = 90.0, 60.0, 65.0  # mmHg
# Adding vasopressors to a recommendation: none -> 3, 1 -> 5, 2 -> 6, 4 -> 7.
GUIDELINE_ADD_VASOPRESSORS = {None: 3, 1: 5, 2: 6, 4: 7}

DEFAULT_STEP_HOURS = 4.0  # one decision every 4 h, as in the AI Clinician (Komorowski 2018)
MAX_STEP_HOURS = 8.0  # longer steps would make the Euler updates inaccurate
# Randomness: every step and every reset consumes one record of `RECORD_UNIFORMS` uniforms from
# the environment's generator (a step uses the first `physiology.N_STEP_UNIFORMS`, a reset the
# first `physiology.N_RESET_UNIFORMS`). Records are drawn `BUFFER_RECORDS` at a time. In the
# vector env each copy owns its generator and consumes it by the same rule; since a copy either
# steps or (after the end of an episode) resets at every vector step, all copies stay in lockstep
# and the vector env reads one record of every copy at the same position of their buffers.
RECORD_UNIFORMS = max(ph.N_STEP_UNIFORMS, ph.N_RESET_UNIFORMS)
BUFFER_RECORDS = 128  # records drawn at a time: 128 x 12 uniforms (12 kB) per environment

# Admission ranges: cohort values are clipped to these physiologically survivable ranges.
COHORT_VITALS: tuple[str, ...] = ph.COHORT_COLUMNS
# Survivable admission ranges, in COHORT_VITALS order: Age (years), HR (bpm), O2Sat (%), Temp
# (degC), SBP, MAP, DBP (mmHg), Resp (/min), Lactate (mmol/L). A cohort row outside them (data
# error, or a patient in arrest) is clipped, so that every episode starts from a patient who can
# still be treated: e.g. MAP 35-115 mmHg (below 35 is circulatory arrest), SpO2 >= 70 %, lactate
# 0.5-15 mmol/L (above 15 survival is anecdotal), age 18-100 (adults; PhysioNet codes 90+ as 100).
ADMISSION_LOW = np.array([18, 40, 70, 34, 50, 35, 20, 8, 0.5])
ADMISSION_HIGH = np.array([100, 180, 100, 41.5, 220, 115, 130, 45, 15])


def age_group(age: float) -> int:
    """Index into `AGE_GROUPS` of an age in years."""
    return 0 if age < AGE_GROUPS[1][1] else (1 if age < AGE_GROUPS[2][1] else 2)


def organ_score(obs: Any) -> int:
    """Organ-dysfunction points (0-11) of one observation (array or list in `OBS_NAMES` order):
    one point per threshold crossed by MAP, SpO2, lactate and breathing rate."""
    m, sat, lac, r = float(obs[4]), float(obs[1]), float(obs[7]), float(obs[5])
    return (
        (m < _M1) + (m < _M2) + (m < _M3)
        + (sat < _S1) + (sat < _S2) + (sat < _S3)
        + (lac > _L1) + (lac > _L2) + (lac > _L3)
        + (r > _R1) + (r > _R2)
    )  # fmt: skip


(_M1, _M2, _M3), (_S1, _S2, _S3) = SCORE_MAP_MMHG, SCORE_SPO2_PCT
(_L1, _L2, _L3), (_R1, _R2) = SCORE_LACTATE_MMOL_L, SCORE_RESP_PER_MIN


def organ_scores(obs: np.ndarray) -> np.ndarray:
    """`organ_score` of a batch of observations (rows)."""
    # Points = thresholds crossed: for "below" scores len - #(t <= x), for "above" #(t < x).
    return (
        (len(SCORE_MAP_MMHG) - np.searchsorted(_MAP_T, obs[:, 4], side="right"))
        + (len(SCORE_SPO2_PCT) - np.searchsorted(_SPO2_T, obs[:, 1], side="right"))
        + np.searchsorted(_LACTATE_T, obs[:, 7], side="left")
        + np.searchsorted(_RESP_T, obs[:, 5], side="left")
    ).astype(np.float64)


_MAP_T, _SPO2_T = np.sort(SCORE_MAP_MMHG), np.sort(SCORE_SPO2_PCT)
_LACTATE_T, _RESP_T = np.sort(SCORE_LACTATE_MMOL_L), np.sort(SCORE_RESP_PER_MIN)


def guideline_action(obs: np.ndarray) -> int | None:
    """The original study's recommended action for the vitals in `obs`, or None."""
    resp, spo2 = obs[5], obs[1]
    if resp > GUIDELINE_RESP_SEVERE and spo2 < GUIDELINE_SPO2_LOW:
        rec = 4
    elif resp > GUIDELINE_RESP_SEVERE:
        rec = 2
    elif resp > GUIDELINE_RESP_HIGH:
        rec = 1
    else:
        rec = None
    if obs[2] < GUIDELINE_SBP_LOW or obs[3] < GUIDELINE_DBP_LOW or obs[4] < GUIDELINE_MAP_LOW:
        rec = GUIDELINE_ADD_VASOPRESSORS[rec]
    return rec


def guideline_reward(obs: np.ndarray, action: int) -> float:
    """The original study's reward for taking `action` when the vitals were `obs`."""
    rec = guideline_action(obs)
    if rec is None:
        return GUIDELINE_IDLE_REWARD if action == 0 else GUIDELINE_UNNEEDED_REWARD
    return GUIDELINE_MATCH_REWARD if action == rec else GUIDELINE_MISMATCH_REWARD


def guideline_rewards(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """`guideline_reward` for a batch of observations (rows) and actions."""
    resp, spo2 = obs[:, 5], obs[:, 1]
    severe = resp > GUIDELINE_RESP_SEVERE
    rec = np.where(
        severe & (spo2 < GUIDELINE_SPO2_LOW),
        4,
        np.where(severe, 2, np.where(resp > GUIDELINE_RESP_HIGH, 1, -1)),
    )
    low_bp = (
        (obs[:, 2] < GUIDELINE_SBP_LOW)
        | (obs[:, 3] < GUIDELINE_DBP_LOW)
        | (obs[:, 4] < GUIDELINE_MAP_LOW)
    )
    with_vaso = np.select([rec == -1, rec == 1, rec == 2, rec == 4], [3, 5, 6, 7], rec)
    rec = np.where(low_bp, with_vaso, rec)
    matched = np.where(actions == rec, GUIDELINE_MATCH_REWARD, GUIDELINE_MISMATCH_REWARD)
    idle = np.where(actions == 0, GUIDELINE_IDLE_REWARD, GUIDELINE_UNNEEDED_REWARD)
    return np.where(rec == -1, idle, matched)


# --- Cohort ---------------------------------------------------------------------------------------
def admission_table(cohort: Any, split: str | None, source: str = "cohort") -> tuple:
    """(admission constants, patient ids) of a cohort DataFrame: the `COHORT_VITALS` clipped to
    admission ranges and turned into `physiology.admission_constants`.

    Raises ValueError naming the source, the missing columns or the patient with a missing value.
    """
    missing = [c for c in ("patient_id", *COHORT_VITALS) if c not in cohort.columns]
    if split is not None and "split" not in cohort.columns:
        missing.append("split")
    if missing:
        raise ValueError(
            f"{source}: env cohort lacks columns {missing}; expected the env_cohort.parquet "
            "columns of docs/CONTRACTS.md"
        )
    if split is not None:
        cohort = cohort[cohort["split"] == split]
    if len(cohort) == 0:
        raise ValueError(f"{source}: no patients with split == {split!r}")
    values = cohort[list(COHORT_VITALS)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: patient {cohort['patient_id'].iloc[row]} has no value for "
            f"{COHORT_VITALS[col]}; impute it in data_prep before building the env"
        )
    table = np.clip(values, ADMISSION_LOW, ADMISSION_HIGH)
    return ph.admission_constants(table), tuple(cohort["patient_id"].astype(str))


@functools.lru_cache(maxsize=4)
def _builtin_table(n_patients: int, seed: int, split: str | None) -> tuple:
    from data_prep.env_cohort import builtin_env_cohort  # heavy: imported only when needed

    cohort = builtin_env_cohort(n_patients=n_patients, seed=seed)
    return admission_table(cohort, split, source="built-in cohort")


@functools.lru_cache(maxsize=8)
def _parquet_table(path: str, mtime: float, split: str | None) -> tuple:
    import pandas as pd

    return admission_table(pd.read_parquet(path), split, source=path)


class _Cohort:
    """Where the starting patients come from; loaded on first use and cached per process."""

    def __init__(self, cohort: Any, split: str | None, n_patients: int, seed: int) -> None:
        self.split = split
        self.n_patients = n_patients
        self.seed = seed
        self.path: str | None = None
        self.loaded: tuple | None = None
        self.from_frame = False
        if isinstance(cohort, str | PathLike):
            self.path = str(cohort)
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"env cohort {self.path} does not exist")
        elif cohort is not None:
            self.loaded = admission_table(cohort, split)
            self.from_frame = True

    def tables(self) -> tuple[np.ndarray, tuple[str, ...]]:
        if self.loaded is None:
            if self.path is not None:
                mtime = Path(self.path).stat().st_mtime
                self.loaded = _parquet_table(self.path, mtime, self.split)
            else:
                self.loaded = _builtin_table(self.n_patients, self.seed, self.split)
        return self.loaded

    def __getstate__(self) -> dict:
        # A path or the built-in cohort travels as its description and is reloaded on arrival.
        state = self.__dict__.copy()
        if not self.from_frame:
            state["loaded"] = None
        return state


def _check_options(reward_mode: str, step_hours: float, render_mode: str | None = None) -> None:
    if render_mode is not None:
        raise ValueError(f"render_mode={render_mode!r}: SepsisEnv does not render; leave it None")
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode={reward_mode!r}; choose one of {REWARD_MODES}")
    if not 0.0 < step_hours <= MAX_STEP_HOURS:
        raise ValueError(f"step_hours={step_hours} must be in (0, {MAX_STEP_HOURS}]")


class SepsisEnv(gym.Env[np.ndarray, np.int64]):
    """
    ## Description

    An adult patient with sepsis in the intensive care unit. Every `step_hours` (4 h by default)
    the clinician chooses which organ support to give for the next interval: supplemental oxygen,
    invasive mechanical ventilation, vasopressors, or a combination. Antibiotics and source
    control are assumed to be running in the background, so the infection slowly resolves; the
    agent's job is to carry the patient's organs through it without harming them.

    Each episode starts from one patient of a cohort (the vitals of a real or synthetic septic
    patient at the start of the sepsis label window) and a latent state drawn around it: infection
    burden, vasoplegia, lung injury, accumulated organ damage and lactate. The bedside vitals are
    noisy measurements of that latent state. Untreated shock worsens: hypotension (MAP < 65 mmHg)
    and hypoxaemia accumulate organ damage and raise lactate, damage deepens the vasoplegia and
    raises the death hazard. Oxygen fixes mild hypoxaemia; ventilation fixes severe hypoxaemia and
    tachypnoea but lowers MAP and carries a complication risk that grows with its duration;
    vasopressors raise MAP but cause tachycardia, and ischaemic organ damage when the MAP was
    adequate without them or when given for more than two days. Age changes the response: older
    patients respond less to support and antibiotics, accumulate damage and die faster (frailty),
    and their organs need a higher MAP (autoregulation shifted by chronic hypertension: 65 mmHg
    up to 50 years, ~70 mmHg at 80). Every equation and constant, with its unit and reasoning, is
    in `sepsis_env/physiology.py`.

    Under the default cohort, over 2,000 paired episodes (tests/test_env_outcomes.py), the
    clinician protocol (`sepsis_env.policies.clinician_protocol`) has ~19 % mortality (5-7 %,
    10-13 % and 30 % in the three age groups; 32 % among patients starting with MAP < 65), no
    treatment ~43 % (88 % in shock), treating everything always ~45 %, and an age-adaptive
    protocol ~14 %: good care helps, over-treatment harms, and the best policy is not the obvious
    one.

    ## Action Space

    `Discrete(8)`, the order of the original study (`sepsis_env.ACTION_NAMES`):

    | Num | Action                          |
    |-----|---------------------------------|
    | 0   | none                            |
    | 1   | oxygen                          |
    | 2   | ventilation                     |
    | 3   | vasopressors                    |
    | 4   | oxygen + ventilation            |
    | 5   | oxygen + vasopressors           |
    | 6   | ventilation + vasopressors      |
    | 7   | oxygen + ventilation + vasopressors |

    An action sets the treatments for the coming interval; a treatment not in the action is
    stopped. Anything `action_space.contains` rejects (out of range, not an integer) raises
    ValueError naming the action; the vector env also names the sub-environment.

    ## Observation Space

    `Box(16,)` of float32 in physical units (`sepsis_env.OBS_NAMES`, `OBS_LOW`, `OBS_HIGH`):

    | Num | Observation        | Unit   | Min  | Max |
    |-----|--------------------|--------|------|-----|
    | 0   | HR                 | bpm    | 20   | 250 |
    | 1   | O2Sat (SpO2)       | %      | 50   | 100 |
    | 2   | SBP                | mmHg   | 10   | 300 |
    | 3   | DBP                | mmHg   | 5    | 200 |
    | 4   | MAP                | mmHg   | 10   | 200 |
    | 5   | Resp               | /min   | 4    | 80  |
    | 6   | Temp               | degC   | 33   | 43  |
    | 7   | Lactate            | mmol/L | 0.1  | 30  |
    | 8   | Age                | years  | 18   | 100 |
    | 9   | oxygen running     | 0/1    | 0    | 1   |
    | 10  | ventilation running | 0/1   | 0    | 1   |
    | 11  | vasopressors running | 0/1  | 0    | 1   |
    | 12  | hours of the current ventilation run | h | 0 | 720 |
    | 13  | hours of the current vasopressor run | h | 0 | 720 |
    | 14  | hours stable off ventilation and vasopressors | h | 0 | 720 |
    | 15  | hours since the start of the episode | h | 0 | 720 |

    Vitals 0-7 carry measurement noise; MAP = DBP + (SBP - DBP) / 3 up to float32 rounding. The
    treatment flags and hour counters make the decision process Markov up to the latent state.

    ## Rewards

    `reward_mode="outcome"` (default):

    | Term | Reward |
    |------|--------|
    | discharged alive (terminal) | +15 |
    | died (terminal) | -15 |
    | organ-dysfunction score improved by k points in the step | +0.5 k (negative if it worsened) |
    | oxygen given in the step | -0.05 |
    | vasopressors given in the step | -0.25 |
    | ventilation given in the step | -0.5 |

    The organ-dysfunction score (`organ_score`, 0-11) counts from the observation one point each
    for MAP < 70, < 60, < 50 mmHg; SpO2 < 94, < 90, < 85 %; lactate > 2, > 4, > 8 mmol/L; and
    breathing rate > 22, > 30 /min.

    `reward_mode="guideline"` reproduces the original study's reward. A rule recommends one
    action from the vitals before the step: Resp > 30 and O2Sat < 92 -> 4; else Resp > 30 -> 2;
    else Resp > 20 -> 1; then if SBP < 90 or DBP < 60 or MAP < 65, vasopressors are added
    (no recommendation -> 3, 1 -> 5, 2 -> 6, 4 -> 7). The reward is +3 if the action matches the
    recommendation and -2 if not; with no recommendation, 0 for action 0 and -1 for any other.
    This reward ignores the patient's outcome; it is kept for comparison only.

    ## Starting State

    A patient drawn uniformly from the cohort (after the `split` filter); cohort vitals are first
    clipped to survivable admission ranges (e.g. MAP 35-115 mmHg, lactate 0.5-15 mmol/L, age
    18-100). The latent state comes from the patient's vitals plus uniform draws: infection burden
    0.3-0.85 plus more for high lactate and low MAP (the vitals at the start of the label window
    lag the infection, so many patients deteriorate over the first hours), a pre-septic MAP of at
    least 85 mmHg of which 30-80 % of the infection's vasoplegia is already expressed, lung
    susceptibility (squared uniform: a minority develop ARDS), and organ damage from the lactate
    plus a comorbidity draw. No treatment is running. The first observation measures that state,
    so it reproduces the cohort's vitals up to measurement noise.

    ## Episode End

    Termination:
    1. Death: drawn each step from a hazard that rises with organ damage (cubed), refractory
       shock (MAP < 50) and severe hypoxaemia (SpO2 < 80), times the age frailty factor.
    2. Discharge: the patient has been stable for 12 h off ventilation and vasopressors (MAP >= 65,
       SpO2 >= 92, Resp <= 24, lactate < 2, infection controlled).

    Truncation: 30 steps (120 h at the default step), set by `max_episode_steps` at registration.
    The limit counts steps, not hours: with `step_hours=1` an episode covers 30 h, too short for
    most discharges, so pass `max_episode_steps=120` to `gymnasium.make` to keep the 120 h horizon.
    Treatment costs are per step as well.

    `info["outcome"]` is "alive", "died" or "discharged"; `info` also carries the latent state
    (`infection`, `vasoplegia`, `lung`, `damage`, `lactate`), the step's `death_probability`
    and the patient (`patient_index`, `patient_id`).

    ## Arguments

    ```python
    import gymnasium as gym
    import sepsis_env

    env = gym.make("SepsisEnv-v0", cohort="data/env_cohort.parquet", split="test")
    ```

    * `cohort`: a DataFrame or the path of a Parquet table with the `env_cohort.parquet` columns
      (docs/CONTRACTS.md). None (default) uses `data_prep.env_cohort.builtin_env_cohort`, built on
      first reset and cached per process.
    * `split`: keep only the cohort rows with this `split` value (e.g. "test"); None keeps all.
    * `reward_mode`: "outcome" (default) or "guideline".
    * `step_hours`: hours per step, in (0, 8]; 4 by default.
    * `builtin_patients`, `builtin_seed`: size and seed of the built-in cohort.
    * `render_mode`: accepted for Gymnasium compatibility; there is no rendering (None only).

    The vector version (`gym.make_vec("SepsisEnv-v0", num_envs=n,
    vectorization_mode="vector_entry_point")`) takes the same arguments and steps all patients with
    array arithmetic; sub-environment i seeded with `seed + i` follows exactly the trajectory of
    the single environment reset with that seed.

    ## Version History

    * v0: Initial version: latent infection, vasoplegia, lung injury, organ damage and lactate;
      death and discharge; age effects; outcome and guideline rewards.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        cohort: Any = None,
        split: str | None = None,
        reward_mode: str = "outcome",
        step_hours: float = DEFAULT_STEP_HOURS,
        builtin_patients: int = 3000,
        builtin_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        _check_options(reward_mode, step_hours, render_mode)
        self.reward_mode = reward_mode
        self.step_hours = float(step_hours)
        self.render_mode = render_mode
        self._cohort = _Cohort(cohort, split, builtin_patients, builtin_seed)
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.patient = ph.Patient()
        self._values: list[float] = []  # the last observation as Python floats
        self._score = 0
        self._buffer = np.zeros((0, RECORD_UNIFORMS))
        self._buffer_rng: np.random.Generator | None = None
        self._cursor = BUFFER_RECORDS
        self._patient_index = -1
        self._patient_id = ""

    def _take(self) -> list[float]:
        """The next record of uniforms of this environment's stream."""
        if self._cursor == BUFFER_RECORDS or self._buffer_rng is not self.np_random:
            self._buffer = self.np_random.random((BUFFER_RECORDS, RECORD_UNIFORMS))
            self._buffer_rng = self.np_random  # reset(seed=...) replaces the generator
            self._cursor = 0
        c = self._cursor
        self._cursor = c + 1
        return self._buffer[c].tolist()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        table, ids = self._cohort.tables()
        r = self._take()
        n = len(table)
        self._patient_index = min(int(r[ph.R_PATIENT] * n), n - 1)
        self._patient_id = ids[self._patient_index]
        p = self.patient
        ph.admit(p, table[self._patient_index].tolist(), r, max, min)
        mean_ap, _, spo2, resp = ph.vitals(p, max, min)
        obs = self._observe(mean_ap, spo2, resp, ph.noise(r, ph.R_NOISE))
        return obs, self._info("alive", 0.0)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._values:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r} ({type(action).__name__}) is not in {self.action_space}: "
                f"pass an integer from 0 to {self.action_space.n - 1} (ACTION_NAMES)"
            )
        a = int(action)
        u = self._take()
        p = self.patient
        oxygen = ph.OXYGEN_OF_ACTION[a]
        ventilation = ph.VENTILATION_OF_ACTION[a]
        vasopressors = ph.VASOPRESSORS_OF_ACTION[a]
        death_p, died, mean_ap, spo2, resp = ph.advance(
            p, oxygen, ventilation, vasopressors, u, self.step_hours, max, min
        )
        discharged = (not died) and ph.discharge_ready(p)
        previous, previous_score = self._values, self._score
        obs = self._observe(mean_ap, spo2, resp, ph.noise(u, ph.U_NOISE))
        if self.reward_mode == "outcome":
            reward = SCORE_SHAPING * (previous_score - self._score) - ACTION_COST[a]
            if died:
                reward += DEATH_REWARD
            elif discharged:
                reward += DISCHARGE_REWARD
        else:
            reward = guideline_reward(previous, a)
        outcome = "died" if died else ("discharged" if discharged else "alive")
        return obs, reward, bool(died or discharged), False, self._info(outcome, death_p)

    def _observe(self, mean_ap: float, spo2: float, resp: float, e: list[float]) -> np.ndarray:
        p = self.patient
        obs = np.array(
            (
                *ph.measure(p, mean_ap, spo2, resp, e, min),
                p.age, p.oxygen, p.ventilation, p.vasopressors,
                p.ventilation_hours, p.vasopressor_hours, p.stable_hours, p.hours,
            ),
            dtype=np.float32,
        )  # fmt: skip
        np.maximum(obs, OBS_LOW, out=obs)
        np.minimum(obs, OBS_HIGH, out=obs)
        self._values = obs.tolist()
        self._score = organ_score(self._values)
        return obs

    def _info(self, outcome: str, death_p: float) -> dict[str, Any]:
        p = self.patient
        return {
            "outcome": outcome,
            "patient_index": self._patient_index,
            "patient_id": self._patient_id,
            "infection": p.infection,
            "vasoplegia": p.vasoplegia,
            "lung": p.lung,
            "damage": p.damage,
            "lactate": p.lactate,
            "death_probability": death_p,
        }

    @property
    def patient_id(self) -> str:
        """Cohort id of the current patient (also `info["patient_id"]`)."""
        return self._patient_id


class SepsisVectorEnv(VectorEnv):
    """`num_envs` copies of `SepsisEnv` stepped with array arithmetic (see `SepsisEnv`).

    Same arguments as `SepsisEnv` plus `num_envs` and `max_episode_steps`. Autoreset follows
    Gymnasium's next-step mode: the step after an episode ends returns the first observation of
    the next episode with reward 0. Sub-environment i owns its own generator, seeded `seed + i`,
    and draws from it exactly what `SepsisEnv` reset with that seed would, so their trajectories
    are identical. `info["outcome"]` holds indices into `OUTCOMES`.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        cohort: Any = None,
        split: str | None = None,
        reward_mode: str = "outcome",
        step_hours: float = DEFAULT_STEP_HOURS,
        builtin_patients: int = 3000,
        builtin_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        _check_options(reward_mode, step_hours, render_mode)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.reward_mode = reward_mode
        self.step_hours = float(step_hours)
        self.render_mode = render_mode
        self._cohort = _Cohort(cohort, split, builtin_patients, builtin_seed)
        self.single_action_space = spaces.Discrete(len(ACTION_NAMES))
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.patient = ph.Patient()
        self._generators: list[np.random.Generator] = []
        self._oxygen = np.array(ph.OXYGEN_OF_ACTION)
        self._ventilation = np.array(ph.VENTILATION_OF_ACTION)
        self._vasopressors = np.array(ph.VASOPRESSORS_OF_ACTION)
        self._action_cost = np.array(ACTION_COST)
        self._rows = np.arange(num_envs)
        self._buffers = np.zeros((num_envs, BUFFER_RECORDS, RECORD_UNIFORMS))
        self._cursor = BUFFER_RECORDS  # shared by all copies (lockstep)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._patient_index = np.zeros(num_envs, dtype=np.int64)
        self._prev_done = np.zeros(num_envs, dtype=bool)
        # Observations are kept one row per quantity (fast to build and score) and handed out
        # transposed: (num_envs, 16) in Fortran order, as CartPoleVectorEnv does.
        self._obs_t = np.zeros((len(OBS_NAMES), num_envs), dtype=np.float32)
        self._scores = np.zeros(num_envs)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        # self.np_random only seeds the copies' generators when no seed is given.
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is None:
            seeds = self.np_random.integers(0, 2**63 - 1, size=self.num_envs).tolist()
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        # Same construction as gymnasium.utils.seeding.np_random, which SepsisEnv.reset uses.
        self._generators = [gym.utils.seeding.np_random(s)[0] for s in seeds]
        self._cursor = BUFFER_RECORDS  # empty: the first draw fills the buffers
        for name in ph.PATIENT_FIELDS:
            setattr(self.patient, name, np.zeros(self.num_envs))
        r = self._take()
        mean_ap, spo2, resp = self._admit(self._rows, r)
        self._obs_t = self._observe(
            self.patient, mean_ap, spo2, resp, ph.noise_batch(r, ph.R_NOISE)
        )
        self._scores = organ_scores(self._obs_t.T)
        self._steps[:] = 0
        self._prev_done[:] = False
        return self._obs_t.T.copy(order="K"), self._info(
            np.zeros(self.num_envs, dtype=np.int8), None
        )

    def _take(self) -> np.ndarray:
        """The next record of uniforms of every copy, as a (RECORD_UNIFORMS, num_envs) array:
        row k holds uniform k of every copy."""
        if self._cursor == BUFFER_RECORDS:
            for generator, buffer in zip(self._generators, self._buffers, strict=True):
                generator.random(out=buffer)
            self._cursor = 0
        u = np.ascontiguousarray(self._buffers[:, self._cursor, :].T)
        self._cursor += 1
        return u

    def _admit(self, idx: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Admit new patients to the copies `idx`, with their records of uniforms `r` (one
        column per copy); return their true MAP, SpO2 and breathing rate."""
        table, _ = self._cohort.tables()
        n = len(table)
        chosen = np.minimum((r[ph.R_PATIENT] * n).astype(np.int64), n - 1)
        self._patient_index[idx] = chosen
        new = ph.Patient()
        ph.admit(new, np.take(table, chosen, axis=0).T, r, np.maximum, np.minimum)
        p = self.patient
        for name in ph.PATIENT_FIELDS:
            getattr(p, name)[idx] = getattr(new, name)
        mean_ap, _, spo2, resp = ph.vitals(new, np.maximum, np.minimum)
        return mean_ap, spo2, resp

    def _observe(self, p: ph.Patient, mean_ap: Any, spo2: Any, resp: Any, e: np.ndarray):
        columns = (
            *ph.measure(p, mean_ap, spo2, resp, e, np.minimum),
            p.age, p.oxygen, p.ventilation, p.vasopressors,
            p.ventilation_hours, p.vasopressor_hours, p.stable_hours, p.hours,
        )  # fmt: skip
        obs_t = np.array(columns, dtype=np.float32)  # one row per quantity
        np.maximum(obs_t, _OBS_LOW_COLUMN, out=obs_t)
        np.minimum(obs_t, _OBS_HIGH_COLUMN, out=obs_t)
        return obs_t

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._generators:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if not self.action_space.contains(actions):
            raise ValueError(self._invalid_actions(actions))
        actions = actions.astype(np.int64, copy=False)
        restart = self._prev_done
        u = self._take()  # a step record for most copies, a reset record for `restart` ones
        p = self.patient
        oxygen = self._oxygen[actions]
        ventilation = self._ventilation[actions]
        vasopressors = self._vasopressors[actions]
        death_p, died, mean_ap, spo2, resp = ph.advance(
            p, oxygen, ventilation, vasopressors, u, self.step_hours, np.maximum, np.minimum
        )
        discharged = ph.discharge_ready(p) & ~died
        previous, previous_scores = self._obs_t.T, self._scores
        e = ph.noise_batch(u, ph.U_NOISE)
        if restart.any():
            # Next-step autoreset: these copies start their next patient instead of stepping.
            # Their first observation is measured together with everyone else's.
            idx = np.flatnonzero(restart)
            r = u[:, idx]
            mean_ap[idx], spo2[idx], resp[idx] = self._admit(idx, r)
            e[:, idx] = ph.noise_batch(r, ph.R_NOISE)
        obs_t = self._observe(p, mean_ap, spo2, resp, e)
        scores = organ_scores(obs_t.T)
        if self.reward_mode == "outcome":
            reward = (
                SCORE_SHAPING * (previous_scores - scores)
                - self._action_cost[actions]
                + DEATH_REWARD * died
                + DISCHARGE_REWARD * discharged
            )
        else:
            reward = guideline_rewards(previous, actions)
        terminated = died | discharged
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps  # as TimeLimit: even when terminated
        outcome = died.astype(np.int8) + 2 * discharged.astype(np.int8)
        self._obs_t = obs_t
        self._scores = scores
        if restart.any():
            self._steps[idx] = 0
            reward[idx] = 0.0
            terminated[idx] = False
            truncated[idx] = False
            outcome[idx] = 0
            death_p = np.where(restart, 0.0, death_p)
        self._prev_done = terminated | truncated
        obs = self._obs_t.T.copy(order="K")
        return obs, reward, terminated, truncated, self._info(outcome, death_p)

    def _invalid_actions(self, actions: np.ndarray) -> str:
        """What is wrong with `actions`, which `self.action_space` does not contain."""
        n = self.single_action_space.n
        expected = (
            f"pass an array of shape ({self.num_envs},) with one integer from 0 to {n - 1} "
            "(ACTION_NAMES) per sub-environment"
        )
        if actions.shape != self.action_space.shape:
            return (
                f"actions of shape {actions.shape} for {self.num_envs} sub-environments: {expected}"
            )
        bad = np.flatnonzero(~np.isin(actions, np.arange(n)))
        if len(bad) == 0:  # every value is an action, but not stored as an integer
            return f"actions of dtype {actions.dtype} are not integers: {expected}"
        i = int(bad[0])
        return (
            f"action {actions[i].item()!r} of sub-environment {i} is not in "
            f"{self.single_action_space}: {expected}"
        )

    def _info(self, outcome: np.ndarray, death_p: np.ndarray | None) -> dict[str, Any]:
        p = self.patient
        return {
            "outcome": outcome,
            "patient_index": self._patient_index.copy(),
            "infection": p.infection.copy(),
            "vasoplegia": p.vasoplegia.copy(),
            "lung": p.lung.copy(),
            "damage": p.damage.copy(),
            "lactate": p.lactate.copy(),
            "death_probability": np.zeros(self.num_envs) if death_p is None else death_p,
        }
