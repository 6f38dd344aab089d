"""The classifier comparison, the oversampling effects and the CTGAN fidelity, as tables and text.

One home for these write-ups: `classify` writes them beside its outputs (`comparison.md`,
`fidelity.md`) and the study report builds its classifier and fidelity sections from the same
row builders. The builders read what `classify` wrote (`metrics.json`, `fidelity.json`), so a
report can be rebuilt from a results folder; each returns rows of cells, which the caller puts
under its own header (`markdown_table` here, a report `Table` in the study report).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from data_prep.fidelity import fidelity_verdict, format_detectability
from sepsis_rl.common.intervals import format_interval
from sepsis_rl.common.markdown import markdown_table
from training.classification.candidates import Candidate
from training.classification.metrics import (
    METRIC_LABELS,
    METRICS,
    UNDEFINED_MARK,
    UNDEFINED_NOTE,
    format_estimate,
)
from training.classification.models import MODEL_LABELS, OVERSAMPLER_LABELS, OVERSAMPLERS

DEGENERATE_FLAGGED_SHARE = 0.95
"""A threshold that flags at least this share of test patients as septic is degenerate."""

EFFECT_PIVOT_METRICS: tuple[str, ...] = ("pr_auc", "roc_auc")
"""The metrics of the oversampling effects table pivoted by model."""

FIDELITY_HEADER = ["measure", "synthetic vs real", "real vs real", "ideal"]
FIDELITY_MEASURES: tuple[tuple[str, str, str], ...] = (
    ("ks_mean", "mean Kolmogorov-Smirnov statistic per feature", "0"),
    ("ks_max", "largest Kolmogorov-Smirnov statistic", "0"),
    ("corr_mean_abs_diff", "mean absolute difference of correlations", "0"),
    ("detectability_auroc", "detectability: AUROC telling them from real rows", "0.5"),
)
"""(key in `fidelity.json`, label, ideal value) of each fidelity measure, in table order."""


# -- the comparison of every candidate ------------------------------------------------------------


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


def flagged_share(candidate: Candidate) -> float:
    """Share of test patients the candidate flags as septic at its validation threshold."""
    return float(np.mean(candidate.test_scores >= candidate.threshold))


def model_label(model: str, selected: bool = False) -> str:
    """The model's name for tables and text; the selected model's in bold, marked."""
    label = MODEL_LABELS.get(model, model)
    return f"**{label} (selected)**" if selected else label


def format_value(estimate: Mapping[str, Any]) -> str:
    """The estimate alone, `0.512`, or `n/a`."""
    return "n/a" if estimate["value"] is None else f"{estimate['value']:.3f}"


def comparison_rows(
    metrics: Mapping[str, Any],
    test: Sequence[str] = METRICS,
    validation: Sequence[str] = (),
) -> list[list[str]]:
    """One row per candidate of `metrics.json`: its model (the selected one marked), its
    oversampling, the test value [95% CI] of each of `test`, then the validation value of each
    of `validation`."""
    best = candidate_key(metrics["best"])
    return [
        [
            model_label(c["model"], candidate_key(c) == best),
            c["oversample"],
            *(format_estimate(c["test"][m]) for m in test),
            *(format_value(c["val"][m]) for m in validation),
        ]
        for c in metrics["candidates"]
    ]


def candidate_key(candidate: Mapping[str, Any]) -> tuple[str, str]:
    """(model, oversampling) of a candidate, or of the best one, as `metrics.json` holds it."""
    return (candidate["model"], candidate["oversample"])


def selected_against_baseline_rows(
    metrics: Mapping[str, Any], order: Sequence[str] = METRICS
) -> list[list[str]]:
    """One row per metric: its label, the selected model's test value [95% CI] and the trivial
    baseline's."""
    test, baseline = metrics["best"]["test"], metrics["trivial_baseline"]["test"]
    return [
        [METRIC_LABELS.get(m, m), format_estimate(test[m]), format_estimate(baseline[m])]
        for m in order
    ]


def has_undefined_mark(rows: Sequence[Sequence[str]]) -> bool:
    """True when a cell carries the `†` of an interval that rests on too few draws."""
    return any(cell.endswith(UNDEFINED_MARK) for row in rows for cell in row)


def comparison_markdown(candidates: Sequence[Candidate], metrics: Mapping[str, Any]) -> str:
    """`comparison.md`: the comparison table with the prevalence and the trivial baseline beside
    it, and notes on degenerate thresholds and undefined draws where there are any."""
    rows = comparison_rows(metrics)
    baseline = metrics["trivial_baseline"]["test"]
    rows.append(
        [
            "Trivial baseline (always 'no sepsis')",
            "-",
            *(format_value(baseline[m]) for m in METRICS),
        ]
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
    if has_undefined_mark(rows):
        notes.append(UNDEFINED_NOTE)
    return (
        "Test patients (held out, never generated; true prevalence). Value [95% bootstrap CI]. "
        f"Test prevalence: {format_interval(metrics['test_prevalence'])}. "
        "Thresholds chosen on validation patients.\n\n"
        + markdown_table(["model", "oversampling", *METRICS], rows)
        + "\n"
        + "".join(f"\n{note}\n" for note in notes)
    )


# -- does oversampling help? ----------------------------------------------------------------------


def effect_cell(effect: Mapping[str, Any]) -> str:
    """An oversampling effect as its signed difference [95% CI], `+0.012 [-0.004, +0.031]`."""
    return format_interval(effect["difference_vs_none"], 3, signed=True)


def effects_rows(effects: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per model, oversampling and metric: the difference and its verdict."""
    return [
        [model_label(e["model"]), e["oversample"], e["metric"], effect_cell(e), e["verdict"]]
        for e in effects
    ]


def effects_by_model(
    effects: Sequence[Mapping[str, Any]], metrics: Sequence[str] = EFFECT_PIVOT_METRICS
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the effects of `metrics`, one row per model, one column per
    oversampling mode and metric (`n/a` where a model has no such effect)."""
    shown = [e for e in effects if e["metric"] in metrics]
    modes = [mode for mode in OVERSAMPLERS if any(e["oversample"] == mode for e in shown)]
    cells = {(e["model"], e["oversample"], e["metric"]): effect_cell(e) for e in shown}
    header = ["model"] + [
        f"{OVERSAMPLER_LABELS[mode]}: {METRIC_LABELS[m]} change" for mode in modes for m in metrics
    ]
    rows = [
        [model_label(model)]
        + [cells.get((model, mode, m), "n/a") for mode in modes for m in metrics]
        for model in dict.fromkeys(e["model"] for e in shown)
    ]
    return header, rows


def effects_markdown(effects: Sequence[Mapping[str, Any]]) -> str:
    """Does oversampling help? Paired test-set differences as a Markdown table."""
    if not effects:
        return ""
    header = ["model", "oversampling", "metric", "difference vs none [95% CI]", "verdict"]
    return (
        "Does oversampling help? Test-set difference to the same model without oversampling "
        "(paired bootstrap over the same patient resamples; for Brier lower is better).\n\n"
        + markdown_table(header, effects_rows(effects))
        + "\n"
    )


# -- CTGAN fidelity -------------------------------------------------------------------------------


def _measure(comparison: Mapping[str, Any], key: str) -> str:
    if key not in comparison:
        return "n/a"
    if key == "detectability_auroc":
        return format_detectability(comparison)
    return f"{comparison[key]:.3f}"


def fidelity_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per fidelity measure under `FIDELITY_HEADER`: CTGAN rows against held-out real
    rows, and two real samples against each other (the floor sampling noise sets)."""
    synthetic, reference = report["synthetic"], report.get("reference_real") or {}
    return [
        [label, _measure(synthetic, key), _measure(reference, key), ideal]
        for key, label, ideal in FIDELITY_MEASURES
    ]


def fidelity_markdown(report: Mapping[str, Any]) -> str:
    """`fidelity.md`: a short human summary of the fidelity report."""
    if "skipped" in report:
        return f"# CTGAN fidelity\n\n{fidelity_verdict(report)}\n"
    synthetic, reference = report["synthetic"], report.get("reference_real") or {}
    compared = ["rows compared", synthetic["n_rows"], reference.get("n_rows", "n/a"), "-"]
    lines = [
        f"# CTGAN fidelity against {report['n_held_out_real']} held-out real septic patients",
        "",
        markdown_table(FIDELITY_HEADER, [compared, *fidelity_rows(report)]),
        "",
        fidelity_verdict(report),
        "",
        f"Features CTGAN gets most wrong (KS): {', '.join(synthetic['worst_features'])}.",
        "",
        report["how_to_read"],
        "",
    ]
    return "\n".join(lines)
