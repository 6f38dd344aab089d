"""The study's hourly early-warning section: an alarm every hour of every test patient's stay,
scored by the PhysioNet/CinC 2019 Challenge's normalised utility, beside the clinical rules.

    run_hourly_section(prepared, folder, options, config, seed, progress)

1. **The task.** `training.classification.hourly.run_hourly` on the study's `prepared/` folder
   (`hourly.parquet` and `split.csv`, the patient split every other stage uses) with the
   `HourlyConfig` of `HourlyOptions.classify` and `.classifier_settings`: features of each hour
   from that hour and the hours before it, models fitted on training patients' hours, each
   model's alarm threshold chosen on validation patients to maximise utility, the best model
   chosen on validation utility, and the test utility with 95% bootstrap intervals over patients
   beside qSOFA, SIRS, never and always alarming, the hourly AUROC and AUPRC with intervals from
   the same patient resamples, and the paired differences (oversampling, model minus the best
   rule). Writes `metrics.json`, `comparison.csv`, `comparison.md`, `model/`.
2. **Timeline.** `timeline_patients` septic and as many non-septic **test** patients, drawn with
   the study's seed (`rng_for(seed, TIMELINE_STREAM)`), scored hour by hour by the saved model
   (`HourlyModel.predict_hours`): `timeline.csv` (one row per hour) and `timeline.png`.

Writes `section.json` (`SECTION_FILE`: each timeline patient's summary) last, after the figure;
the report reads it and `metrics.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from data_prep.schema import LABEL, PATIENT, TIME
from sepsis_rl.common.config_files import OptionsError, Problem, build_options, options_dataclass

if TYPE_CHECKING:
    from training.classification.hourly import HourlyConfig, HourlyTable

SECTION_FILE = "section.json"
"""Inside `hourly/`: the timeline patients (read by the report)."""
TIMELINE_TABLE = "timeline.csv"
"""Inside `hourly/`: the timeline patients' hours, their probabilities and alarms."""
TIMELINE_FIGURE = "timeline.png"
"""Inside `hourly/`: the timeline figure."""
TIMELINE_STREAM = "hourly timeline"
"""The random stream (`data_prep.seeding.rng_for`) that draws the timeline patients."""

CHALLENGE_BEST_OFFICIAL_UTILITY = 0.36
"""Highest normalised utility on the Challenge's full hidden test set (0.360): Reyna MA et al.,
"Early Prediction of Sepsis From Clinical Data: the PhysioNet/Computing in Cardiology Challenge
2019", Crit Care Med 2020;48(2):210-217. On the public training data many entries scored higher
in cross-validation."""


@options_dataclass
class HourlyOptions:
    """The study's hourly section (`StudyOptions.hourly`); the field list is the documentation."""

    enabled: bool = True
    """Run the hourly section: hourly early warning scored by the Challenge's utility."""
    classify: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.classification.hourly.HourlyConfig` (models, oversample, n_boot,
    max_train_hours); model options go in `classifier_settings`."""
    classifier_settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.classification.models.ClassifierSettings` for the hourly models
    (xgb_rounds, logreg_c, ctgan_epochs: 20 unless set, ...); the seed is the study's."""
    timeline_patients: Annotated[int, Field(ge=1, le=10)] = 2
    """Septic test patients in the timeline figure, and as many non-septic ones."""

    @model_validator(mode="after")
    def _config_builds(self) -> HourlyOptions:
        """`classify` and `classifier_settings` are checked as the stage will use them, before
        any stage runs."""
        hourly_config(self, seed=0)
        return self


def hourly_config(options: HourlyOptions, seed: int) -> HourlyConfig:
    """The `HourlyConfig` of the section: `options.classify`, with `ClassifierSettings` of the
    study's seed, the hourly task's CTGAN epochs and then `options.classifier_settings`."""
    from training.classification.hourly import DEFAULT_HOURLY_CTGAN_EPOCHS, HourlyConfig
    from training.classification.models import ClassifierSettings

    if "settings" in options.classify:
        message = "set model options in hourly.classifier_settings"
        problem = Problem("settings", options.classify["settings"], kind="rule", message=message)
        raise OptionsError([problem.within("classify")])
    settings = build_options(
        ClassifierSettings,
        {"seed": seed, "ctgan_epochs": DEFAULT_HOURLY_CTGAN_EPOCHS, **options.classifier_settings},
        prefix="classifier_settings",
    )
    return build_options(
        HourlyConfig, {**options.classify, "settings": settings}, prefix="classify"
    )


Progress = Callable[[str, int, int], None]


def run_hourly_section(
    prepared: Path,
    folder: Path,
    options: HourlyOptions,
    config: HourlyConfig,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The hourly section in `folder` (see the module docstring), from the `data prepare`
    folder `prepared`. Returns what `SECTION_FILE` holds."""
    from sepsis_rl.common.files import write_json_atomic
    from training.classification.hourly import load_hourly, run_hourly

    folder = Path(folder)
    table = load_hourly(prepared)
    result = run_hourly(table, folder, config, progress)
    section = {
        "timeline": write_timeline(table, result.model, options.timeline_patients, seed, folder),
    }
    write_json_atomic(folder / SECTION_FILE, section)
    return section


def timeline_patient_ids(table: HourlyTable, n: int, seed: int) -> list[str]:
    """`n` septic and `n` non-septic test patients (fewer when the test split has fewer), drawn
    from the stream `TIMELINE_STREAM` of `seed`; septic ones first, each group in table order."""
    from data_prep.seeding import rng_for

    test = table.frame.iloc[table.rows("test")]
    septic = test.groupby(PATIENT, sort=False)[LABEL].max()
    rng = rng_for(seed, TIMELINE_STREAM)
    chosen = []
    for group in (septic.index[septic == 1], septic.index[septic == 0]):
        picked = set(rng.choice(group.to_numpy(), size=min(n, group.size), replace=False))
        chosen += [patient for patient in group if patient in picked]
    return chosen


def write_timeline(table: HourlyTable, model, n: int, seed: int, folder: Path) -> dict[str, Any]:
    """Score the timeline patients (`timeline_patient_ids`) hour by hour with `model` (an
    `HourlyModel`); write `TIMELINE_TABLE` and `TIMELINE_FIGURE` into `folder`; return the
    model, its threshold and each patient's summary (onset, first alarm, utility)."""
    from training.classification.hourly import PREDICTION_HEADER
    from training.classification.utility import DT_OPTIMAL_H, patient_utilities

    chosen = timeline_patient_ids(table, n, seed)
    frame = table.frame[table.frame[PATIENT].isin(chosen)]
    predictions = model.predict_hours(frame)
    hours = pd.DataFrame(
        {
            PATIENT: frame[PATIENT].to_numpy(),
            "hour": frame.groupby(PATIENT, sort=False).cumcount().to_numpy(),
            TIME: frame[TIME].to_numpy(),
            LABEL: frame[LABEL].to_numpy(),
            "probability": predictions[PREDICTION_HEADER[0]].to_numpy(),
            "alarm": predictions[PREDICTION_HEADER[1]].to_numpy(),
        }
    )
    order = {patient: i for i, patient in enumerate(chosen)}
    hours = hours.sort_values(PATIENT, key=lambda s: s.map(order), kind="stable")
    hours.to_csv(folder / TIMELINE_TABLE, index=False)

    parts = patient_utilities(hours[PATIENT], hours[LABEL], hours["alarm"])
    patients = []
    for i, patient in enumerate(parts.patient_ids):
        stay = hours[hours[PATIENT] == patient]
        labelled = np.flatnonzero(stay[LABEL].to_numpy() == 1)
        alarms = np.flatnonzero(stay["alarm"].to_numpy() == 1)
        patients.append(
            {
                "patient": str(patient),
                "septic": bool(parts.septic[i]),
                "hours": len(stay),
                "onset_hour": int(labelled[0] - DT_OPTIMAL_H) if labelled.size else None,
                "first_alarm_hour": int(alarms[0]) if alarms.size else None,
                "alarm_hours": int(alarms.size),
                "utility": {
                    "observed": float(parts.observed[i]),
                    "best": float(parts.best[i]),
                    "inaction": float(parts.inaction[i]),
                },
            }
        )
    plot_timeline(hours, patients, model.threshold, folder / TIMELINE_FIGURE)
    return {
        "model": model.metadata.get("model"),
        "oversample": model.metadata.get("oversample_used_in_training"),
        "threshold": model.threshold,
        "patients": patients,
        "table": TIMELINE_TABLE,
        "figure": TIMELINE_FIGURE,
    }


def plot_timeline(
    hours: pd.DataFrame, patients: list[dict[str, Any]], threshold: float, path: Path
) -> Path:
    """One panel per patient: the predicted probability each hour, the threshold, the alarms,
    and for a septic patient its clinical onset, the best alarm hour and the hours in which an
    alarm earns utility (the Challenge's `DT_EARLY_H` .. `DT_LATE_H` around onset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.classification.utility import DT_EARLY_H, DT_LATE_H, DT_OPTIMAL_H

    fig, axes = plt.subplots(
        len(patients), 1, figsize=(11, 2.4 * len(patients) + 0.5), squeeze=False
    )
    for ax, patient in zip(axes[:, 0], patients, strict=True):
        stay = hours[hours[PATIENT] == patient["patient"]]
        t, p = stay["hour"].to_numpy(), stay["probability"].to_numpy()
        alarm = stay["alarm"].to_numpy() == 1
        right = t[-1]
        onset = patient["onset_hour"]
        if onset is not None:
            ax.axvspan(
                onset + DT_EARLY_H, onset + DT_LATE_H, color="tab:green", alpha=0.15,
                label=f"an alarm earns utility ({DT_EARLY_H:+d} h to {DT_LATE_H:+d} h)",
            )  # fmt: skip
            ax.axvline(
                onset + DT_OPTIMAL_H, color="tab:green", ls=":", lw=1.2,
                label=f"best alarm ({DT_OPTIMAL_H:+d} h: first SepsisLabel = 1)",
            )  # fmt: skip
            ax.axvline(onset, color="black", lw=1.4, label="clinical onset")
            right = max(right, onset + DT_LATE_H)
        ax.plot(t, p, color="tab:blue", lw=1.3, marker=".", ms=3, label="predicted probability")
        ax.axhline(
            threshold, color="tab:orange", ls="--", lw=1.0, label=f"threshold {threshold:.3f}"
        )
        ax.scatter(t[alarm], p[alarm], color="tab:red", s=14, zorder=3, label="alarm")
        u = patient["utility"]
        kind = "septic" if patient["septic"] else "no sepsis"
        ax.set_title(
            f"{patient['patient']} ({kind}, {patient['hours']} h): utility of its alarms "
            f"{u['observed']:+.2f} (best {u['best']:+.2f}, never alarming {u['inaction']:+.2f})",
            fontsize=9,
        )
        ax.set(xlim=(-0.5, right + 0.5), ylim=(0, 1), ylabel="probability")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("hour of the stay (0 = first row)")
    # One legend for all panels (the first, a septic patient's when there is one, has every
    # element), above them, where it hides no hour.
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.4 * len(patients) + 0.5)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
