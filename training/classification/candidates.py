"""One candidate classifier: a model x oversampling pipeline fitted on the training patients,
audited for leakage, with its validation threshold and its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline

from training.classification.features import FeatureTable
from training.classification.leakage import check_no_leakage, instrument, strip_instruments
from training.classification.metrics import (
    Evaluation,
)
from training.classification.models import (
    ClassifierSettings,
    build_pipeline,
)


@dataclass
class Candidate:
    """One fitted model x oversampling pipeline and its figures."""

    model: str
    oversample: str
    pipeline: Pipeline
    fit_seconds: float
    leakage_audit: dict
    instrumented: Pipeline | None = field(default=None, repr=False)
    """The same fitted steps inside their RowRecorders, for inspecting what each step saw."""
    threshold: float = float("nan")
    val: Evaluation | None = None
    test: Evaluation | None = None
    test_scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.model}+{self.oversample}"


def fit_candidate(
    model: str,
    oversample: str,
    table: FeatureTable,
    settings: ClassifierSettings,
    memory: Any = None,
) -> Candidate:
    """Fit one candidate on the training patients and prove no held-out patient reached it."""
    X_train, y_train, _ = table.part("train")
    pipeline = instrument(
        build_pipeline(model, oversample, settings, table.discrete_columns, memory=memory)
    )
    start = time.perf_counter()
    pipeline.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    held = {split: table.part(split) for split in ("val", "test")}
    audit = check_no_leakage(
        pipeline,
        X_train,
        {split: part[0] for split, part in held.items()},
        {split: part[2] for split, part in held.items()},
    )
    return Candidate(
        model, oversample, strip_instruments(pipeline), seconds, audit.to_dict(), pipeline
    )


def positive_scores(pipeline: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """Predicted probability of sepsis for each row."""
    return np.asarray(pipeline.predict_proba(X)[:, 1], dtype=float)
