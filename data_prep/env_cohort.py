"""The environment cohort: each septic patient's state at the start of the label window.

The reinforcement-learning environment starts an episode from one of these rows. The state is taken
at the first hour labelled 1 (t_sepsis - 6 h), with each vital carried forward from the patient's
last observation and, when never observed, filled with the training patients' median. Values
outside the reference's plausibility envelope are clipped to it (IQR clipping would erase exactly
the shock states the environment is about).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_prep.cleaning import PatientImputer, age_in_years
from data_prep.schema import LABEL, PATIENT, SPECS
from data_prep.split import patient_labels, split_patients
from data_prep.synth import generate_cohort

ENV_VITALS: tuple[str, ...] = ("HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "Lactate")
ENV_COLUMNS: tuple[str, ...] = (PATIENT, "split", "source", "Age", "Gender", *ENV_VITALS)
DEFAULT_BUILTIN_PATIENTS = 3000
DEFAULT_CTGAN_EPOCHS = 300
ADULT_AGE_YEARS = 18.0  # the environment models adult ICU patients; set B has a few under 18


def build_env_cohort(hourly: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """One row per adult septic patient with the columns `ENV_COLUMNS`.

    `split` is the saved patient split (`patient_id`, `split`, `label`); the fallback medians are
    fitted on the training patients' rows only.
    """
    split_of = split.set_index(PATIENT)["split"]
    rows_split = hourly[PATIENT].map(split_of)
    if rows_split.isna().any():
        missing = hourly.loc[rows_split.isna(), PATIENT].iloc[0]
        raise ValueError(f"patient {missing} is in the hourly table but not in the split")
    vitals = hourly[[PATIENT, *ENV_VITALS]].copy()
    for name in ENV_VITALS:
        vitals[name] = vitals[name].clip(SPECS[name].lo, SPECS[name].hi)
    train_rows = vitals[(rows_split == "train").to_numpy()]
    _require_measured(train_rows)
    imputer = PatientImputer(columns=ENV_VITALS).fit(train_rows)
    first_label = (hourly[LABEL] == 1) & (hourly.groupby(PATIENT, sort=False)[LABEL].cumsum() == 1)
    state = imputer.transform(vitals).loc[first_label.to_numpy()]
    start = hourly.loc[first_label.to_numpy()]
    cohort = pd.DataFrame(
        {
            PATIENT: start[PATIENT].to_numpy(),
            "split": start[PATIENT].map(split_of).to_numpy(),
            "source": "real",
            "Age": age_in_years(start["Age"]),
            "Gender": start["Gender"].to_numpy().astype(np.int8),
        }
    )
    for name in ENV_VITALS:
        cohort[name] = state[name].to_numpy(dtype=float)
    return cohort[cohort["Age"] >= ADULT_AGE_YEARS].reset_index(drop=True)


def _require_measured(train_rows: pd.DataFrame) -> None:
    """Refuse a cohort in which a vital the environment needs is never measured in training."""
    never = [name for name in ENV_VITALS if train_rows[name].isna().all()]
    if never:
        raise ValueError(
            f"the environment cohort cannot be built: {never} "
            f"{'has' if len(never) == 1 else 'have'} no value in any training patient's row. "
            f"The environment starts every episode from {list(ENV_VITALS)}, and fills a "
            "patient's missing value with the training patients' median, so each needs at "
            "least one measurement in training (the classifiers' --missing-threshold does not "
            "apply here). Add stays that record them (the release's files do), or check that "
            "the input's columns hold the values under these names"
        )


def builtin_env_cohort(n_patients: int = DEFAULT_BUILTIN_PATIENTS, seed: int = 0) -> pd.DataFrame:
    """The environment's default cohort: `n_patients` synthetic septic stays from the generator,
    split 70/15/15 by patient, as `build_env_cohort` returns it. Deterministic for a seed."""
    hourly = generate_cohort(n_patients, seed=seed, septic_fraction=1.0)
    split = split_patients(patient_labels(hourly), seed=seed)
    return build_env_cohort(hourly, split)


def add_ctgan_patients(
    cohort: pd.DataFrame, n_patients: int, epochs: int = DEFAULT_CTGAN_EPOCHS, seed: int = 0
) -> pd.DataFrame:
    """`cohort` plus `n_patients` CTGAN-generated starting states, all in the training split.

    The GAN learns the joint distribution of age, sex and vitals from the real *training* rows
    only, and its rows are clipped to their range and to the reference's plausibility envelope
    (`CTGANOverSampler`). Generated patients get `source="ctgan"`, ids `ctgan-000000`, ... and
    `split="train"`, so they can widen what the agent trains on but never enter a validation or
    test evaluation.
    """
    from data_prep.oversampling import CTGANOverSampler  # torch: imported only when used

    if n_patients <= 0:
        return cohort
    columns = ["Age", "Gender", *ENV_VITALS]
    train = cohort[(cohort["split"] == "train") & (cohort["source"] == "real")]
    if len(train) < 10:
        raise ValueError(
            f"the environment cohort has {len(train)} real training patients; CTGAN needs at "
            "least 10 to learn from (prepare more data, or leave out the generated patients)"
        )
    sampler = CTGANOverSampler(
        epochs=epochs,
        batch_size=min(500, 10 * (len(train) // 10)),
        random_state=seed,
        discrete_columns=["Gender"],
    ).fit_generator(train[columns].astype(float))
    rows = pd.DataFrame(sampler.generate(n_patients, random_state=seed), columns=columns)
    generated = pd.DataFrame(
        {
            PATIENT: [f"ctgan-{i:06d}" for i in range(n_patients)],
            "split": "train",
            "source": "ctgan",
            "Age": rows["Age"].to_numpy(),
            "Gender": rows["Gender"].to_numpy().astype(np.int8),
        }
    )
    for name in ENV_VITALS:
        generated[name] = rows[name].to_numpy()
    generated = generated[generated["Age"] >= ADULT_AGE_YEARS]
    return pd.concat([cohort, generated[list(cohort.columns)]], ignore_index=True)
