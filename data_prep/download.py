"""Fetch the public PhysioNet 2019 training files into a local cache, resumably.

The release's zip link is dead, so files are fetched one by one (reference, section 1). A file
already in the cache is skipped; each download goes to a `.part` file that is renamed into place
only when complete, so an interrupted run resumes where it stopped and never leaves a truncated
`.psv` behind.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PHYSIONET_BASE_URL = "https://physionet.org/files/challenge-2019/1.0.0/training"
# Set A ids present in v1.0.0: 1-19312, 19314-20000, 20007, 20308-20643 (reference, section 1).
SET_A_ID_RANGES = ((1, 19312), (19314, 20000), (20007, 20007), (20308, 20643))
SET_B_ID_RANGES = ((100001, 120000),)
TIMEOUT_S = 60


@dataclass
class DownloadResult:
    """What a download run did."""

    fetched: list[Path] = field(default_factory=list)
    skipped_existing: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def release_files(sets: tuple[str, ...] = ("A", "B"), limit: int | None = None) -> list[str]:
    """Relative paths (`training_setA/p000001.psv`, ...) of the release's files, per set, the
    first `limit` of each set when given."""
    paths = []
    for name in sets:
        ranges = {"A": SET_A_ID_RANGES, "B": SET_B_ID_RANGES}.get(name.upper())
        if ranges is None:
            raise ValueError(f"unknown set {name!r}: the release has sets A and B")
        ids = [i for lo, hi in ranges for i in range(lo, hi + 1)]
        if limit is not None:
            ids = ids[:limit]
        paths.extend(f"training_set{name.upper()}/p{i:06d}.psv" for i in ids)
    return paths


def download(
    out_dir: Path,
    base_url: str = PHYSIONET_BASE_URL,
    files: list[str] | None = None,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> DownloadResult:
    """Download `files` (default: all of sets A and B) from `base_url` into `out_dir`."""
    out_dir = Path(out_dir)
    files = release_files() if files is None else files
    result = DownloadResult()
    todo = []
    for rel in files:
        if (out_dir / rel).is_file():
            result.skipped_existing += 1
        else:
            todo.append(rel)
    done = result.skipped_existing
    if progress:
        progress(done, len(files))

    def fetch(rel: str) -> tuple[str, Path | None, str]:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        url = f"{base_url.rstrip('/')}/{rel}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as f:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
            os.replace(part, target)
            return rel, target, ""
        except (urllib.error.URLError, OSError) as exc:
            part.unlink(missing_ok=True)
            return rel, None, f"{url}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for rel, path, error in pool.map(fetch, todo):
            if path is not None:
                result.fetched.append(path)
            else:
                result.failed[rel] = error
            done += 1
            if progress:
                progress(done, len(files))
    return result
