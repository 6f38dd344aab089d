"""Hourly features for early warning: one row per patient-hour, from that hour and earlier ones.

`HourlyFeatureBuilder.transform(table)` turns the canonical hourly table (the reader's output, or
`data_prep.synth.generate_cohort`'s: `patient_id`, the 40 variables, raw with NaN for missing)
into one feature row per input row, aligned with it by index. Every feature of hour k of a
patient is computed from hours <= k of that patient only, so a prediction made at hour k could
have been made at the bedside at hour k; the tests change every later hour and check that no
earlier feature changes by a single bit.

Features. For each measurement (hours are rows: ICULOS rises by exactly 1 per row):

| feature                  | meaning                                                          |
|--------------------------|------------------------------------------------------------------|
| `<var>__last`            | last observed value (carried forward within the stay; NaN before  |
|                          | the first measurement)                                           |
| `<var>__hours_since`     | hours since that value was measured (0: measured this hour)      |
| `<var>__n_obs`           | measurements so far in the stay, this hour included              |

and, for the *rolling columns* (every vital, plus the labs measured in at least
`rolling_min_observed` of the training hours: with the reference's rates Glucose, Potassium, Hct
and FiO2, about one value every 6-12 h):

| feature                  | meaning                                                          |
|--------------------------|------------------------------------------------------------------|
| `<var>__delta_<c>h`      | `__last` now minus `__last` c hours earlier (NaN for the first c  |
|                          | hours of the stay, or while either is NaN)                        |
| `<var>__{mean,min,max,std}_<w>h` | of the values observed in the last w hours (this one    |
|                          | included); NaN when none (std: when fewer than 2)                |
| `<var>__n_obs_<w>h`      | measurements in the last w hours (the largest w only)            |

with c = `change_h` (6) and w in `windows_h` (6 and 24). The sparser labs get only the first
three: their 6-hour windows would almost always be empty. Then hours since ICU admission
(`ICULOS`; a record may start after admission) and the stay's statics: `Age` (set B's 100 read
as 90), `Gender`, `Unit1`, `Unit2` (missing read as 0, with `unit_known`), `HospAdmTime` (the
rare missing value filled with the training median). Values are raw: no outlier clipping and no
imputation beyond carrying forward; NaN stays NaN for the model to handle. With the defaults on
the synthetic cohort: 12 rolling columns x 13 + 22 labs x 3 + 7 = 229 columns (1.4 GB of float32
for 1.55M hours).

Computation. Everything is array arithmetic over the whole table (no Python loop over patients):
carried-forward values from a running maximum of "last observed row", counts from cumulative sums
of integers, and window sums, minima and maxima by doubling: spans of 1, 2, 4, ... hours, each
built from two shifted copies of the previous one where the stay reaches back that far, combined
into the 6- and 24-hour windows. Each window's result depends only on that stay's values in that
window, combined in a fixed order: bit-for-bit the same whatever other hours and patients the
table holds. Sums are in float64, the output float32.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from data_prep.cleaning import age_in_years
from data_prep.features import patient_blocks
from data_prep.schema import DEMOGRAPHICS, LABS, MEASUREMENTS, PATIENT, SPECS, TIME, VITALS

DEFAULT_WINDOWS_H: tuple[int, ...] = (6, 24)
"""Rolling windows, in hours (this hour and the w - 1 before it)."""
DEFAULT_CHANGE_H = 6
"""`__delta_<c>h` compares the carried-forward value with the one this many hours earlier."""
DEFAULT_ROLLING_MIN_OBSERVED = 0.08
"""A lab gets rolling statistics when observed in at least this share of training hours (8 values
per 100 patient-hours, about one every 12 h; reference section 2: Glucose 17%, Potassium 9.3%,
Hct 8.8%, FiO2 8.3%, the next, Hgb, 7.4%)."""
ROLLING_STATS: tuple[str, ...] = ("mean", "min", "max", "std")
STATIC_FEATURES: tuple[str, ...] = (TIME, "Age", "Gender", "Unit1", "Unit2", "unit_known",
                                    "HospAdmTime")  # fmt: skip
"""Features that are not per-measurement, in output order."""


def _window_reduce(
    values: np.ndarray, windows: tuple[int, ...], op, blocks: _Blocks
) -> dict[int, np.ndarray]:
    """For each w: `out[j] = op` over rows `max(j - w + 1, start of j's stay) .. j`, by doubling.

    `op` is np.add, np.fmin or np.fmax. Spans of 1, 2, 4, ... rows are built once; a window
    combines the spans of its binary digits placed end to end, always in the same order, so a
    float sum depends on that stay's values in that window only. A span that would reach back
    into the previous stay is neutralised first (times 0 for a sum, + NaN for fmin/fmax: cheaper
    than a masked ufunc).
    """

    def earlier(span: np.ndarray, k: int) -> np.ndarray:
        """span[j - k] for rows j >= k, or the neutral value where j - k is another stay."""
        if op is np.add:
            return span[:-k] * blocks.keep(k)[k:]
        return span[:-k] + blocks.blank(k, span.dtype)[k:]

    def combined(span: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
        """op(span[j], other[j - k]) as a new array (span[j] where j < k)."""
        result = np.empty_like(span)
        result[:k] = span[:k]
        op(span[k:], earlier(other, k), out=result[k:])
        return result

    spans = {1: values}
    size = 1
    while size * 2 <= max(windows):
        spans[size * 2] = combined(spans[size], spans[size], size)
        size *= 2
    out = {}
    for w in windows:
        bits = [bit for bit in sorted(spans, reverse=True) if w & bit]
        acc, offset = spans[bits[0]], bits[0]
        for bit in bits[1:]:  # the span ending `offset` rows before j
            acc = combined(acc, spans[bit], offset)
            offset += bit
        out[w] = acc if len(bits) > 1 else acc.copy()  # callers write into it
    return out


class HourlyFeatureBuilder(TransformerMixin, BaseEstimator):
    """Causal hourly features (see the module docstring for the list and the computation).

    Parameters
    ----------
    windows_h : tuple of int, default=(6, 24)
        Rolling windows in hours.
    change_h : int, default=6
        Lag of the `__delta_<c>h` features, in hours.
    rolling_min_observed : float, default=0.08
        Share of training hours in which a lab must be observed to get rolling statistics
        (vitals always get them).

    Attributes
    ----------
    measurements_ : list of str
        Measurement columns found in the training table (features are made for these).
    rolling_columns_ : list of str
        Those that get the change and rolling-window features.
    hosp_adm_median_ : float
        Training median of HospAdmTime over stays, to fill a missing value.
    feature_names_out_ : list of str
        Output columns, in order.

    Fit reads no label: only which columns exist, how often the labs are measured, and the
    median hospital-to-ICU time, all from the (training) table it is given.
    """

    _parameter_constraints: dict = {
        "windows_h": [tuple],
        "change_h": [Interval(numbers.Integral, 1, None, closed="left")],
        "rolling_min_observed": [Interval(numbers.Real, 0, 1, closed="both")],
    }

    def __init__(
        self,
        windows_h: tuple[int, ...] = DEFAULT_WINDOWS_H,
        change_h: int = DEFAULT_CHANGE_H,
        rolling_min_observed: float = DEFAULT_ROLLING_MIN_OBSERVED,
    ):
        self.windows_h = windows_h
        self.change_h = change_h
        self.rolling_min_observed = rolling_min_observed

    def fit(self, X: pd.DataFrame, y=None) -> HourlyFeatureBuilder:
        """Learn the measurement columns, which labs are frequent enough for rolling statistics,
        and the HospAdmTime fill value, from the training patients' hours in `X`."""
        self._validate_params()
        if not self.windows_h or any(
            not isinstance(w, numbers.Integral) or w < 1 for w in self.windows_h
        ):
            raise ValueError(f"windows_h must be positive whole hours, got {self.windows_h!r}")
        _check_columns(X, (PATIENT, TIME, *DEMOGRAPHICS))
        if len(X) == 0:
            raise ValueError("cannot fit the hourly features on an empty table")
        self.measurements_ = [c for c in MEASUREMENTS if c in X.columns]
        observed = X[self.measurements_].notna().mean()
        self.rolling_columns_ = [c for c in VITALS if c in self.measurements_] + [
            c for c in LABS if c in self.measurements_ and observed[c] >= self.rolling_min_observed
        ]
        hosp = X.groupby(PATIENT, sort=False)["HospAdmTime"].first()
        self.hosp_adm_median_ = float(hosp.median()) if hosp.notna().any() else 0.0
        self.feature_names_out_ = self._feature_names()
        self.n_features_in_ = X.shape[1]
        return self

    def _feature_names(self) -> list[str]:
        names = []
        largest = max(self.windows_h)
        for name in self.measurements_:
            names += [f"{name}__last", f"{name}__hours_since", f"{name}__n_obs"]
            if name in self.rolling_columns_:
                names.append(f"{name}__delta_{self.change_h}h")
                for w in self.windows_h:
                    names += [f"{name}__{stat}_{w}h" for stat in ROLLING_STATS]
                names.append(f"{name}__n_obs_{largest}h")
        return names + list(STATIC_FEATURES)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_out_, dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """One float32 feature row per row of `X` (same index). Each patient's hours must be
        contiguous, in time order, one per ICULOS hour with no gap."""
        check_is_fitted(self, "feature_names_out_")
        _check_columns(X, (PATIENT, TIME, *self.measurements_, *DEMOGRAPHICS))
        blocks = _Blocks.of(X)
        out = np.empty((len(self.feature_names_out_), len(X)), dtype=np.float32)
        row = 0
        for name in self.measurements_:
            x = X[name].to_numpy(dtype=np.float64)
            if np.isinf(x).any():
                raise ValueError(
                    f"column {name} holds an infinite value at row {int(np.isinf(x).argmax())}: "
                    "write a missing value as NaN"
                )
            row = self._measurement(x, name, blocks, out, row)
        row = self._statics(X, out, row)
        assert row == out.shape[0], "feature count and names disagree"
        # out.T is (hours, features) in column-major order: pandas keeps it without a copy.
        return pd.DataFrame(out.T, columns=self.feature_names_out_, index=X.index, copy=False)

    def _measurement(self, x: np.ndarray, name: str, b: _Blocks, out: np.ndarray, row: int) -> int:
        observed = ~np.isnan(x)
        last_row = np.where(observed, b.rows, np.int32(-1))
        np.maximum.accumulate(last_row, out=last_row)
        seen = last_row >= b.first
        last = np.where(seen, x[np.maximum(last_row, 0)], np.nan)
        so_far = np.cumsum(observed, dtype=np.int32)  # measurements up to each row, whole table
        before_stay = b.per_row(so_far[b.starts] - observed[b.starts])
        n_obs = so_far - before_stay
        out[row] = last
        out[row + 1] = np.where(seen, b.rows - last_row, np.nan)
        out[row + 2] = n_obs
        row += 3
        if name not in self.rolling_columns_:
            return row

        lag = self.change_h
        out[row, :lag] = np.nan
        out[row, lag:] = last[lag:] - last[:-lag] + b.blank(lag, np.float64)[lag:]
        row += 1

        # Sums are shifted by the reference median (a fixed number: no data enters) so that
        # sums of squares stay small and the variance does not cancel catastrophically.
        centre = SPECS[name].median if name in SPECS else 0.0
        shifted = np.where(observed, x - centre, 0.0)
        sums = _window_reduce(shifted, self.windows_h, np.add, b)
        squares = _window_reduce(np.square(shifted, out=shifted), self.windows_h, np.add, b)
        del shifted
        as32 = x.astype(np.float32)
        minima = _window_reduce(as32, self.windows_h, np.fmin, b)
        maxima = _window_reduce(as32, self.windows_h, np.fmax, b)
        del as32
        for w in self.windows_h:
            n = _window_counts(so_far, before_stay, w)
            total, square = sums.pop(w), squares.pop(w)
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(total, n, out=total)  # the shifted mean; NaN when n = 0
                np.add(total, centre, out=out[row])
                # sum of squared deviations = sum of squares - n * mean^2 (shifted values)
                np.subtract(square, np.square(total) * n, out=square)
                np.divide(square, n - 1, out=square)
            np.maximum(square, 0.0, out=square)
            np.sqrt(square, out=square)
            low, high = minima.pop(w), maxima.pop(w)
            square[low == high] = 0.0  # all equal: exactly 0, not a rounding residue
            square[n < 2] = np.nan
            out[row + 1] = low
            out[row + 2] = high
            out[row + 3] = square
            row += 4
        out[row] = _window_counts(so_far, before_stay, max(self.windows_h))
        return row + 1

    def _statics(self, X: pd.DataFrame, out: np.ndarray, row: int) -> int:
        unit1 = X["Unit1"].to_numpy(dtype=np.float64)
        hosp = X["HospAdmTime"].to_numpy(dtype=np.float64)
        columns = (
            X[TIME].to_numpy(dtype=np.float64),
            age_in_years(X["Age"]),
            X["Gender"].to_numpy(dtype=np.float64),
            np.nan_to_num(unit1, nan=0.0),
            np.nan_to_num(X["Unit2"].to_numpy(dtype=np.float64), nan=0.0),
            (~np.isnan(unit1)).astype(np.float64),
            np.where(np.isnan(hosp), self.hosp_adm_median_, hosp),
        )
        for values in columns:
            out[row] = values
            row += 1
        return row


def _check_columns(X: pd.DataFrame, needed) -> None:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected the hourly table as a pandas DataFrame, got {type(X).__name__}")
    missing = [c for c in needed if c not in X.columns]
    if missing:
        raise ValueError(
            f"the hourly table lacks columns {missing}: pass the canonical table (patient_id, the "
            "40 PhysioNet variables) that `data prepare` or the synthetic generator writes"
        )


def _window_counts(so_far: np.ndarray, before_stay: np.ndarray, w: int) -> np.ndarray:
    """Measurements in the last w hours: the running count minus the one w rows back, or minus
    the count before the stay when the stay is shorter (integers: exact)."""
    back = before_stay.copy()
    np.maximum(back[w:], so_far[:-w], out=back[w:])  # so_far rises, so the later start wins
    return (so_far - back).astype(np.float64)


class _Blocks:
    """Row bookkeeping of a table whose patients' hours are contiguous blocks."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray):
        self.starts = starts
        self.lengths = ends - starts
        self.rows = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int32)
        self.first = self.per_row(starts.astype(np.int32))
        self.hour = (self.rows - self.first).astype(np.int32)  # hour within the stay, from 0
        self._masks: dict[tuple, np.ndarray] = {}

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """A per-stay value repeated on each of the stay's rows."""
        return np.repeat(values, self.lengths)

    def keep(self, k: int) -> np.ndarray:
        """1.0 on rows whose stay began at least k rows earlier (row j - k is the same stay's),
        else 0.0."""
        return self._mask(k, np.float64, 0.0)

    def blank(self, k: int, dtype) -> np.ndarray:
        """0 on rows whose stay began at least k rows earlier, else NaN (of `dtype`)."""
        return self._mask(k, dtype, np.nan)

    def _mask(self, k: int, dtype, outside: float) -> np.ndarray:
        key = (k, np.dtype(dtype).str, outside == outside)
        if key not in self._masks:
            inside = 1.0 if outside == 0.0 else 0.0
            self._masks[key] = np.where(self.hour >= k, inside, outside).astype(dtype)
        return self._masks[key]

    @classmethod
    def of(cls, X: pd.DataFrame) -> _Blocks:
        ids = X[PATIENT].to_numpy()
        if ids.size == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        starts, ends = patient_blocks(ids)
        block_ids = pd.Index(ids[starts])
        if not block_ids.is_unique:
            repeated = block_ids[block_ids.duplicated()][0]
            raise ValueError(
                f"patient {repeated} has rows in several places: sort the table by patient and "
                "ICULOS so that each stay's hours are contiguous and in time order"
            )
        hours = X[TIME].to_numpy()
        new_stay = np.zeros(ids.size, dtype=bool)
        new_stay[starts] = True
        bad = np.flatnonzero((np.diff(hours) != 1) & ~new_stay[1:])
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"patient {ids[i]}: ICULOS goes from {hours[i - 1]} to {hours[i]} at row {i}; "
                "hourly features need one row per hour in time order (sort by patient and ICULOS; "
                "fill a gap with an empty row)"
            )
        return cls(starts, ends)
