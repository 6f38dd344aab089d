"""Every option of `sepsis-rl run` (`StudyOptions`), its `--quick` preset, and how a config file
sets them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sepsis_rl.common.config_files import check_known, read_config_file
from training.rl.evaluate import TEST_EPISODES


@dataclass
class StudyOptions:
    """Every option of `sepsis-rl run`; a config file (YAML/JSON) sets any of them."""

    patients: int = 10_000
    """Synthetic stays to generate when no --data is given."""
    seed: int = 0
    """The run's one seed, passed to every stage."""
    prepare: dict[str, Any] = field(default_factory=dict)
    """Overrides of `data_prep.prepare.PrepareOptions` (missing_threshold, outliers, ...)."""
    classify: dict[str, Any] = field(
        default_factory=lambda: {"oversample": ["none", "smote", "ctgan"], "n_boot": 1000}
    )
    """Overrides of `training.classification.options.ClassifyConfig`; `settings` holds model
    options."""
    classifier_settings: dict[str, Any] = field(default_factory=lambda: {"ctgan_epochs": 100})
    """Overrides of `training.classification.models.ClassifierSettings` (ctgan_epochs,
    xgb_rounds, ...)."""
    rl: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.rl.options.RLOptions` (episodes, lr, num_env_runners, ...)."""
    evaluation_episodes: int = TEST_EPISODES
    """Paired evaluation episodes per policy on test patients."""
    quick: bool = False
    """Set by `--quick`: the report then says it is a short demonstration run."""


QUICK = {
    "quick": True,
    "patients": 2500,
    "classifier_settings": {
        "ctgan_epochs": 20,
        "rf_trees": 100,
        "xgb_rounds": 150,
        "svm_components": 150,
    },
    "classify": {"oversample": ["none", "smote", "ctgan"], "n_boot": 300},
    # The greedy policy is scored on the 2,000 validation episodes every 4 iterations (under a
    # second each) and the study evaluates the best of those checkpoints, not the last one.
    "rl": {"episodes": None, "time_budget_s": 50, "evaluation_interval": 4},
}
"""`--quick`: a small cohort and short budgets; the whole study in about 3 minutes."""


def load_study_options(path: Path | None, quick: bool, seed: int | None) -> StudyOptions:
    """Defaults, then `--quick`, then the config file, then `--seed`."""
    values: dict[str, Any] = {}
    if quick:
        values = _merge(values, QUICK)
    if path is not None:
        loaded = read_config_file(path, what="study options")
        check_known(loaded, StudyOptions, str(path), what="option")
        values = _merge(values, loaded)
    options = StudyOptions()
    for key, value in values.items():
        base = getattr(options, key)
        setattr(options, key, _merge(base, value) if isinstance(base, dict) else value)
    if seed is not None:
        options.seed = seed
    return options


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def options_document(options: StudyOptions) -> dict[str, Any]:
    """The options as written into the report and `study.yaml`."""
    return asdict(replace(options))
