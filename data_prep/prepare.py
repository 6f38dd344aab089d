"""`data prepare`: raw files -> canonical hourly table -> patient split -> fitted cleaning ->
patient features and the environment cohort, with a report of what each step did.

Everything fitted (the cleaning steps, the feature builder's fill values, the septic window
lengths that non-septic windows copy) sees the training patients only, and the cleaning steps
only their unlabelled hours, so no labelled hour can shape any feature. The split is made once,
before any fitting, and saved, so every later stage uses the same patients.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from data_prep.cleaning import (
    DEFAULT_IQR_K,
    DEFAULT_MISSING_THRESHOLD,
    make_cleaning_pipeline,
)
from data_prep.env_cohort import DEFAULT_CTGAN_EPOCHS, add_ctgan_patients, build_env_cohort
from data_prep.features import (
    DEFAULT_MAX_WINDOW_H,
    ROW,
    PatientFeatureBuilder,
    feature_windows,
    window_rows,
)
from data_prep.reader import Progress, read_cohort
from data_prep.schema import LABEL, MEASUREMENTS, PATIENT
from data_prep.split import DEFAULT_FRACTIONS, SPLITS, patient_labels, split_patients
from sepsis_rl.common.config_files import RuleError, options_dataclass
from sepsis_rl.common.files import staged_directory, write_json_atomic
from sepsis_rl.common.markdown import markdown_table

HOURLY_FILE = "hourly.parquet"
SPLIT_FILE = "split.csv"
FEATURES_FILE = "features.parquet"
ENV_COHORT_FILE = "env_cohort.parquet"
PREPROCESSING_FILE = "preprocessing.joblib"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.md"
OUTPUT_FILES = (HOURLY_FILE, SPLIT_FILE, FEATURES_FILE, ENV_COHORT_FILE, PREPROCESSING_FILE,
                REPORT_FILE, SUMMARY_FILE)  # fmt: skip


Fraction = Annotated[float, Field(gt=0, lt=1)]
"""A share of the patients, strictly between 0 and 1."""


@options_dataclass
class PrepareOptions:
    """Options of `data prepare`; every field is a command-line option."""

    missing_threshold: Annotated[float, Field(ge=0, le=1)] = DEFAULT_MISSING_THRESHOLD
    """Drop a measurement missing in more than this fraction of training rows."""
    iqr_k: PositiveFloat = DEFAULT_IQR_K
    """Tukey fence multiplier for outliers."""
    outliers: Literal["clip", "drop", "none"] = "clip"
    """clip (to the fences), drop (rows, as the original study), or none."""
    max_window_hours: PositiveInt = DEFAULT_MAX_WINDOW_H
    """Longest feature window, in hours before the cut."""
    train_fraction: Fraction = DEFAULT_FRACTIONS[0]
    """Share of the patients in the training split."""
    val_fraction: Fraction = DEFAULT_FRACTIONS[1]
    """Share of the patients in the validation split (the test split gets the rest)."""
    seed: NonNegativeInt = 0
    """Seeds the split and the non-septic window placement."""
    skip_bad: bool = False
    """Leave malformed files out (listed in the report) instead of stopping."""
    env_ctgan_patients: NonNegativeInt = 0
    """CTGAN-generated patients added to the environment cohort's training split (0: none)."""
    env_ctgan_epochs: PositiveInt = DEFAULT_CTGAN_EPOCHS
    """Training epochs of that GAN."""

    @model_validator(mode="after")
    def _test_split_left(self) -> PrepareOptions:
        """The test split gets what training and validation leave: something."""
        if self.train_fraction + self.val_fraction >= 1:
            raise RuleError(
                "val_fraction",
                self.val_fraction,
                f"train_fraction + val_fraction must stay below 1 (train_fraction is "
                f"{self.train_fraction}): the test split gets the rest",
            )
        return self


def prepare(
    input_path: Path,
    out_dir: Path,
    options: PrepareOptions | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole data preparation; write every output of `OUTPUT_FILES` into `out_dir`
    (all or nothing) and return the report."""
    options = options or PrepareOptions()
    fractions = (
        options.train_fraction,
        options.val_fraction,
        1.0 - options.train_fraction - options.val_fraction,
    )
    started = time.perf_counter()
    read = read_cohort(Path(input_path), skip_bad=options.skip_bad, progress=progress)
    hourly = read.table.to_pandas()
    report: dict[str, Any] = {
        "input": {"path": str(input_path), "kind": read.input_kind, "files": read.n_files},
        "options": asdict(options),
        "skipped": [{"path": s.path, "reason": s.reason} for s in read.skipped],
        "implausible_values": {k: v for k, v in read.implausible.items() if v},
        "raw": _counts(hourly),
    }

    labels = patient_labels(hourly)
    if labels.nunique() < 2:
        raise ValueError(
            f"{input_path}: every patient has SepsisLabel {int(labels.iloc[0])}; preparing needs "
            "septic and non-septic stays"
        )
    split = split_patients(labels, fractions, seed=options.seed)
    report["split"] = split.groupby(["split", "label"]).size().unstack(fill_value=0).to_dict()
    # Built before the features: it refuses a cohort missing what the environment needs.
    env_cohort = build_env_cohort(hourly, split)

    windows = feature_windows(hourly, split, options.max_window_hours, seed=options.seed)
    hourly[ROW] = np.arange(len(hourly))
    is_train = hourly[PATIENT].isin(split.loc[split["split"] == "train", PATIENT]).to_numpy()
    # Fitted on the training patients' unlabelled hours: the hours features may come from.
    fit_rows = is_train & (hourly[LABEL].to_numpy() == 0)
    cleaning = make_cleaning_pipeline(options.missing_threshold, options.iqr_k, options.outliers)
    cleaning.fit(hourly[fit_rows])
    report["cleaning"] = _cleaning_report(cleaning, hourly)
    cleaned = cleaning.transform(hourly)
    report["after_outliers"] = _counts(cleaned)

    features, builder = _features(hourly, cleaned, windows, split, is_train)
    report["windows"] = _window_report(windows, features)
    env_cohort = add_ctgan_patients(
        env_cohort, options.env_ctgan_patients, options.env_ctgan_epochs, seed=options.seed
    )
    real = env_cohort["source"] == "real"
    report["env_cohort"] = env_cohort[real].groupby("split").size().to_dict()
    report["env_cohort_ctgan"] = int((~real).sum())
    report["environment"] = {"python": platform.python_version(), "pandas": pd.__version__}
    report["seconds"] = round(time.perf_counter() - started, 2)

    with staged_directory(Path(out_dir)) as stage:
        pq.write_table(read.table, stage / HOURLY_FILE)
        split.to_csv(stage / SPLIT_FILE, index=False)
        features.to_parquet(stage / FEATURES_FILE, index=False)
        env_cohort.to_parquet(stage / ENV_COHORT_FILE, index=False)
        joblib.dump(
            {"cleaning": cleaning, "features": builder, "options": asdict(options)},
            stage / PREPROCESSING_FILE,
        )
        write_json_atomic(stage / REPORT_FILE, report)
        (stage / SUMMARY_FILE).write_text(summary_markdown(report))
    return report


def _features(hourly, cleaned, windows, split, is_train):
    in_window = np.zeros(len(hourly), dtype=bool)
    in_window[window_rows(windows)] = True
    rows = cleaned[in_window[cleaned[ROW].to_numpy()]].copy()
    kept = [c for c in MEASUREMENTS if c in rows.columns]
    raw_at = hourly.iloc[rows[ROW].to_numpy()]
    for name in kept:
        rows[f"{name}__observed"] = raw_at[name].notna().to_numpy()
    train_rows = is_train[rows[ROW].to_numpy()]
    builder = PatientFeatureBuilder().fit(rows[train_rows])
    features = builder.transform(rows)
    meta = split.set_index(PATIENT)
    features.insert(1, "split", features[PATIENT].map(meta["split"]).to_numpy())
    features.insert(2, "label", features[PATIENT].map(meta["label"]).astype(int).to_numpy())
    return features, builder


def _counts(table: pd.DataFrame) -> dict[str, int]:
    septic = table.groupby(PATIENT, sort=False)[LABEL].max()
    return {
        "rows": len(table),
        "rows_label_1": int(table[LABEL].sum()),
        "patients": int(septic.size),
        "septic_patients": int(septic.sum()),
    }


def _cleaning_report(cleaning, hourly: pd.DataFrame) -> dict[str, Any]:
    dropper = cleaning.named_steps["drop_missing"]
    outliers = cleaning.named_steps["outliers"]
    imputer = cleaning.named_steps["impute"]
    kept = dropper.transform(hourly)
    mask = outliers.outlier_mask(kept)
    label = kept[LABEL].to_numpy() == 1
    per_class = {
        "values_outside_fences": {
            "label_0": int(mask[~label].to_numpy().sum()),
            "label_1": int(mask[label].to_numpy().sum()),
        },
        "rows_with_any_outlier": {
            "label_0": int(mask[~label].any(axis=1).sum()),
            "label_1": int(mask[label].any(axis=1).sum()),
        },
        "per_column": mask.sum().astype(int).to_dict(),
    }
    after = outliers.transform(kept)
    cols = list(imputer.medians_.index)
    missing_before = after[cols].isna().sum()
    still_missing = imputer.carried_forward(after).isna().sum()
    return {
        "missing_threshold": dropper.threshold,
        "missing_fraction_train": {k: round(v, 4) for k, v in dropper.missing_fraction_.items()},
        "dropped_columns": dropper.dropped_,
        "kept_measurements": cols,
        "outlier_mode": outliers.mode,
        "iqr_k": outliers.k,
        "fences": {c: [outliers.lower_[c], outliers.upper_[c]] for c in outliers.lower_.index},
        "outliers": per_class,
        "imputed": {
            "carried_forward": (missing_before - still_missing).astype(int).to_dict(),
            "training_median": still_missing.astype(int).to_dict(),
            "medians": imputer.medians_.round(4).to_dict(),
        },
    }


def _window_report(windows: pd.DataFrame, features: pd.DataFrame) -> dict[str, Any]:
    usable = windows[windows["excluded"] == ""]
    length = usable["end"] - usable["start"]
    return {
        "excluded_labelled_from_first_hour": int((windows["excluded"] != "").sum()),
        "median_window_hours": {
            "label_0": float(length[usable["label"] == 0].median()),
            "label_1": float(length[usable["label"] == 1].median()),
        },
        "patients_with_features": features.groupby(["split", "label"])
        .size()
        .unstack(fill_value=0)
        .to_dict(),
    }


def summary_markdown(report: dict[str, Any]) -> str:
    """A short human-readable account of the preparation."""
    raw, after = report["raw"], report["after_outliers"]
    cleaning = report["cleaning"]
    windows = report["windows"]
    out = cleaning["outliers"]
    lines = [
        "# Data preparation summary",
        "",
        f"Input: `{report['input']['path']}` ({report['input']['kind']}, "
        f"{report['input']['files']} files or patients).",
        "",
        markdown_table(
            ["stage", "rows", "rows labelled 1", "patients", "septic patients"],
            [
                _stage_row("read", raw),
                _stage_row(f"after outliers ({cleaning['outlier_mode']})", after),
            ],
        ),
        "",
        f"- Skipped files: {len(report['skipped'])}"
        + "".join(f"\n  - `{s['path']}`: {s['reason']}" for s in report["skipped"][:20]),
        f"- Implausible values (outside the reference range, counted and kept): "
        f"{sum(report['implausible_values'].values())}"
        + "".join(f"; {k} {v}" for k, v in report["implausible_values"].items()),
        f"- Dropped columns (missing > {cleaning['missing_threshold']:.0%} of training rows): "
        f"{', '.join(cleaning['dropped_columns']) or 'none'}",
        f"- Kept measurements: {', '.join(cleaning['kept_measurements'])}",
        f"- Values outside the IQR fences (k = {cleaning['iqr_k']}): label 0 "
        f"{out['values_outside_fences']['label_0']:,}, label 1 "
        f"{out['values_outside_fences']['label_1']:,}; rows with any: label 0 "
        f"{out['rows_with_any_outlier']['label_0']:,}, label 1 "
        f"{out['rows_with_any_outlier']['label_1']:,} "
        + (
            "(dropped: this removes many of the abnormal vitals that mark sepsis)"
            if cleaning["outlier_mode"] == "drop"
            else f"({cleaning['outlier_mode']})"
        ),
        f"- Imputed: {sum(cleaning['imputed']['carried_forward'].values()):,} values carried "
        f"forward, {sum(cleaning['imputed']['training_median'].values()):,} filled with "
        "training medians",
        f"- Septic patients labelled from their first hour (no feature window, excluded): "
        f"{windows['excluded_labelled_from_first_hour']}",
        f"- Median feature window: {windows['median_window_hours']['label_0']:g} h (non-septic), "
        f"{windows['median_window_hours']['label_1']:g} h (septic)",
        "- Environment cohort (adult septic patients at the start of the label window): "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["env_cohort"].items()))
        + (
            f"; plus {report['env_cohort_ctgan']:,} CTGAN-generated patients in train"
            if report.get("env_cohort_ctgan")
            else ""
        ),
        "",
        markdown_table(
            ["split", "patients (non-septic / septic)", "with features (non-septic / septic)"],
            [
                _split_row(name, report["split"], windows["patients_with_features"])
                for name in SPLITS
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def _stage_row(stage: str, counts: dict[str, int]) -> list[str]:
    keys = ("rows", "rows_label_1", "patients", "septic_patients")
    return [stage, *(f"{counts[key]:,}" for key in keys)]


def _split_row(split: str, patients: dict, with_features: dict) -> list[str]:
    """The split's patients and those with features, each as 'non-septic / septic'."""
    return [split, _by_label(patients, split), _by_label(with_features, split)]


def _by_label(counts: dict, split: str) -> str:
    """'1,609 / 141': patients of `split` without and with sepsis, from label -> split -> count."""
    return " / ".join(f"{counts.get(label, {}).get(split, 0):,}" for label in (0, 1))
