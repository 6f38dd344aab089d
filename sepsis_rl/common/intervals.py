"""95% intervals, computed and written down one way everywhere.

Three kinds are used in this project, each where its assumptions hold:

* `mean_interval`: normal approximation of a mean over many independent draws (episodes);
* `t_interval`: Student-t interval of a mean over few draws (cross-validation folds, seeds);
* `proportion_interval`: Wilson interval of a rate (survival, death), good near 0 and 1.

Percentile bootstrap intervals (classifier metrics) live with their resampling in
`training.classification.metrics` and use `LEVEL`. `format_interval` writes any of them as
`0.512 [0.471, 0.553]`, signed, in percent or in percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
"""Coverage of every interval this project reports."""
Z_95 = 1.959963984540054
"""Standard normal quantile of 0.975: the half-width of a 95% normal interval in standard errors."""

Interval = tuple[float, float, float]
"""(estimate, lower, upper)."""
NAN_INTERVAL: Interval = (math.nan, math.nan, math.nan)


def mean_interval(values: Iterable[float]) -> Interval:
    """Mean and its normal-approximation 95% interval (NaN bounds for fewer than 2 values)."""
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if x.size == 0:
        return NAN_INTERVAL
    mean = float(x.mean())
    if x.size < 2:
        return (mean, math.nan, math.nan)
    half = Z_95 * float(x.std(ddof=1)) / math.sqrt(x.size)
    return (mean, mean - half, mean + half)


def t_interval(values: Iterable[float | None], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of the mean of the finite values (NaN bounds for fewer than
    2 of them): for a handful of draws, such as cross-validation folds or training seeds."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return NAN_INTERVAL
    mean = float(x.mean())
    if x.size < 2:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return (mean, mean - half, mean + half)


def proportion_interval(hits: Sequence[bool] | np.ndarray) -> Interval:
    """Rate and its Wilson 95% interval."""
    n = len(hits)
    if n == 0:
        return NAN_INTERVAL
    p = float(np.mean(hits))
    denom = 1 + Z_95**2 / n
    centre = (p + Z_95**2 / (2 * n)) / denom
    half = Z_95 * math.sqrt(p * (1 - p) / n + Z_95**2 / (4 * n * n)) / denom
    return (p, centre - half, centre + half)


def difference_of_independent(a: Interval, b: Interval) -> Interval:
    """a - b with a normal interval from the two intervals' standard errors, as if independent
    (conservative when a and b were measured on the same draws)."""
    se = math.hypot((a[2] - a[1]) / (2 * Z_95), (b[2] - b[1]) / (2 * Z_95))
    diff = a[0] - b[0]
    return (diff, diff - Z_95 * se, diff + Z_95 * se)


def as_interval(estimate: Any) -> Interval | None:
    """(estimate, lower, upper) from a triple or a `{value, ci_low, ci_high}` mapping."""
    if estimate is None:
        return None
    if isinstance(estimate, Mapping):
        return (estimate["value"], estimate["ci_low"], estimate["ci_high"])
    value, low, high = estimate
    return (value, low, high)


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(x)


def format_interval(
    estimate: Any,
    digits: int = 3,
    *,
    signed: bool = False,
    percent: bool = False,
    points: bool = False,
) -> str:
    """`0.512 [0.471, 0.553]` from a triple or a `{value, ci_low, ci_high}` mapping.

    `signed` writes `+1.86 [+1.53, +2.19]`; `percent` a rate as `61.5% [58.2, 64.7]`; `points`
    a difference of rates as `+4.2 pp [3.1, 5.3]`. `n/a` when there is no estimate; the
    estimate alone when the interval is undefined; never `-0.00`.
    """
    interval = as_interval(estimate)
    if interval is None or not _finite(interval[0]):
        return "n/a"
    value, low, high = interval
    if points:
        value, low, high = (round(100 * x, 1) + 0.0 if _finite(x) else x for x in interval)
        if not (_finite(low) and _finite(high)):
            return f"{value:+.1f} pp"
        return f"{value:+.1f} pp [{low:+.1f}, {high:+.1f}]"
    if percent:
        if not (_finite(low) and _finite(high)):
            return f"{100 * value:.1f}%"
        return f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
    sign = "+" if signed else ""
    if signed:  # + 0.0 turns -0.0 into 0.0
        value, low, high = (round(x, digits) + 0.0 if _finite(x) else x for x in interval)
    if not (_finite(low) and _finite(high)):
        return f"{value:{sign}.{digits}f}"
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
