"""Every option of a `classify` run (`ClassifyConfig`), and its config file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepsis_rl.common.config_files import (
    ConfigFileError,
    check_known,
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


@dataclass(frozen=True)
class ClassifyConfig:
    """Every option of a `classify` run."""

    oversample: tuple[str, ...] = OVERSAMPLERS
    """Oversampling modes to compare (none, smote, ctgan)."""
    models: tuple[str, ...] = MODELS
    """Models to train."""
    select_metric: str = "pr_auc"
    """Validation metric that picks the best candidate."""
    threshold_rule: str = "f1"
    """How each candidate's decision threshold is chosen on validation patients (f1, youden)."""
    n_boot: int = 1000
    """Bootstrap resamples of the test patients for the confidence intervals."""
    fidelity: bool = True
    """Write the CTGAN fidelity report (when ctgan is among the modes)."""
    settings: ClassifierSettings = field(default_factory=ClassifierSettings)
    """Model and oversampler hyper-parameters, including the seed."""

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        for name in self.oversample:
            if name not in OVERSAMPLERS:
                raise ValueError(f"unknown oversampling {name!r}; choose from {OVERSAMPLERS}")
        for name in self.models:
            if name not in MODELS:
                raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
        if not self.oversample or not self.models:
            raise ValueError("choose at least one model and one oversampling mode")
        if self.select_metric not in SELECTABLE_METRICS:
            raise ValueError(
                f"cannot select on {self.select_metric!r}; choose from {SELECTABLE_METRICS}"
            )
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(
                f"unknown threshold rule {self.threshold_rule!r}; choose from {THRESHOLD_RULES}"
            )
        if self.n_boot < 100:
            raise ValueError(f"n_boot={self.n_boot} is too few for a 95% interval; use >= 100")
        strategy = self.settings.sampling_strategy
        if isinstance(strategy, str):
            if strategy not in ("auto", "minority", "not majority", "not minority", "all"):
                raise ValueError(
                    f"sampling_strategy={strategy!r}; give a ratio in (0, 1] (septic / "
                    "non-septic after oversampling) or 'auto'"
                )
        elif not 0.0 < float(strategy) <= 1.0:
            raise ValueError(f"sampling_strategy={strategy} must be a ratio in (0, 1]")
        if self.settings.ctgan_batch_size <= 0 or self.settings.ctgan_batch_size % 10:
            raise ValueError(
                f"ctgan_batch_size={self.settings.ctgan_batch_size} must be a positive multiple "
                "of 10 (CTGAN groups rows in packs of 10)"
            )


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

    The file holds any of `ClassifyConfig`'s fields; `settings` any of `ClassifierSettings`'.
    Raises `ConfigFileError` (a ValueError) for an unreadable file or an unknown field, naming
    the file, the field and the valid ones.
    """
    where = str(path)
    values = read_config_file(path, what="ClassifyConfig fields")
    check_known(values, ClassifyConfig, where, what="field")
    base = base or ClassifyConfig()
    settings = values.pop("settings", None) or {}
    if not isinstance(settings, Mapping):
        raise ConfigFileError(
            f"{where}: settings must be a mapping of ClassifierSettings fields to values"
        )
    for key in ("models", "oversample"):
        if key in values:  # one name, or a list of them
            values[key] = tuple([values[key]] if isinstance(values[key], str) else values[key])
    settings = replace_fields(base.settings, settings, where, what="settings field")
    return dataclasses.replace(base, **values, settings=settings)
