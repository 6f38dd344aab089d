"""Classification metrics with 95% bootstrap confidence intervals, a threshold rule and a baseline.

Every metric is computed for many bootstrap resamples of the patients at once: a resample is a
row of integer weights (how often each patient was drawn), so one matrix product per count gives
TP/FP/TN/FN for all resamples, and ROC-AUC / PR-AUC come from cumulative sums over the patients
grouped by score. Resampling weights depend only on the number of patients and the seed, so every
model evaluated on the same patients with the same seed shares its resamples: differences between
models get paired confidence intervals (`paired_difference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from sepsis_rl.common.intervals import LEVEL, format_interval

METRICS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
    "brier",
)
"""Reported metrics, in table order. `pr_auc` is average precision (step-wise, as scikit-learn)."""

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "brier": "Brier",
}
"""How each metric is named in tables and text."""

LOWER_IS_BETTER = frozenset({"brier"})
SELECTABLE_METRICS: tuple[str, ...] = ("pr_auc", "roc_auc", "f1", "balanced_accuracy", "brier")
THRESHOLD_RULES: tuple[str, ...] = ("f1", "youden")
THRESHOLD_RULE_LABELS = {"f1": "F1", "youden": "Youden's J (sensitivity + specificity - 1)"}
"""What each threshold rule maximises on the validation patients, in words."""

DEFAULT_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    undefined_share: float = 0.0
    """Share of bootstrap draws in which the metric was undefined (e.g. precision of a draw in
    which nothing was flagged); the interval rests on the other draws only."""

    def to_dict(self) -> dict[str, float | None]:
        return {k: _json_float(v) for k, v in vars(self).items()}

    def format(self, digits: int = 3) -> str:
        """As `format_estimate` writes it."""
        return format_estimate(self.to_dict(), digits)


UNDEFINED_MARK = "†"
UNDEFINED_MARK_SHARE = 0.05
UNDEFINED_NOTE = (
    "† the metric was undefined in more than 5% of bootstrap draws (for example precision when a "
    "draw flags no patient); the interval uses the other draws and is too narrow."
)


def format_estimate(estimate: Mapping[str, float | None], digits: int = 3) -> str:
    """`0.512 [0.471, 0.553]` from an `Estimate` as `to_dict` stores it, or `n/a` when undefined;
    a trailing `†` marks an interval from which more than `UNDEFINED_MARK_SHARE` of the draws
    were left out as undefined."""
    text = format_interval(estimate, digits)
    if text != "n/a" and (estimate.get("undefined_share") or 0.0) > UNDEFINED_MARK_SHARE:
        text += UNDEFINED_MARK
    return text


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def bootstrap_weights(n: int, n_boot: int, random_state: int) -> np.ndarray:
    """(n_boot, n) matrix: how many times each of n patients is drawn in each resample."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty set of patients")
    rng = np.random.default_rng(random_state)
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n)
    return counts.reshape(n_boot, n).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def metric_draws(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric for each row of `weights` (shape (k, n)); returns name -> array of k values.

    A row of ones gives the plain (point) estimate. Undefined values (e.g. precision when nothing
    is predicted positive, AUC of a resample with one class) are NaN.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-d of equal length, got {y.shape}, {s.shape}")
    pred = s >= threshold
    tp = weights @ (y & pred)
    fp = weights @ (~y & pred)
    fn = weights @ (y & ~pred)
    tn = weights @ (~y & ~pred)
    n = tp + fp + fn + tn
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    out = {
        "accuracy": _ratio(tp + tn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "brier": _ratio(weights @ (s - y) ** 2, n),
    }
    out.update(_ranking_metrics(y, s, weights))
    return out


def _ranking_metrics(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC (ties count one half) and average precision for each weight row."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w_sorted = weights[:, order]
    pos = np.add.reduceat(w_sorted * y[order], starts, axis=1)  # per score level, ascending
    neg = np.add.reduceat(w_sorted * ~y[order], starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    roc_auc = _ratio((pos * (neg_below + 0.5 * neg)).sum(axis=1), total_pos * total_neg)
    # Average precision: thresholds from the highest score down; recall grows by pos/total_pos.
    tp_at = np.cumsum(pos[:, ::-1], axis=1)
    fp_at = np.cumsum(neg[:, ::-1], axis=1)
    precision_at = np.nan_to_num(_ratio(tp_at, tp_at + fp_at))
    pr_auc = _ratio((pos[:, ::-1] * precision_at).sum(axis=1), total_pos)
    return {"roc_auc": roc_auc, "pr_auc": pr_auc}


def summarise(point: dict[str, np.ndarray], draws: dict[str, np.ndarray]) -> dict[str, Estimate]:
    """Percentile confidence intervals from bootstrap draws around the point estimates."""
    out = {}
    for name in METRICS:
        low, high = percentile_interval(draws[name])
        undefined = 1.0 - np.isfinite(draws[name]).sum() / max(draws[name].size, 1)
        out[name] = Estimate(float(point[name][0]), low, high, float(undefined))
    return out


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    """The central `LEVEL` percentile interval of the finite draws (NaN bounds when none are)."""
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return (np.nan, np.nan)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


@dataclass
class Evaluation:
    """Metrics of one scored set of patients: estimates plus the draws for paired comparisons."""

    threshold: float
    n: int
    n_positive: int
    estimates: dict[str, Estimate]
    draws: dict[str, np.ndarray]

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "n": self.n,
            "n_positive": self.n_positive,
            "prevalence": self.n_positive / self.n,
            **{name: est.to_dict() for name, est in self.estimates.items()},
        }


def evaluate(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    random_state: int = 0,
    weights: np.ndarray | None = None,
) -> Evaluation:
    """All metrics at `threshold` with 95% bootstrap CIs over patients.

    Pass the same `weights` (from `bootstrap_weights`) to evaluations that should be compared
    pairwise; otherwise they are drawn from `random_state`.
    """
    y = np.asarray(y_true).astype(int)
    if weights is None:
        weights = bootstrap_weights(len(y), n_boot, random_state)
    point = metric_draws(y, scores, threshold, np.ones((1, len(y))))
    draws = metric_draws(y, scores, threshold, weights)
    return Evaluation(float(threshold), len(y), int(y.sum()), summarise(point, draws), draws)


def paired_difference(a: Evaluation, b: Evaluation, metric: str) -> Estimate:
    """`metric` of a minus that of b, with a CI from their shared bootstrap resamples."""
    if a.draws[metric].shape != b.draws[metric].shape or a.n != b.n:
        raise ValueError("paired differences need evaluations on the same patients and resamples")
    low, high = percentile_interval(a.draws[metric] - b.draws[metric])
    return Estimate(a.estimates[metric].value - b.estimates[metric].value, low, high)


def prevalence_estimate(y_true: np.ndarray, weights: np.ndarray) -> Estimate:
    """Share of positive patients with its bootstrap CI."""
    y = np.asarray(y_true).astype(float)
    return Estimate(float(y.mean()), *percentile_interval(weights @ y / weights.sum(axis=1)))


def trivial_baseline(
    y_true: np.ndarray, train_prevalence: float, weights: np.ndarray
) -> Evaluation:
    """The majority-class rule: score everyone with the training prevalence, predict "no sepsis".

    Its accuracy is 1 - prevalence, its ROC-AUC 0.5 and its PR-AUC the prevalence: the figures a
    model has to beat before its accuracy means anything.
    """
    y = np.asarray(y_true).astype(int)
    scores = np.full(len(y), float(train_prevalence))
    threshold = float(np.nextafter(train_prevalence, np.inf))  # nobody reaches it: all negative
    return evaluate(y, scores, threshold, weights=weights)


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, rule: str = "f1") -> float:
    """The decision threshold on these (validation) scores that maximises `rule`.

    `f1`: F1 of the positive class; `youden`: sensitivity + specificity - 1.
    """
    y = np.asarray(y_true).astype(int)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both classes among the validation patients")
    if rule == "f1":
        precision, recall, thresholds = precision_recall_curve(y, scores)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        return float(thresholds[int(np.argmax(f1))])
    if rule == "youden":
        fpr, tpr, thresholds = roc_curve(y, scores)
        finite = np.isfinite(thresholds)
        best = int(np.argmax((tpr - fpr)[finite]))
        return float(thresholds[finite][best])
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {THRESHOLD_RULES}")


def is_better(metric: str, a: float, b: float) -> bool:
    """True when value a is better than b for `metric` (Brier: lower is better)."""
    return a < b if metric in LOWER_IS_BETTER else a > b
