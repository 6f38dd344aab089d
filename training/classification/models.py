"""The four sepsis classifiers and their oversampling variants, each one pipeline.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from imblearn.over_sampling import SMOTE, SMOTENC
from imblearn.pipeline import Pipeline
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from xgboost import XGBClassifier

from data_prep.oversampling import CTGANOverSampler
from sepsis_rl.common.config_files import options_dataclass

MODELS: tuple[str, ...] = ("logreg", "random_forest", "xgboost", "svm")


OVERSAMPLERS: tuple[str, ...] = ("none", "smote", "ctgan")


MODEL_LABELS = {
    "logreg": "Logistic regression",
    "random_forest": "Random forest",
    "xgboost": "XGBoost",
    "svm": "SVM (Nystroem RBF + calibrated LinearSVC)",
}
"""How each model is named in tables, figures and the study report."""


OVERSAMPLER_LABELS = {"none": "no oversampling", "smote": "SMOTE", "ctgan": "CTGAN"}
"""How each oversampling mode is named in figure titles and table headers."""


NEEDS_SCALING = frozenset({"logreg", "svm"})


N_JOBS = 2
"""Threads for random forest and XGBoost: the 2 cores of the reference machine."""


SamplingRatio = Annotated[float, Field(gt=0, le=1)]
"""Septic / non-septic patients after oversampling."""
SamplingWord = Literal["auto", "minority", "not majority", "not minority", "all"]
"""imbalanced-learn's named sampling strategies."""


@options_dataclass(frozen=True)
class ClassifierSettings:
    """Hyper-parameters of the candidates. Defaults fit the full cohort in the time budget."""

    seed: NonNegativeInt = 0
    """Seeds every model, the oversamplers and CTGAN."""
    sampling_strategy: SamplingRatio | SamplingWord = "auto"
    """Oversampling target: "auto" balances the classes; a float is minority/majority after."""
    ctgan_epochs: PositiveInt = 300
    """CTGAN training epochs (the ctgan default)."""
    ctgan_batch_size: Annotated[int, Field(gt=0, multiple_of=10)] = 500
    """CTGAN batch size, a multiple of 10 (CTGAN groups rows in packs of 10)."""
    smote_neighbors: PositiveInt = 5
    """SMOTE's k nearest minority neighbours."""
    logreg_c: PositiveFloat = 0.1
    """Inverse L2 strength of logistic regression on standardised features."""
    rf_trees: PositiveInt = 200
    """Random-forest trees."""
    rf_min_leaf: PositiveInt = 5
    """Random-forest minimum patients per leaf."""
    xgb_rounds: PositiveInt = 300
    """XGBoost boosting rounds."""
    xgb_depth: PositiveInt = 4
    """XGBoost tree depth."""
    xgb_learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.05
    """XGBoost shrinkage."""
    svm_components: PositiveInt = 300
    """Nystroem features approximating the RBF kernel."""
    svm_c: PositiveFloat = 0.05
    """LinearSVC inverse regularisation."""
    calibration_folds: Annotated[int, Field(ge=2)] = 3
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
        smote = {
            "sampling_strategy": settings.sampling_strategy,
            "k_neighbors": settings.smote_neighbors,
            "random_state": settings.seed,
        }
        if discrete_columns:  # SMOTENC keeps binary columns binary instead of interpolating
            return SMOTENC(categorical_features=list(discrete_columns), **smote)
        return SMOTE(**smote)
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
