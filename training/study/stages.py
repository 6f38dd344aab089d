"""Stages of `sepsis-rl run` that are skipped when their inputs have not changed.

A stage's key is a fingerprint of everything it depends on: its own settings and the keys of the
stages it reads from (or, for raw input files, their names, sizes and modification times). When a
stage finishes, its key is written to `<stage dir>/stage.json`, last and atomically; a rerun
skips a stage whose recorded key matches. A crash or Ctrl-C mid-stage leaves no record, so the
rerun redoes that stage and everything after it, and nothing before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sepsis_rl.common.files import write_json_atomic

STAGE_RECORD = "stage.json"


def fingerprint(value: Any) -> str:
    """A stable short hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_fingerprint(path: Path) -> str:
    """Fingerprint of raw input files: relative names, sizes and modification times.

    Cheap even for 40,000 files, and changes when any file is added, removed or rewritten.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return fingerprint([path.name, stat.st_size, stat.st_mtime_ns])
    entries = []
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            stat = os.stat(full)
            entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    entries.sort()
    return fingerprint(entries)


@dataclass
class Stage:
    """One stage of the run: where it writes, and the key its outputs were made with."""

    name: str
    directory: Path
    key: str
    started: float | None = field(default=None, compare=False)

    def is_done(self) -> bool:
        """True when the stage finished before with exactly this key."""
        record = self.directory / STAGE_RECORD
        if not record.is_file():
            return False
        try:
            return json.loads(record.read_text()).get("key") == self.key
        except (json.JSONDecodeError, OSError):
            return False

    def mark_done(self, details: dict[str, Any] | None = None) -> None:
        """Record that the stage finished (call after every output is in place), with its wall
        time since the first `invalidate` and when it finished."""
        payload = {"stage": self.name, "key": self.key, **(details or {})}
        if self.started is not None:
            payload["seconds"] = round(time.perf_counter() - self.started, 1)
        payload["finished_utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        write_json_atomic(self.directory / STAGE_RECORD, payload)

    def invalidate(self) -> None:
        """Forget that the stage finished (before rewriting its outputs); starts its clock."""
        if self.started is None:
            self.started = time.perf_counter()
        (self.directory / STAGE_RECORD).unlink(missing_ok=True)
