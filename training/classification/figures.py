"""Test-set curves of the classifiers: ROC, precision-recall and calibration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.classification.candidates import Candidate
from training.classification.models import MODEL_LABELS, MODELS, OVERSAMPLER_LABELS, OVERSAMPLERS

_LINESTYLES = {"none": "-", "smote": "--", "ctgan": ":"}


def plot_roc_pr_curves(
    candidates: Sequence[Candidate], best: Candidate, y_test: np.ndarray, out_dir: Path
) -> Path:
    """ROC (top row) and precision-recall (bottom row) curves on the test patients, one column
    per oversampling mode with its models in it, so that no panel holds more than 4 curves."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
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
        title = OVERSAMPLER_LABELS[mode] + ("" if mode == "none" else " oversampling")
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
    return _save(fig, out_dir / "roc_pr_curves.png", dpi=110)


def plot_calibration(
    candidates: Sequence[Candidate], best: Candidate, y_test: np.ndarray, out_dir: Path
) -> Path:
    """Reliability curves on the test patients: the selected model and its oversampling variants.

    Oversampling trains on balanced classes, so its probabilities overstate the risk at the true
    prevalence; this plot shows by how much.
    """
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
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
        brier = c.test.estimates["brier"].value
        ax.plot(
            predicted,
            observed,
            marker="o",
            linestyle=_LINESTYLES[c.oversample],
            lw=2.4 if c is best else 1.2,
            label=f"{OVERSAMPLER_LABELS[c.oversample]} (Brier {brier:.3f})",
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
    return _save(fig, out_dir / "calibration.png", dpi=120)


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    """Lay out, write and close `fig`; return `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path
