"""The latent physiology of a septic ICU patient: every equation and constant in one place.

The environment (`sepsis_env.env`) only plumbs these functions into Gymnasium. They are written
once and run on two kinds of numbers: plain Python floats for the single environment (fast for one
patient) and NumPy arrays for the vector environment (one element per patient). That is why the
code uses arithmetic on 0/1 flags and the `mx`/`mn` arguments (`max`/`min` for floats,
`np.maximum`/`np.minimum` for arrays) instead of `if`: the same expression, evaluated in the same
order with IEEE double arithmetic, gives bit-identical results for a patient in either
environment. Only `+ - * /`, comparisons, `max` and `min` appear (no `exp`/`log`), because those
are correctly rounded everywhere.

Time is in hours; every rate below is per hour and is multiplied by the step length `dt`.

Latent state of a patient (`Patient`):

| name | unit | meaning |
|---|---|---|
| infection | 0-1 | pathogen burden and inflammatory drive; cleared by background antibiotics |
| vasoplegia | mmHg | MAP lost to pathological vasodilation; follows infection and organ damage |
| lung | 0-1 | lung injury (shunt); drives hypoxaemia and tachypnoea |
| damage | 0-~3 | accumulated organ dysfunction; 1 is severe multi-organ failure |
| lactate | mmol/L | blood lactate; produced by hypoperfusion, cleared by the liver |

and per-patient constants set at admission: age and what follows from it (response to support,
frailty, the MAP the organs need), baseline (pre-septic) MAP, pulse pressure, baseline heart
rate, fever per unit of infection, lung susceptibility. Treatment flags (0/1), the hours the
current run of ventilation or vasopressors has lasted and the hours stable off support complete
the state.

One step of `dt` hours (`advance`), with x+ = max(x, 0):

* infection: I <- I (1 - k dt response / (1 + D)), antibiotics in the background;
* vasoplegia relaxes (tau 6 h) to 32 I + 14 D mmHg; lung injury relaxes (tau 12 h) to
  susceptibility x I, plus fatigue 0.0012 /h per breath/min above 30 when not ventilated;
* damage: dD/dt = frailty (0.0025 (MAP_need - MAP)+ + 0.003 (90 - SpO2)+)
  + vasopressors (0.001 (MAP_without_vasopressors - MAP_need)+ + 0.003/24 (hours - 48)+)
  - 0.01 response D, where MAP_need = 65 + 0.15 (age - 50)+;
* lactate relaxes (tau 3 (1 + D) h) to 1 + 0.15 (MAP_need - MAP)+ + 0.1 (90 - SpO2)+ + 1.5 D
  + I mmol/L (at most 20);
* a ventilator complication (lung +0.15, damage +0.15) with probability 0.003/24 x hours
  ventilated x dt;
* death with probability h dt / (1 + h dt), h = frailty (0.0002 + 0.007 D^3
  + 0.0004 (50 - MAP)+ + 0.0004 (80 - SpO2)+) per hour;
* discharge after 12 h with MAP >= 65, SpO2 >= 92, Resp <= 24, lactate < 2, I < 0.2, no
  ventilation and no vasopressors.

The vitals that drive these rates and the observation come from `vitals`: MAP = pre-septic MAP
- vasoplegia - 7 x ventilation + 24 x response x (1 - 0.2 D)+ x vasopressors; SpO2 = 98.5 -
30 L, with oxygen closing 80 % of the gap (at most 6 points) and ventilation 80 % x response of
the rest; Resp = 14 + 25 L + 6 I + 1.5 (lactate - 1), mostly replaced by the ventilator's 16.
Age response = max(1 - 0.006 (age - 18), 0.5); frailty = 1 + 0.03 (age - 18).

The observation (`measure`) adds noise to these and derives the rest:

* HR (bpm) = baseline HR + 20 I + 0.6 (65 - MAP)+ + 15 x vasopressors (baroreflex and
  beta-adrenergic tachycardia);
* Temp (degC) = 36.8 + fever x I, where fever = (Temp at admission - 36.8) / I at admission, so
  the fever fades as the infection clears;
* pulse pressure PP = (admission SBP - DBP, kept in 25-80 mmHg) x min(MAP / 65, 1): it narrows as
  stroke volume falls in shock; SBP = MAP + 2 PP / 3, DBP = MAP - PP / 3, so MAP = DBP +
  (SBP - DBP) / 3 exactly;
* lactate is measured with a 6 % multiplicative error; the other noise widths are listed under
  "Measurement noise".

Admission (`admission_constants`, `admit`) turns a cohort row into a latent state, with uniforms
u1..u4 in [0, 1):

* I0 = min(0.3 + 0.55 u1 + 0.08 (lactate - 2)+ + 0.006 (75 - MAP)+, 1);
* pre-septic MAP = clip(MAP + 32 I0 x (0.3 + 0.5 u2), 85, 115) mmHg, and vasoplegia0 = pre-septic
  MAP - MAP, so the first true MAP is the cohort's MAP;
* lung0 = min((98.5 - SpO2)+ / 30, 1) (the lung injury that explains the cohort's SpO2), lung
  susceptibility = 1.2 u3^2;
* damage0 = 0.12 (lactate - 1.5)+ + 0.6 u4; lactate0 = the cohort's lactate;
* baseline HR = clip(HR - 20 I0, 50, 110) bpm.

Lung injury is capped at 1 (complete shunt). Cohort values are first clipped to the admission
ranges in `sepsis_env.env.ADMISSION_LOW`/`ADMISSION_HIGH`.

Where the numbers come from: thresholds and targets are clinical definitions with their source
beside them (Surviving Sepsis Campaign 2021, Sepsis-3, SEPSISPAM, BTS oxygen guideline, Vincent
1998 for SOFA mortality). The rates, gains and admission spreads are not fitted to patient data
(no public data set records these latent quantities); they are set by hand so that each effect has
a clinically plausible size and time scale (the comment beside each constant) and so that the
cohort-level outcomes are plausible: under the clinician protocol ~19 % mortality, rising with
age, ~88 % mortality of untreated shock (tests/test_env_outcomes.py checks these). Conclusions
drawn in this simulator are about this simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# --- Targets and thresholds (clinical definitions) -----------------------------------------------
MAP_TARGET_MMHG = 65.0  # Surviving Sepsis Campaign 2021: initial MAP target 65 mmHg
# Chronic hypertension and arteriosclerosis shift renal and cerebral autoregulation upwards with
# age, so older organs need a higher MAP (SEPSISPAM, Asfar 2014: a MAP of 80-85 mmHg spared the
# kidneys of chronically hypertensive patients). Organs are hypoperfused below
# MAP_TARGET_MMHG + AUTOREGULATION_SHIFT_PER_YEAR x (age - AUTOREGULATION_SHIFT_FROM_YEARS)+.
AUTOREGULATION_SHIFT_FROM_YEARS = 50.0  # years; younger organs autoregulate down to 65 mmHg
AUTOREGULATION_SHIFT_PER_YEAR = 0.15  # mmHg per year: 69.5 mmHg at 80 years
SPO2_HYPOXAEMIA_PCT = 90.0  # SpO2 below 90 % ~ PaO2 < 60 mmHg: tissue hypoxia, organ damage accrues
SPO2_STABLE_PCT = 92.0  # SpO2 needed to leave the ICU (TSANZ 2015 oxygen target 92-96 %)
RESP_FATIGUE_PER_MIN = 30.0  # breathing rate above which respiratory muscles fatigue (qSOFA > 22)
RESP_STABLE_PER_MIN = 24.0  # breathing rate compatible with ward care
LACTATE_STABLE_MMOL_L = 2.0  # Sepsis-3 septic-shock lactate threshold (> 2 mmol/L)
INFECTION_CONTROLLED = 0.2  # infection burden below which discharge is considered
DISCHARGE_STABLE_HOURS = 12.0  # hours stable off ventilation and vasopressors before discharge

# --- Normal physiology ---------------------------------------------------------------------------
SPO2_HEALTHY_PCT = 98.5  # SpO2 of healthy lungs on room air
RESP_BASE_PER_MIN = 14.0  # resting breathing rate
TEMP_NORMAL_C = 36.8  # normal core temperature (reference section 2: median 37.0)
LACTATE_NORMAL_MMOL_L = 1.0  # normal blood lactate
BASELINE_MAP_MIN_MMHG = 85.0  # pre-septic MAP of at least 85: shock is the sepsis, not the patient
BASELINE_MAP_MAX_MMHG = 115.0  # cap on a patient's pre-septic MAP (treated hypertension)

# --- Infection ------------------------------------------------------------------------------------
INFECTION_CLEARANCE_PER_H = 0.028  # with adequate antibiotics: burden half-life ~25 h in the young
# Organ damage impairs clearance (immunoparalysis, poor drug delivery): rate / (1 + damage).

# --- Vasoplegia and blood pressure ---------------------------------------------------------------
VASOPLEGIA_PER_INFECTION_MMHG = 32.0  # full infection burden costs 32 mmHg of MAP (septic shock)
VASOPLEGIA_PER_DAMAGE_MMHG = 14.0  # acidosis and cardiomyopathy of organ failure lower MAP further
VASOPLEGIA_TAU_H = 6.0  # hours for vasoplegia to follow its drivers (vitals lag the infection)
VASOPRESSOR_MAP_GAIN_MMHG = 24.0  # noradrenaline at a usual dose raises MAP ~20-30 mmHg
VASOPRESSOR_DAMAGE_BLUNTING = 0.2  # fraction of the vasopressor effect lost per unit of damage
VENTILATION_MAP_DROP_MMHG = 7.0  # positive pressure and sedation reduce venous return and MAP
MAP_FLOOR_MMHG = 20.0  # lowest MAP modelled (circulatory arrest)

# --- Lungs ----------------------------------------------------------------------------------------
SPO2_DROP_PER_LUNG_PCT = 30.0  # SpO2 points lost at full lung injury (shunt), before support
LUNG_TAU_H = 12.0  # hours for lung injury to follow infection (ARDS develops over ~a day)
LUNG_FATIGUE_PER_H = 0.012  # extra lung injury per hour per 10 /min above the fatigue rate
OXYGEN_RELIEF_FRACTION = 0.8  # supplemental oxygen corrects 80 % of a small desaturation ...
OXYGEN_RELIEF_MAX_PCT = 6.0  # ... but at most 6 SpO2 points: it cannot open a shunt
VENTILATION_RELIEF_FRACTION = 0.8  # PEEP and FiO2 correct 80 % of the remaining desaturation
RESP_PER_LUNG = 25.0  # breaths/min added at full lung injury
RESP_PER_INFECTION = 6.0  # breaths/min added by fever and inflammation at full burden
RESP_PER_LACTATE = 1.5  # breaths/min per mmol/L of excess lactate (respiratory compensation)
VENTILATOR_RATE_PER_MIN = 16.0  # set rate on the ventilator
VENTILATED_RESP_SHARE = 0.2  # share of the spontaneous drive that still shows when ventilated

# --- Heart rate and temperature ------------------------------------------------------------------
HR_PER_INFECTION_BPM = 20.0  # bpm added by inflammation at full burden
HR_PER_HYPOTENSION_BPM = 0.6  # baroreflex tachycardia, bpm per mmHg below the MAP target
VASOPRESSOR_HR_GAIN_BPM = 15.0  # beta-adrenergic tachycardia of noradrenaline
TEMP_MIN_C, TEMP_MAX_C = 34.0, 41.5  # range a patient's temperature is kept in

# --- Organ damage (per hour) ---------------------------------------------------------------------
DAMAGE_PER_HYPOTENSION = 0.025  # per hour per 10 mmHg of true MAP below target
DAMAGE_PER_HYPOXAEMIA = 0.03  # per hour per 10 SpO2 points below 90 %
DAMAGE_VASOPRESSOR_EXCESS = 0.01  # per hour per 10 mmHg the MAP would have had above target
# without vasopressors: splanchnic and digital ischaemia of unneeded vasoconstriction
DAMAGE_VASOPRESSOR_PROLONGED = 0.003  # per hour per day of vasopressors beyond the safe duration
VASOPRESSOR_SAFE_HOURS = 48.0  # continuous vasopressor hours before cumulative ischaemia
DAMAGE_REPAIR_PER_H = 0.01  # fractional recovery of damage per hour (organs heal over days)

# --- Lactate -------------------------------------------------------------------------------------
LACTATE_PER_HYPOTENSION = 0.15  # mmol/L per mmHg of MAP below target (anaerobic metabolism)
LACTATE_PER_HYPOXAEMIA = 0.1  # mmol/L per SpO2 point below 90 %
LACTATE_PER_DAMAGE = 1.5  # mmol/L per unit of damage (hepatic clearance failure)
LACTATE_PER_INFECTION = 1.0  # mmol/L at full burden (adrenergic aerobic glycolysis)
LACTATE_MAX_MMOL_L = 20.0  # highest lactate modelled (survival beyond is anecdotal)
LACTATE_TAU_H = 3.0  # hours for lactate to reach its target (half-life ~2 h), x (1 + damage)

# --- Ventilation complications -------------------------------------------------------------------
VENT_COMPLICATION_PER_H_PER_DAY = 0.003  # hazard per hour per day ventilated (VAP, barotrauma)
VENT_COMPLICATION_LUNG = 0.15  # lung injury added by a complication
VENT_COMPLICATION_DAMAGE = 0.15  # organ damage added by a complication

# --- Death ---------------------------------------------------------------------------------------
DEATH_HAZARD_BASE_PER_H = 0.0002  # background ICU death hazard
DEATH_HAZARD_PER_DAMAGE3_PER_H = 0.007  # hazard per damage cubed: mortality climbs steeply with
# the number of failing organs (SOFA > 11 ~ 90 % mortality, Vincent 1998)
DEATH_HAZARD_PER_SHOCK_PER_H = 0.004  # hazard per 10 mmHg of MAP below 50 (refractory shock)
DEATH_HAZARD_PER_HYPOXIA_PER_H = 0.004  # hazard per 10 SpO2 points below 80 % (hypoxic arrest)
SEVERE_SHOCK_MAP_MMHG = 50.0  # MAP below which refractory shock kills directly (arrest)
SEVERE_HYPOXIA_SPO2_PCT = 80.0  # SpO2 below which hypoxic cardiac arrest becomes likely

# --- Age -----------------------------------------------------------------------------------------
AGE_EFFECT_FROM_YEARS = 18.0  # age effects grow through adult life
AGE_RESPONSE_LOSS_PER_YEAR = 0.006  # responsiveness to support and antibiotics, -6 % per decade
AGE_RESPONSE_MIN = 0.5  # even the oldest patients keep half the response
AGE_FRAILTY_PER_YEAR = 0.03  # damage accrual and death hazard, +30 % per decade (frailty)

# --- Admission (starting latent state from a cohort row and uniforms) ----------------------------
INFECTION0_BASE = 0.3  # burden of the mildest patient
INFECTION0_SPREAD = 0.55  # + uniform spread: vitals at the label window lag the infection
INFECTION0_PER_LACTATE = 0.08  # per mmol/L of lactate above 2
INFECTION0_LACTATE_REF_MMOL_L = 2.0  # mmol/L; a higher starting lactate means a heavier infection
INFECTION0_PER_HYPOTENSION = 0.006  # per mmHg of MAP below 75
INFECTION0_MAP_REF_MMHG = 75.0  # mmHg; a lower starting MAP means a heavier infection
VASOPLEGIA0_EXPRESSED_MIN = 0.3  # share of the eventual vasoplegia already present at admission
VASOPLEGIA0_EXPRESSED_SPREAD = 0.5  # + uniform spread of that share
LUNG_SUSCEPTIBILITY_MAX = 1.2  # lung injury per unit infection for the most susceptible patient
DAMAGE0_PER_LACTATE = 0.12  # starting damage per mmol/L of lactate above 1.5
DAMAGE0_LACTATE_REF_MMOL_L = 1.5  # mmol/L; lactate below this adds no starting damage
DAMAGE0_RANDOM = 0.6  # + uniform spread of unobserved comorbid organ dysfunction
PULSE_PRESSURE_MIN_MMHG, PULSE_PRESSURE_MAX_MMHG = 25.0, 80.0  # SBP - DBP kept in this range
HR_BASE_MIN_BPM, HR_BASE_MAX_BPM = 50.0, 110.0  # heart rate without inflammation or drugs

# --- Measurement noise: uniform on +-half width (sd = half width / sqrt(3)) ----------------------
# Bedside monitor and point-of-care error, plus beat-to-beat and breath-to-breath variation.
NOISE_HR_BPM = 4.0  # bpm
NOISE_SPO2_PCT = 1.0  # pulse oximeters: +-2 % accuracy, better than that for trends
NOISE_MAP_MMHG = 3.0  # mmHg, arterial line and cuff variation
NOISE_PULSE_PRESSURE_MMHG = 3.0  # mmHg
NOISE_RESP_PER_MIN = 2.0  # breaths/min, counting error
NOISE_TEMP_C = 0.15  # degC
NOISE_LACTATE_FRACTION = 0.06  # blood-gas lactate: ~5 % coefficient of variation
NOISE_HALF_WIDTHS = (
    NOISE_HR_BPM, NOISE_SPO2_PCT, NOISE_MAP_MMHG, NOISE_PULSE_PRESSURE_MMHG,
    NOISE_RESP_PER_MIN, NOISE_TEMP_C, NOISE_LACTATE_FRACTION,
)  # fmt: skip
_NOISE_HALF_WIDTHS_COLUMN = np.array(NOISE_HALF_WIDTHS)[:, None]

# The same rates per unit (per mmHg, per SpO2 point, per breath/min, per hour), folded once.
_DAMAGE_PER_HYPOTENSION_MMHG = DAMAGE_PER_HYPOTENSION / 10.0
_DAMAGE_PER_HYPOXAEMIA_PCT = DAMAGE_PER_HYPOXAEMIA / 10.0
_DAMAGE_VASOPRESSOR_EXCESS_MMHG = DAMAGE_VASOPRESSOR_EXCESS / 10.0
_DAMAGE_VASOPRESSOR_PROLONGED_H = DAMAGE_VASOPRESSOR_PROLONGED / 24.0
_LUNG_FATIGUE_PER_BREATH_H = LUNG_FATIGUE_PER_H / 10.0
_VENT_COMPLICATION_PER_H2 = VENT_COMPLICATION_PER_H_PER_DAY / 24.0
_DEATH_HAZARD_PER_SHOCK_MMHG = DEATH_HAZARD_PER_SHOCK_PER_H / 10.0
_DEATH_HAZARD_PER_HYPOXIA_PCT = DEATH_HAZARD_PER_HYPOXIA_PER_H / 10.0

# Uniform draws used per step, by index into the step's uniforms.
U_DEATH, U_COMPLICATION = 0, 1
U_NOISE = 2  # one uniform per measured quantity (7) from here
N_STEP_UNIFORMS = U_NOISE + 7
# Uniform draws at admission: patient choice, 4 latent draws, then the first observation's noise.
R_PATIENT, R_INFECTION, R_EXPRESSED, R_LUNG, R_DAMAGE = 0, 1, 2, 3, 4
R_NOISE = 5
N_RESET_UNIFORMS = R_NOISE + 7

OXYGEN_OF_ACTION = (0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0)
VENTILATION_OF_ACTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0)
VASOPRESSORS_OF_ACTION = (0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0)

Num = Any  # a float, or a float64 array with one element per patient
MinMax = Callable[[Num, Num], Num]

PATIENT_FIELDS = (
    "infection", "vasoplegia", "lung", "damage", "lactate",
    "baseline_map", "pulse_pressure", "baseline_hr", "fever", "lung_susceptibility", "age",
    "response", "frailty", "vasopressor_gain", "ventilation_relief", "perfusion_map",
    "oxygen", "ventilation", "vasopressors", "ventilation_hours", "vasopressor_hours",
    "stable_hours", "hours",
)  # fmt: skip


class Patient:
    """Latent state of one patient (float fields) or of a batch (array fields)."""

    __slots__ = PATIENT_FIELDS


def age_response(age: Num, mx: MinMax) -> Num:
    """Multiplier (<= 1) on the effect of support and antibiotics: older patients respond less."""
    return mx(
        1.0 - AGE_RESPONSE_LOSS_PER_YEAR * mx(age - AGE_EFFECT_FROM_YEARS, 0.0), AGE_RESPONSE_MIN
    )


def age_frailty(age: Num, mx: MinMax) -> Num:
    """Multiplier (>= 1) on damage accrual and death hazard: older patients deteriorate faster."""
    return 1.0 + AGE_FRAILTY_PER_YEAR * mx(age - AGE_EFFECT_FROM_YEARS, 0.0)


def perfusion_map(age: Num, mx: MinMax) -> Num:
    """MAP (mmHg) below which the organs of a patient of this age are hypoperfused."""
    return MAP_TARGET_MMHG + AUTOREGULATION_SHIFT_PER_YEAR * mx(
        age - AUTOREGULATION_SHIFT_FROM_YEARS, 0.0
    )


COHORT_COLUMNS = ("Age", "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "Lactate")
"""Cohort columns the admission reads, in the order of a row of `admission_constants`' input."""

CONSTANT_FIELDS = (
    "age", "response", "frailty", "vasopressor_gain", "ventilation_relief", "perfusion_map",
    "pulse_pressure",
)  # fmt: skip
ADMISSION_COLUMNS = (
    *CONSTANT_FIELDS, "map0", "infection0", "lung0", "damage0", "lactate0", "hr0", "temp0",
)  # fmt: skip


def admission_constants(table: np.ndarray) -> np.ndarray:
    """What admission needs from each cohort row, computed once per cohort: an array with one
    row per patient and the columns `ADMISSION_COLUMNS`. `table` has the `COHORT_COLUMNS`,
    already clipped to admission ranges."""
    mx, mn = np.maximum, np.minimum
    age, hr0, spo2_0, temp0, sbp0, map0, dbp0, _, lactate0 = table.T
    response = age_response(age, mx)
    columns = (
        age,
        response,
        age_frailty(age, mx),
        VASOPRESSOR_MAP_GAIN_MMHG * response,
        VENTILATION_RELIEF_FRACTION * response,
        perfusion_map(age, mx),
        mn(mx(sbp0 - dbp0, PULSE_PRESSURE_MIN_MMHG), PULSE_PRESSURE_MAX_MMHG),
        map0,
        # Infection burden before the random part: more for high lactate and low MAP.
        INFECTION0_BASE
        + INFECTION0_PER_LACTATE * mx(lactate0 - INFECTION0_LACTATE_REF_MMOL_L, 0.0)
        + INFECTION0_PER_HYPOTENSION * mx(INFECTION0_MAP_REF_MMHG - map0, 0.0),
        mn(mx(SPO2_HEALTHY_PCT - spo2_0, 0.0) / SPO2_DROP_PER_LUNG_PCT, 1.0),
        DAMAGE0_PER_LACTATE * mx(lactate0 - DAMAGE0_LACTATE_REF_MMOL_L, 0.0),
        lactate0,
        hr0,
        mn(mx(temp0, TEMP_MIN_C), TEMP_MAX_C),
    )
    return np.stack(columns, axis=1)


def admit(p: Patient, c: Any, r: Any, mx: MinMax, mn: MinMax) -> None:
    """Set the latent state of `p` from its admission constants `c` (a row, or columns, of
    `admission_constants`) and admission uniforms `r`."""
    (age, response, frailty, gain, relief, perfusion, pulse) = c[:7]
    (map0, inf0, lung0, dmg0, lac0, hr0, temp0) = c[7:]
    infection = mn(inf0 + INFECTION0_SPREAD * r[R_INFECTION], 1.0)
    expressed = VASOPLEGIA0_EXPRESSED_MIN + VASOPLEGIA0_EXPRESSED_SPREAD * r[R_EXPRESSED]
    baseline_map = mn(
        mx(map0 + VASOPLEGIA_PER_INFECTION_MMHG * infection * expressed, BASELINE_MAP_MIN_MMHG),
        BASELINE_MAP_MAX_MMHG,
    )
    p.infection = infection
    p.baseline_map = baseline_map
    p.vasoplegia = baseline_map - map0  # so that the first true MAP is the cohort's MAP
    p.lung = lung0
    # Squared uniform: most patients' lungs cope; a minority develop ARDS.
    p.lung_susceptibility = LUNG_SUSCEPTIBILITY_MAX * r[R_LUNG] * r[R_LUNG]
    p.damage = dmg0 + DAMAGE0_RANDOM * r[R_DAMAGE]  # + unobserved comorbid organ dysfunction
    p.lactate = lac0
    p.baseline_hr = mn(mx(hr0 - HR_PER_INFECTION_BPM * infection, HR_BASE_MIN_BPM), HR_BASE_MAX_BPM)
    p.fever = (temp0 - TEMP_NORMAL_C) / infection  # degC per unit burden: fever fades with it
    p.age = age
    p.response = response
    p.frailty = frailty
    p.vasopressor_gain = gain
    p.ventilation_relief = relief
    p.perfusion_map = perfusion
    p.pulse_pressure = pulse
    zero = 0.0 * age
    p.oxygen = zero
    p.ventilation = zero
    p.vasopressors = zero
    p.ventilation_hours = zero
    p.vasopressor_hours = zero
    p.stable_hours = zero
    p.hours = zero


def vitals(p: Patient, mx: MinMax, mn: MinMax) -> tuple[Num, Num, Num, Num]:
    """True (noise-free) vitals under the current support: (MAP, MAP without vasopressors,
    SpO2, breathing rate).

    * MAP (mmHg) = baseline - vasoplegia - ventilation drop, floored at `MAP_FLOOR_MMHG`
      (circulatory arrest), + vasopressor gain x age response x (1 - blunting x damage).
    * SpO2 (%) = 98.5 - deficit, deficit = 30 x lung injury; oxygen closes 80 % of it up to 6
      points (it cannot open a shunt); ventilation (PEEP) then corrects 80 % x age response of
      what remains.
    * Breathing rate (/min) = 14 + 25 x lung + 6 x infection + 1.5 x (lactate - 1); on the
      ventilator the set rate 16 plus a fifth of the spontaneous drive above 14.
    """
    native = mx(
        p.baseline_map - p.vasoplegia - VENTILATION_MAP_DROP_MMHG * p.ventilation, MAP_FLOOR_MMHG
    )
    gain = p.vasopressor_gain * mx(1.0 - VASOPRESSOR_DAMAGE_BLUNTING * p.damage, 0.0)
    deficit = SPO2_DROP_PER_LUNG_PCT * p.lung
    deficit = deficit - p.oxygen * mn(OXYGEN_RELIEF_FRACTION * deficit, OXYGEN_RELIEF_MAX_PCT)
    vent_relief = p.ventilation_relief * p.ventilation
    spontaneous = (
        RESP_BASE_PER_MIN
        + RESP_PER_LUNG * p.lung
        + RESP_PER_INFECTION * p.infection
        + RESP_PER_LACTATE * (p.lactate - LACTATE_NORMAL_MMOL_L)
    )
    ventilated = VENTILATOR_RATE_PER_MIN + VENTILATED_RESP_SHARE * (spontaneous - RESP_BASE_PER_MIN)
    return (
        native + gain * p.vasopressors,
        native,
        SPO2_HEALTHY_PCT - deficit * (1.0 - vent_relief),
        spontaneous + p.ventilation * (ventilated - spontaneous),
    )


def advance(
    p: Patient, oxygen: Num, ventilation: Num, vasopressors: Num, u: Any, dt: float,
    mx: MinMax, mn: MinMax,
) -> tuple[Num, Num, Num, Num, Num]:  # fmt: skip
    """Apply the treatments for `dt` hours and return (death probability of the step, died,
    MAP, SpO2, breathing rate after the step).

    `u` holds this step's uniforms (`U_*` indices). Order: set treatments; rates from the vitals
    under the new treatments; Euler update of the latent state; ventilator complication; death;
    stability count for discharge.
    """
    p.oxygen = oxygen
    # A run of ventilation or vasopressors lasts as long as it is continued; stopping resets it.
    p.ventilation_hours = (p.ventilation_hours + dt) * ventilation
    p.vasopressor_hours = (p.vasopressor_hours + dt) * vasopressors
    p.ventilation = ventilation
    p.vasopressors = vasopressors
    p.hours = p.hours + dt
    damage = p.damage
    infection = p.infection

    mean_ap, native_map, spo2, resp = vitals(p, mx, mn)
    hypotension = mx(p.perfusion_map - mean_ap, 0.0)  # mmHg below what the organs need
    hypoxaemia = mx(SPO2_HYPOXAEMIA_PCT - spo2, 0.0)  # SpO2 points below 90 %
    fatigue = mx(resp - RESP_FATIGUE_PER_MIN, 0.0) * (1.0 - ventilation)  # /min above 30

    # dD/dt: hypoperfusion and hypoxaemia (x frailty), unneeded or prolonged vasopressors, repair.
    damage_rate = (
        p.frailty
        * (_DAMAGE_PER_HYPOTENSION_MMHG * hypotension + _DAMAGE_PER_HYPOXAEMIA_PCT * hypoxaemia)
        + vasopressors
        * (
            _DAMAGE_VASOPRESSOR_EXCESS_MMHG * mx(native_map - p.perfusion_map, 0.0)
            + _DAMAGE_VASOPRESSOR_PROLONGED_H
            * mx(p.vasopressor_hours - VASOPRESSOR_SAFE_HOURS, 0.0)
        )
        - DAMAGE_REPAIR_PER_H * p.response * damage
    )
    # dI/dt = -k x response / (1 + D) x I: antibiotics, slowed by age and organ failure.
    clearance = INFECTION_CLEARANCE_PER_H * p.response / (1.0 + damage)
    # Vasoplegia and lung injury relax towards targets set by infection (and damage).
    vasoplegia_target = (
        VASOPLEGIA_PER_INFECTION_MMHG * infection + VASOPLEGIA_PER_DAMAGE_MMHG * damage
    )
    lung_target = p.lung_susceptibility * infection
    lactate_target = mn(
        LACTATE_NORMAL_MMOL_L
        + LACTATE_PER_HYPOTENSION * hypotension
        + LACTATE_PER_HYPOXAEMIA * hypoxaemia
        + LACTATE_PER_DAMAGE * damage
        + LACTATE_PER_INFECTION * infection,
        LACTATE_MAX_MMOL_L,
    )

    p.infection = infection * (1.0 - clearance * dt)  # >= 0.77 for dt <= 8 h
    p.vasoplegia = p.vasoplegia + (vasoplegia_target - p.vasoplegia) * mn(
        dt / VASOPLEGIA_TAU_H, 1.0
    )
    lung = p.lung + (lung_target - p.lung) * mn(dt / LUNG_TAU_H, 1.0)
    lung = lung + _LUNG_FATIGUE_PER_BREATH_H * fatigue * dt
    damage = mx(damage + damage_rate * dt, 0.0)
    p.lactate = p.lactate + (lactate_target - p.lactate) * mn(
        dt / (LACTATE_TAU_H * (1.0 + damage)), 1.0
    )

    # Ventilator complication (VAP, barotrauma): hazard grows with days ventilated.
    complication_p = _VENT_COMPLICATION_PER_H2 * p.ventilation_hours * dt
    complication = u[U_COMPLICATION] < complication_p
    p.lung = mn(lung + VENT_COMPLICATION_LUNG * complication, 1.0)
    p.damage = damage + VENT_COMPLICATION_DAMAGE * complication

    mean_ap, _, spo2, resp = vitals(p, mx, mn)
    d = p.damage
    hazard = p.frailty * (
        DEATH_HAZARD_BASE_PER_H
        + DEATH_HAZARD_PER_DAMAGE3_PER_H * d * d * d
        + _DEATH_HAZARD_PER_SHOCK_MMHG * mx(SEVERE_SHOCK_MAP_MMHG - mean_ap, 0.0)
        + _DEATH_HAZARD_PER_HYPOXIA_PCT * mx(SEVERE_HYPOXIA_SPO2_PCT - spo2, 0.0)
    )
    death_p = hazard * dt / (1.0 + hazard * dt)  # ~ 1 - exp(-hazard dt), exact arithmetic

    stable = (
        (mean_ap >= MAP_TARGET_MMHG)
        * (spo2 >= SPO2_STABLE_PCT)
        * (resp <= RESP_STABLE_PER_MIN)
        * (p.lactate < LACTATE_STABLE_MMOL_L)
        * (p.infection < INFECTION_CONTROLLED)
        * (ventilation + vasopressors == 0.0)  # off ventilation and vasopressors
    )
    p.stable_hours = (p.stable_hours + dt) * stable
    return death_p, u[U_DEATH] < death_p, mean_ap, spo2, resp


def discharge_ready(p: Patient) -> Num:
    """Whether the patient has been stable off ventilation and vasopressors for
    `DISCHARGE_STABLE_HOURS` (the count `advance` keeps): a bool for one patient, a bool array
    for a batch. The environment discharges a patient who is ready and did not die in the step."""
    return p.stable_hours >= DISCHARGE_STABLE_HOURS


def noise(u: list[float], k: int) -> list[float]:
    """Measurement noise of the 7 measured quantities from the uniforms `u[k:k + 7]`: uniform on
    (-1, 1) times each half width in `NOISE_HALF_WIDTHS`."""
    return [w * (2.0 * u[k + j] - 1.0) for j, w in enumerate(NOISE_HALF_WIDTHS)]


def noise_batch(u: np.ndarray, k: int) -> np.ndarray:
    """`noise` for a batch: `u` has one row per uniform and one column per patient."""
    return _NOISE_HALF_WIDTHS_COLUMN * (2.0 * u[k : k + 7] - 1.0)


def measure(p: Patient, mean_ap: Num, spo2: Num, resp: Num, e: Any, mn: MinMax) -> tuple[Num, ...]:
    """Noisy bedside measurements (HR, O2Sat, SBP, DBP, MAP, Resp, Temp, Lactate) of the true
    MAP, SpO2 and breathing rate and the latent state, with the noise `e` (`noise`). SBP and DBP
    come from MAP and the pulse pressure, so MAP = DBP + (SBP - DBP) / 3 up to rounding."""
    hr = (
        p.baseline_hr
        + HR_PER_INFECTION_BPM * p.infection
        + HR_PER_HYPOTENSION_BPM * (MAP_TARGET_MMHG - mn(mean_ap, MAP_TARGET_MMHG))
        + VASOPRESSOR_HR_GAIN_BPM * p.vasopressors
        + e[0]
    )
    map_obs = mean_ap + e[2]
    # The pulse pressure narrows in proportion as MAP falls below target (low stroke volume).
    pulse = (p.pulse_pressure + e[3]) * mn(mean_ap / MAP_TARGET_MMHG, 1.0)
    return (
        hr,
        mn(spo2 + e[1], 100.0),
        map_obs + pulse * (2.0 / 3.0),
        map_obs - pulse * (1.0 / 3.0),
        map_obs,
        resp + e[4],
        TEMP_NORMAL_C + p.fever * p.infection + e[5],
        p.lactate * (1.0 + e[6]),
    )
