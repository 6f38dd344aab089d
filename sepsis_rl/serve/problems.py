"""What the API says about a request it refuses: one `Problem` per thing wrong with it.

Every refusal of a request's content answers 422 with `{"detail": [Problem, ...]}`, whether the
problem was found by FastAPI's own validation (pydantic) or by the project's checks (the vitals'
cross-field rules of `training.rl.recommend.patient_observation`, the `.psv` reader of
`data_prep.reader`), so a client reads one shape: the field at fault (dotted for nested bodies,
e.g. `patient.HR`; null when the problem is the body as a whole), the line and column for a
file (1-based, line 1 is the header; null otherwise) and a message that says what to fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request."""

    field: str | None
    """The request field at fault (`HR`, `patient.MAP`, `file`), or None for the whole body."""
    msg: str
    """What is wrong and what to do."""
    line: int | None = None
    """For an uploaded file: the 1-based line (line 1 is the header)."""
    column: int | None = None
    """For an uploaded file: the 1-based column."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the contract: field, line, column, msg."""
        data = asdict(self)
        return {key: data[key] for key in ("field", "line", "column", "msg")}


class InputError(ValueError):
    """A request whose content cannot be served; answered 422 with its problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.msg for p in problems))
        self.problems = problems
