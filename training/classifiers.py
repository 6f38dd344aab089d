"""The four sepsis classifiers, their oversampling variants, and the check that nothing leaks.

Every candidate is one `imblearn.pipeline.Pipeline`, so an oversampler only ever sees the rows
the pipeline is fitted on, and is skipped when the pipeline scores patients:

| oversample | steps |
|---|---|
| none  | [scale]* -> model |
| ctgan | CTGAN on raw units (so rows can be clipped to physiology) -> [scale]* -> model |
| smote | scale -> SMOTE (Euclidean neighbours need standardised features) -> model |

`*` scaling only for the models that need it (logistic regression, SVM). Trees do not.

The SVM is an RBF kernel approximated with `Nystroem` features and a linear SVM (`LinearSVC`)
calibrated with Platt scaling (`CalibratedClassifierCV(method="sigmoid")`). An exact kernel SVC
costs O(n^2) memory and O(n^2..n^3) time, and its `probability=True` runs five more fits; on the
full cohort (about 28,000 training patients, twice that after balancing) it does not finish in the
time budget. The approximation scales linearly in patients and gives probabilities the same way
SVC does (Platt), fitted on held-out folds of the training data.

`RowRecorder` and `check_no_leakage` are the instrument behind "no validation or test patient
reaches a fitted step": every step is wrapped, records a fingerprint of each row it is fitted on,
and the fingerprints are compared with those of the held-out patients, mapped into the same
step's input space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE, SMOTENC
from imblearn.pipeline import Pipeline
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.metaestimators import available_if
from xgboost import XGBClassifier

from data_prep.oversampling import CTGANOverSampler

MODELS: tuple[str, ...] = ("logreg", "random_forest", "xgboost", "svm")
OVERSAMPLERS: tuple[str, ...] = ("none", "smote", "ctgan")
MODEL_LABELS = {
    "logreg": "Logistic regression",
    "random_forest": "Random forest",
    "xgboost": "XGBoost",
    "svm": "SVM (Nystroem RBF + calibrated LinearSVC)",
}
NEEDS_SCALING = frozenset({"logreg", "svm"})
N_JOBS = 2
"""Threads for random forest and XGBoost: the 2 cores of the reference machine."""


@dataclass(frozen=True)
class ClassifierSettings:
    """Hyper-parameters of the candidates. Defaults fit the full cohort in the time budget."""

    seed: int = 0
    """Seeds every model, the oversamplers and CTGAN."""
    sampling_strategy: float | str = "auto"
    """Oversampling target: "auto" balances the classes; a float is minority/majority after."""
    ctgan_epochs: int = 300
    """CTGAN training epochs (the ctgan default)."""
    ctgan_batch_size: int = 500
    """CTGAN batch size, a multiple of 10."""
    smote_neighbors: int = 5
    """SMOTE's k nearest minority neighbours."""
    logreg_c: float = 0.1
    """Inverse L2 strength of logistic regression on standardised features."""
    rf_trees: int = 200
    """Random-forest trees."""
    rf_min_leaf: int = 5
    """Random-forest minimum patients per leaf."""
    xgb_rounds: int = 300
    """XGBoost boosting rounds."""
    xgb_depth: int = 4
    """XGBoost tree depth."""
    xgb_learning_rate: float = 0.05
    """XGBoost shrinkage."""
    svm_components: int = 300
    """Nystroem features approximating the RBF kernel."""
    svm_c: float = 0.05
    """LinearSVC inverse regularisation."""
    calibration_folds: int = 3
    """Folds of the training data used to fit the SVM's Platt calibration."""


def make_model(name: str, settings: ClassifierSettings) -> BaseEstimator:
    """The classifier `name` (one of MODELS), configured by `settings`."""
    seed = settings.seed
    if name == "logreg":
        return LogisticRegression(C=settings.logreg_c, max_iter=2000, random_state=seed)
    if name == "random_forest":
        return RandomForestClassifier(
            n_estimators=settings.rf_trees,
            min_samples_leaf=settings.rf_min_leaf,
            max_features="sqrt",
            n_jobs=N_JOBS,
            random_state=seed,
        )
    if name == "xgboost":
        return XGBClassifier(
            n_estimators=settings.xgb_rounds,
            max_depth=settings.xgb_depth,
            learning_rate=settings.xgb_learning_rate,
            subsample=0.8,
            colsample_bytree=0.5,
            tree_method="hist",
            n_jobs=N_JOBS,
            random_state=seed,
            eval_metric="logloss",
        )
    if name == "svm":
        return CalibratedClassifierCV(
            LinearSVC(C=settings.svm_c, dual=False, random_state=seed),
            method="sigmoid",
            cv=settings.calibration_folds,
        )
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def make_oversampler(
    name: str, settings: ClassifierSettings, discrete_columns: Sequence[str] = ()
) -> BaseEstimator | None:
    """The oversampler `name` (one of OVERSAMPLERS), or None for "none"."""
    if name == "none":
        return None
    if name == "smote":
        if discrete_columns:
            return SMOTENC(
                categorical_features=list(discrete_columns),
                sampling_strategy=settings.sampling_strategy,
                k_neighbors=settings.smote_neighbors,
                random_state=settings.seed,
            )
        return SMOTE(
            sampling_strategy=settings.sampling_strategy,
            k_neighbors=settings.smote_neighbors,
            random_state=settings.seed,
        )
    if name == "ctgan":
        return CTGANOverSampler(
            sampling_strategy=settings.sampling_strategy,
            epochs=settings.ctgan_epochs,
            batch_size=settings.ctgan_batch_size,
            random_state=settings.seed,
            discrete_columns=list(discrete_columns) or None,
        )
    raise ValueError(f"unknown oversampling {name!r}; choose one of {OVERSAMPLERS}")


def build_pipeline(
    model: str,
    oversample: str,
    settings: ClassifierSettings | None = None,
    discrete_columns: Sequence[str] = (),
    memory: Any = None,
) -> Pipeline:
    """The unfitted candidate pipeline `oversample` x `model` (see the module docstring).

    Step names are stable: `oversample`, `scale`, `kernel` (SVM only), `model`; absent steps are
    "passthrough". `memory` (a joblib.Memory) lets candidates share identical fitted prefixes, e.g.
    one CTGAN for all four models.
    """
    settings = settings or ClassifierSettings()
    sampler = make_oversampler(oversample, settings, discrete_columns)
    needs_scaler = model in NEEDS_SCALING or oversample == "smote"
    # DataFrame output keeps column names, which SMOTENC uses to find the categorical columns.
    scaler = StandardScaler().set_output(transform="pandas") if needs_scaler else None
    steps: list[tuple[str, Any]]
    if oversample == "smote":
        steps = [("scale", scaler), ("oversample", sampler)]
    else:
        steps = [("oversample", sampler), ("scale", scaler)]
    if model == "svm":
        steps.append(
            (
                "kernel",
                Nystroem(
                    kernel="rbf", n_components=settings.svm_components, random_state=settings.seed
                ),
            )
        )
    steps.append(("model", make_model(model, settings)))
    return Pipeline(
        [(name, "passthrough" if step is None else step) for name, step in steps], memory=memory
    )


# -- leakage instrument -------------------------------------------------------------------------


class LeakageError(RuntimeError):
    """A fitted step saw rows of patients it must not see."""


def row_fingerprints(X: Any) -> np.ndarray:
    """One 64-bit hash per row of X (its float values, in column order)."""
    frame = pd.DataFrame(np.asarray(X, dtype=np.float64))
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def _step_has(method: str):
    return lambda self: hasattr(self.step, method)


class RowRecorder(BaseEstimator):
    """Wrap a pipeline step; remember a fingerprint of every row it is fitted on.

    Behaves as the wrapped step (transformer, sampler or classifier). After fitting,
    `fitted_step_` is the fitted clone and `seen_` the fingerprints of its training rows.
    """

    def __init__(self, step: Any) -> None:
        self.step = step

    def _record(self, X: Any) -> None:
        self.seen_ = row_fingerprints(X)
        self.n_seen_ = len(self.seen_)
        self.fitted_step_ = clone(self.step)

    def fit(self, X: Any, y: Any = None, **params: Any) -> RowRecorder:
        self._record(X)
        self.fitted_step_.fit(X, y, **params)
        return self

    @available_if(_step_has("transform"))
    def fit_transform(self, X: Any, y: Any = None, **params: Any) -> Any:
        self._record(X)
        return self.fitted_step_.fit_transform(X, y, **params)

    @available_if(_step_has("transform"))
    def transform(self, X: Any) -> Any:
        return self.fitted_step_.transform(X)

    @available_if(_step_has("fit_resample"))
    def fit_resample(self, X: Any, y: Any, **params: Any) -> tuple[Any, Any]:
        self._record(X)
        return self.fitted_step_.fit_resample(X, y, **params)

    @available_if(_step_has("predict"))
    def predict(self, X: Any) -> Any:
        return self.fitted_step_.predict(X)

    @available_if(_step_has("predict_proba"))
    def predict_proba(self, X: Any) -> Any:
        return self.fitted_step_.predict_proba(X)

    @property
    def classes_(self) -> np.ndarray:
        return self.fitted_step_.classes_


def instrument(pipeline: Pipeline) -> Pipeline:
    """A copy of `pipeline` with every step wrapped in a `RowRecorder`."""
    steps = [
        (name, step if step == "passthrough" else RowRecorder(step))
        for name, step in pipeline.steps
    ]
    return Pipeline(steps, memory=pipeline.memory)


def strip_instruments(pipeline: Pipeline) -> Pipeline:
    """The fitted pipeline without its recorders (same fitted steps, same predictions)."""
    return Pipeline(
        [
            (name, step.fitted_step_ if isinstance(step, RowRecorder) else step)
            for name, step in pipeline.steps
        ]
    )


@dataclass
class LeakageAudit:
    """What each fitted step of one pipeline saw."""

    steps_checked: list[str]
    rows_seen: dict[str, int]
    ambiguous_rows: int
    """Held-out rows whose features equal a training row's; they cannot be told apart."""

    def to_dict(self) -> dict:
        return {
            "passed": True,
            "steps_checked": self.steps_checked,
            "rows_seen": self.rows_seen,
            "ambiguous_rows": self.ambiguous_rows,
        }


def check_no_leakage(
    fitted: Pipeline,
    X_train: Any,
    held_out: Mapping[str, Any],
    held_out_ids: Mapping[str, Sequence[str]] | None = None,
) -> LeakageAudit:
    """Raise LeakageError unless every recorded step was fitted on training rows only.

    `fitted` is an `instrument`-ed pipeline after `fit(X_train, y)`. `held_out` maps a split
    name ("val", "test") to its feature rows, `held_out_ids` to the matching patient ids (for the
    message). For each step, the held-out rows are first passed through the fitted steps before
    it (samplers are skipped, exactly as when the pipeline scores patients), so a row is
    recognised in whatever form it reached the step. Two checks per step:
    1. no held-out row reached it;
    2. the first fitted step saw the training rows and nothing else.
    """
    held = dict(held_out)
    ids = {split: list(held_out_ids[split]) if held_out_ids else None for split in held}
    checked: list[str] = []
    rows_seen: dict[str, int] = {}
    ambiguous = 0
    first = True
    for index, (name, step) in enumerate(fitted.steps):
        if not isinstance(step, RowRecorder):
            continue
        if not hasattr(step, "seen_"):
            raise LeakageError(f"step {name!r} was never fitted; fit the pipeline before auditing")
        prefix = fitted[:index] if index else None
        train_here = row_fingerprints(_through(prefix, X_train))
        seen = np.unique(step.seen_)
        if first:
            foreign = np.setdiff1d(seen, train_here)
            if foreign.size:
                raise LeakageError(
                    f"step {name!r} was fitted on {foreign.size} row(s) that are not training "
                    "patients; fit pipelines on the training split only."
                )
        for split, rows in held.items():
            if not len(rows):
                continue
            held_here = row_fingerprints(_through(prefix, rows))
            clash = np.isin(held_here, train_here)
            if first:
                ambiguous += int(clash.sum())
            leaked = np.flatnonzero(np.isin(held_here, seen) & ~clash)
            if leaked.size:
                who = (
                    ", ".join(str(ids[split][i]) for i in leaked[:5])
                    if ids[split] is not None
                    else f"rows {leaked[:5].tolist()}"
                )
                raise LeakageError(
                    f"{leaked.size} {split} patient(s) reached fitted step {name!r} "
                    f"(e.g. {who}); every fitted step must see training patients only."
                )
        first = False
        checked.append(name)
        rows_seen[name] = int(step.n_seen_)
    return LeakageAudit(checked, rows_seen, ambiguous)


def _through(prefix: Pipeline | None, rows: Any) -> Any:
    """Rows as a step behind `prefix` receives them when the pipeline scores patients."""
    if prefix is None:
        return rows
    out = rows
    for _, step in prefix.steps:
        if isinstance(step, str) or hasattr(step, "fit_resample"):
            continue
        out = step.transform(out)
    return out
