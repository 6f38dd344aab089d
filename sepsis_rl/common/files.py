"""Writing outputs so that a failure or Ctrl-C never leaves anything half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a staging folder next to `out`; on success move its entries into `out`.

    On any exception (KeyboardInterrupt included) the staging folder is removed and `out` is left
    as it was. Entries are moved with `os.replace`, so each lands whole.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    out.mkdir(exist_ok=True)
    for entry in sorted(stage.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON (numpy values and paths included) atomically, as `write_text_atomic` does."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def copy_to_storage(source: str | Path, target: str) -> None:
    """Copy a folder (or a URI's contents) to `target`, a local path or a URI (s3://, gs://,
    file://), creating the destination folder first: Arrow's `copy_files` does not, on a local
    file system, for a folder without sub-folders. Raises OSError or ValueError on failure."""
    import pyarrow.fs

    if "://" not in target:
        target = str(Path(target).resolve())
    filesystem, path = pyarrow.fs.FileSystem.from_uri(target)
    filesystem.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(source), target)
