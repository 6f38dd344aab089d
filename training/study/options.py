"""Every option of `sepsis-rl run` (`StudyOptions`), its `--quick` preset, and how a config file
sets them.

A study config is checked whole before the first stage runs: the parts that override the options
of a stage (`prepare`, `classify`, `classifier_settings`, `hourly`, `rl`, `offline`) are built
into those options (`PrepareOptions`, `ClassifyConfig`, `ClassifierSettings`, `HourlyOptions` and
its `HourlyConfig`, `RLOptions`, `OfflineOptions`) and validated with them, so a bad
`rl.episodes`, `hourly.classify.models` or `offline.stays` is reported at once, not after the data
were prepared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import NonNegativeInt, PositiveInt, ValidationInfo, field_validator

from sepsis_rl.common.config_files import (
    OptionsError,
    Problem,
    build_options,
    options_dataclass,
    read_config_file,
    replace_fields,
)
from training.rl.evaluate import TEST_EPISODES

if TYPE_CHECKING:
    from data_prep.prepare import PrepareOptions
    from training.classification.hourly import HourlyConfig
    from training.classification.models import ClassifierSettings
    from training.classification.options import ClassifyConfig
    from training.rl.options import RLOptions
    from training.study.hourly import HourlyOptions
    from training.study.offline import OfflineOptions


@options_dataclass
class StudyOptions:
    """Every option of `sepsis-rl run`; a config file (YAML/JSON) sets any of them."""

    patients: PositiveInt = 10_000
    """Synthetic stays to generate when no --data is given."""
    seed: NonNegativeInt = 0
    """The run's one seed, passed to every stage."""
    prepare: dict[str, Any] = field(default_factory=dict)
    """Overrides of `data_prep.prepare.PrepareOptions` (missing_threshold, outliers, ...)."""
    classify: dict[str, Any] = field(
        default_factory=lambda: {"oversample": ["none", "smote", "ctgan"], "n_boot": 1000}
    )
    """Overrides of `training.classification.options.ClassifyConfig` (oversample, models,
    n_boot, ...); model options go in `classifier_settings`."""
    classifier_settings: dict[str, Any] = field(default_factory=lambda: {"ctgan_epochs": 100})
    """Overrides of `training.classification.models.ClassifierSettings` (ctgan_epochs,
    xgb_rounds, ...)."""
    hourly: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.study.hourly.HourlyOptions` (enabled, classify: {models,
    oversample, n_boot, max_train_hours}, classifier_settings, timeline_patients): the hourly
    early-warning section, scored by the PhysioNet/CinC 2019 utility."""
    rl: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.rl.options.RLOptions` (episodes, lr, num_env_runners, ...)."""
    evaluation_episodes: PositiveInt = TEST_EPISODES
    """Paired evaluation episodes per policy on test patients."""
    offline: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.study.offline.OfflineOptions` (enabled, stays, algo, iterations,
    bootstrap, ...): the offline section, a policy learned from clinician logs and its OPE."""
    quick: bool = False
    """Set by `--quick`: the report then says it is a short demonstration run."""

    @field_validator("prepare")
    @classmethod
    def _prepare_builds(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _prepare_options(values, _seed(info))
        return values

    @field_validator("classify")
    @classmethod
    def _classify_builds(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from training.classification.models import ClassifierSettings

        _classify_config(values, ClassifierSettings(seed=_seed(info)))
        return values

    @field_validator("classifier_settings")
    @classmethod
    def _settings_build(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _classifier_settings(values, _seed(info))
        return values

    @field_validator("hourly")
    @classmethod
    def _hourly_builds(cls, values: dict[str, Any]) -> dict[str, Any]:
        _hourly_options(values)  # HourlyOptions builds its HourlyConfig as it validates
        return values

    @field_validator("rl")
    @classmethod
    def _rl_builds(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _rl_options(values, _seed(info))
        return values

    @field_validator("offline")
    @classmethod
    def _offline_builds(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _offline_options(values)
        return values


def _seed(info: ValidationInfo) -> int:
    """The study's seed, as each stage gets it (0 while the seed itself is not valid)."""
    return info.data.get("seed", 0)


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
    # XGBoost (100 rounds) and logistic regression, without oversampling and with SMOTE, each
    # fitted on 10,000 training hours (every septic hour, then a seeded subset): about 6 s on 2
    # idle cores, 20-30 s on busy ones.
    "hourly": {
        "classify": {"oversample": ["none", "smote"], "n_boot": 300, "max_train_hours": 10_000},
        "classifier_settings": {"xgb_rounds": 100},
    },
    # The greedy policy is scored on the 2,000 validation episodes every 4 iterations (under a
    # second each) and the study evaluates the best of those checkpoints, not the last one.
    "rl": {"episodes": None, "time_budget_s": 50, "evaluation_interval": 4},
    # 2,000 clinician stays (300 test stays for OPE), 1,000 offline updates, a short MLP FQE:
    # about 10 s on 2 cores.
    "offline": {"stays": 2000, "iterations": 10, "bootstrap": 300, "fqe_iterations": 40},
}
"""`--quick`: a small cohort and short budgets; the whole study in about 3 minutes."""


def prepare_options_of(options: StudyOptions) -> PrepareOptions:
    """The options of the `prepared` stage: the study's seed, then `options.prepare`."""
    return _prepare_options(options.prepare, options.seed, prefix="prepare")


def classify_config_of(options: StudyOptions) -> ClassifyConfig:
    """The options of the `classify` stage: `options.classify`, with the study's seed and then
    `options.classifier_settings` as its settings."""
    settings = _classifier_settings(
        options.classifier_settings, options.seed, prefix="classifier_settings"
    )
    return _classify_config(options.classify, settings, prefix="classify")


def rl_options_of(options: StudyOptions, env_kwargs: dict[str, Any] | None = None) -> RLOptions:
    """The options of the `rl` stage: the study's seed, then `options.rl` (and `env_kwargs`, the
    cohort the stage trains on, when given)."""
    values = dict(options.rl) if env_kwargs is None else {**options.rl, "env_kwargs": env_kwargs}
    return _rl_options(values, options.seed, prefix="rl")


def hourly_options_of(options: StudyOptions) -> HourlyOptions:
    """The options of the `hourly` stage: `options.hourly` over `HourlyOptions`' defaults."""
    return _hourly_options(options.hourly, prefix="hourly")


def hourly_config_of(options: StudyOptions) -> HourlyConfig:
    """The `HourlyConfig` of the `hourly` stage: `options.hourly.classify`, with the study's seed
    and then `options.hourly.classifier_settings` as its settings."""
    return _hourly_config(hourly_options_of(options), options.seed, prefix="hourly")


def _hourly_options(values: dict[str, Any], prefix: str = "") -> HourlyOptions:
    from training.study.hourly import HourlyOptions

    return build_options(HourlyOptions, values, prefix=prefix)


def _hourly_config(options: HourlyOptions, seed: int, prefix: str = "") -> HourlyConfig:
    from training.study.hourly import hourly_config

    try:
        return hourly_config(options, seed)
    except OptionsError as err:
        raise err.located(prefix=prefix) from None


def offline_options_of(options: StudyOptions) -> OfflineOptions:
    """The options of the `offline` stage: `options.offline` over `OfflineOptions`' defaults."""
    return _offline_options(options.offline, prefix="offline")


def _offline_options(values: dict[str, Any], prefix: str = "") -> OfflineOptions:
    from training.study.offline import OfflineOptions

    return build_options(OfflineOptions, values, prefix=prefix)


def _prepare_options(values: dict[str, Any], seed: int, prefix: str = "") -> PrepareOptions:
    from data_prep.prepare import PrepareOptions

    return build_options(PrepareOptions, {"seed": seed, **values}, prefix=prefix)


def _classifier_settings(values: dict[str, Any], seed: int, prefix: str = "") -> ClassifierSettings:
    from training.classification.models import ClassifierSettings

    return build_options(ClassifierSettings, {"seed": seed, **values}, prefix=prefix)


def _classify_config(
    values: dict[str, Any], settings: ClassifierSettings, prefix: str = ""
) -> ClassifyConfig:
    from training.classification.options import ClassifyConfig

    if "settings" in values:
        message = "set model options in classifier_settings"
        problem = Problem("settings", values["settings"], kind="rule", message=message)
        raise OptionsError([problem.within(prefix)])
    return build_options(ClassifyConfig, {**values, "settings": settings}, prefix=prefix)


def _rl_options(values: dict[str, Any], seed: int, prefix: str = "") -> RLOptions:
    from training.rl.options import RLOptions

    return build_options(RLOptions, {"seed": seed, **values}, prefix=prefix)


def load_study_options(path: Path | None, quick: bool, seed: int | None) -> StudyOptions:
    """Defaults, then `--quick`, then the config file, then `--seed`; validated whole, every
    stage's part included (`OptionsError` names the file and each field's path)."""
    values: dict[str, Any] = {}
    if quick:
        values = _merge(values, QUICK)
    if path is not None:
        values = _merge(values, read_config_file(path, what="study options"))
    if seed is not None:
        values["seed"] = seed
    defaults = StudyOptions()
    for key, value in values.items():
        base = getattr(defaults, key, None)
        if isinstance(base, dict) and isinstance(value, dict):
            values[key] = _merge(base, value)
    return replace_fields(defaults, values, where=str(path) if path is not None else "")


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
    return dataclasses.asdict(options)
