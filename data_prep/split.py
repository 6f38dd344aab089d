"""Patient-level train / validation / test split, made once before anything is fitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import LABEL, PATIENT
from data_prep.seeding import rng_for

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def patient_labels(hourly: pd.DataFrame) -> pd.Series:
    """One row per patient: 1 if any hour is labelled septic. Index: patient id, in table order."""
    return hourly.groupby(PATIENT, sort=False)[LABEL].max().astype(np.int8).rename("label")


def split_patients(
    labels: pd.Series, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> pd.DataFrame:
    """Assign every patient to exactly one of train / val / test, stratified by the septic label.

    Returns a DataFrame with columns `patient_id`, `split`, `label`, one row per patient.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    rng = rng_for(seed, "patient-split")
    split = np.empty(len(labels), dtype=object)
    for cls in (0, 1):
        members = np.flatnonzero(labels.to_numpy() == cls)
        rng.shuffle(members)
        n_train = int(round(fractions[0] * members.size))
        n_val = int(round(fractions[1] * members.size))
        split[members[:n_train]] = "train"
        split[members[n_train : n_train + n_val]] = "val"
        split[members[n_train + n_val :]] = "test"
    return pd.DataFrame(
        {PATIENT: labels.index.to_numpy(), "split": split, "label": labels.to_numpy()}
    )


def read_split(path: Path) -> pd.DataFrame:
    """Read a saved split and check that no patient appears twice."""
    split = pd.read_csv(path, dtype={PATIENT: str, "split": str, "label": np.int8})
    duplicated = split[PATIENT][split[PATIENT].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"{path}: patient {duplicated.iloc[0]} appears in more than one row")
    unknown = set(split["split"]) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: unknown split names {sorted(unknown)}; expected {SPLITS}")
    return split
