"""Options dataclasses and their config files (YAML or JSON): one reader, one validation, one way
of saying what is wrong.

Every options dataclass of the project (`RLOptions`, `StudyOptions`, `ClassifyConfig`, ...) is an
`options_dataclass`: a standard dataclass (`dataclasses.fields`, `replace`, `asdict` and pickling
work as usual) that pydantic validates whenever it is built, from a file, the command line or
Python, and whenever a field is assigned. Its field annotations say what is allowed
(`Annotated[int, Field(gt=0)]`, `Literal[...]`), its one-line field docstrings are the help of
the errors, and rules between fields are `model_validator`s that raise `RuleError`.

Numbers given as text are refused (pydantic's strict mode): `episodes: "20"` is an error at once,
not a crash in the middle of a run. An integer is accepted where a number is expected; a field
that holds a tuple says `Field(strict=False)` so that a YAML list is accepted for it.

An invalid value raises `OptionsError` (a `ConfigFileError`, so a `ValueError`) listing every
problem: the file, the field path (`rl.episodes`, `classify.oversample[1]`), what was given,
what is allowed, and the field's docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo

T = TypeVar("T")

OPTIONS_CONFIG = ConfigDict(
    strict=True, extra="forbid", use_attribute_docstrings=True, validate_assignment=True
)
"""How every options dataclass is validated (see the module docstring)."""

MAX_SHOWN = 80
"""Characters of a given value an error message shows."""


class ConfigFileError(ValueError):
    """A config file that cannot be read, or options that are not valid."""


class RuleError(ValueError):
    """A rule between options that the values break; raised by a `model_validator` and reported
    at `field`, with the value it has."""

    def __init__(self, field: str, given: Any, message: str):
        super().__init__(message)
        self.field, self.given, self.message = field, given, message

    def __reduce__(self):
        return type(self), (self.field, self.given, self.message)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one option."""

    path: str
    """Where the option is: `episodes`, `rl.episodes`, `classify.oversample[1]`."""
    given: Any
    """What was given (for an unknown option: the unknown names)."""
    allowed: str = ""
    """What is allowed, in words (for an unknown option: the valid names)."""
    help: str = ""
    """The option's docstring."""
    kind: Literal["value", "unknown", "rule", "missing"] = "value"
    message: str = ""
    """What rule is broken (kind "rule")."""

    def within(self, prefix: str) -> Problem:
        """The same problem, its path under `prefix`."""
        return dataclasses.replace(self, path=_join(prefix, self.path))

    def line(self) -> str:
        """The problem as one line of an error message."""
        help = f" ({self.help})" if self.help else ""
        if self.kind == "unknown":
            where = f"{self.path}: " if self.path else ""
            return f"{where}unknown option(s) {sorted(self.given)}; valid: {self.allowed}"
        if self.kind == "missing":
            return f"{self.path}: required{help}"
        if self.kind == "rule":
            return f"{self.path} = {_shown(self.given)}: {self.message}{help}"
        return f"{self.path or 'the options'} = {_shown(self.given)}: expected {self.allowed}{help}"


class OptionsError(ConfigFileError):
    """Options that are not valid: every problem, with the file they came from (if any)."""

    def __init__(self, problems: Iterable[Problem], where: str = ""):
        self.problems, self.where = tuple(problems), where
        lines = [problem.line() for problem in self.problems]
        head = f"{where}: " if where else ""
        if len(lines) == 1:
            super().__init__(head + lines[0])
        else:
            bullets = "".join(f"\n  - {line}" for line in lines)
            super().__init__(f"{head}{len(lines)} options are not valid:{bullets}")

    def __reduce__(self):
        return type(self), (self.problems, self.where)

    def located(self, where: str = "", prefix: str = "") -> OptionsError:
        """The same problems, under the path `prefix`, reported for the file `where`."""
        return OptionsError([p.within(prefix) for p in self.problems], where or self.where)


def options_dataclass(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """Make `cls` an options dataclass: a standard dataclass validated by pydantic (with
    `OPTIONS_CONFIG`) when it is built, replaced or assigned, raising `OptionsError`."""

    def wrap(cls: type[T]) -> type[T]:
        cls = pydantic_dataclass(cls, config=OPTIONS_CONFIG, frozen=frozen)
        cls.__init__ = _raising_options_errors(cls, cls.__init__)
        if not frozen:
            cls.__setattr__ = _assigning_only_valid_values(cls, cls.__setattr__)
        return cls

    return wrap if cls is None else wrap(cls)


def _raising_options_errors(cls: type, method: Callable) -> Callable:
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ValidationError as err:
            raise OptionsError(problems_of(cls, err)) from None

    return checked


def _assigning_only_valid_values(cls: type, setattr_: Callable) -> Callable:
    """`setattr_` that leaves the field as it was when the new value breaks a rule (pydantic
    checks the rules between fields after the assignment)."""

    @functools.wraps(setattr_)
    def checked(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name, _ABSENT)
        try:
            setattr_(self, name, value)
        except ValidationError as err:
            if before is not _ABSENT:
                object.__setattr__(self, name, before)
            raise OptionsError(problems_of(cls, err)) from None

    return checked


_ABSENT = object()


def build_options(cls: type[T], values: Any, where: str = "", prefix: str = "") -> T:
    """`cls(**values)`, reporting problems for the file `where` under the path `prefix`."""
    return _built(lambda fields: cls(**fields), cls, values, where, prefix)


def replace_fields(instance: T, values: Any, where: str = "", prefix: str = "") -> T:
    """`instance` with `values` applied (`dataclasses.replace`), validated like `build_options`."""

    def make(fields: dict[str, Any]) -> T:
        return dataclasses.replace(instance, **fields)

    return _built(make, type(instance), values, where, prefix)


def _built(make: Callable[[dict[str, Any]], T], cls: type, values: Any, where: str, prefix: str):
    if not isinstance(values, Mapping):
        allowed = f"a mapping of {cls.__name__} options to values"
        raise OptionsError([Problem(prefix, values, allowed)], where)
    not_names = [key for key in values if not isinstance(key, str)]
    if not_names:
        raise OptionsError([_unknown(cls, prefix, not_names)], where)
    try:
        return make(dict(values))
    except OptionsError as err:
        raise err.located(where, prefix) from None


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


def check_known(values: Mapping[str, Any], cls: type, where: str = "", prefix: str = "") -> None:
    """Refuse keys of `values` that are not fields of `cls`, naming the valid ones."""
    unknown = [key for key in values if key not in field_names(cls)]
    if unknown:
        raise OptionsError([_unknown(cls, prefix, unknown)], where)


# -- pydantic's errors as problems ----------------------------------------------------------------


def problems_of(cls: type, err: ValidationError) -> list[Problem]:
    """The problems of a pydantic `ValidationError` raised validating `cls`, one per option."""
    problems: dict[tuple[str, str], Problem] = {}
    unknown: dict[str, tuple[type, list[Any]]] = {}
    errors = err.errors(include_url=False)
    deeper = {tuple(e["loc"][:i]) for e in errors for i in range(len(e["loc"]))}
    for error in errors:
        loc, kind = tuple(error["loc"]), error["type"]
        if kind == "too_short" and loc in deeper:
            continue  # pydantic counts the items left after an item's own error: said already
        if kind == "unexpected_keyword_argument":
            path, owner, *_ = _locate(cls, loc[:-1])
            unknown.setdefault(path, (owner, []))[1].append(loc[-1])
            continue
        path, annotation, metadata, help = _locate(cls, loc)
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, OptionsError):  # an options class validated inside this one
            for problem in cause.problems:
                problems.setdefault((problem.kind, _join(path, problem.path)), problem.within(path))
            continue
        if isinstance(cause, RuleError):
            path, _, _, help = _locate(cls, (*loc, cause.field))
            problem = Problem(path, cause.given, help=help, kind="rule", message=cause.message)
        elif isinstance(cause, ValueError):  # a field validator's own diagnosis
            problem = Problem(path, error["input"], help=help, kind="rule", message=str(cause))
        elif kind in ("missing", "missing_argument"):
            problem = Problem(path, None, help=help, kind="missing")
        else:
            problem = Problem(path, error["input"], _allowed(annotation, metadata), help)
        problems.setdefault((problem.kind, path), problem)
    found = [_unknown(owner, path, names) for path, (owner, names) in unknown.items()]
    return found + list(problems.values())


def _unknown(cls: type, path: str, names: Sequence[Any]) -> Problem:
    valid = ", ".join(field_names(cls)) if dataclasses.is_dataclass(cls) else "none"
    return Problem(path, list(names), valid, kind="unknown")


def _locate(cls: type, loc: tuple) -> tuple[str, Any, tuple, str]:
    """Follow pydantic's error location from `cls`: the field path, the annotation and the
    constraints of what is there, and the docstring of the last field on the way.

    A union stops the walk: pydantic reports one error per member (`lr.float`,
    `lr.list[list[float]]`), and the user gave one value for the whole field."""
    path, annotation, metadata, help = "", cls, (), ""
    for item in loc:
        annotation, metadata = _unwrapped(annotation, metadata)
        origin, args = get_origin(annotation), get_args(annotation)
        if dataclasses.is_dataclass(annotation):
            info = _field_infos(annotation).get(item)
            if info is None:
                break
            path = _join(path, str(item))
            annotation, metadata = info.annotation, tuple(info.metadata)
            help = _first_sentence(info.description or "")
        elif origin in (list, tuple, Sequence) and isinstance(item, int):
            path, annotation, metadata = f"{path}[{item}]", args[0] if args else Any, ()
        elif origin in (dict, Mapping) and isinstance(item, str):
            path, annotation, metadata = _join(path, item), args[1] if args else Any, ()
        else:
            break
    return path, annotation, metadata, help


def _field_infos(cls: type) -> dict[str, FieldInfo]:
    return getattr(cls, "__pydantic_fields__", {})


def _unwrapped(annotation: Any, metadata: tuple) -> tuple[Any, tuple]:
    """`annotation` without `Annotated` (its constraints added to `metadata`), and `X | None`
    as `X` (pydantic reports an optional field's errors as the member's)."""
    while True:
        if isinstance(annotation, FieldInfo):
            annotation, metadata = annotation.annotation, (*metadata, *annotation.metadata)
        elif hasattr(annotation, "__metadata__"):  # Annotated[X, ...]
            extra = []
            for item in annotation.__metadata__:
                extra.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            annotation, metadata = annotation.__origin__, (*metadata, *extra)
        elif _is_union(annotation) and len(members := _not_none(annotation)) == 1:
            annotation = members[0]
        else:
            return annotation, metadata


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _not_none(annotation: Any) -> list[Any]:
    return [a for a in get_args(annotation) if a is not type(None)]


def _allowed(annotation: Any, metadata: tuple = ()) -> str:
    """What `annotation` with the constraints `metadata` allows, in words."""
    if _is_union(annotation):
        words = [_allowed(member) for member in _not_none(annotation)]
        if len(words) < len(get_args(annotation)):
            words.append("null")
        return ", or ".join(words)
    annotation, metadata = _unwrapped(annotation, metadata)
    if _is_union(annotation):
        return _allowed(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        size = max([m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)] or [0])
        kind = {0: "a list", 1: "a non-empty list"}.get(size, f"a list of at least {size} items")
        return f"{kind}, each {_allowed(args[0]) if args else 'any value'}"
    if origin in (dict, Mapping):
        values = args[1] if len(args) == 2 else Any
        return "a mapping" + ("" if values is Any else f" of names to values, each {values}")
    if dataclasses.is_dataclass(annotation):
        return f"a mapping of {annotation.__name__} options to values"
    words = {
        type(None): "null",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        Any: "any value",
    }
    word = words.get(annotation) or (
        "a path"
        if isinstance(annotation, type) and issubclass(annotation, PurePath)
        else getattr(annotation, "__name__", str(annotation))
    )
    bounds = [_bound(m) for m in metadata if _bound(m)]
    return " ".join([word, " and ".join(bounds)]).strip()


def _bound(constraint: Any) -> str:
    for kind, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if isinstance(constraint, annotated_types.BaseMetadata) and hasattr(constraint, kind):
            return f"{sign} {getattr(constraint, kind)}"
    if isinstance(constraint, annotated_types.MultipleOf):
        return f"a multiple of {constraint.multiple_of}"
    return ""


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring, on one line (a sentence ends before a capital)."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(text.split()), maxsplit=1)[0]


def _join(prefix: str, path: str) -> str:
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
