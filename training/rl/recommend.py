"""`recommend`: the learned policy's action and every action's Q-value for one patient state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sepsis_env.ids import is_sepsis_env
from training.rl.policy import load_policy

# --- recommend ------------------------------------------------
VITALS = ("HR", "O2Sat", "SBP", "DBP", "MAP", "Resp", "Temp", "Lactate", "Age")
"""Vitals a patient file must give, by PhysioNet name."""


CONTEXT_DEFAULTS = {
    "oxygen": 0.0,
    "ventilation": 0.0,
    "vasopressors": 0.0,
    "ventilation_hours": 0.0,
    "vasopressor_hours": 0.0,
    "stable_hours": 0.0,
    "hours": 0.0,
}
"""What a clinician may not have at hand: no support running, at the start of the episode."""


FLAGS = ("oxygen", "ventilation", "vasopressors")


class PatientError(ValueError):
    """A patient file that cannot be turned into an observation; the message says why."""


UTF8_BOM = "\ufeff"
"""The byte-order mark some editors (Notepad, Excel) put at the start of a UTF-8 file."""


def read_patient_file(path: str | Path) -> dict:
    """A patient file's JSON object: `{"HR": 112, "O2Sat": 90, ...}`.

    Accepts a UTF-8 byte-order mark. Raises `PatientError`, naming the file and the line, for a
    file that cannot be read, is not UTF-8 or not JSON, is not one JSON object, repeats a key,
    or uses NaN/Infinity (not JSON, though Python's reader takes them). Values are checked by
    `patient_observation`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PatientError(f"cannot read {path}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8").removeprefix(UTF8_BOM)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PatientError(f"{path}, line {line}: not UTF-8 text; save the file as UTF-8") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=lambda pairs: _object_without_repeats(pairs, text),
            parse_constant=_refuse_constant,
        )
    except _RepeatedKeyError as err:
        raise PatientError(
            f"{path}, line {err.line}: key {err.key!r} appears more than once; give each value once"
        ) from None
    except _NonFiniteLiteralError as err:
        raise PatientError(
            f"{path}: {err.literal} is not a number JSON allows; give a measured value"
        ) from None
    except json.JSONDecodeError as err:
        raise PatientError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, dict):
        raise PatientError(
            f'{path}: expected one JSON object of vitals such as {{"HR": 112, ...}}, '
            f"got a JSON {_json_kind(data)}"
        )
    nested = [key for key, value in data.items() if isinstance(value, dict | list)]
    if nested:
        raise PatientError(
            f"{path}: {nested} hold nested objects or lists; each field is one number"
        )
    return data


class _RepeatedKeyError(ValueError):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _NonFiniteLiteralError(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _object_without_repeats(pairs: list[tuple[str, object]], text: str) -> dict:
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            raise _RepeatedKeyError(key, _line_of_second(text, key))
        seen.add(key)
    return dict(pairs)


def _line_of_second(text: str, key: str) -> int:
    """The line of the second `"key":` in `text` (the repeat), 1-based; 0 if not found."""
    import re

    found = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return text.count("\n", 0, found[1]) + 1 if len(found) > 1 else 0


def _refuse_constant(literal: str) -> float:
    raise _NonFiniteLiteralError(literal)


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "number")


def patient_observation(patient: dict, source: str = "patient") -> np.ndarray:
    """The SepsisEnv observation for a patient given by PhysioNet names (+ optional context).

    Raises `PatientError` naming every missing, unknown, non-numeric or impossible value.
    """
    from sepsis_env.env import OBS_HIGH, OBS_INDEX, OBS_LOW, OBS_NAMES, OBS_UNITS

    if not isinstance(patient, dict):
        raise PatientError(
            f"{source}: expected a JSON object of vitals, got {type(patient).__name__}"
        )
    problems = []
    missing = [name for name in VITALS if name not in patient]
    if missing:
        problems.append(f"missing vitals {missing} (required: {list(VITALS)})")
    unknown = sorted(set(patient) - set(OBS_NAMES))
    if unknown:
        problems.append(f"unknown fields {unknown} (known: {list(OBS_NAMES)})")
    values = dict(CONTEXT_DEFAULTS)
    for name, raw in patient.items():
        if name not in OBS_INDEX:
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            problems.append(f"{name}: {raw!r} is not a number")
            continue
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name}: {raw!r} is not a number")
            continue
        i = OBS_INDEX[name]
        if not np.isfinite(value):
            problems.append(f"{name}: {raw!r} is not a finite number")
        elif not OBS_LOW[i] <= value <= OBS_HIGH[i]:
            problems.append(
                f"{name}: {value:g} {OBS_UNITS[i]} is impossible "
                f"(allowed {OBS_LOW[i]:g} to {OBS_HIGH[i]:g} {OBS_UNITS[i]})"
            )
        elif name in FLAGS and value not in (0.0, 1.0):
            problems.append(f"{name}: {value:g} must be 0 (not running) or 1 (running)")
        values[name] = value
    if not problems and values["SBP"] < values["DBP"]:
        problems.append(f"SBP {values['SBP']:g} below DBP {values['DBP']:g} mmHg is impossible")
    if not problems and not values["DBP"] <= values["MAP"] <= values["SBP"]:
        problems.append(
            f"MAP {values['MAP']:g} must lie between DBP {values['DBP']:g} and "
            f"SBP {values['SBP']:g} mmHg"
        )
    if problems:
        raise PatientError(f"{source}: " + "; ".join(problems))
    return np.array([values[name] for name in OBS_NAMES], dtype=np.float32)


def recommend(
    checkpoint: str | Path, patient: dict, source: str = "patient", algo: str | None = None
) -> dict:
    """The greedy action for one patient state, with every action's Q-value (DQN) or
    probability (PPO, APPO, IMPALA); `algo` refuses a checkpoint of another algorithm."""
    from sepsis_env.env import ACTION_NAMES, OBS_NAMES

    policy = load_policy(checkpoint, algo)
    if not is_sepsis_env(policy.options.env):
        raise ValueError(f"{checkpoint} was trained on {policy.options.env}, not SepsisEnv")
    obs = patient_observation(patient, source)
    kind = "q_values" if policy.has_q_values else "probabilities"
    values = policy.q_values(obs[None])[0] if policy.has_q_values else None
    if values is None:
        values = policy.probabilities(obs[None])[0]
    action = int(np.argmax(values))
    return {
        "algo": policy.options.algo,
        "action": action,
        "action_name": ACTION_NAMES[action],
        kind: {ACTION_NAMES[a]: float(values[a]) for a in range(len(ACTION_NAMES))},
        "observation": {name: float(v) for name, v in zip(OBS_NAMES, obs, strict=True)},
    }
