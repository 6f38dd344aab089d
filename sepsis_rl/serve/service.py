"""What `sepsis-rl serve` answers, without the web layer: a trained policy (and optionally a
sepsis classifier) loaded once, and one method per endpoint returning the JSON-ready answer.

`sepsis_rl.serve.app` wraps it in FastAPI and Ray Serve; the tests and a notebook can use it as
is. Every method raises `InputError` (answered 422) for content it cannot serve; nothing a client
sends is unpickled (the policy and the classifier are loaded from the server's own, manifest-
checked folders).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sepsis_env.env import (
    ACTION_NAMES,
    ADMISSION_HIGH,
    ADMISSION_LOW,
    COHORT_VITALS,
    OBS_HIGH,
    OBS_INDEX,
    OBS_LOW,
    OBS_NAMES,
    OBS_UNITS,
    SepsisEnv,
)
from sepsis_env.ids import is_sepsis_env
from sepsis_env.policies import clinician_protocol
from sepsis_rl.common.manifest import MANIFEST_FILE, read_provenance
from sepsis_rl.serve.problems import InputError, Problem
from sepsis_rl.serve.stay import RiskModel, read_stay, risk_or_none, stay_vitals
from sepsis_rl.serve.what_if import baseline_policies, simulate
from training.rl.options import RLOptions, resolved_env_kwargs
from training.rl.policy import LEARNED, GreedyPolicy, load_policy
from training.rl.recommend import VITALS, PatientError, patient_observation

TRAINED_RANGE_PERCENTILES = (1.0, 99.0)
"""The share of the training cohort's admission vitals a value may leave before a warning: a
value below the 1st or above the 99th percentile is one the policy rarely started from."""


REFUSED_HOURS_LISTED = 5
"""Hours of a stay without a recommendation named one by one in the warnings; the rest are
counted."""


class PolicyService:
    """The learned policy of `checkpoint` (and the classifier of `classifier`, if given), loaded
    once, answering the API's questions.

    Raises what `load_policy` and `RiskModel` raise for folders that cannot be served, and
    ValueError for a checkpoint not trained on SepsisEnv.
    """

    def __init__(self, checkpoint: str | Path, classifier: str | Path | None = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.policy: GreedyPolicy = load_policy(self.checkpoint)
        self.options: RLOptions = self.policy.options
        if not is_sepsis_env(self.options.env):
            raise ValueError(
                f"{checkpoint} was trained on {self.options.env}; `sepsis-rl serve` answers for "
                "SepsisEnv policies only (their observation is a patient's vitals)"
            )
        self.env_kwargs = resolved_env_kwargs(self.options)
        self.classifier_dir = Path(classifier) if classifier is not None else None
        self.risk = RiskModel(classifier) if classifier is not None else None
        self.value_kind = "q_values" if self.policy.has_q_values else "probabilities"
        self.trained_range = training_cohort_range(self.env_kwargs)

    # --- GET /v1/model ------------------------------------------------------------------------
    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """Which policy answers: checkpoint, algorithm, env, commit and training date (null when
        the checkpoint does not record them), classifier, the kind of action values, actions."""
        return {
            "checkpoint": str(self.checkpoint.resolve()),
            "algo": self.options.algo,
            "env": self.options.env,
            **self._provenance(),
            "classifier": str(self.classifier_dir.resolve()) if self.classifier_dir else None,
            "value_kind": self.value_kind,
            "actions": list(ACTION_NAMES),
        }

    def _provenance(self) -> dict[str, Any]:
        """The commit that trained the policy and when its checkpoint was written (its
        manifest's record; for a manifest written before that was recorded, no commit and the
        manifest's modification time)."""
        recorded = read_provenance(self.checkpoint)
        return {
            "commit": recorded["commit"],
            "trained_at": recorded["written_at"] or _written_at(self.checkpoint),
        }

    def model(self) -> dict[str, Any]:
        """The identity plus every observation field a request may give (`vitals`)."""
        vitals = []
        for name in OBS_NAMES:
            i = OBS_INDEX[name]
            low, high = self.trained_range.get(name, (None, None))
            vitals.append(
                {
                    "name": name,
                    "unit": OBS_UNITS[i],
                    "low": float(OBS_LOW[i]),
                    "high": float(OBS_HIGH[i]),
                    "required": name in VITALS,
                    "trained_low": low,
                    "trained_high": high,
                }
            )
        return {**self.identity, "vitals": vitals}

    # --- POST /v1/recommend -------------------------------------------------------------------
    def recommend(self, patient: dict[str, Any]) -> dict[str, Any]:
        """The greedy action for one patient, every action's value, the protocol's action and
        warnings for values outside the range the policy was trained on."""
        obs = observation_or_problems(patient)
        values = self._values(obs[None])[0]
        action = int(np.argmax(values))
        protocol = _protocol_action(obs)
        return {
            "action": action,
            "action_name": ACTION_NAMES[action],
            "value_kind": self.value_kind,
            "values": {name: float(v) for name, v in zip(ACTION_NAMES, values, strict=True)},
            "protocol": {"action": protocol, "action_name": ACTION_NAMES[protocol]},
            "warnings": self.range_warnings(obs),
            "observation": {name: float(v) for name, v in zip(OBS_NAMES, obs, strict=True)},
            "model": self.identity,
        }

    def _values(self, observations: np.ndarray) -> np.ndarray:
        if self.policy.has_q_values:
            return self.policy.q_values(observations)
        return self.policy.probabilities(observations)

    def range_warnings(self, obs: np.ndarray) -> list[str]:
        """One warning per vital outside the training cohort's 1st-99th percentiles."""
        warnings = []
        for name, (low, high) in self.trained_range.items():
            value, unit = float(obs[OBS_INDEX[name]]), OBS_UNITS[OBS_INDEX[name]]
            if value < low or value > high:
                share = TRAINED_RANGE_PERCENTILES[1] - TRAINED_RANGE_PERCENTILES[0]
                warnings.append(
                    f"{name} {value:g} {unit} is outside the middle {share:g} % of the training "
                    f"cohort's admission values ({low:g} to {high:g} {unit}): the policy saw few "
                    "such patients"
                )
        return warnings

    # --- POST /v1/stay ------------------------------------------------------------------------
    def stay(self, content: bytes, filename: str | None) -> dict[str, Any]:
        """Every hour of an uploaded `.psv` stay: the classifier's risk (null without one), the
        learned and the protocol action (null where the hour's vitals break the policy's input
        rules), and the vitals the policy was given. See `sepsis_rl.serve.stay` for how missing
        and out-of-range values are handled; the warnings list each case."""
        patient, hourly = read_stay(content, filename)
        vitals = stay_vitals(hourly)
        warnings = list(vitals.warnings)
        warnings.append(
            "the .psv format records no treatments: every hour is scored as if no oxygen, "
            "ventilation or vasopressors were running"
        )
        hours = [int(h) for h in hourly["ICULOS"]]
        observations: list[np.ndarray | None] = []
        refused = []
        for hour, row in zip(hours, vitals.values.to_dict("records"), strict=True):
            try:
                observations.append(patient_observation(row, source=f"hour {hour}"))
            except PatientError as err:
                observations.append(None)
                refused.append(f"{err}: no recommendation for this hour")
        warnings.extend(refused[:REFUSED_HOURS_LISTED])
        if len(refused) > REFUSED_HOURS_LISTED:
            warnings.append(f"and {len(refused) - REFUSED_HOURS_LISTED} more hours without one")
        scored = [i for i, obs in enumerate(observations) if obs is not None]
        actions: dict[int, int] = {}
        if scored:
            batch = np.stack([observations[i] for i in scored])
            actions = dict(zip(scored, (int(a) for a in self.policy.actions(batch)), strict=True))
        risks = risk_or_none(self.risk, hourly)
        rows = []
        for i, (hour, obs) in enumerate(zip(hours, observations, strict=True)):
            action = actions.get(i)
            protocol = None if obs is None else _protocol_action(obs)
            rows.append(
                {
                    "hour": hour,
                    "risk": risks[i],
                    "action": action,
                    "action_name": _action_name(action),
                    "protocol_action": protocol,
                    "protocol_action_name": _action_name(protocol),
                    "vitals": {name: _finite_or_none(vitals.values.at[i, name]) for name in VITALS},
                }
            )
        return {
            "patient": patient,
            "classifier": self.risk is not None,
            "hours": rows,
            "warnings": warnings,
        }

    # --- POST /v1/what-if ---------------------------------------------------------------------
    def what_if(self, patient: dict[str, Any], episodes: int, seed: int) -> dict[str, Any]:
        """The simulator's paired answer for this patient under the learned policy, the
        clinician protocol and no treatment (`sepsis_rl.serve.what_if.simulate`)."""
        obs = observation_or_problems(patient, field_prefix="patient.")
        values = {name: float(v) for name, v in zip(OBS_NAMES, obs, strict=True)}
        policies = {
            LEARNED: lambda observations, rows: self.policy.actions(observations),
            **baseline_policies(episodes, seed),
        }
        return simulate(values, policies, self.env_kwargs, episodes, seed)


def observation_or_problems(patient: dict[str, Any], field_prefix: str = "") -> np.ndarray:
    """`patient_observation`, with its refusal turned into one Problem per rule broken (the
    field named where the rule is about one: `SBP 80 below DBP 90` names SBP)."""
    try:
        return patient_observation(patient, source="body")
    except PatientError as err:
        parts = str(err).removeprefix("body: ").split("; ")
        problems = []
        for part in parts:
            first = part.split(" ", 1)[0].rstrip(":")
            field = field_prefix + first if first in OBS_INDEX else None
            problems.append(Problem(field, part))
        raise InputError(problems) from None


@functools.lru_cache(maxsize=4)
def _cohort_range(cohort: str | None, split: str | None, patients: int, seed: int) -> dict:
    if cohort is None:
        from data_prep.env_cohort import builtin_env_cohort

        table = builtin_env_cohort(n_patients=patients, seed=seed)
    else:
        table = pd.read_parquet(cohort)
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split]
    # The env admits these values clipped to its admission ranges; so does the range.
    values = np.clip(
        table[list(COHORT_VITALS)].to_numpy(dtype=float), ADMISSION_LOW, ADMISSION_HIGH
    )
    low, high = np.nanpercentile(values, TRAINED_RANGE_PERCENTILES, axis=0)
    return {
        name: (round(float(lo), 3), round(float(hi), 3))
        for name, lo, hi in zip(COHORT_VITALS, low, high, strict=True)
    }


def training_cohort_range(env_kwargs: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The 1st and 99th percentile of each admission vital over the cohort the policy was trained
    on (SepsisEnv's `cohort`, `split`, `builtin_*` arguments); empty when that cohort cannot be
    read (a Parquet path gone since training): the range is then unknown, not a reason to refuse."""
    cohort = env_kwargs.get("cohort")
    if cohort is not None and not isinstance(cohort, str | Path):
        return {}
    try:
        return _cohort_range(
            str(cohort) if cohort is not None else None,
            env_kwargs.get("split"),
            int(env_kwargs.get("builtin_patients", _SEPSIS_ENV_DEFAULTS["builtin_patients"])),
            int(env_kwargs.get("builtin_seed", _SEPSIS_ENV_DEFAULTS["builtin_seed"])),
        )
    except (OSError, ValueError, KeyError):
        return {}


_SEPSIS_ENV_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(SepsisEnv).parameters.items()
}


def _written_at(checkpoint: Path) -> str | None:
    """When the checkpoint was written: its manifest's modification time (UTC, ISO 8601), the
    last file `sepsis-rl train` writes into it; None without a manifest."""
    from datetime import UTC, datetime

    manifest = checkpoint / MANIFEST_FILE
    if not manifest.is_file():
        return None
    stamp = datetime.fromtimestamp(manifest.stat().st_mtime, tz=UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def _protocol_action(obs: np.ndarray) -> int:
    """The clinician protocol's action (deterministic: its generator is never drawn from)."""
    return int(clinician_protocol(obs, np.random.default_rng(0)))


def _action_name(action: int | None) -> str | None:
    return None if action is None else ACTION_NAMES[action]


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
