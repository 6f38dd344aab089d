"""Every option of a `classify` run (`ClassifyConfig`), and its config file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from sepsis_rl.common.config_files import (
    build_options,
    options_dataclass,
    read_config_file,
    replace_fields,
)
from training.classification.metrics import (
    SELECTABLE_METRICS,
    THRESHOLD_RULES,
)
from training.classification.models import (
    MODELS,
    OVERSAMPLERS,
    ClassifierSettings,
)

Names = Field(strict=False, min_length=1)
"""A non-empty tuple of names; a list (from YAML or JSON) is accepted for it."""


@options_dataclass(frozen=True)
class ClassifyConfig:
    """Every option of a `classify` run."""

    oversample: Annotated[tuple[Literal[OVERSAMPLERS], ...], Names] = OVERSAMPLERS
    """Oversampling modes to compare (none, smote, ctgan)."""
    models: Annotated[tuple[Literal[MODELS], ...], Names] = MODELS
    """Models to train."""
    select_metric: Literal[SELECTABLE_METRICS] = "pr_auc"
    """Validation metric that picks the best candidate."""
    threshold_rule: Literal[THRESHOLD_RULES] = "f1"
    """How each candidate's decision threshold is chosen on validation patients (f1, youden)."""
    n_boot: Annotated[int, Field(ge=100)] = 1000
    """Bootstrap resamples of the test patients for the confidence intervals (at least 100 for a
    95% interval)."""
    fidelity: bool = True
    """Write the CTGAN fidelity report (when ctgan is among the modes)."""
    settings: ClassifierSettings = field(default_factory=ClassifierSettings)
    """Model and oversampler hyper-parameters, including the seed."""

    @field_validator("settings", mode="before")
    @classmethod
    def _settings_from_mapping(cls, value: Any) -> Any:
        """`settings` may be given as a mapping of `ClassifierSettings` fields."""
        return build_options(ClassifierSettings, value) if isinstance(value, Mapping) else value

    def validate(self) -> None:
        """Nothing left to check: a `ClassifyConfig` is validated when it is built."""


def classify_config_dict(config: ClassifyConfig) -> dict[str, Any]:
    """What a best-configuration file holds (`sepsis-rl analyze` writes it, `classify --config`
    reads it back): the candidates, the selection metric and every setting. The other options
    are left to the `classify` command line."""
    return {
        "models": list(config.models),
        "oversample": list(config.oversample),
        "select_metric": config.select_metric,
        "settings": dataclasses.asdict(config.settings),
    }


def classify_config_from_file(
    path: str | Path, base: ClassifyConfig | None = None
) -> ClassifyConfig:
    """`base` (or the defaults) with the fields of a YAML/JSON config file applied.

    The file holds any of `ClassifyConfig`'s fields (`models` and `oversample` also as one name);
    `settings` any of `ClassifierSettings`'. Raises `ConfigFileError` (a ValueError) for an
    unreadable file, an unknown field or a value that is not allowed, naming the file, the field
    and what is allowed.
    """
    values = read_config_file(path, what="ClassifyConfig fields")
    return classify_config_from_dict(values, base, where=str(path))


def classify_config_from_dict(
    values: Mapping[str, Any], base: ClassifyConfig | None = None, where: str = "", prefix: str = ""
) -> ClassifyConfig:
    """`base` (or the defaults) with `values` applied, validated; `settings` overrides only the
    settings it names."""
    base = base or ClassifyConfig()
    if not isinstance(values, Mapping):
        return replace_fields(base, values, where, prefix)  # refused, saying what is expected
    values = dict(values)
    for key in ("models", "oversample"):
        if isinstance(values.get(key), str):  # one name, or a list of them
            values[key] = [values[key]]
    if isinstance(values.get("settings"), Mapping):
        values["settings"] = {**dataclasses.asdict(base.settings), **values["settings"]}
    return replace_fields(base, values, where, prefix)
