"""The selected classifier on disk: save it with its metadata, load it back, score new patients.

The folder holds `best_model.joblib` (a pickle: loading it runs code), `best_model.json` and a
manifest of both (`sepsis_rl.common.manifest`). `load_model` checks the manifest, and its
signature when a manifest key is configured, before joblib reads anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline

from sepsis_rl.common.files import write_json_atomic
from sepsis_rl.common.manifest import ManifestError, verify_manifest, write_manifest
from training.classification.candidates import Candidate, positive_scores
from training.classification.features import ID_COLUMNS, FeatureTable
from training.classification.options import ClassifyConfig

MODEL_FILE = "best_model.joblib"


MODEL_META_FILE = "best_model.json"


MODEL_FORMAT = "sepsis-rl-classifier/1"


MODEL_KIND = "sepsis-rl/classifier-model"
"""The kind recorded in the model folder's manifest (a checkpoint's manifest says another)."""


UNVERIFIED_HINT = (
    "it was written by a sepsis-rl older than model manifests, or not by `sepsis-rl classify`. "
    "Run `sepsis-rl classify` again to write a checked model folder; or, only if you wrote this "
    "folder yourself and it never left your control, record its files as they are now with "
    'python -c "from training.classification.model_file import trust_model_folder; '
    "trust_model_folder('{path}')\""
)


class FeatureMismatchError(ValueError):
    """Features given for scoring do not match the ones the model was trained on."""


class ModelFileError(ValueError):
    """A saved model is missing, unreadable, altered since it was written (its manifest says
    which file), or not a classifier saved by this project."""


def _versions() -> dict[str, str]:
    import imblearn
    import sklearn
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "imbalanced-learn": imblearn.__version__,
        "xgboost": xgboost.__version__,
        "joblib": joblib.__version__,
    }


def _scoring_pipeline(pipeline: Pipeline) -> Pipeline:
    """The fitted pipeline with its oversampler replaced by passthrough.

    Samplers act only during fit, so predictions are unchanged; the saved file then needs no
    CTGAN or torch to load and carries no generator that could emit synthetic patients.
    """
    return Pipeline(
        [
            (name, "passthrough" if hasattr(step, "fit_resample") else step)
            for name, step in pipeline.steps
        ]
    )


def save_model(
    candidate: Candidate, table: FeatureTable, config: ClassifyConfig, folder: Path
) -> Path:
    """Write `best_model.joblib` (preprocessing + model), `best_model.json` and the manifest of
    both (signed when a manifest key is configured) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    joblib.dump(_scoring_pipeline(candidate.pipeline), model_path)
    metadata = {
        "format": MODEL_FORMAT,
        "model": candidate.model,
        "oversample_used_in_training": candidate.oversample,
        "feature_names": table.feature_names,
        "threshold": candidate.threshold,
        "threshold_rule": config.threshold_rule,
        "selected_on": f"validation {config.select_metric}",
        "test_metrics": candidate.test.to_dict(),
        "trained_on": {
            "features": str(table.source),
            "patients": int((table.frame["split"] == "train").sum()),
            # The fitted cleaning and features of that `data prepare` folder, pinned by hash:
            # `sepsis-rl serve` unpickles it to score a stay hour by hour, and this file is
            # covered by the model folder's (signed) manifest.
            "preprocessing_sha256": _preprocessing_sha256(Path(table.source)),
        },
        "seed": config.settings.seed,
        "versions": _versions(),
    }
    write_json_atomic(folder / MODEL_META_FILE, metadata)
    write_manifest(folder, MODEL_KIND)
    return model_path


def _preprocessing_sha256(features: Path) -> str | None:
    from data_prep.prepare import PREPROCESSING_FILE
    from sepsis_rl.common.manifest import file_sha256

    path = features.parent / PREPROCESSING_FILE
    return file_sha256(path) if path.is_file() else None


def trust_model_folder(folder: Path) -> Path:
    """Write the manifest of a model folder as it is now (signed if a key is configured).

    The explicit opt-in for a folder written before manifests existed: it vouches for
    `best_model.joblib`, so use it only on a folder you wrote yourself and kept under your
    control. The old checksum in `best_model.json` must still match.
    """
    folder = Path(folder)
    model_path, meta_path = folder / MODEL_FILE, folder / MODEL_META_FILE
    _require_files(model_path, meta_path)
    metadata = _read_metadata(meta_path)
    recorded = metadata.get("sha256")
    if recorded is not None:
        with model_path.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        if not hmac.compare_digest(digest, str(recorded)):
            raise ModelFileError(
                f"{model_path} does not match the sha256 recorded in {meta_path}: the file is "
                "corrupt or was replaced; run `sepsis-rl classify` again"
            )
    return write_manifest(folder, MODEL_KIND)


@dataclass
class SepsisClassifier:
    """A loaded classifier: its fitted pipeline, threshold and feature names."""

    pipeline: Pipeline
    feature_names: list[str]
    threshold: float
    metadata: dict

    def predict_table(self, features: pd.DataFrame) -> pd.DataFrame:
        """Probability of sepsis and the decision at the saved threshold, one row per patient.

        `features` holds the columns of `features.parquet` (extra `patient_id`, `split`, `label`
        columns are allowed and ignored, except that `patient_id` is carried into the output).
        Raises FeatureMismatchError for missing or unexpected feature columns, non-numeric or
        missing values.
        """
        X = check_features(features, self.feature_names)
        probability = positive_scores(self.pipeline, X)
        out = pd.DataFrame(
            {"probability": probability, "sepsis_predicted": probability >= self.threshold}
        )
        if "patient_id" in features.columns:
            out.insert(0, "patient_id", features["patient_id"].to_numpy())
        return out

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Deprecated alias of `predict_table`, to be removed in the next release.

        Renamed because scikit-learn's `score(X, y)` returns a number, not a table.
        """
        warnings.warn(
            "SepsisClassifier.score() is deprecated and will be removed in the next release; "
            "use predict_table(), which returns the same table",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.predict_table(features)


def check_features(features: pd.DataFrame, expected: Sequence[str]) -> pd.DataFrame:
    """The expected feature columns of `features`, in training order, or FeatureMismatchError."""
    if not isinstance(features, pd.DataFrame):
        raise FeatureMismatchError(
            "predict_table() needs a pandas DataFrame with named feature columns, got "
            f"{type(features).__name__}"
        )
    given = [c for c in features.columns if c not in ID_COLUMNS]
    missing = [c for c in expected if c not in features.columns]
    unexpected = [c for c in given if c not in set(expected)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} column(s): {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} column(s): {unexpected[:8]}")
        raise FeatureMismatchError(
            "features do not match the model's: " + "; ".join(parts) + ". Build them with the "
            "same `data prepare` settings the model was trained with (its feature list is in "
            f"{MODEL_META_FILE})."
        )
    X = features[list(expected)]
    non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if non_numeric:
        raise FeatureMismatchError(f"feature column(s) {non_numeric[:8]} are not numeric")
    if X.isna().any().any():
        bad = X.columns[X.isna().any()].tolist()
        raise FeatureMismatchError(
            f"missing values in {bad[:8]}; impute them as `data prepare` does before scoring"
        )
    infinite = X.columns[~np.isfinite(X.to_numpy(dtype=float)).all(axis=0)].tolist()
    if infinite:
        raise FeatureMismatchError(
            f"infinite values in {infinite[:8]}; features are finite measurements, check how "
            "they were computed"
        )
    return X


def load_model(folder: Path) -> SepsisClassifier:
    """Load the model `classify` saved in `folder` (its `model/` sub-folder).

    Raises ModelFileError (a ValueError) when a file is missing, unreadable, altered since it was
    written (checked against the manifest before anything is unpickled), or not a classifier
    saved by this project.
    """
    folder = Path(folder)
    model_path, meta_path = folder / MODEL_FILE, folder / MODEL_META_FILE
    _require_files(model_path, meta_path)
    try:
        verify_manifest(
            folder,
            MODEL_KIND,
            missing_hint=UNVERIFIED_HINT.format(path=folder),
            remedy="copy the folder again from where it was written, or re-run "
            "`sepsis-rl classify` to write it again",
        )
    except ManifestError as err:
        raise ModelFileError(str(err)) from err
    metadata = _read_metadata(meta_path)
    feature_names, threshold = metadata.get("feature_names"), metadata.get("threshold")
    if not isinstance(feature_names, list) or not all(isinstance(n, str) for n in feature_names):
        raise ModelFileError(f"{meta_path}: feature_names must be a list of column names")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ModelFileError(f"{meta_path}: threshold must be a number, got {threshold!r}")
    try:
        pipeline = joblib.load(model_path)
    except Exception as err:  # unpickling can fail in many ways; all mean an unusable file
        raise ModelFileError(
            f"cannot load {model_path} ({type(err).__name__}: {err}); it may have been written "
            f"with other library versions ({metadata.get('versions')}); re-run classify"
        ) from err
    if not isinstance(pipeline, Pipeline) or not hasattr(pipeline, "predict_proba"):
        raise ModelFileError(
            f"{model_path} holds a {type(pipeline).__name__}, expected the fitted imblearn "
            "Pipeline with predict_proba that `sepsis-rl classify` saves"
        )
    return SepsisClassifier(pipeline, list(feature_names), float(threshold), metadata)


def _require_files(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise ModelFileError(
                f"{path} is missing; point at the `model` folder written by `sepsis-rl classify`"
            )


def _read_metadata(meta_path: Path) -> dict:
    """`best_model.json`, checked to be a description this project wrote."""
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{meta_path} is not valid JSON ({err}); re-run classify") from err
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != MODEL_FORMAT:
        raise ModelFileError(
            f"{meta_path} is not a sepsis-rl classifier description (format "
            f"{found!r}, expected {MODEL_FORMAT!r})"
        )
    return metadata
