"""`sepsis-rl tune classifiers`: search model family, oversampling and their hyper-parameters.

The protocol:
1. Only the training patients of `features.parquet` take part in the search. They are cut into
   `n_folds` patient-grouped, label-stratified folds, the same folds for every trial.
2. A trial is one configuration (model, oversampling, hyper-parameters). For each fold it fits the
   `imblearn` pipeline `training.classification.models.build_pipeline` builds on the other folds, so
   oversampling only ever sees training-fold patients (audited with `check_no_leakage` on every
   fold), scores the held-out fold, and reports the running mean to Tune. ASHA stops trials
   whose running mean after a fold is among the worst.
3. Optuna's TPE proposes configurations, starting with the untuned default (`DEFAULT_CLASSIFIER`).
4. After the search, the best configuration is refitted once by the protocol of
   `training.classification.experiment` (train patients; threshold on validation patients; test
   patients with bootstrap CIs). That refit is the only time a test patient is touched.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from sepsis_rl.common.config_files import RuleError, build_options, field_names, options_dataclass
from training.classification.models import MODELS, OVERSAMPLERS, ClassifierSettings
from training.classification.options import ClassifyConfig
from tuning.runner import SearchOutcome, SearchStart, TunerSpec, concurrency_for, run_tuner
from tuning.spaces import (
    CLASSIFIER_METRICS,
    CLASSIFIER_SPACE,
    DEFAULT_CLASSIFIER,
    describe,
    dimension_names,
    restrict,
    suggest,
)

FOLD_STATE_FILE = "folds.json"
"""Inside a trial checkpoint: the scores of the folds done so far."""
TRIAL_INDEX_KEY = "__trial_index__"
"""Set by Tune's Repeater on repeated configurations; offsets the seed."""


TunableMetric = Literal[tuple(CLASSIFIER_METRICS)]
"""The metrics a classifier search can optimise (`tuning.spaces.CLASSIFIER_METRICS`)."""
Names = Field(strict=False, min_length=1)
"""A non-empty tuple of names; a list is accepted for it."""


def _fixed_settings_valid(fixed: dict[str, Any]) -> dict[str, Any]:
    build_options(ClassifierSettings, fixed)  # raises OptionsError naming the bad field
    return fixed


FixedSettings = Annotated[dict[str, Any], AfterValidator(_fixed_settings_valid)]
"""A search's `fixed` option: `ClassifierSettings` fields held fixed in every trial, checked as
`ClassifierSettings` checks them."""


def default_point_within(models, oversample) -> dict[str, Any] | None:
    """The untuned classifier default (`DEFAULT_CLASSIFIER`), or None when `models` or
    `oversample` leave it out of the searched space."""
    point = dict(DEFAULT_CLASSIFIER)
    if point["model"] not in models or point["oversample"] not in oversample:
        return None
    return point


@options_dataclass
class ClassifierSearch:
    """Every option of a classifier search; the field list is the documentation."""

    data: Annotated[Path, Field(strict=False)]
    """Folder written by `sepsis-rl data prepare`."""
    metric: TunableMetric = "pr_auc"
    """Cross-validated metric to optimise: pr_auc, roc_auc (maximised) or brier (minimised)."""
    n_folds: Annotated[int, Field(ge=2)] = 3
    """Patient-grouped cross-validation folds over the training patients."""
    num_samples: PositiveInt = 12
    """Configurations to try (the default configuration counts as the first)."""
    time_budget_s: PositiveFloat | None = 600.0
    """Stop proposing and running trials after this many seconds (None: no limit)."""
    seed: NonNegativeInt = 0
    """Seeds the Optuna sampler, the folds and every model and oversampler."""
    models: Annotated[tuple[Literal[MODELS], ...], Names] = MODELS
    """Model families the search may choose."""
    oversample: Annotated[tuple[Literal[OVERSAMPLERS], ...], Names] = OVERSAMPLERS
    """Oversampling modes the search may choose."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """Early stopping between folds: asha, or fifo (every trial runs all folds)."""
    repeats: PositiveInt = 1
    """Seeds per configuration (> 1 shows the spread across seeds; needs --scheduler fifo)."""
    storage: Annotated[str, Field(min_length=1)] = "results/tune"
    """Local folder or URI (s3://, gs://) that holds the experiment."""
    name: Annotated[str, Field(min_length=1)] = "classifiers"
    """Experiment folder name under `storage`."""
    max_failures: Annotated[int, Field(ge=-1)] = 1
    """Retries of a failing trial (Tune's FailureConfig; -1: retry without end)."""
    cpus_per_trial: PositiveFloat = 1.0
    """CPUs Tune reserves per trial; concurrency is the cluster's CPUs divided by this."""
    max_concurrent: PositiveInt | None = None
    """Trials at once (None: as many as the cluster's CPUs hold)."""
    fixed: FixedSettings = field(default_factory=dict)
    """`ClassifierSettings` fields held fixed in every trial (e.g. ctgan_batch_size)."""

    @model_validator(mode="after")
    def _repeats_need_fifo(self) -> ClassifierSearch:
        if self.repeats > 1 and self.scheduler != "fifo":
            raise RuleError(
                "repeats",
                self.repeats,
                "repeating configurations across seeds averages complete trials; early stopping "
                "would cut repeats short. Use --scheduler fifo with --repeats > 1",
            )
        return self

    def validate(self) -> None:
        """Nothing left to check: a `ClassifierSearch` is validated when it is built."""

    @property
    def mode(self) -> str:
        return CLASSIFIER_METRICS[self.metric]

    @property
    def tune_metric(self) -> str:
        """The name trials report the running cross-validated mean under."""
        return f"cv_{self.metric}"

    def space(self) -> dict[str, Any]:
        return restrict(CLASSIFIER_SPACE, model=self.models, oversample=self.oversample)

    def default_point(self) -> dict[str, Any] | None:
        """The untuned default, if the restricted space contains it."""
        return default_point_within(self.models, self.oversample)


# -- folds and one trial ---------------------------------------------------------------------------


def patient_folds(
    patient_ids: Sequence[str], labels: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold: no patient on both sides, label shares kept."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = np.arange(len(labels))
    return [(fit, held) for fit, held in splitter.split(rows, labels, groups=list(patient_ids))]


def settings_of(config: dict[str, Any]) -> ClassifierSettings:
    """The `ClassifierSettings` of a trial's config (fixed options, sampled values, seed)."""
    names = set(field_names(ClassifierSettings))
    values = {k: v for k, v in config.get("fixed", {}).items() if k in names}
    values.update({k: v for k, v in config.items() if k in names})
    values["seed"] = int(config.get("seed", 0)) + int(config.get(TRIAL_INDEX_KEY, 0) or 0)
    return ClassifierSettings(**values)


def fold_score(metric: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """`metric` of one held-out fold (threshold-free metrics only)."""
    from training.classification.metrics import metric_draws

    values = metric_draws(labels, scores, 0.5, np.ones((1, len(labels))))
    return float(values[metric][0])


ReportFn = Callable[[dict[str, Any], Path], None]
"""report(metrics, checkpoint folder): called after each fold; the folder lives until it returns."""


def cross_validate(
    config: dict[str, Any], report: ReportFn, done: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Cross-validate one configuration on the training patients, reporting after every fold.

    `done` holds the folds already scored (from a checkpoint); they are not fitted again.
    Returns every fold's score.
    """
    from training.classification.candidates import positive_scores
    from training.classification.features import load_features
    from training.classification.leakage import check_no_leakage, instrument
    from training.classification.models import build_pipeline

    search = config["search"]
    metric = search["metric"]
    table = load_features(Path(search["data"]))
    X, y, ids = table.part("train")
    folds = patient_folds(ids, y, search["n_folds"], search["fold_seed"])
    settings = settings_of(config)
    done = list(done or [])
    for index, (fit_rows, held_rows) in enumerate(folds):
        if index < len(done):
            continue
        start = time.perf_counter()
        pipeline = instrument(
            build_pipeline(config["model"], config["oversample"], settings, table.discrete_columns)
        )
        X_fit = X.iloc[fit_rows].reset_index(drop=True)
        X_held = X.iloc[held_rows].reset_index(drop=True)
        pipeline.fit(X_fit, y[fit_rows])
        # Proof, per fold, that no held-out patient reached the oversampler or any fitted step.
        check_no_leakage(
            pipeline,
            X_fit,
            {"held-out fold": X_held},
            {"held-out fold": [ids[i] for i in held_rows]},
        )
        score = fold_score(metric, y[held_rows], positive_scores(pipeline, X_held))
        done.append({"fold": index + 1, metric: score, "seconds": time.perf_counter() - start})
        scores = [d[metric] for d in done]
        metrics = {
            f"cv_{metric}": float(np.mean(scores)),
            f"fold_{metric}": score,
            f"cv_{metric}_sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan"),
            "folds_done": len(done),
            "fold_seconds": done[-1]["seconds"],
        }
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / FOLD_STATE_FILE).write_text(json.dumps(done))
            report(metrics, Path(tmp))
    return done


def classifier_trial(config: dict[str, Any]) -> None:
    """One Tune trial: `cross_validate`, continuing from the trial's checkpoint after a retry."""
    from ray import tune

    def report(metrics: dict[str, Any], folder: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    cross_validate(config, report, _fold_state(tune.get_checkpoint()))


def _fold_state(checkpoint: Any) -> list[dict[str, Any]]:
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / FOLD_STATE_FILE).read_text())


# -- the search ------------------------------------------------------------------------------------


def search_record(search: ClassifierSearch) -> dict[str, Any]:
    """What `search.json` holds for a classifier search."""
    return {
        "kind": "classifiers",
        "metric": search.tune_metric,
        "mode": search.mode,
        "per_step_metric": f"fold_{search.metric}",
        "step_name": "fold",
        "max_steps": search.n_folds,
        "params": dimension_names(search.space()),
        "space": describe(search.space()),
        "default": search.default_point(),
        "scheduler": search.scheduler,
        "repeats": search.repeats,
        "num_samples": search.num_samples,
        "time_budget_s": search.time_budget_s,
        "seed": search.seed,
        "data": str(Path(search.data).resolve()),
        "fixed": dict(search.fixed),
        "select_metric": search.metric,
    }


def _fixed_config(search: ClassifierSearch) -> dict[str, Any]:
    return {
        "search": {
            "data": str(Path(search.data).resolve()),
            "metric": search.metric,
            "n_folds": search.n_folds,
            "fold_seed": search.seed,
        },
        "fixed": dict(search.fixed),
        "seed": search.seed,
    }


def _trainable(search: ClassifierSearch) -> Any:
    from ray import tune

    return tune.with_resources(classifier_trial, {"cpu": search.cpus_per_trial})


def _search_start(search: ClassifierSearch) -> SearchStart:
    """Optuna's TPE (the default configuration first) and ASHA or FIFO."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    default = search.default_point()
    searcher: Any = OptunaSearch(
        space=functools.partial(suggest, search.space()),
        metric=search.tune_metric,
        mode=search.mode,
        points_to_evaluate=[default] if default else None,
        sampler=optuna.samplers.TPESampler(seed=search.seed),
    )
    if search.repeats > 1:
        searcher = Repeater(searcher, repeat=search.repeats)
    searcher = ConcurrencyLimiter(
        searcher,
        max_concurrent=search.max_concurrent or concurrency_for(search.cpus_per_trial),
    )
    scheduler = (
        ASHAScheduler(max_t=search.n_folds, grace_period=1, reduction_factor=2)
        if search.scheduler == "asha"
        else FIFOScheduler()
    )
    return SearchStart(searcher, scheduler, _fixed_config(search))


def run_classifier_search(search: ClassifierSearch, resume: bool = False) -> SearchOutcome:
    """Run (or resume) the search; Ray must be initialised by the caller."""
    from training.classification.features import load_features

    search.validate()
    load_features(Path(search.data))  # fail here, not in every trial, on an unusable folder
    spec = TunerSpec(
        trainable=_trainable(search),
        storage=search.storage,
        name=search.name,
        metric=search.tune_metric,
        mode=search.mode,
        num_trials=search.num_samples * search.repeats,
        time_budget_s=search.time_budget_s,
        max_failures=search.max_failures,
        # Fold-score checkpoints are a few hundred bytes: keep them all. A `num_to_keep` would
        # force an experiment-state snapshot at every fold.
        keep_checkpoints=None,
        record=search_record(search),
    )
    return run_tuner(spec, lambda: _search_start(search), resume)


# -- the best configuration, for `classify` --------------------------------------------------------


def trial_classify_config(config: dict[str, Any], select_metric: str = "pr_auc") -> ClassifyConfig:
    """The `classify` options a trial's configuration stands for: its model and oversampling
    as the only candidate, its settings (seed included), the other options at their defaults."""
    return ClassifyConfig(
        models=(config["model"],),
        oversample=(config["oversample"],),
        select_metric=select_metric,
        settings=settings_of(config),
    )


def refit_best(
    data: Path, out: Path, config: dict[str, Any], select_metric: str = "pr_auc"
) -> dict[str, Any]:
    """Refit the best configuration by `classify`'s protocol; the one touch of test patients.

    Returns the metrics document `run_classification` wrote to `out/metrics.json`.
    """
    from training.classification.experiment import run_classification

    classify_config = trial_classify_config(config, select_metric)
    return run_classification(data, out, classify_config).metrics
