"""Train, select and evaluate the sepsis classifiers on what `data prepare` wrote.

The protocol, in the order it runs:
1. Read `features.parquet` (one row per patient, with its `split`) and check it can be used.
2. Fit every candidate (model x oversampling, see `training.classifiers`) on the training
   patients. Each fitted step is audited: no validation or test patient may reach it.
3. On the validation patients: choose each candidate's decision threshold (F1 by default), then
   the best candidate (validation PR-AUC by default).
4. On the test patients, real and with their true prevalence: every metric with a 95% bootstrap
   CI, beside the prevalence and the majority-class baseline; paired differences tell whether
   oversampling helped each model.
5. Write metrics, tables, curves, the CTGAN fidelity report and the best model (preprocessing
   included, oversampler dropped: it only acts during training).

Synthetic rows exist only inside `Pipeline.fit`; validation and test figures are on real patients.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline

from data_prep.fidelity import fidelity_report, fidelity_verdict, format_detectability
from data_prep.outputs import staged_directory, write_json_atomic
from training.classifiers import (
    MODEL_LABELS,
    MODELS,
    OVERSAMPLERS,
    ClassifierSettings,
    build_pipeline,
    check_no_leakage,
    instrument,
    strip_instruments,
)
from training.metrics import (
    METRICS,
    SELECTABLE_METRICS,
    THRESHOLD_RULES,
    UNDEFINED_MARK_SHARE,
    UNDEFINED_NOTE,
    Evaluation,
    bootstrap_weights,
    choose_threshold,
    evaluate,
    is_better,
    paired_difference,
    prevalence_estimate,
    trivial_baseline,
)

FEATURES_FILE = "features.parquet"
SPLIT_FILE = "split.csv"
ID_COLUMNS = ("patient_id", "split", "label")
SPLITS = ("train", "val", "test")
MODEL_FILE = "best_model.joblib"
MODEL_META_FILE = "best_model.json"
MODEL_FORMAT = "sepsis-rl-classifier/1"
VALIDATION_BOOTSTRAP = 200
"""Bootstrap resamples for validation figures (selection uses point estimates)."""
MIN_FIDELITY_ROWS = 500

ProgressFn = Callable[[str, int, int], None]
"""progress(description, done, total): called before and after each long step."""


class DataFolderError(ValueError):
    """The data folder cannot be used for classification; the message says how to fix it."""


class FeatureMismatchError(ValueError):
    """Features given for scoring do not match the ones the model was trained on."""


class ModelFileError(RuntimeError):
    """A saved model is missing, unreadable or does not match its metadata."""


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifyConfig:
    """Every option of a `classify` run."""

    oversample: tuple[str, ...] = OVERSAMPLERS
    """Oversampling modes to compare (none, smote, ctgan)."""
    models: tuple[str, ...] = MODELS
    """Models to train."""
    select_metric: str = "pr_auc"
    """Validation metric that picks the best candidate."""
    threshold_rule: str = "f1"
    """How each candidate's decision threshold is chosen on validation patients (f1, youden)."""
    n_boot: int = 1000
    """Bootstrap resamples of the test patients for the confidence intervals."""
    fidelity: bool = True
    """Write the CTGAN fidelity report (when ctgan is among the modes)."""
    settings: ClassifierSettings = field(default_factory=ClassifierSettings)
    """Model and oversampler hyper-parameters, including the seed."""

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        for name in self.oversample:
            if name not in OVERSAMPLERS:
                raise ValueError(f"unknown oversampling {name!r}; choose from {OVERSAMPLERS}")
        for name in self.models:
            if name not in MODELS:
                raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
        if not self.oversample or not self.models:
            raise ValueError("choose at least one model and one oversampling mode")
        if self.select_metric not in SELECTABLE_METRICS:
            raise ValueError(
                f"cannot select on {self.select_metric!r}; choose from {SELECTABLE_METRICS}"
            )
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(
                f"unknown threshold rule {self.threshold_rule!r}; choose from {THRESHOLD_RULES}"
            )
        if self.n_boot < 100:
            raise ValueError(f"n_boot={self.n_boot} is too few for a 95% interval; use >= 100")
        strategy = self.settings.sampling_strategy
        if isinstance(strategy, str):
            if strategy not in ("auto", "minority", "not majority", "not minority", "all"):
                raise ValueError(
                    f"sampling_strategy={strategy!r}; give a ratio in (0, 1] (septic / "
                    "non-septic after oversampling) or 'auto'"
                )
        elif not 0.0 < float(strategy) <= 1.0:
            raise ValueError(f"sampling_strategy={strategy} must be a ratio in (0, 1]")
        if self.settings.ctgan_batch_size <= 0 or self.settings.ctgan_batch_size % 10:
            raise ValueError(
                f"ctgan_batch_size={self.settings.ctgan_batch_size} must be a positive multiple "
                "of 10 (CTGAN groups rows in packs of 10)"
            )


# -- data ------------------------------------------------------------------------------------------


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


# -- fitting ---------------------------------------------------------------------------------------


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


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class ClassifyResult:
    """Everything a run produced, as written to the output folder."""

    candidates: list[Candidate]
    best: Candidate
    metrics: dict
    fidelity: dict | None
    timings: dict[str, float]


def run_classification(
    data: Path | FeatureTable,
    out_dir: Path,
    config: ClassifyConfig | None = None,
    progress: ProgressFn | None = None,
) -> ClassifyResult:
    """Run the whole protocol (module docstring) and write its outputs into `out_dir`.

    `data` is a `data prepare` output folder, or a FeatureTable already read from one.
    """
    config = config or ClassifyConfig()
    config.validate()
    notify = progress or (lambda _description, _done, _total: None)
    clock = PartTimer()
    with clock("load"):
        table = data if isinstance(data, FeatureTable) else load_features(data)

    pairs = [(o, m) for o in config.oversample for m in config.models]
    candidates: list[Candidate] = []
    cache = tempfile.mkdtemp(prefix="sepsis-classify-cache-")
    try:
        memory = joblib.Memory(cache, verbose=0)
        for done, (oversample, model) in enumerate(pairs):
            notify(_describe(model, oversample, table, config), done, len(pairs))
            with clock(f"fit {model}+{oversample}"):
                candidates.append(fit_candidate(model, oversample, table, config.settings, memory))
        notify("evaluating on validation and test patients", len(pairs), len(pairs))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    with clock("evaluate"):
        best = _evaluate_and_select(candidates, table, config)

    fidelity = None
    if config.fidelity and "ctgan" in config.oversample:
        notify("CTGAN fidelity report", len(pairs), len(pairs))
        with clock("fidelity"):
            fidelity = _fidelity(candidates, table, config.settings.seed)

    with clock("write"):
        metrics = _metrics_document(candidates, best, table, config, fidelity)
        _write_outputs(Path(out_dir), candidates, best, table, config, metrics, fidelity)
    metrics["timings_seconds"] = {k: round(v, 2) for k, v in clock.wall.items()}
    metrics["cpu_seconds"] = {k: round(v, 2) for k, v in clock.cpu.items()}
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    return ClassifyResult(candidates, best, metrics, fidelity, dict(clock.wall))


class PartTimer:
    """Wall and CPU seconds (all threads of this process) per named part of a run."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[part] = time.perf_counter() - wall
            self.cpu[part] = time.process_time() - cpu


def _describe(model: str, oversample: str, table: FeatureTable, config: ClassifyConfig) -> str:
    text = f"{MODEL_LABELS[model]} with {oversample} oversampling"
    if oversample == "ctgan":
        n_septic = int((table.frame.loc[table.frame["split"] == "train", "label"] == 1).sum())
        text += (
            f" (CTGAN on {n_septic:,} septic training patients, "
            f"{config.settings.ctgan_epochs} epochs; trained once, then reused)"
        )
    return text


def _evaluate_and_select(
    candidates: list[Candidate], table: FeatureTable, config: ClassifyConfig
) -> Candidate:
    X_val, y_val, _ = table.part("val")
    X_test, y_test, _ = table.part("test")
    seed = config.settings.seed
    val_weights = bootstrap_weights(len(y_val), VALIDATION_BOOTSTRAP, seed)
    test_weights = bootstrap_weights(len(y_test), config.n_boot, seed)
    for candidate in candidates:
        val_scores = positive_scores(candidate.pipeline, X_val)
        candidate.threshold = choose_threshold(y_val, val_scores, config.threshold_rule)
        candidate.val = evaluate(y_val, val_scores, candidate.threshold, weights=val_weights)
        candidate.test_scores = positive_scores(candidate.pipeline, X_test)
        candidate.test = evaluate(
            y_test, candidate.test_scores, candidate.threshold, weights=test_weights
        )
    best = candidates[0]
    for candidate in candidates[1:]:
        metric = config.select_metric
        if is_better(
            metric, candidate.val.estimates[metric].value, best.val.estimates[metric].value
        ):
            best = candidate
    return best


def _fidelity(candidates: list[Candidate], table: FeatureTable, seed: int) -> dict | None:
    ctgan = next((c for c in candidates if c.oversample == "ctgan"), None)
    if ctgan is None:
        return None
    sampler = ctgan.pipeline.named_steps["oversample"]
    X_train, y_train, _ = table.part("train")
    X_val, y_val, _ = table.part("val")
    held_out = X_val[y_val == 1]
    n_rows = max(len(held_out), MIN_FIDELITY_ROWS)
    synthetic = pd.DataFrame(
        sampler.generate(n_rows, 1, random_state=seed), columns=table.feature_names
    )
    report = fidelity_report(
        synthetic, held_out, X_train[y_train == 1].reset_index(drop=True), random_state=seed
    )
    if "skipped" in report:
        return report
    report["held_out_rows"] = "validation patients with sepsis (never seen by CTGAN)"
    report["generator"] = {
        "epochs": sampler.epochs,
        "training_rows": int((y_train == 1).sum()),
        "discrete_columns": sampler.discrete_columns_,
    }
    return report


# -- documents -------------------------------------------------------------------------------------


def _metrics_document(
    candidates: list[Candidate],
    best: Candidate,
    table: FeatureTable,
    config: ClassifyConfig,
    fidelity: dict | None,
) -> dict:
    _, y_train, _ = table.part("train")
    _, y_test, _ = table.part("test")
    weights = bootstrap_weights(len(y_test), config.n_boot, config.settings.seed)
    baseline = trivial_baseline(y_test, float(y_train.mean()), weights)
    counts = {
        split: {"patients": int(len(y)), "septic": int(y.sum())}
        for split in SPLITS
        for _, y, _ in [table.part(split)]
    }
    return {
        "data": {
            "features": str(table.source),
            "n_features": len(table.feature_names),
            "splits": counts,
        },
        "protocol": {
            "train": "every fitted step (scaler, oversampler, model) sees training patients only",
            "select": f"best candidate by validation {config.select_metric}",
            "threshold": f"per candidate, maximising validation {config.threshold_rule}",
            "test": "real test patients at their true prevalence; 95% percentile bootstrap CIs "
            f"over {config.n_boot} patient resamples",
        },
        "config": _jsonable_config(config),
        "test_prevalence": prevalence_estimate(y_test, weights).to_dict(),
        "trivial_baseline": {
            "rule": "predict 'no sepsis' for everyone (score = training prevalence)",
            "test": baseline.to_dict(),
        },
        "best": {
            "model": best.model,
            "oversample": best.oversample,
            "threshold": best.threshold,
            "selected_on": f"validation {config.select_metric}",
            "validation_value": best.val.estimates[config.select_metric].value,
            "test": best.test.to_dict(),
        },
        "candidates": [
            {
                "model": c.model,
                "oversample": c.oversample,
                "fit_seconds": round(c.fit_seconds, 2),
                "threshold": c.threshold,
                "val": c.val.to_dict(),
                "test": c.test.to_dict(),
                "leakage_audit": c.leakage_audit,
            }
            for c in candidates
        ],
        "oversampling_effect": oversampling_effects(candidates),
        "fidelity_summary": None
        if fidelity is None
        else {
            "synthetic": fidelity.get("synthetic"),
            "reference_real": fidelity.get("reference_real"),
            "verdict": fidelity_verdict(fidelity),
        },
    }


def oversampling_effects(
    candidates: Sequence[Candidate], metrics: Sequence[str] = ("pr_auc", "roc_auc", "brier")
) -> list[dict]:
    """Test-set difference (mode - none) per model and metric, with paired bootstrap CIs."""
    plain = {c.model: c for c in candidates if c.oversample == "none"}
    effects = []
    for c in candidates:
        if c.oversample == "none" or c.model not in plain:
            continue
        for metric in metrics:
            diff = paired_difference(c.test, plain[c.model].test, metric)
            effects.append(
                {
                    "model": c.model,
                    "oversample": c.oversample,
                    "metric": metric,
                    "difference_vs_none": diff.to_dict(),
                    "verdict": _verdict(metric, diff.ci_low, diff.ci_high),
                }
            )
    return effects


def _verdict(metric: str, low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undetermined"
    lower_better = metric == "brier"
    if low > 0:
        return "worse" if lower_better else "better"
    if high < 0:
        return "better" if lower_better else "worse"
    return "no clear difference (95% CI includes 0)"


def _jsonable_config(config: ClassifyConfig) -> dict:
    out = asdict(config)
    out["oversample"] = list(config.oversample)
    out["models"] = list(config.models)
    return out


def comparison_table(
    candidates: Sequence[Candidate], metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """Test metrics of every candidate: one row per model x oversampling, value and CI columns."""
    rows = []
    for c in candidates:
        row: dict[str, Any] = {
            "model": c.model,
            "oversample": c.oversample,
            "threshold": round(c.threshold, 4),
            "test_flagged_share": round(flagged_share(c), 4),
            "val_pr_auc": round(c.val.estimates["pr_auc"].value, 4),
        }
        for metric in metrics:
            est = c.test.estimates[metric]
            row[metric] = est.value
            row[f"{metric}_ci_low"] = est.ci_low
            row[f"{metric}_ci_high"] = est.ci_high
        rows.append(row)
    return pd.DataFrame(rows)


DEGENERATE_FLAGGED_SHARE = 0.95
"""A threshold that flags at least this share of test patients as septic is degenerate."""


def flagged_share(candidate: Candidate) -> float:
    """Share of test patients the candidate flags as septic at its validation threshold."""
    return float(np.mean(candidate.test_scores >= candidate.threshold))


def comparison_markdown(
    candidates: Sequence[Candidate], best: Candidate, baseline: dict, prevalence: dict
) -> str:
    """The comparison table as Markdown, with the prevalence and the trivial baseline beside it."""
    header = ["model", "oversampling", *METRICS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for c in candidates:
        mark = " **(selected)**" if c is best else ""
        cells = [MODEL_LABELS[c.model] + mark, c.oversample]
        cells += [c.test.estimates[m].format() for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    base_cells = ["Trivial baseline (always 'no sepsis')", "-"]
    for metric in METRICS:
        est = baseline[metric]
        base_cells.append("n/a" if est["value"] is None else f"{est['value']:.3f}")
    lines.append("| " + " | ".join(base_cells) + " |")
    prev = (
        f"Test prevalence: {prevalence['value']:.3f} "
        f"[{prevalence['ci_low']:.3f}, {prevalence['ci_high']:.3f}]. "
    )
    notes = []
    degenerate = [c for c in candidates if flagged_share(c) >= DEGENERATE_FLAGGED_SHARE]
    if degenerate:
        notes.append(
            "Degenerate thresholds: "
            + ", ".join(f"{c.name} flags {flagged_share(c):.0%}" for c in degenerate)
            + " of test patients as septic; their accuracy, precision and specificity describe "
            "'treat everyone as septic', not a useful screen."
        )
    if any(
        c.test.estimates[m].undefined_share > UNDEFINED_MARK_SHARE
        for c in candidates
        for m in METRICS
    ):
        notes.append(UNDEFINED_NOTE)
    return (
        "Test patients (held out, never generated; true prevalence). Value [95% bootstrap CI]. "
        + prev
        + "Thresholds chosen on validation patients.\n\n"
        + "\n".join(lines)
        + "\n"
        + "".join(f"\n{note}\n" for note in notes)
    )


def effects_markdown(effects: Sequence[dict]) -> str:
    """Does oversampling help? Paired test-set differences as a Markdown table."""
    if not effects:
        return ""
    lines = [
        "| model | oversampling | metric | difference vs none [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for e in effects:
        d = e["difference_vs_none"]
        lines.append(
            f"| {MODEL_LABELS[e['model']]} | {e['oversample']} | {e['metric']} | "
            f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {e['verdict']} |"
        )
    return (
        "Does oversampling help? Test-set difference to the same model without oversampling "
        "(paired bootstrap over the same patient resamples; for Brier lower is better).\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _write_outputs(
    out_dir: Path,
    candidates: list[Candidate],
    best: Candidate,
    table: FeatureTable,
    config: ClassifyConfig,
    metrics: dict,
    fidelity: dict | None,
) -> None:
    _, y_test, _ = table.part("test")
    with staged_directory(out_dir) as stage:
        comparison_table(candidates).to_csv(stage / "comparison.csv", index=False)
        markdown = comparison_markdown(
            candidates,
            best,
            metrics["trivial_baseline"]["test"],
            metrics["test_prevalence"],
        )
        markdown += "\n" + effects_markdown(metrics["oversampling_effect"])
        (stage / "comparison.md").write_text(markdown)
        plot_roc_pr_curves(candidates, best, y_test, stage)
        plot_calibration(candidates, best, y_test, stage)
        if fidelity is not None:
            write_json_atomic(stage / "fidelity.json", fidelity)
            (stage / "fidelity.md").write_text(fidelity_markdown(fidelity))
        save_model(best, table, config, stage / "model")


def fidelity_markdown(report: dict) -> str:
    """A short human summary of the fidelity report."""
    if "skipped" in report:
        return f"# CTGAN fidelity\n\n{fidelity_verdict(report)}\n"
    syn, ref = report["synthetic"], report["reference_real"]
    rows = [
        ("rows compared", syn["n_rows"], ref["n_rows"] if ref else "-"),
        ("mean KS over features", f"{syn['ks_mean']:.3f}", f"{ref['ks_mean']:.3f}" if ref else "-"),
        ("max KS", f"{syn['ks_max']:.3f}", f"{ref['ks_max']:.3f}" if ref else "-"),
        (
            "mean abs. correlation difference",
            f"{syn['corr_mean_abs_diff']:.3f}",
            f"{ref['corr_mean_abs_diff']:.3f}" if ref else "-",
        ),
        (
            "detectability AUROC [95% CI] (0.5 ideal)",
            format_detectability(syn),
            format_detectability(ref) if ref else "-",
        ),
    ]
    lines = [
        f"# CTGAN fidelity against {report['n_held_out_real']} held-out real septic patients",
        "",
        "| | CTGAN rows | real training rows (reference) |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        fidelity_verdict(report),
        "",
        f"Features CTGAN gets most wrong (KS): {', '.join(syn['worst_features'])}.",
        "",
        report["how_to_read"],
        "",
    ]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------

_LINESTYLES = {"none": "-", "smote": "--", "ctgan": ":"}


def plot_roc_pr_curves(
    candidates: Sequence[Candidate], best: Candidate, y_test: np.ndarray, out_dir: Path
) -> Path:
    """ROC (top row) and precision-recall (bottom row) curves on the test patients, one column
    per oversampling mode with its models in it, so that no panel holds more than 4 curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    modes = [m for m in OVERSAMPLERS if any(c.oversample == m for c in candidates)]
    fig, axes = plt.subplots(
        2, len(modes), figsize=(5.2 * len(modes), 9.5), squeeze=False, sharex=True, sharey="row"
    )
    colours = dict(zip(MODELS, plt.get_cmap("tab10").colors, strict=False))
    prevalence = float(np.mean(y_test))
    for col, mode in enumerate(modes):
        roc_ax, pr_ax = axes[0, col], axes[1, col]
        for c in candidates:
            if c.oversample != mode:
                continue
            style = {"color": colours[c.model], "lw": 3.0 if c is best else 1.4}
            name = MODEL_LABELS[c.model] + (" (selected)" if c is best else "")
            fpr, tpr, _ = roc_curve(y_test, c.test_scores)
            roc_ax.plot(
                fpr, tpr, label=f"{name}: AUC {c.test.estimates['roc_auc'].value:.3f}", **style
            )
            precision, recall, _ = precision_recall_curve(y_test, c.test_scores)
            pr_ax.plot(
                recall, precision, label=f"{name}: AP {c.test.estimates['pr_auc'].value:.3f}",
                **style,
            )  # fmt: skip
        roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance: 0.5")
        pr_ax.axhline(prevalence, color="grey", lw=0.8, ls=":", label=f"chance: {prevalence:.3f}")
        title = "no oversampling" if mode == "none" else f"{mode.upper()} oversampling"
        roc_ax.set(title=f"ROC, {title}", ylabel="sensitivity" if col == 0 else None)
        pr_ax.set(
            title=f"Precision-recall, {title}",
            xlabel="recall (sensitivity)",
            ylabel="precision (PPV)" if col == 0 else None,
        )
        roc_ax.set_xlabel("1 - specificity")
        roc_ax.xaxis.set_tick_params(labelbottom=True)
        for ax in (roc_ax, pr_ax):
            ax.legend(fontsize=8, loc="upper right" if ax is pr_ax else "lower right")
            ax.grid(alpha=0.3)
    fig.suptitle("Test patients; AUC = area under the ROC curve, AP = area under the PR curve")
    fig.tight_layout()
    path = out_dir / "roc_pr_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(
    candidates: Sequence[Candidate], best: Candidate, y_test: np.ndarray, out_dir: Path
) -> Path:
    """Reliability curves on the test patients: the selected model and its oversampling variants.

    Oversampling trains on balanced classes, so its probabilities overstate the risk at the true
    prevalence; this plot shows by how much.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(7, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="perfectly calibrated")
    highest = 0.0
    for c in candidates:
        if c.model != best.model:
            continue
        observed, predicted = calibration_curve(
            y_test, c.test_scores, n_bins=10, strategy="quantile"
        )
        highest = max(highest, float(np.max(predicted)), float(np.max(observed)))
        ax.plot(
            predicted,
            observed,
            marker="o",
            linestyle=_LINESTYLES[c.oversample],
            lw=2.4 if c is best else 1.2,
            label=(
                f"{'no oversampling' if c.oversample == 'none' else c.oversample.upper()} "
                f"(Brier {c.test.estimates['brier'].value:.3f})"
            ),
        )
    ax.set(
        xlabel="predicted probability of sepsis",
        ylabel="observed fraction septic",
        title=f"Calibration on test patients: {MODEL_LABELS[best.model]}, each oversampling",
    )
    limit = min(1.0, 1.1 * highest) if highest > 0 else 1.0  # zoom to where the predictions are
    ax.set(xlim=(0, limit), ylim=(0, limit))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "calibration.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- the saved model -------------------------------------------------------------------------------


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
    (folder / MODEL_META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return model_path


@dataclass
class SepsisClassifier:
    """A loaded classifier: its fitted pipeline, threshold and feature names."""

    pipeline: Pipeline
    feature_names: list[str]
    threshold: float
    metadata: dict

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
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


def check_features(features: pd.DataFrame, expected: Sequence[str]) -> pd.DataFrame:
    """The expected feature columns of `features`, in training order, or FeatureMismatchError."""
    if not isinstance(features, pd.DataFrame):
        raise FeatureMismatchError(
            "score() needs a pandas DataFrame with named feature columns, got "
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


def score(model_folder: Path, features: pd.DataFrame) -> pd.DataFrame:
    """Load the saved model in `model_folder` and score `features` (see SepsisClassifier.score)."""
    return load_model(model_folder).score(features)
