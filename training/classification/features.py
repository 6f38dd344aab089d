"""The per-patient feature table `data prepare` wrote, read and checked for classification."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES_FILE = "features.parquet"


SPLIT_FILE = "split.csv"


ID_COLUMNS = ("patient_id", "split", "label")


SPLITS = ("train", "val", "test")


class DataFolderError(ValueError):
    """The data folder cannot be used for classification; the message says how to fix it."""


@dataclass
class FeatureTable:
    """The classifier input: one row per patient, split into train/val/test."""

    frame: pd.DataFrame
    feature_names: list[str]
    discrete_columns: list[str]
    source: Path

    def part(self, split: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
        """(features, labels, patient ids) of one split."""
        rows = self.frame[self.frame["split"] == split]
        return (
            rows[self.feature_names].reset_index(drop=True),
            rows["label"].to_numpy(dtype=int),
            rows["patient_id"].astype(str).tolist(),
        )


def load_features(data_dir: Path) -> FeatureTable:
    """Read and check `features.parquet` from a `data prepare` output folder.

    Raises DataFolderError for a missing folder or table, missing columns, unknown split names,
    missing values, duplicate patients, a split with no patients, or a split with one class.
    """
    data_dir = Path(data_dir)
    prepare_hint = f"run `sepsis-rl data prepare --input <raw data> --out {data_dir}` first"
    if not data_dir.is_dir():
        raise DataFolderError(f"data folder {data_dir} does not exist; {prepare_hint}")
    path = data_dir / FEATURES_FILE
    if not path.is_file():
        present = sorted(p.name for p in data_dir.iterdir())[:10]
        if any(data_dir.rglob("*.psv")):
            raise DataFolderError(
                f"{data_dir} holds raw .psv files, not prepared features; run `sepsis-rl data "
                f"prepare --input {data_dir} --out <folder>`, then `classify --data <folder>`"
            )
        raise DataFolderError(
            f"{path} is missing (the folder has: {', '.join(present) or 'nothing'}); {prepare_hint}"
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for damaged files
        raise DataFolderError(f"cannot read {path}: {err}; {prepare_hint}") from err

    missing = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFolderError(f"{path} lacks column(s) {missing}; {prepare_hint}")
    feature_names = [c for c in frame.columns if c not in ID_COLUMNS]
    non_numeric = [c for c in feature_names if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataFolderError(f"{path}: feature column(s) {non_numeric[:5]} are not numeric")
    if not feature_names:
        raise DataFolderError(f"{path} has no feature columns")
    _check_values(frame, feature_names, path)
    _check_split_file(frame, data_dir / SPLIT_FILE)
    # Column types come from the training patients, like every other learned choice.
    train_features = frame.loc[frame["split"] == "train", feature_names]
    return FeatureTable(frame, feature_names, _binary_columns(train_features), path)


def _check_values(frame: pd.DataFrame, feature_names: list[str], path: Path) -> None:
    unknown = sorted(set(frame["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise DataFolderError(f"{path}: unknown split name(s) {unknown}; expected {SPLITS}")
    duplicated = frame["patient_id"].duplicated()
    if duplicated.any():
        raise DataFolderError(
            f"{path}: patient {frame.loc[duplicated, 'patient_id'].iloc[0]} has more than one "
            "row; features must be one row per patient"
        )
    values = frame[feature_names]
    if values.isna().any().any() or not np.isfinite(values.to_numpy(dtype=float)).all():
        bad = values.columns[values.isna().any() | ~np.isfinite(values).all()].tolist()
        raise DataFolderError(
            f"{path}: missing or infinite values in {bad[:5]}; re-run `data prepare`, which "
            "imputes every feature"
        )
    labels = set(frame["label"].unique().tolist())
    if not labels <= {0, 1}:
        raise DataFolderError(f"{path}: labels must be 0/1, found {sorted(labels)}")
    for split in SPLITS:
        in_split = frame.loc[frame["split"] == split, "label"]
        if in_split.empty:
            raise DataFolderError(f"{path}: the {split} split has no patients")
        if in_split.nunique() < 2:
            raise DataFolderError(
                f"{path}: every {split} patient has label {int(in_split.iloc[0])}; a classifier "
                f"needs septic and non-septic {split} patients (use a larger cohort, or check "
                "the labels)"
            )


def _check_split_file(frame: pd.DataFrame, split_path: Path) -> None:
    """The features' split must agree with split.csv, the record made before any fitting."""
    if not split_path.is_file():
        raise DataFolderError(
            f"{split_path} is missing: it records the patient split made before any fitting; "
            "re-run `data prepare`"
        )
    split = pd.read_csv(split_path, dtype={"patient_id": str})
    merged = (
        frame[["patient_id", "split"]]
        .astype({"patient_id": str})
        .merge(split[["patient_id", "split"]], on="patient_id", how="left", suffixes=("", "_file"))
    )
    disagree = merged["split"] != merged["split_file"]
    if disagree.any():
        row = merged[disagree].iloc[0]
        raise DataFolderError(
            f"patient {row['patient_id']} is in split {row['split']!r} in {FEATURES_FILE} but "
            f"{row['split_file']!r} in {split_path}; the folder mixes two prepare runs"
        )


def _binary_columns(features: pd.DataFrame) -> list[str]:
    return [c for c in features.columns if set(np.unique(features[c])) <= {0, 1}]
