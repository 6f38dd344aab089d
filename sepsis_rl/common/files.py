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


def check_output_folder(out: Path) -> None:
    """Raise `NotADirectoryError` if `out`, or the nearest existing folder above it, exists and
    is not a folder: an output folder must be new or an existing folder. Cheap; call it before
    any long work, so a bad output path is refused before the work rather than after it."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            where = "exists" if path == out else f"cannot be created: {path} exists"
            raise NotADirectoryError(
                f"{out} {where} and is not a folder; give a new folder or an existing one"
            )


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a staging folder next to `out`; on success move its entries into `out`.

    `out` must be a folder or not exist (`check_output_folder`); this is checked before the
    caller's work starts. On any exception (KeyboardInterrupt included), in the caller's work or
    in the final move, the staging folder is removed and no `.partial` folder is left behind.
    Entries are moved with `os.replace`, so each lands whole; a new `out` appears whole, in one
    rename of the staging folder (tens of thousands of files need not be moved one by one).
    """
    out = Path(out)
    check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        check_output_folder(out)  # it may have appeared while the work ran
        if not out.exists():
            stage.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; a new folder is not
            os.replace(stage, out)
            return
        out.mkdir(exist_ok=True)
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    """This process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
