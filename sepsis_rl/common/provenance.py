"""Which source wrote a result: the git commit of this checkout, for manifests and reports."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 5.0
"""Longest wait for a git command (a slow network file system should not stall a run)."""

DIRTY_SUFFIX = "+dirty"
"""Appended to the commit when tracked files differ from it."""


@functools.cache
def source_commit() -> str | None:
    """The commit this code was checked out at (40 hex digits), with `DIRTY_SUFFIX` when tracked
    files were changed since; None outside a git checkout or without git. Asked once per
    process: a run does not change its own source."""
    root = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return commit + (DIRTY_SUFFIX if changes else "")


def short_commit(commit: str | None) -> str | None:
    """`commit` as people quote it: 7 hex digits, the dirty mark kept."""
    if commit is None:
        return None
    dirty = commit.endswith(DIRTY_SUFFIX)
    return commit[:7] + (DIRTY_SUFFIX if dirty else "")
