"""The PhysioNet/CinC Challenge 2019 hourly format: columns, dtypes and reference statistics.

Every number here comes from the project's data reference (PhysioNet 2019 training sets A and B,
40,336 stays, 1,552,210 hourly rows; Reyna et al., Crit Care Med 2020). It is the one home of the
format: the reader validates against it, the synthetic generator draws from it, and the tests
compare generated cohorts with it.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER: tuple[str, ...] = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2",
    "BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos",
    "Calcium", "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate", "Magnesium",
    "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb", "PTT", "WBC",
    "Fibrinogen", "Platelets",
    "Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel",
)  # fmt: skip
"""The 41 columns of every `.psv` file, in file order."""

HEADER_LINE = "|".join(HEADER)
SEPARATOR = "|"
MISSING_TOKEN = "NaN"

VITALS: tuple[str, ...] = HEADER[:8]
LABS: tuple[str, ...] = HEADER[8:34]
DEMOGRAPHICS: tuple[str, ...] = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
STATIC_COLUMNS: tuple[str, ...] = DEMOGRAPHICS
"""Columns that never change within a stay (reference, section 1)."""

MEASUREMENTS: tuple[str, ...] = VITALS + LABS
"""The 34 time-varying clinical measurements."""

VARIABLES: tuple[str, ...] = HEADER[:40]
"""The 40 variables (everything but SepsisLabel)."""

LABEL = "SepsisLabel"
TIME = "ICULOS"
PATIENT = "patient_id"
SOURCE_SET = "set"

CANONICAL_COLUMNS: tuple[str, ...] = (PATIENT, SOURCE_SET, *VARIABLES, LABEL)
"""Columns of the canonical hourly table that `data prepare` writes."""

INT_COLUMNS: tuple[str, ...] = ("ICULOS", "SepsisLabel", "Gender")
NULLABLE_INT_COLUMNS: tuple[str, ...] = ("Unit1", "Unit2")


@dataclass(frozen=True)
class VariableSpec:
    """Reference statistics of one variable (reference, section 2).

    `lo`/`hi` are the observed min-max over sets A and B, used as the plausibility envelope.
    `median`, `q1`, `q3` are over label-0 rows; `missing_a`/`missing_b` are percent of rows
    missing per set. `skewed` marks variables best drawn log-normally.
    """

    name: str
    group: str
    unit: str
    lo: float
    hi: float
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    missing_a: float
    missing_b: float
    skewed: bool = False
    decimals: int = 2


def _v(name, group, unit, lo, hi, mean, sd, med, q1, q3, ma, mb, skewed=False, decimals=2):
    return VariableSpec(name, group, unit, lo, hi, mean, sd, med, q1, q3, ma, mb, skewed, decimals)


SPECS: dict[str, VariableSpec] = {
    s.name: s
    for s in (
        _v("HR", "V", "bpm", 20, 280, 83.9, 17.6, 83, 72, 95, 7.7, 12.1, decimals=1),
        _v("O2Sat", "V", "%", 20, 100, 97.1, 3.0, 98, 96, 99.7, 12.0, 14.1, decimals=1),
        _v("Temp", "V", "degC", 20.9, 50, 36.8, 0.7, 37.0, 36.5, 37.5, 66.2, 66.1),
        _v("SBP", "V", "mmHg", 20, 300, 126, 24, 121, 107, 138, 15.2, 13.9, decimals=1),
        _v("MAP", "V", "mmHg", 20, 300, 86.3, 16.6, 80, 71, 92, 10.2, 14.8),
        _v("DBP", "V", "mmHg", 20, 300, 66.2, 14.1, 62, 54, 72, 48.1, 13.9, decimals=1),
        _v("Resp", "V", "/min", 1, 100, 18.7, 4.7, 18, 15, 21, 9.8, 21.1, decimals=1),
        _v("EtCO2", "V", "mmHg", 10, 100, 33.7, 11.0, 33, 28.5, 38, 100.0, 92.4, decimals=1),
        _v("BaseExcess", "L", "mmol/L", -32, 100, -0.69, 4.29, 0, -3, 1, 89.6, 99.8),
        _v("HCO3", "L", "mmol/L", 0, 55, 24.1, 4.4, 24, 22, 26.4, 91.9, 99.8),
        _v("FiO2", "L", "fraction", -50, 4000, 0.55, 11.1, 0.5, 0.4, 0.6, 85.8, 97.7),
        _v("pH", "L", "pH", 6.62, 7.93, 7.379, 0.075, 7.38, 7.34, 7.43, 88.5, 97.8),
        _v("PaCO2", "L", "mmHg", 10, 100, 41.0, 9.3, 40, 35.4, 45, 91.2, 97.8),
        _v("SaO2", "L", "%", 23, 100, 92.7, 10.9, 97, 94.1, 98, 95.0, 98.1),
        _v("AST", "L", "IU/L", 3, 9961, 260, 856, 41, 22, 110, 98.5, 98.2, skewed=True),
        _v("BUN", "L", "mg/dL", 1, 268, 23.9, 20.0, 17, 12, 28, 91.8, 94.5, skewed=True),
        _v("Alkalinephos", "L", "IU/L", 7, 3833, 102, 120, 73, 54, 108, 98.5, 98.2, skewed=True),
        _v("Calcium", "L", "mg/dL", 1, 27.9, 7.56, 2.43, 8.3, 7.7, 8.8, 95.0, 93.2),
        _v("Chloride", "L", "mmol/L", 26, 145, 105.8, 5.9, 106, 102, 109, 91.7, 99.4),
        _v("Creatinine", "L", "mg/dL", 0.1, 46.6, 1.51, 1.81, 0.93, 0.7, 1.41, 93.4, 94.5, True),
        _v(
            "Bilirubin_direct",
            "L",
            "mg/dL",
            0.01,
            37.5,
            1.84,
            3.69,
            0.4,
            0.2,
            1.7,
            99.9,
            99.8,
            True,
        ),
        _v("Glucose", "L", "mg/dL", 10, 988, 137, 51, 126.5, 106, 153, 87.8, 77.8, skewed=True),
        _v("Lactate", "L", "mmol/L", 0.2, 31, 2.65, 2.53, 1.8, 1.27, 3.0, 96.6, 98.1, skewed=True),
        _v("Magnesium", "L", "mg/dL", 0.2, 9.8, 2.05, 0.40, 2.0, 1.8, 2.2, 92.2, 95.2),
        _v("Phosphate", "L", "mg/dL", 0.2, 18.8, 3.54, 1.42, 3.3, 2.6, 4.1, 95.0, 97.1, True),
        _v("Potassium", "L", "mmol/L", 1, 27.5, 4.14, 0.64, 4.1, 3.7, 4.4, 89.1, 92.3),
        _v("Bilirubin_total", "L", "mg/dL", 0.1, 49.6, 2.11, 4.31, 0.8, 0.5, 1.6, 98.8, 98.2, True),
        _v("TroponinI", "L", "ng/mL", 0.01, 440, 8.3, 24.8, 0.3, 0.04, 4.0, 99.9, 98.2, True),
        _v("Hct", "L", "%", 5.5, 71.7, 30.8, 5.5, 30.3, 27, 34.1, 88.2, 94.2),
        _v("Hgb", "L", "g/dL", 2.2, 32, 10.4, 2.0, 10.3, 9.1, 11.7, 91.2, 94.1),
        _v("PTT", "L", "s", 12.5, 250, 41.2, 26.2, 32.3, 27.8, 42.6, 95.2, 99.0, skewed=True),
        _v("WBC", "L", "10^3/uL", 0.1, 440, 11.4, 7.7, 10.3, 7.6, 13.7, 92.5, 94.7, skewed=True),
        _v("Fibrinogen", "L", "mg/dL", 34, 1760, 287, 153, 250, 184, 348, 99.2, 99.4, True),
        _v("Platelets", "L", "10^3/uL", 1, 2322, 196, 104, 181, 127, 244, 93.5, 94.7, True),
        _v("Age", "D", "years", 14, 100, 61.6, 16.5, 63.1, 51, 74, 0, 0),
        _v("Gender", "D", "0 female / 1 male", 0, 1, 0.559, 0.5, 1, 0, 1, 0, 0, decimals=0),
        _v("Unit1", "D", "MICU flag", 0, 1, 0.5, 0.5, 0, 0, 1, 48.9, 29.6, decimals=0),
        _v("Unit2", "D", "SICU flag", 0, 1, 0.5, 0.5, 0, 0, 1, 48.9, 29.6, decimals=0),
        _v("HospAdmTime", "D", "hours", -5367, 24, -51.9, 139.8, -6.1, -43.7, -0.04, 0, 0),
        _v("ICULOS", "D", "hours", 1, 336, 0, 0, 0, 0, 0, 0, 0, decimals=0),
    )
}
"""Reference statistics per variable, keyed by PhysioNet column name."""

LABEL1_VITAL_MEDIANS: dict[str, tuple[float, float, float]] = {
    "HR": (90, 77, 103),
    "Resp": (20, 16, 24),
    "Temp": (37.3, 36.6, 38.0),
    "SBP": (118, 103, 137),
    "MAP": (78, 69, 90),
    "DBP": (60, 52, 70),
    "O2Sat": (98, 95, 100),
}
"""Median [IQR] of vitals over rows labelled 1 (reference, section 3)."""

AGE_90_PLUS_CODE = 100  # set B writes ages of 90 and over as 100 (reference, section 1)

# Set membership from the file id (reference, section 1): A is 1-20643, B is 100001-120000.
SET_A_MAX_ID = 20_643
SET_B_MIN_ID = 100_001
SET_B_MAX_ID = 120_000


def source_set_from_id(numeric_id: int) -> str | None:
    """Return "A" or "B" for a PhysioNet 2019 file id, or None when the id is outside both."""
    if 1 <= numeric_id <= SET_A_MAX_ID:
        return "A"
    if SET_B_MIN_ID <= numeric_id <= SET_B_MAX_ID:
        return "B"
    return None
