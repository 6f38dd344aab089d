"""The selected classifier on disk: save it with its metadata, load it back, score new patients."""

from __future__ import annotations

import hashlib
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
from training.classification.candidates import Candidate, positive_scores
from training.classification.features import ID_COLUMNS, FeatureTable
from training.classification.options import ClassifyConfig

MODEL_FILE = "best_model.joblib"


MODEL_META_FILE = "best_model.json"


MODEL_FORMAT = "sepsis-rl-classifier/1"


class FeatureMismatchError(ValueError):
    """Features given for scoring do not match the ones the model was trained on."""


class ModelFileError(RuntimeError):
    """A saved model is missing, unreadable or does not match its metadata."""


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
    """Write `best_model.joblib` (preprocessing + model) and `best_model.json` into `folder`."""
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
        },
        "seed": config.settings.seed,
        "versions": _versions(),
        "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
    }
    write_json_atomic(folder / MODEL_META_FILE, metadata)
    return model_path


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

    Raises ModelFileError when a file is missing, unreadable, altered since it was written, or not
    a classifier saved by this project.
    """
    folder = Path(folder)
    model_path, meta_path = folder / MODEL_FILE, folder / MODEL_META_FILE
    for path in (model_path, meta_path):
        if not path.is_file():
            raise ModelFileError(
                f"{path} is missing; point at the `model` folder written by `sepsis-rl classify`"
            )
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{meta_path} is not valid JSON ({err}); re-run classify") from err
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{meta_path} is not a sepsis-rl classifier description (format "
            f"{metadata.get('format')!r}, expected {MODEL_FORMAT!r})"
        )
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if digest != metadata.get("sha256"):
        raise ModelFileError(
            f"{model_path} does not match the checksum in {meta_path}: the file is corrupt or "
            "was replaced; re-run `sepsis-rl classify` to write it again"
        )
    try:
        pipeline = joblib.load(model_path)
    except Exception as err:  # unpickling can fail in many ways; all mean an unusable file
        raise ModelFileError(
            f"cannot load {model_path} ({type(err).__name__}: {err}); it may have been written "
            f"with other library versions ({metadata.get('versions')}); re-run classify"
        ) from err
    if not isinstance(pipeline, Pipeline) or not hasattr(pipeline, "predict_proba"):
        raise ModelFileError(f"{model_path} does not hold a fitted classification pipeline")
    return SepsisClassifier(
        pipeline, list(metadata["feature_names"]), float(metadata["threshold"]), metadata
    )
