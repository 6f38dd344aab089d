"""Config files (YAML or JSON) into options dataclasses: one reader, one unknown-key check.

Every options dataclass of the project (`RLOptions`, `StudyOptions`, `ClassifyConfig`, ...) is
read the same way: `read_config_file` gives the file's mapping (or says what is wrong with the
file), and `replace_fields` applies a mapping to a dataclass instance, refusing keys that are not
fields with the list of the ones that are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A config file that cannot be read, or that names an unknown option."""


def read_config_file(path: str | Path, what: str = "options") -> dict[str, Any]:
    """The mapping a YAML or JSON file holds (`.json` is read as JSON, anything else as YAML;
    an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: cannot read the config file ({err})") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        loaded = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigFileError(f"{path}: not valid {kind}: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"{path}: expected a mapping of {what} to values")
    return loaded


def field_names(cls: type) -> list[str]:
    """The field names of a dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def check_known(values: Mapping[str, Any], cls: type, where: str = "", what: str = "") -> None:
    """Refuse keys of `values` that are not fields of `cls`, naming the valid ones."""
    unknown = sorted(set(values) - set(field_names(cls)))
    if unknown:
        prefix = f"{where}: " if where else ""
        noun = what or f"{cls.__name__} option"
        raise ConfigFileError(
            f"{prefix}unknown {noun}(s) {unknown}; valid: {', '.join(field_names(cls))}"
        )


def replace_fields(instance: T, values: Mapping[str, Any], where: str = "", what: str = "") -> T:
    """`instance` with `values` applied, after `check_known`."""
    check_known(values, type(instance), where, what)
    return dataclasses.replace(instance, **values)
