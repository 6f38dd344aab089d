"""A folder's manifest: the sha256 of every file, written with the folder, checked before loading.

Checkpoints and model files hold pickles, and unpickling runs whatever code the pickle names. So
a folder is written with `MANIFEST.json` beside its files, and `verify_manifest` runs before
anything in the folder is unpickled or loaded: a missing file, a file the manifest does not list
(an added pickle), or a file whose size or sha256 differs is refused with a `ManifestError`
naming the file and what was expected.

    {
      "format": "sepsis-rl-manifest/1",
      "kind": "what wrote the folder (a loader refuses another kind)",
      "written_at": "2026-12-01T04:50:00Z",                  UTC, when it was written
      "commit": "<40 hex digits>[+dirty]" or null,           the source that wrote it
      "files": {"relative/path.pkl": {"bytes": 1234, "sha256": "..."}, ...},
      "signature": {"algorithm": "HMAC-SHA256", "value": "..."}     only with a key
    }

Without a key the manifest catches accidents: a truncated copy, a half-finished sync, a file
swapped for another. It does not stop someone who can write the folder, because they can write
the manifest too. With a key (a file named by the `SEPSIS_RL_MANIFEST_KEY_FILE` environment
variable) the manifest is signed with HMAC-SHA256 when written, and loading requires a valid
signature: changing any file then needs the key. The key must stay secret; anyone who holds it
can sign any folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sepsis_rl.common.files import write_json_atomic
from sepsis_rl.common.provenance import source_commit

MANIFEST_FILE = "MANIFEST.json"
"""The manifest's name inside the folder it describes."""


MANIFEST_FORMAT = "sepsis-rl-manifest/1"


KEY_FILE_ENV = "SEPSIS_RL_MANIFEST_KEY_FILE"
"""Environment variable naming the file that holds the HMAC key (unset: manifests unsigned)."""


MIN_KEY_BYTES = 16
"""Shortest key accepted; `secrets.token_hex(32)` gives 64."""


SIGNATURE_ALGORITHM = "HMAC-SHA256"


MAX_PROBLEMS_SHOWN = 5
"""Problems listed in one error message (the count of the rest follows)."""


class ManifestError(ValueError):
    """A folder that does not match its manifest, has none, or whose manifest is not signed by
    the configured key; the message names the file and what was expected."""


def configured_key() -> bytes | None:
    """The HMAC key from the file `SEPSIS_RL_MANIFEST_KEY_FILE` names, or None when it is unset.

    Surrounding whitespace is ignored (a key written with `echo` ends in a newline).
    """
    name = os.environ.get(KEY_FILE_ENV, "").strip()
    if not name:
        return None
    path = Path(name).expanduser()
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise ManifestError(
            f"{KEY_FILE_ENV}={name}: cannot read the manifest key file ({err.strerror}); "
            f"point it at a readable key file or unset it"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ManifestError(
            f"{KEY_FILE_ENV}={name}: the key file holds {len(key)} bytes, fewer than "
            f"{MIN_KEY_BYTES}; write a random key into it, for example with "
            f"python -c 'import secrets; print(secrets.token_hex(32))' > {name}"
        )
    return key


def write_manifest(folder: str | Path, kind: str, key: bytes | None = None) -> Path:
    """Record the size and sha256 of every file under `folder` in `folder/MANIFEST.json`.

    `kind` says what wrote the folder; `verify_manifest` refuses another kind. The manifest also
    records when it was written and the source commit (`sepsis_rl.common.provenance`). With
    `key` (by default the configured key, if any) the manifest is signed. Written atomically;
    an existing manifest is replaced.
    """
    folder = Path(folder)
    key = key if key is not None else configured_key()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "commit": source_commit(),
        "files": {name: _describe(folder / name) for name in folder_files(folder)},
    }
    if key is not None:
        manifest["signature"] = {
            "algorithm": SIGNATURE_ALGORITHM,
            "value": _signature(manifest, key),
        }
    path = folder / MANIFEST_FILE
    write_json_atomic(path, manifest)
    return path


def verify_manifest(
    folder: str | Path,
    kind: str,
    key: bytes | None = None,
    missing_hint: str = "",
    remedy: str = "get the folder again from where it was written, or write it again",
) -> list[str]:
    """Check `folder` against its manifest before anything in it is loaded; the files checked.

    Raises ManifestError when the manifest is missing or unreadable, describes another kind of
    folder, lacks a valid signature while a key is configured (`key`, by default the
    configured one), or when a listed file is missing, changed, or a file is not listed.
    `missing_hint` is appended when there is no manifest, `remedy` when files differ: what the
    user can do about it.
    """
    folder = Path(folder)
    key = key if key is not None else configured_key()
    manifest = _read_manifest(folder, missing_hint)
    path = folder / MANIFEST_FILE
    if key is not None:
        _check_signature(manifest, key, path)
    if manifest.get("kind") != kind:
        raise ManifestError(
            f"{path} describes a folder of kind {manifest.get('kind')!r}, expected {kind!r}: "
            "this folder was written for another purpose"
        )
    expected = _listed_files(manifest, path)
    problems = _differences(folder, expected)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise ManifestError(
            f"{folder} does not match its {MANIFEST_FILE}, so nothing in it was loaded: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
            + f". To go on, {remedy}"
        )
    return sorted(expected)


def folder_files(folder: str | Path) -> list[str]:
    """Every file under `folder` but the manifest, as sorted relative POSIX paths.

    Symbolic links are refused: what they point at can change after the manifest is written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    names = []
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            entry = Path(root, name)
            if entry.is_symlink():
                raise ManifestError(
                    f"{entry} is a symbolic link; a checked folder holds only regular files"
                )
        names.extend(Path(root, name).relative_to(folder).as_posix() for name in files)
    return sorted(name for name in names if name != MANIFEST_FILE)


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    with Path(path).open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """`{"written_at", "commit"}` from `folder`'s manifest, each None when it is not recorded
    (a manifest written before they were, or none). Reads only; `verify_manifest` checks."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    return {name: manifest.get(name) for name in ("written_at", "commit")}


def _signed_bytes(manifest: dict[str, Any]) -> bytes:
    """What the signature covers: everything but the signature, in one canonical form."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _signature(manifest: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _signed_bytes(manifest), hashlib.sha256).hexdigest()


def _read_manifest(folder: Path, missing_hint: str) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist or is not a folder")
    if not path.is_file():
        raise ManifestError(
            f"{folder} has no {MANIFEST_FILE} (the sha256 of every file, written with the "
            "folder), so its files cannot be checked and none was loaded"
            + (f"; {missing_hint}" if missing_hint else "")
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{path}: format {found!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def _check_signature(manifest: dict[str, Any], key: bytes, path: Path) -> None:
    signature = manifest.get("signature")
    source = f"the key in {os.environ.get(KEY_FILE_ENV) or 'the given key'}"
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        raise ManifestError(
            f"{path} is not signed, but a manifest key is configured ({KEY_FILE_ENV}): the "
            "folder was written without the key, or its signature was removed. Write the "
            "folder again with the key set"
        )
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        raise ManifestError(
            f"{path}: signature algorithm {signature.get('algorithm')!r}, expected "
            f"{SIGNATURE_ALGORITHM!r}"
        )
    if not hmac.compare_digest(signature["value"], _signature(manifest, key)):
        raise ManifestError(
            f"{path}: the {SIGNATURE_ALGORITHM} signature does not match {source}: the "
            "manifest was changed after it was signed, or it was signed with another key"
        )


def _listed_files(manifest: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ManifestError(f"{path}: 'files' must map relative paths to sizes and sha256s")
    for name, entry in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or name == MANIFEST_FILE:
            raise ManifestError(f"{path}: {name!r} is not a path inside the folder")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise ManifestError(f"{path}: the entry of {name!r} lacks its bytes and sha256")
    return files


def _differences(folder: Path, expected: dict[str, dict[str, Any]]) -> list[str]:
    """One message per missing, changed or unlisted file."""
    present = set(folder_files(folder))
    problems = []
    for name in sorted(expected):
        entry = expected[name]
        want = f"{entry['bytes']} bytes (sha256 {entry['sha256'][:16]}...)"
        if name not in present:
            problems.append(f"{folder / name} is missing (expected {want})")
            continue
        size = (folder / name).stat().st_size
        digest = file_sha256(folder / name)
        if size != entry["bytes"] or not hmac.compare_digest(digest, entry["sha256"]):
            problems.append(
                f"{folder / name} is damaged or was replaced: it has {size} bytes (sha256 "
                f"{digest[:16]}...), expected {want}"
            )
    for name in sorted(present - set(expected)):
        problems.append(
            f"{folder / name} is not listed in the manifest (a file added after the folder "
            "was written; remove it)"
        )
    return problems
