"""How much do generated rows look like real ones? Fidelity of synthetic rows against held-out rows.

Three views, each compared against the same figures for a second real sample (the real rows the
generator was trained on against the held-out real rows), so that the sampling noise between two
real samples is visible beside the generator's error:

- per-feature two-sample Kolmogorov-Smirnov statistic (0: identical marginals);
- difference of the Pearson correlation matrices (mean and max absolute difference over pairs);
- detectability: out-of-fold AUROC of a gradient-boosting classifier telling held-out real rows
  from the other sample (0.5: indistinguishable, 1.0: every row is spotted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

DETECTABILITY_FOLDS = 5
MIN_ROWS_PER_SIDE = 20
"""Fewer held-out rows than this and the fidelity figures are noise: the report is skipped."""
DETECTABILITY_BOOTSTRAP = 1000


@dataclass
class SampleComparison:
    """Fidelity of one sample of rows against the held-out real rows."""

    n_rows: int
    ks_mean: float
    ks_median: float
    ks_max: float
    worst_features: list[str]
    corr_mean_abs_diff: float
    corr_max_abs_diff: float
    detectability_auroc: float
    detectability_ci: tuple[float, float]
    ks_per_feature: dict[str, float] = field(repr=False)


def ks_per_feature(held_out: pd.DataFrame, other: pd.DataFrame) -> pd.Series:
    """Two-sample KS statistic per column of `held_out`, in its column order."""
    return pd.Series(
        {
            c: float(ks_2samp(held_out[c].to_numpy(), other[c].to_numpy()).statistic)
            for c in held_out.columns
        },
        name="ks_statistic",
    )


def correlation_difference(held_out: pd.DataFrame, other: pd.DataFrame) -> tuple[float, float]:
    """(mean, max) absolute difference of Pearson correlations over column pairs.

    Pairs involving a column that is constant in either sample have no correlation and are
    skipped; (nan, nan) if no pair is left.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = held_out.corr().to_numpy() - other[held_out.columns].corr().to_numpy()
    upper = diff[np.triu_indices_from(diff, k=1)]
    upper = np.abs(upper[np.isfinite(upper)])
    if upper.size == 0:
        return float("nan"), float("nan")
    return float(upper.mean()), float(upper.max())


def detectability_auroc(
    held_out: pd.DataFrame, other: pd.DataFrame, *, random_state: int = 0
) -> tuple[float, tuple[float, float]]:
    """Out-of-fold AUROC of a classifier separating `other` rows from `held_out` rows, and its
    95 % bootstrap interval (over the out-of-fold predictions).

    Both sides are subsampled to the same size so that 0.5 means chance whatever their sizes. The
    classifier's smallest leaf shrinks with the sample (at most 20 rows, at least 2), so that a
    few dozen rows can still be split and a real difference shows.
    """
    n = min(len(held_out), len(other))
    if n < MIN_ROWS_PER_SIDE:
        raise ValueError(
            f"detectability needs at least {MIN_ROWS_PER_SIDE} rows on each side, got "
            f"{len(held_out)} held-out and {len(other)} other rows."
        )
    rng = np.random.default_rng(random_state)
    a = held_out.to_numpy(dtype=float)[rng.choice(len(held_out), n, replace=False)]
    b = other[held_out.columns].to_numpy(dtype=float)[rng.choice(len(other), n, replace=False)]
    X = np.vstack([a, b])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.1,
        min_samples_leaf=max(2, min(20, n // 5)),
        random_state=random_state,
    )
    folds = StratifiedKFold(DETECTABILITY_FOLDS, shuffle=True, random_state=random_state)
    # One OpenMP thread: on a few hundred rows, thread synchronisation costs more than it saves,
    # and on a busy machine each barrier waits for a descheduled thread.
    with threadpool_limits(limits=1, user_api="openmp"):
        scores = cross_val_predict(clf, X, y, cv=folds, method="predict_proba")[:, 1]
    boot = []
    for _ in range(DETECTABILITY_BOOTSTRAP):
        rows = np.r_[rng.integers(0, n, n), n + rng.integers(0, n, n)]  # both sides resampled
        boot.append(roc_auc_score(y[rows], scores[rows]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(roc_auc_score(y, scores)), (float(low), float(high))


def compare_sample(
    held_out: pd.DataFrame, other: pd.DataFrame, *, random_state: int = 0, n_worst: int = 5
) -> SampleComparison:
    """Fidelity of `other` against the held-out real rows `held_out` (same columns)."""
    missing = [c for c in held_out.columns if c not in other.columns]
    if missing:
        raise ValueError(
            f"sample lacks {len(missing)} column(s) of the held-out rows: {missing[:5]}"
        )
    ks = ks_per_feature(held_out, other)
    corr_mean, corr_max = correlation_difference(held_out, other)
    auroc, auroc_ci = detectability_auroc(held_out, other, random_state=random_state)
    return SampleComparison(
        n_rows=len(other),
        ks_mean=float(ks.mean()),
        ks_median=float(ks.median()),
        ks_max=float(ks.max()),
        worst_features=list(ks.sort_values(ascending=False).index[:n_worst]),
        corr_mean_abs_diff=corr_mean,
        corr_max_abs_diff=corr_max,
        detectability_auroc=auroc,
        detectability_ci=auroc_ci,
        ks_per_feature=ks.to_dict(),
    )


def fidelity_report(
    synthetic: pd.DataFrame,
    held_out_real: pd.DataFrame,
    training_real: pd.DataFrame | None = None,
    *,
    random_state: int = 0,
) -> dict:
    """Fidelity of `synthetic` rows against `held_out_real` rows, with a real-vs-real reference.

    `training_real` (the rows the generator learned from) gives the reference: how far two real
    samples of the same class are apart. Returns a JSON-ready dict with `synthetic`,
    `reference_real` (or None) and a per-feature KS table under `ks_per_feature`. With fewer
    than `MIN_ROWS_PER_SIDE` held-out rows it returns `skipped_report` instead.
    """
    if len(held_out_real) < MIN_ROWS_PER_SIDE:
        return skipped_report(len(held_out_real))
    synthetic_cmp = compare_sample(held_out_real, synthetic, random_state=random_state)
    reference_cmp = (
        compare_sample(held_out_real, training_real, random_state=random_state)
        if training_real is not None
        else None
    )
    table = pd.DataFrame({"ks_synthetic": synthetic_cmp.ks_per_feature})
    if reference_cmp is not None:
        table["ks_reference_real"] = pd.Series(reference_cmp.ks_per_feature)

    def summary(cmp: SampleComparison | None) -> dict | None:
        if cmp is None:
            return None
        out = asdict(cmp)
        out.pop("ks_per_feature")
        return out

    return {
        "n_held_out_real": len(held_out_real),
        "synthetic": summary(synthetic_cmp),
        "reference_real": summary(reference_cmp),
        "ks_per_feature": table.reset_index(names="feature").to_dict(orient="records"),
        "how_to_read": (
            "KS 0 = identical marginal; correlation difference 0 = same dependence structure; "
            "detectability AUROC 0.5 = a classifier cannot tell these rows from held-out real "
            "rows, 1.0 = every row is spotted. reference_real is the same comparison between "
            "two real samples (training vs held-out) and shows the floor set by sampling noise."
        ),
    }


def skipped_report(n_held_out: int) -> dict:
    """The fidelity report when there are too few held-out rows to say anything."""
    return {
        "n_held_out_real": n_held_out,
        "skipped": (
            f"only {n_held_out} held-out real row(s); the fidelity figures need at least "
            f"{MIN_ROWS_PER_SIDE} (prepare a larger cohort to see how faithful the GAN is)"
        ),
    }


def format_detectability(comparison: dict) -> str:
    """'0.998 [0.994, 1.000]' for a `SampleComparison` as the report stores it (the interval is
    left out for reports written before it existed)."""
    auroc = comparison["detectability_auroc"]
    if "detectability_ci" not in comparison:
        return f"{auroc:.3f}"
    low, high = comparison["detectability_ci"]
    return f"{auroc:.3f} [{low:.3f}, {high:.3f}]"


def fidelity_verdict(report: dict) -> str:
    """One plain sentence on what the fidelity figures say (for summaries and the report)."""
    if "skipped" in report:
        return f"Fidelity not measured: {report['skipped']}."
    syn = report["synthetic"]
    auroc = syn["detectability_auroc"]
    low, high = syn.get("detectability_ci", (auroc, auroc))  # reports before 2026-11 had no CI
    if low >= 0.9:
        reading = "a classifier spots nearly every generated patient: the rows are not realistic"
    elif low >= 0.7:
        reading = "generated patients are easy to tell from real ones"
    elif low > 0.55:
        reading = "generated patients can be told from real ones, though not always"
    else:
        reading = "generated patients are hard to tell from real ones"
    return (
        f"Detectability {auroc:.2f} [{low:.2f}, {high:.2f}] (0.5 = indistinguishable): {reading}."
    )
