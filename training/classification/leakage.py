"""The check that no validation or test patient reaches a fitted step.

`RowRecorder` and `check_no_leakage` are the instrument behind that promise: every step of a
pipeline is wrapped, records a fingerprint of each row it is fitted on, and the fingerprints are
compared with those of the held-out patients, mapped into the same step's input space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline
from sklearn.base import BaseEstimator, clone
from sklearn.utils.metaestimators import available_if


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
