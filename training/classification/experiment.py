"""Train, select and evaluate the sepsis classifiers on what `data prepare` wrote.

The protocol, in the order it runs:
1. Read `features.parquet` (one row per patient, with its `split`) and check it can be used
   (`training.classification.features`).
2. Fit every candidate (model x oversampling, see `training.classification.models`) on the
   training patients. Each fitted step is audited: no validation or test patient may reach it
   (`training.classification.leakage`).
3. On the validation patients: choose each candidate's decision threshold (F1 by default), then
   the best candidate (validation PR-AUC by default).
4. On the test patients, real and with their true prevalence: every metric with a 95% bootstrap
   CI, beside the prevalence and the majority-class baseline; paired differences tell whether
   oversampling helped each model.
5. Write metrics, tables (`documents`), curves (`figures`), the CTGAN fidelity report and the best
   model (`model_file`: preprocessing included, oversampler dropped: it only acts in training).

Synthetic rows exist only inside `Pipeline.fit`; validation and test figures are on real patients.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from data_prep.fidelity import fidelity_report, fidelity_verdict
from sepsis_rl.common.files import staged_directory, write_json_atomic
from training.classification.candidates import Candidate, fit_candidate, positive_scores
from training.classification.documents import (
    comparison_markdown,
    comparison_table,
    effects_markdown,
    fidelity_markdown,
)
from training.classification.features import SPLITS, FeatureTable, load_features
from training.classification.figures import plot_calibration, plot_roc_pr_curves
from training.classification.metrics import (
    LOWER_IS_BETTER,
    bootstrap_weights,
    choose_threshold,
    evaluate,
    is_better,
    paired_difference,
    prevalence_estimate,
    trivial_baseline,
)
from training.classification.model_file import save_model
from training.classification.models import MODEL_LABELS
from training.classification.options import ClassifyConfig

VALIDATION_BOOTSTRAP = 200
"""Bootstrap resamples for validation figures (selection uses point estimates)."""


MIN_FIDELITY_ROWS = 500


ProgressFn = Callable[[str, int, int], None]
"""progress(description, done, total): called before and after each long step."""


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
    lower_better = metric in LOWER_IS_BETTER
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
        markdown = comparison_markdown(candidates, metrics)
        markdown += "\n" + effects_markdown(metrics["oversampling_effect"])
        (stage / "comparison.md").write_text(markdown)
        plot_roc_pr_curves(candidates, best, y_test, stage)
        plot_calibration(candidates, best, y_test, stage)
        if fidelity is not None:
            write_json_atomic(stage / "fidelity.json", fidelity)
            (stage / "fidelity.md").write_text(fidelity_markdown(fidelity))
        save_model(best, table, config, stage / "model")
