"""A statistically faithful synthetic cohort in the PhysioNet 2019 format: the embedded default.

Every distribution here is drawn from the reference (`data_prep.schema` holds the per-variable
figures; the cohort-level figures are named below with the section they come from). The generator
works on whole columns at once (one array per variable over all patient-hours), so a full-size
cohort of 40,336 stays and about 1.55M rows takes seconds, not minutes.

Outline (reference, section 3, "Generator outline"):
1. Per stay: set (A/B), septic flag, statics (age, sex, unit, hospital admission time), the first
   ICULOS, and the length (non-septic: the bimodal histogram; septic: onset time + end offset).
2. Vitals: a per-patient level plus an hourly AR(1) series, rounded to the recorded resolution,
   moving toward the label-1 medians over the last ~12 h before onset in septic stays.
3. Labs: sparse events at the reference's per-set rates, log-normal for skewed labs, 1.5-2.5x
   more frequent and shifted toward the label-1 means near onset.
4. Missingness: per-set rates, explicit all-empty rows (including the demographics-only first
   row of stays that start at ICULOS 1), and the site quirks (no EtCO2 in A; ionised calcium and
   integer ages with 100 meaning >= 90 in B).
5. Label: SepsisLabel = 1 from t_sepsis - 6 h to the end of the stay (one block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from data_prep.schema import (
    AGE_90_PLUS_CODE,
    HEADER,
    HEADER_LINE,
    LABEL,
    LABEL1_VITAL_MEDIANS,
    LABS,
    PATIENT,
    SOURCE_SET,
    SPECS,
)
from data_prep.seeding import rng_for

# --- Cohort-level figures (reference, section 1) -------------------------------------------------
SET_A_PATIENTS, SET_B_PATIENTS = 20_336, 20_000
SEPTIC_FRACTION = {"A": 0.0880, "B": 0.0571}  # septic stays per set
MALE_FRACTION = {"A": 0.582, "B": 0.537}
AGE_MEAN_SD = {"A": (62.6, 16.2), "B": (60.7, 16.7)}  # years, per stay
AGE_A_RANGE = (18.11, 89.0)  # set A: two decimals
AGE_B_MIN = 14  # set B: integers 14-89, plus 100 meaning >= 90
UNIT_UNKNOWN_FRACTION = {"A": 0.468, "B": 0.305}  # Unit1 and Unit2 both NaN
# HospAdmTime (h, hospital -> ICU) = -exp(N(mu, s)): median -2.8 / -8.6 h, 5th pct -236 / -245 h
HOSP_ADM_LOG_MU_SD = {"A": (np.log(2.8), (np.log(236) - np.log(2.8)) / 1.645),
                      "B": (np.log(8.6), (np.log(245) - np.log(8.6)) / 1.645)}  # fmt: skip
HOSP_ADM_MIN_H = -5367.0
HOSP_ADM_POSITIVE_A = 0.0125  # set A: 1.25 % positive, up to +23.99 h
HOSP_ADM_ZERO_B = 0.057  # set B: 5.7 % exactly 0
# First ICULOS: set A 63.1 % at 1, 16.7 % at 2, 8.3 % at 3 (max 304); B 93.5 % at 1 (max 26)
FIRST_ICULOS = {"A": ((1, 2, 3), (0.631, 0.167, 0.083), 304), "B": ((1,), (0.935,), 26)}
MAX_ICULOS_H = 336  # records truncated at two weeks
MIN_ROWS = 8  # stays with fewer than 8 hourly windows were excluded
# Non-septic stay length: % of stays per 4-row bin from 8-11 to 56-59, then >= 60 (section 1)
NONSEPTIC_LENGTH_BINS_PCT = (1.3, 3.6, 7.7, 10.3, 7.8, 4.5, 4.4, 13.9, 13.0, 11.3, 8.8, 7.1, 5.6)
NONSEPTIC_LONG_PCT = 0.6
# Septic onset t_sepsis (ICULOS): 12.6 % exactly 7, deciles 7, 11, ..., 141, max 337 (section 1)
T_SEPSIS_QUANTILES = ((0.0, 7), (0.126, 7), (0.2, 11), (0.3, 16), (0.4, 24), (0.5, 35),
                      (0.6, 49), (0.7, 68), (0.8, 94), (0.9, 141), (1.0, 337))  # fmt: skip
SEPTIC_END_OFFSET_H = ((3, 2, 1), (0.64, 0.27, 0.09))  # record ends t_sepsis + 3/2/1 h
LABEL_LEAD_H = 6  # SepsisLabel = 1 from t_sepsis - 6 h (Sepsis-3 label rule)
EMPTY_ROW_FRACTION = {"A": 0.064, "B": 0.102}  # rows with no vital or lab value

# --- Hourly dynamics (modelling choices, tuned to reproduce the reference's medians/IQRs) --------
BETWEEN_PATIENT_VAR_SHARE = 0.45  # share of a vital's variance that is between patients
VITAL_AR1_HOURLY = 0.8  # hour-to-hour autocorrelation of vitals within a stay
DETERIORATION_WINDOW_H = 12  # septic vitals drift toward label-1 medians over this many hours
FEVER_SHARE = 0.7  # septic stays whose temperature rises (the rest cool): both seen at onset
LAB_ONSET_RATE_MULTIPLIER = 2.0  # labs 1.3-2.7x more often in label-1 rows (section 3)
EVER_EtCO2_B = 0.16  # share of set B patients with any EtCO2 value
IONISED_CALCIUM_B = 0.19  # share of set B calcium values that are ionised (~1.1 mmol/L)
FIO2_PERCENT_JUNK = 0.003  # FiO2 values recorded in percent instead of a fraction
# Label-1 shift of labs, ratio of label-1 to label-0 means (section 3)
LAB_SEPTIC_RATIO = {"BUN": 1.3, "Creatinine": 1.23, "WBC": 1.17, "Bilirubin_total": 1.54,
                    "Bilirubin_direct": 1.59, "PTT": 1.07, "Fibrinogen": 1.15, "Platelets": 0.96,
                    "Calcium": 0.92, "Lactate": 1.25}  # fmt: skip
INTEGER_LABS = ("AST", "BUN", "Alkalinephos", "Chloride", "Glucose", "Fibrinogen", "Platelets")


def generate_cohort(
    n_patients: int = SET_A_PATIENTS + SET_B_PATIENTS,
    seed: int = 0,
    septic_fraction: float | None = None,
) -> pd.DataFrame:
    """Generate a synthetic cohort as a canonical hourly table (the columns of the `.psv` files
    plus `patient_id` and `set`).

    `septic_fraction` overrides the per-set reference prevalence (8.8 % in A, 5.7 % in B; 7.27 %
    overall); 1.0 makes every stay septic (the environment's cohort).
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    rng = rng_for(seed, "synthetic-cohort")
    stays = _draw_stays(n_patients, septic_fraction, rng)
    lengths = stays["n_rows"]
    pidx = np.repeat(np.arange(n_patients), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t_in_stay = np.arange(lengths.sum()) - starts[pidx]
    iculos = stays["first_iculos"][pidx] + t_in_stay
    septic_row = stays["septic"][pidx]
    t_sepsis = stays["t_sepsis"][pidx]
    hours_to_onset = np.where(septic_row, t_sepsis - iculos, np.inf)
    # Deterioration ramp: 0 until DETERIORATION_WINDOW_H before onset, 1 at onset and after.
    ramp = np.clip(1.0 - hours_to_onset / DETERIORATION_WINDOW_H, 0.0, 1.0)
    label = (septic_row & (iculos >= t_sepsis - LABEL_LEAD_H)).astype(np.int8)
    is_b = stays["set"][pidx] == "B"

    columns: dict[str, np.ndarray] = {}
    empty = _empty_rows(stays, pidx, t_in_stay, is_b, rng)
    columns.update(_vitals(stays, pidx, ramp, is_b, empty, rng))
    columns.update(_labs(stays, pidx, ramp, label, is_b, empty, rng))
    for name in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime"):
        columns[name] = stays[name][pidx]
    columns["ICULOS"] = iculos
    columns[LABEL] = label

    table = pd.DataFrame({PATIENT: stays["patient_id"][pidx], SOURCE_SET: stays["set"][pidx]})
    for name in HEADER:
        table[name] = columns[name]
    return table.astype({"ICULOS": "int32", LABEL: "int8", "Gender": "int8"})


# --- Stays ---------------------------------------------------------------------------------------


def _draw_stays(n: int, septic_fraction: float | None, rng: np.random.Generator) -> dict:
    share_a = SET_A_PATIENTS / (SET_A_PATIENTS + SET_B_PATIENTS)
    # Set A stays first, then set B, as the files sort in the real release.
    sets = np.where(np.arange(n) < rng.binomial(n, share_a), "A", "B")
    is_b = sets == "B"
    prevalence = np.where(is_b, SEPTIC_FRACTION["B"], SEPTIC_FRACTION["A"])
    if septic_fraction is not None:
        prevalence = np.full(n, float(septic_fraction))
    septic = rng.random(n) < prevalence

    # Ids follow the real numbering: set A from p000001, set B from p100001.
    ids = np.empty(n, dtype=object)
    ids[~is_b] = [f"p{i:06d}" for i in range(1, (~is_b).sum() + 1)]
    ids[is_b] = [f"p{100_000 + i:06d}" for i in range(1, is_b.sum() + 1)]

    male = rng.random(n) < np.where(is_b, MALE_FRACTION["B"], MALE_FRACTION["A"])
    age = _draw_age(is_b, rng)
    unit_known = rng.random(n) >= np.where(is_b, UNIT_UNKNOWN_FRACTION["B"],
                                            UNIT_UNKNOWN_FRACTION["A"])  # fmt: skip
    unit1 = np.where(unit_known, (rng.random(n) < 0.5).astype(float), np.nan)
    unit2 = np.where(unit_known, 1.0 - unit1, np.nan)
    hosp = _draw_hosp_adm_time(is_b, rng)

    first = _draw_first_iculos(is_b, rng)
    t_sepsis = np.full(n, -1, dtype=np.int64)
    n_rows = _draw_nonseptic_length(n, rng)
    n_septic = int(septic.sum())
    if n_septic:
        onset = _draw_onset(n_septic, rng)
        # A septic record must start no later than its first labelled hour (onset - 6 h).
        first[septic] = np.minimum(first[septic], np.maximum(onset - LABEL_LEAD_H, 1))
        offsets, probs = SEPTIC_END_OFFSET_H
        end = np.minimum(onset + rng.choice(offsets, size=n_septic, p=probs), MAX_ICULOS_H)
        n_rows[septic] = np.maximum(end - first[septic] + 1, MIN_ROWS)
        t_sepsis[septic] = onset
    # Truncation at two weeks: the last ICULOS never exceeds MAX_ICULOS_H.
    n_rows = np.minimum(n_rows, MAX_ICULOS_H - first + 1)
    return {
        "patient_id": ids, "set": sets, "septic": septic, "t_sepsis": t_sepsis,
        "first_iculos": first, "n_rows": n_rows, "Age": age, "Gender": male.astype(np.int8),
        "Unit1": unit1, "Unit2": unit2, "HospAdmTime": hosp,
        # Per-patient severity of the septic deterioration (1 = reference-average shift).
        "severity": rng.gamma(4.0, 0.25, size=n) * septic,
        "temp_sign": np.where(rng.random(n) < FEVER_SHARE, 1.0, -1.5),
    }  # fmt: skip


def _draw_age(is_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = is_b.size
    mean = np.where(is_b, AGE_MEAN_SD["B"][0], AGE_MEAN_SD["A"][0])
    sd = np.where(is_b, AGE_MEAN_SD["B"][1], AGE_MEAN_SD["A"][1])
    raw = rng.normal(mean, sd)
    age_a = np.round(np.clip(raw, *AGE_A_RANGE), 2)
    age_b = np.clip(np.round(raw), AGE_B_MIN, None)
    age_b = np.where(age_b >= 90, AGE_90_PLUS_CODE, age_b)
    return np.where(is_b, age_b, age_a).astype(float) if n else np.empty(0)


def _draw_hosp_adm_time(is_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mu = np.where(is_b, HOSP_ADM_LOG_MU_SD["B"][0], HOSP_ADM_LOG_MU_SD["A"][0])
    sd = np.where(is_b, HOSP_ADM_LOG_MU_SD["B"][1], HOSP_ADM_LOG_MU_SD["A"][1])
    hosp = np.maximum(-np.exp(rng.normal(mu, sd)), HOSP_ADM_MIN_H)
    u = rng.random(is_b.size)
    hosp = np.where(~is_b & (u < HOSP_ADM_POSITIVE_A), rng.uniform(0, 23.99, is_b.size), hosp)
    hosp = np.where(is_b & (u < HOSP_ADM_ZERO_B), 0.0, hosp)
    return np.round(hosp, 2)


def _draw_first_iculos(is_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first = np.empty(is_b.size, dtype=np.int64)
    for set_name, mask in (("A", ~is_b), ("B", is_b)):
        values, probs, max_first = FIRST_ICULOS[set_name]
        k = int(mask.sum())
        # The remaining mass is a geometric tail from the next value up to the set's maximum.
        tail = len(values) + 1 + rng.geometric(0.15 if set_name == "A" else 0.5, size=k) - 1
        tail = np.minimum(tail, max_first)
        u = rng.random(k)
        cum = np.cumsum(probs)
        chosen = np.searchsorted(cum, u, side="right")
        head = np.asarray(values + (0,))[np.minimum(chosen, len(values))]
        first[mask] = np.where(chosen < len(values), head, tail)
    return first


def _draw_nonseptic_length(n: int, rng: np.random.Generator) -> np.ndarray:
    pct = np.asarray((*NONSEPTIC_LENGTH_BINS_PCT, NONSEPTIC_LONG_PCT))
    bins = rng.choice(pct.size, size=n, p=pct / pct.sum())
    length = MIN_ROWS + 4 * bins + rng.integers(0, 4, size=n)
    long = bins == pct.size - 1
    length[long] = np.minimum(60 + rng.geometric(1 / 40, size=int(long.sum())), MAX_ICULOS_H)
    return length.astype(np.int64)


def _draw_onset(n: int, rng: np.random.Generator) -> np.ndarray:
    q, t = np.asarray(T_SEPSIS_QUANTILES, dtype=float).T
    # Interpolate the inverse CDF in log time: onset times are right-skewed.
    return np.round(np.exp(np.interp(rng.random(n), q, np.log(t)))).astype(np.int64)


# --- Hourly values -------------------------------------------------------------------------------


def _empty_rows(stays, pidx, t_in_stay, is_b, rng) -> np.ndarray:
    first_row_empty = (t_in_stay == 0) & (stays["first_iculos"][pidx] == 1)
    target = np.where(is_b, EMPTY_ROW_FRACTION["B"], EMPTY_ROW_FRACTION["A"])
    # The demographics-only first rows count toward each set's share of empty rows.
    already = first_row_empty.mean()
    extra = np.clip(target - already, 0.0, 1.0)
    return first_row_empty | (rng.random(pidx.size) < extra)


def _missing_rate(name: str, is_b: np.ndarray) -> np.ndarray:
    spec = SPECS[name]
    rate = np.where(is_b, spec.missing_b, spec.missing_a) / 100.0
    empty = np.where(is_b, EMPTY_ROW_FRACTION["B"], EMPTY_ROW_FRACTION["A"])
    # Rows that are empty anyway already supply part of the missingness.
    return np.clip((rate - empty) / (1.0 - empty), 0.0, 1.0)


def _ar1(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance AR(1) noise over all rows (state carries across stays, which only makes each
    stay's first value a stationary draw)."""
    phi = VITAL_AR1_HOURLY
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], rng.standard_normal(n_rows))


def _round_half(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers mostly, half-values sometimes: hourly medians of several readings (section 1)."""
    halves = rng.random(x.size) < 0.15
    return np.where(halves, np.round(x * 2) / 2, np.round(x))


def _vitals(stays, pidx, ramp, is_b, empty, rng) -> dict[str, np.ndarray]:
    n_rows, n_pat = pidx.size, stays["septic"].size
    severity = stays["severity"][pidx] * ramp
    out: dict[str, np.ndarray] = {}
    for name in ("HR", "Resp", "Temp", "SBP", "DBP", "O2Sat"):
        spec = SPECS[name]
        sd = (spec.q3 - spec.q1) / 1.349
        level = rng.normal(0.0, sd * np.sqrt(BETWEEN_PATIENT_VAR_SHARE), n_pat)[pidx]
        hourly = _ar1(n_rows, rng) * sd * np.sqrt(1 - BETWEEN_PATIENT_VAR_SHARE)
        shift = (LABEL1_VITAL_MEDIANS[name][0] - spec.median) * 1.3 * severity
        if name == "Temp":
            shift = np.abs(shift) * stays["temp_sign"][pidx]
        # Septic rows also spread wider (label-1 IQRs are wider, section 3).
        value = spec.median + level + hourly * (1 + 0.4 * severity) + shift
        if name == "O2Sat":
            # Saturation is capped at 100 % and skewed left: fold the excess back below the cap.
            value = 100 - np.abs(100 - (value + 1.2))
        out[name] = value
    out["SBP"] = np.maximum(out["SBP"], out["DBP"] + 15)
    out["MAP"] = (out["SBP"] + 2 * out["DBP"]) / 3 + rng.normal(-1.5, 2.5, n_rows)
    for name in ("HR", "O2Sat", "SBP", "DBP", "Resp"):
        out[name] = _round_half(np.clip(out[name], SPECS[name].lo, SPECS[name].hi), rng)
    out["MAP"] = np.round(np.clip(out["MAP"], SPECS["MAP"].lo, SPECS["MAP"].hi), 2)
    out["Temp"] = np.round(np.clip(out["Temp"], 30.0, 43.0), 2)

    etco2_patient = (stays["set"] == "B") & (rng.random(n_pat) < EVER_EtCO2_B)
    spec = SPECS["EtCO2"]
    etco2 = spec.median + rng.normal(0, 5, n_pat)[pidx] + _ar1(n_rows, rng) * 4
    observed_share = (1 - spec.missing_b / 100) / EVER_EtCO2_B
    etco2_seen = etco2_patient[pidx] & (rng.random(n_rows) < observed_share) & ~empty
    out["EtCO2"] = np.where(etco2_seen, np.round(np.clip(etco2, spec.lo, spec.hi)), np.nan)

    for name in ("HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp"):
        missing = empty | (rng.random(n_rows) < _missing_rate(name, is_b))
        out[name] = np.where(missing, np.nan, out[name])
    return out


def _labs(stays, pidx, ramp, label, is_b, empty, rng) -> dict[str, np.ndarray]:
    n_rows, n_pat = pidx.size, stays["septic"].size
    severity = stays["severity"][pidx] * ramp
    out: dict[str, np.ndarray] = {}
    for name in LABS:
        spec = SPECS[name]
        rate = 1.0 - _missing_rate(name, is_b)
        # Labs are ordered more often around onset: rate x LAB_ONSET_RATE_MULTIPLIER in the
        # label window, adjusted so that the overall rate still matches the reference.
        boost = np.where(label == 1, LAB_ONSET_RATE_MULTIPLIER, 1.0)
        seen = ~empty & (rng.random(n_rows) < rate * boost / boost.mean())
        k = int(seen.sum())
        ratio = LAB_SEPTIC_RATIO.get(name, 1.0) ** (severity[seen] * 1.3)
        if spec.skewed:
            sigma = np.log(spec.q3 / spec.q1) / 1.349
            log_level = rng.normal(0, sigma * 0.75, n_pat)[pidx[seen]]
            value = spec.median * np.exp(log_level + rng.normal(0, sigma * 0.66, k)) * ratio
        else:
            sd = (spec.q3 - spec.q1) / 1.349
            level = rng.normal(0, sd * 0.75, n_pat)[pidx[seen]]
            value = (spec.median + level + rng.normal(0, sd * 0.66, k)) * ratio
        if name == "Calcium":
            ionised = is_b[seen] & (rng.random(k) < IONISED_CALCIUM_B)
            value = np.where(ionised, rng.normal(1.12, 0.08, k), value)
        if name == "FiO2":
            value = np.clip(value, 0.21, 1.0)
            value = np.where(rng.random(k) < FIO2_PERCENT_JUNK, value * 100, value)
        value = np.clip(value, spec.lo, spec.hi)
        value = np.round(value) if name in INTEGER_LABS else np.round(value, 2)
        column = np.full(n_rows, np.nan)
        column[seen] = value
        out[name] = column
    return out


# --- Writing .psv files --------------------------------------------------------------------------


def format_rows(table: pd.DataFrame) -> list[str]:
    """Format a canonical table's rows as `.psv` lines (no newline), in the real files' style:
    `NaN` for missing, integers without a point, otherwise the shortest decimal."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nan = pa.scalar("NaN")
    parts = []
    for name in HEADER:
        arr = pa.array(table[name].to_numpy(dtype=float, na_value=np.nan), pa.float64())
        text = pc.cast(arr, pa.string())
        parts.append(pc.if_else(pc.is_nan(arr), nan, text))
    return pc.binary_join_element_wise(*parts, "|").to_pylist()


def write_psv_files(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one `.psv` file per stay under `out_dir/training_setA|B/`, as in the real release.

    `table` must hold each stay's rows contiguously (as `generate_cohort` and the reader make it).
    """
    lines = format_rows(table)
    ids = table[PATIENT].to_numpy()
    sets = table[SOURCE_SET].to_numpy()
    bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(ids)]])
    written = []
    for folder in {f"training_set{s}" for s in pd.unique(sets)}:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    header = HEADER_LINE + "\n"
    for start, end in zip(starts, ends, strict=True):
        path = out_dir / f"training_set{sets[start]}" / f"{ids[start]}.psv"
        path.write_text(header + "\n".join(lines[start:end]) + "\n")
        written.append(path)
    return written
