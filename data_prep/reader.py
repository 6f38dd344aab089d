"""Read PhysioNet 2019 data into one canonical hourly table, validating as it reads.

Accepted inputs: a folder of `.psv` files (searched recursively), a `.zip` of them, the
consolidated CSV that circulates for this data set (the `.psv` columns plus `Patient_ID` and
`Hour`), or a Parquet file of the canonical table.

Speed: `.psv` files are not parsed one `pandas.read_csv` call each. Their bytes are read, checked
for the header, and concatenated in chunks of a few thousand files; each chunk is parsed by one
multi-threaded Arrow CSV call and validated with array arithmetic. Only when a chunk fails does a
slow line-by-line validator run over that chunk's files, to say exactly which file, line and
column is wrong.

Unlabelled files: the Challenge's hidden test files have the 40 variables and no `SepsisLabel`
column. They are refused (naming the file) unless `read_cohort(..., allow_unlabelled=True)`, as
scoring asks; preparing and training need the label and never ask. An accepted unlabelled file
gets a null label on every row and passes every other check of a labelled one.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_prep.schema import (
    CANONICAL_COLUMNS,
    HEADER,
    HEADER_LINE,
    LABEL,
    MEASUREMENTS,
    MISSING_TOKEN,
    PATIENT,
    SEPARATOR,
    SOURCE_SET,
    SPECS,
    STATIC_COLUMNS,
    TIME,
    VARIABLES,
    source_set_from_id,
)

FILES_PER_CHUNK = 4096
_HEADER_BYTES = (HEADER_LINE + "\n").encode()
_UNLABELLED_HEADER_BYTES = (SEPARATOR.join(VARIABLES) + "\n").encode()
_NOT_SPACE = re.compile(rb"\S")  # bytes.strip()'s whitespace is \s
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_PATIENT_FILE = re.compile(r"p(\d+)$")
_SET_FOLDER = re.compile(r"set_?([AB])$", re.IGNORECASE)
CONSOLIDATED_ID = "Patient_ID"

Progress = Callable[[int, int], None]
"""Called as progress(done, total) while reading; `total` is in files (or rows for tables)."""


class DataFormatError(ValueError):
    """A malformed input: says which file, line and column, what was found and what was expected.

    `line` and `column` are 1-based (line 1 is the header); either may be None when the problem
    is about a whole file or row.
    """

    def __init__(
        self,
        path: str,
        message: str,
        line: int | None = None,
        column: int | None = None,
        column_name: str | None = None,
    ):
        """`column` is a position in the `.psv` header unless `column_name` names the column
        (for tables whose columns are in another order, e.g. the consolidated CSV)."""
        self.path, self.line, self.column, self.message = path, line, column, message
        where = path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            name = column_name or (HEADER[column - 1] if 1 <= column <= len(HEADER) else "?")
            where += f", column {column} ({name})"
        super().__init__(f"{where}: {message}")


@dataclass
class SkippedFile:
    """A file (or a patient of a table) left out under `skip_bad`, with the reason."""

    path: str
    reason: str


@dataclass
class ReadResult:
    """What the reader produced: the canonical table and what it saw on the way."""

    table: pa.Table
    n_files: int
    skipped: list[SkippedFile] = field(default_factory=list)
    implausible: dict[str, int] = field(default_factory=dict)
    input_kind: str = ""


def read_cohort(
    path: Path,
    skip_bad: bool = False,
    progress: Progress | None = None,
    allow_unlabelled: bool = False,
) -> ReadResult:
    """Read any accepted input into the canonical hourly table (see module docstring).

    Raises `DataFormatError` on the first malformed file unless `skip_bad`, in which case bad files
    (or patients) are left out and listed in `ReadResult.skipped`. Raises `FileNotFoundError` for a
    missing path and `DataFormatError` for an input with no patients.

    `allow_unlabelled` also accepts `.psv` files (in a folder or a zip) without the `SepsisLabel`
    column, as the Challenge's test files were: their rows get a null label. Without it such a
    file is malformed. The tables (consolidated CSV, Parquet) always need the label.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        members, kind = _folder_members(path), "psv folder"
    elif path.suffix.lower() == ".zip":
        members, kind = _zip_members(path), "zip of psv files"
    elif path.suffix.lower() in (".csv", ".parquet", ".pq"):
        # One file, read by one multi-threaded Arrow call: progress is that file.
        if progress:
            progress(0, 1)
        if path.suffix.lower() == ".csv":
            result = _finish(_read_consolidated_csv(path, skip_bad), "consolidated csv")
        else:
            result = _finish(_read_canonical_parquet(path, skip_bad), "canonical parquet")
        if progress:
            progress(1, 1)
        return result
    else:
        raise DataFormatError(
            str(path), "unsupported input: give a folder of .psv files, a .zip, a .csv or .parquet"
        )
    if not members:
        raise DataFormatError(str(path), "empty input: no .psv files found")
    return _finish(_read_psv_members(members, skip_bad, progress, allow_unlabelled), kind)


# --- .psv files ----------------------------------------------------------------------------------


@dataclass
class _Member:
    display: str
    patient_id: str
    source_set: str | None
    load: Callable[[], bytes]


def _patient_and_set(rel: str) -> tuple[str, str | None]:
    parts = rel.replace("\\", "/").split("/")
    stem = parts[-1][: -len(".psv")]
    folder_set = next(
        (m.group(1).upper() for p in parts[:-1] if (m := _SET_FOLDER.search(p))), None
    )
    id_match = _PATIENT_FILE.fullmatch(stem)
    id_set = source_set_from_id(int(id_match.group(1))) if id_match else None
    return stem, folder_set or id_set


def _folder_members(root: Path) -> list[_Member]:
    found = []
    prefix = len(str(root).rstrip(os.sep)) + 1
    for dirpath, _dirs, files in os.walk(root):
        found.extend(os.path.join(dirpath, name) for name in files if name.lower().endswith(".psv"))
    found.sort()
    return [_Member(full, *_patient_and_set(full[prefix:]), _file_loader(full)) for full in found]


def _file_loader(path: str) -> Callable[[], bytes]:
    def load() -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    return load


def _zip_members(path: Path) -> list[_Member]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(str(path), f"not a readable zip archive ({exc})") from None
    names = sorted(n for n in archive.namelist() if n.lower().endswith(".psv"))
    members = []
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts:
            raise DataFormatError(
                f"{path}!{name}",
                "member path leaves the archive ('..' or absolute); an archive of the release "
                "holds relative paths only: re-create the zip from the folder of .psv files",
            )
        pid, sset = _patient_and_set(name)
        members.append(_Member(f"{path}!{name}", pid, sset, lambda n=name: archive.read(n)))
    return members


def _read_psv_members(
    members: list[_Member], skip_bad: bool, progress: Progress | None, allow_unlabelled: bool
):
    skipped: list[SkippedFile] = []
    n_files = len(members)  # every file found, duplicates and bad ones included
    members = _drop_duplicate_ids(members, skip_bad, skipped)
    tables, kept = [], []
    done = 0
    for start in range(0, len(members), FILES_PER_CHUNK):
        chunk = members[start : start + FILES_PER_CHUNK]
        contents = [m.load() for m in chunk]
        table, good = _parse_psv_chunk(chunk, contents, skip_bad, skipped, allow_unlabelled)
        if table is not None:
            tables.append(table)
            kept.extend(good)
        done += len(chunk)
        if progress:
            progress(done, len(members))
    if not kept:
        raise DataFormatError(members[0].display if members else "?", "no readable patient files")
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    rows = np.asarray([n for _m, n in kept])
    ids = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(np.arange(len(kept), dtype=np.int32), rows)),
        pa.array([m.patient_id for m, _n in kept], pa.string()),
    )
    sets = pa.array([m.source_set for m, _n in kept], pa.string()).take(ids.indices)
    table = table.add_column(0, PATIENT, ids.dictionary_decode()).add_column(1, SOURCE_SET, sets)
    return _cast_canonical(table), n_files, skipped


def _drop_duplicate_ids(members, skip_bad, skipped) -> list[_Member]:
    first_seen: dict[str, str] = {}
    unique = []
    for m in members:
        if m.patient_id in first_seen:
            message = f"duplicate patient id {m.patient_id}: also in {first_seen[m.patient_id]}"
            if not skip_bad:
                raise DataFormatError(m.display, message)
            skipped.append(SkippedFile(m.display, message))
            continue
        first_seen[m.patient_id] = m.display
        unique.append(m)
    return unique


def _split_header(
    member: _Member, content: bytes, allow_unlabelled: bool = False
) -> tuple[bytes | memoryview, int, bool]:
    """Return the body (rows after the header, ending in a newline), its row count, and whether
    the file has the label column (False only for an unlabelled file, when allowed).
    Windows line endings (CRLF) are accepted: a file saved on Windows is still the format.
    The body is a view of `content` when it can be (no copy: the chunk's join is the one copy)."""
    if b"\r" in content:
        content = content.replace(b"\r\n", b"\n")
    if content.startswith(_HEADER_BYTES):
        header, labelled = _HEADER_BYTES, True
    elif allow_unlabelled and content.startswith(_UNLABELLED_HEADER_BYTES):
        header, labelled = _UNLABELLED_HEADER_BYTES, False
    else:
        raise _header_error(member.display, content)
    start = len(header)
    if _NOT_SPACE.search(content, start) is None:
        raise DataFormatError(member.display, "no data rows after the header", line=2)
    if content.endswith(b"\n"):
        return memoryview(content)[start:], content.count(b"\n", start), labelled
    return content[start:] + b"\n", content.count(b"\n", start) + 1, labelled


def _header_error(display: str, content: bytes) -> DataFormatError:
    first = content.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    if not first:
        return DataFormatError(display, "empty file: expected the PhysioNet 2019 header", line=1)
    names = first.split(SEPARATOR)
    if names == list(VARIABLES):
        return DataFormatError(
            display,
            f"header has no {LABEL} column: this looks like unlabelled challenge test data; "
            "preparing and training need labelled files (scoring with `classify-score --task "
            "hourly` reads unlabelled ones)",
            line=1,
        )
    for i, (got, want) in enumerate(zip(names, HEADER, strict=False), start=1):
        if got != want:
            return DataFormatError(display, f"header has {got!r}, expected {want!r}", 1, i)
    return DataFormatError(
        display,
        f"header has {len(names)} columns separated by '{SEPARATOR}', expected {len(HEADER)}",
        line=1,
    )


def _parse_psv_chunk(chunk, contents, skip_bad, skipped, allow_unlabelled=False):
    """Parse and check one chunk of files; return its table and [(member, rows)] kept, in file
    order. Labelled and (when allowed) unlabelled files are parsed apart, then interleaved back."""
    kinds: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
    position = {}
    for i, (member, content) in enumerate(zip(chunk, contents, strict=True)):
        try:
            body, n_rows, labelled = _split_header(member, content, allow_unlabelled)
        except DataFormatError as err:
            if not skip_bad:
                raise
            skipped.append(SkippedFile(member.display, str(err)))
            continue
        entries, bodies = kinds[labelled]
        entries.append((member, n_rows))
        bodies.append(body)
        position[id(member)] = i
    parts = []
    for labelled, (entries, bodies) in kinds.items():
        if entries:
            table, kept = _parse_bodies(entries, bodies, labelled, skip_bad, skipped)
            if kept:
                parts.append((table, kept, labelled))
    if not parts:
        return None, []
    table, good, labelled = _in_file_order(parts, position)
    offsets = np.concatenate([[0], np.cumsum([n for _m, n in good])])
    bad = _check_rows(
        table,
        offsets,
        [m.display for m, _n in good],
        line_offset=2,
        patient_ids=[m.patient_id for m, _n in good],
        labelled=labelled,
    )
    if bad:
        if not skip_bad:
            raise bad[0][1]
        bad_index = {i for i, _e in bad}
        skipped.extend(SkippedFile(good[i][0].display, str(e)) for i, e in bad)
        keep_rows = np.concatenate(
            [np.arange(offsets[i], offsets[i + 1]) for i in range(len(good)) if i not in bad_index]
            or [np.empty(0, dtype=np.int64)]
        )
        table = table.take(pa.array(keep_rows))
        good = [g for i, g in enumerate(good) if i not in bad_index]
    return (table if good else None), good


def _parse_bodies(good, bodies, labelled: bool, skip_bad, skipped):
    """One Arrow parse of files that share a header (with or without the label); a file that
    fails is found by the slow validator. An unlabelled table gets a NaN label column."""
    columns = HEADER if labelled else VARIABLES
    try:
        table = _arrow_parse(b"".join(bodies), columns)
        if table.num_rows != sum(n for _m, n in good):
            raise pa.ArrowInvalid("row count differs from newline count (blank line?)")
    except pa.ArrowInvalid:
        # Slow path, only for a chunk that failed: find each bad file exactly.
        still_good = []
        for (member, n_rows), body in zip(good, bodies, strict=True):
            error = _locate_psv_error(member.display, bytes(body), columns)
            if error is None:
                still_good.append((member, n_rows))
            elif skip_bad:
                skipped.append(SkippedFile(member.display, str(error)))
            else:
                raise error from None
        body_of = {id(m): b for (m, _n), b in zip(good, bodies, strict=True)}
        good = still_good
        if not good:
            return None, []
        table = _arrow_parse(b"".join(body_of[id(m)] for m, _n in good), columns)
    if not labelled:
        table = table.append_column(LABEL, pa.array(np.full(table.num_rows, np.nan)))
    return table, good


def _in_file_order(parts, position):
    """Concatenate the parsed kinds of a chunk with each file's rows back in file order; return
    the table, [(member, rows)] and whether each file is labelled."""
    if len(parts) == 1:
        table, good, labelled = parts[0]
        return table, good, np.full(len(good), labelled)
    entries = [(position[id(m)], m, n, flag) for _t, good, flag in parts for m, n in good]
    starts = np.cumsum([0] + [n for _p, _m, n, _f in entries])
    order = sorted(range(len(entries)), key=lambda i: entries[i][0])
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in order])
    table = pa.concat_tables([t for t, _g, _f in parts]).take(pa.array(rows))
    good = [(entries[i][1], entries[i][2]) for i in order]
    return table, good, np.array([entries[i][3] for i in order])


def _arrow_parse(data: bytes, columns: tuple[str, ...] = HEADER) -> pa.Table:
    return pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=list(columns), use_threads=True),
        parse_options=pacsv.ParseOptions(delimiter=SEPARATOR, quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.float64() for name in columns},
            # Arrow reads the token NaN as a float NaN natively: about twice as fast as
            # declaring it a null value.
            null_values=[],
            strings_can_be_null=False,
        ),
    )


def _locate_psv_error(
    display: str, body: bytes, columns: tuple[str, ...] = HEADER
) -> DataFormatError | None:
    """Line-by-line check of one file's rows (the slow path): the first malformed token.
    `columns` are the file's header (the 41 columns, or the 40 of an unlabelled file)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 2
        return DataFormatError(display, "bytes that are not text (UTF-8)", line=line)
    for line_no, line in enumerate(text.split("\n")[:-1], start=2):
        fields = line.rstrip("\r").split(SEPARATOR)
        if len(fields) != len(columns):
            return DataFormatError(
                display,
                f"{len(fields)} fields separated by '{SEPARATOR}', expected {len(columns)}",
                line=line_no,
            )
        for col, token in enumerate(fields, start=1):
            if token != MISSING_TOKEN and not _NUMBER.fullmatch(token):
                return DataFormatError(
                    display, f"{token!r} is not a number or {MISSING_TOKEN}", line_no, col
                )
    return None


# --- Row checks shared by every input kind -------------------------------------------------------


def _check_rows(
    table: pa.Table,
    offsets: np.ndarray,
    names: list[str],
    line_offset: int,
    patient_ids: list[str] | None = None,
    labelled: np.ndarray | None = None,
):
    """Vectorised checks of parsed rows grouped into patients by `offsets`.

    Returns [(patient index, DataFormatError)], the first problem of each bad patient, in order.
    `line_offset` converts a 0-based row index within a patient to the reported line number;
    `patient_ids` (one per patient) name the patient in messages where the file alone may not;
    `labelled` (one per patient, default all) says whose label is checked: an unlabelled file's
    NaN label is no error.
    """
    n_rows = table.num_rows
    owner = np.repeat(np.arange(len(names)), np.diff(offsets))
    first_row = np.zeros(n_rows, dtype=bool)
    first_row[offsets[:-1][np.diff(offsets) > 0]] = True
    problems: dict[int, tuple[int, int, str]] = {}  # patient -> (row, column, message)

    def patient_of(row: int) -> str:
        return f" for patient {patient_ids[owner[row]]}" if patient_ids else ""

    def flag(mask: np.ndarray, column: str, message: Callable[[int], str]) -> None:
        for row in np.flatnonzero(mask):
            patient = int(owner[row])
            current = problems.get(patient)
            if current is None or row < current[0]:
                problems[patient] = (int(row), HEADER.index(column) + 1, message(int(row)))

    for name in VARIABLES + (LABEL,):
        if pc.any(pc.is_inf(table.column(name))).as_py():
            values = _numpy(table, name)
            flag(np.isinf(values), name, lambda r, v=values: f"{v[r]} is not a finite number")
    iculos = _numpy(table, TIME)
    flag(np.isnan(iculos), TIME, lambda r: f"{TIME} is missing; every row needs its hour")
    flag(
        ~np.isnan(iculos) & (iculos != np.round(iculos)),
        TIME,
        lambda r: f"{TIME} {iculos[r]} is not a whole number of hours",
    )
    step = np.diff(iculos, prepend=np.nan)
    flag(
        ~first_row & ~np.isnan(step) & (step != 1),
        TIME,
        lambda r: (
            f"{TIME} goes from {iculos[r - 1]:g} to {iculos[r]:g}; expected "
            f"{iculos[r - 1] + 1:g} (one row per hour, no gaps)"
        ),
    )
    label = _numpy(table, LABEL)
    has_label = np.ones(n_rows, dtype=bool) if labelled is None else labelled[owner]
    flag(
        has_label & ~np.isin(label, (0.0, 1.0)),
        LABEL,
        lambda r: f"{LABEL} is {label[r]}; expected 0 or 1",
    )
    # The release labels a septic stay 1 from onset - 6 h to the end of the stay: one block of
    # 1s ending at the last row. A 1 -> 0 drop would make a stay "septic" with no onset time.
    previous_label = np.roll(label, 1)
    flag(
        ~first_row & (previous_label == 1.0) & (label == 0.0),
        LABEL,
        lambda r: (
            f"{LABEL} drops from 1 to 0{patient_of(r)}; a septic stay is labelled 1 from "
            "6 h before onset to the end of the stay, never back to 0"
        ),
    )
    gender = _numpy(table, "Gender")
    flag(
        ~np.isin(gender, (0.0, 1.0)),
        "Gender",
        lambda r: f"Gender is {gender[r]:g}; expected 0 (female) or 1 (male), never missing",
    )
    for name in ("Unit1", "Unit2"):
        unit = _numpy(table, name)
        flag(
            ~(np.isin(unit, (0.0, 1.0)) | np.isnan(unit)),
            name,
            lambda r, v=unit, n=name: f"{n} is {v[r]:g}; expected 0, 1 or NaN",
        )
    patient_start = offsets[:-1][owner]
    for name in STATIC_COLUMNS:
        values = _numpy(table, name)
        start_values = values[patient_start]
        differs = ~((values == start_values) | (np.isnan(values) & np.isnan(start_values)))
        flag(
            differs,
            name,
            lambda r, v=values, s=start_values, n=name: (
                f"{n} changes within the stay from "
                f"{s[r]:g} to {v[r]:g}; it must be the same on every row"
            ),
        )
    bad = []
    for patient in sorted(problems):
        row, column, message = problems[patient]
        line = row - offsets[patient] + line_offset
        bad.append((patient, DataFormatError(names[patient], message, line, column)))
    return bad


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(float, copy=False)


def _cast_canonical(table: pa.Table) -> pa.Table:
    """Give the canonical columns their dtypes: ints where the format is integral."""
    columns, fields = [], []
    for name in CANONICAL_COLUMNS:
        col = table.column(name)
        if name in (TIME,):
            col, typ = pc.cast(col, pa.int32()), pa.int32()
        elif name == LABEL:
            if pc.any(pc.is_nan(col)).as_py():  # unlabelled files (read_cohort's option)
                col = pc.if_else(pc.is_nan(col), None, col)
            col, typ = pc.cast(col, pa.int8()), pa.int8()
        elif name == "Gender":
            col, typ = pc.cast(col, pa.int8()), pa.int8()
        elif name in ("Unit1", "Unit2"):
            col = pc.if_else(pc.is_nan(pc.cast(col, pa.float64())), None, col)
            col, typ = pc.cast(col, pa.int8()), pa.int8()  # null where unknown
        elif name in (PATIENT, SOURCE_SET):
            col, typ = pc.cast(col, pa.string()), pa.string()
        else:
            col, typ = pc.cast(col, pa.float64()), pa.float64()
        columns.append(col)
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _finish(parts, kind: str) -> ReadResult:
    table, n_files, skipped = parts
    implausible = {}
    for name in MEASUREMENTS + ("Age", "HospAdmTime", "ICULOS"):
        spec = SPECS[name]
        values = table.column(name)
        outside = pc.or_(pc.less(values, spec.lo), pc.greater(values, spec.hi))
        implausible[name] = int(pc.sum(pc.cast(outside, pa.int64())).as_py() or 0)
    return ReadResult(table, n_files, skipped, implausible, kind)


# --- Tables: the consolidated CSV and the canonical Parquet -------------------------------------


def _read_consolidated_csv(path: Path, skip_bad: bool):
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.float64() for name in HEADER},
                null_values=[MISSING_TOKEN, ""],
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _locate_csv_error(path) or DataFormatError(str(path), str(exc)) from None
    missing = [c for c in (*HEADER, CONSOLIDATED_ID) if c not in table.column_names]
    if missing:
        raise DataFormatError(str(path), f"missing columns {missing} in the header", line=1)
    if table.num_rows == 0:
        raise DataFormatError(str(path), "empty input: no data rows", line=2)
    raw_ids = table.column(CONSOLIDATED_ID)
    if pa.types.is_integer(raw_ids.type) or pa.types.is_floating(raw_ids.type):
        ids = pc.cast(raw_ids, pa.int64()).to_numpy()
    else:
        ids = pc.cast(raw_ids, pa.string()).to_numpy(zero_copy_only=False)
    table = table.drop_columns([CONSOLIDATED_ID])
    return _grouped_table(str(path), table, ids, skip_bad, line_offset=2)


def _read_canonical_parquet(path: Path, skip_bad: bool):
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(str(path), f"not a readable Parquet file ({exc})") from None
    missing = [c for c in CANONICAL_COLUMNS if c not in table.column_names]
    if missing:
        raise DataFormatError(str(path), f"not a canonical hourly table: missing {missing}")
    if table.num_rows == 0:
        raise DataFormatError(str(path), "empty input: no rows")
    ids = pc.cast(table.column(PATIENT), pa.string()).to_numpy(zero_copy_only=False)
    floats = table.select(list(HEADER)).cast(pa.schema([pa.field(n, pa.float64()) for n in HEADER]))
    sets = table.column(SOURCE_SET)
    parts = _grouped_table(str(path), floats, ids, skip_bad, line_offset=1, sets=sets)
    return parts


def _grouped_table(display, table, ids, skip_bad, line_offset, sets=None):
    """Validate a whole table whose rows are grouped into patients by `ids` (contiguous)."""
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    block_ids = ids[starts]
    uniques, counts = np.unique(block_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniques[counts > 1][0]
        row = int(starts[np.flatnonzero(block_ids == dup)[1]])
        raise DataFormatError(
            display,
            f"duplicate patient id {dup}: its rows appear in more than one block; each patient's "
            "rows must be contiguous",
            line=row + line_offset,
        )
    offsets = np.concatenate([starts, [len(ids)]])
    names = [f"{display} (patient {pid})" for pid in block_ids]
    bad = _check_rows(table, offsets, names, line_offset=0)
    skipped = []
    if bad:
        if not skip_bad:
            _patient, err = bad[0]
            name = HEADER[err.column - 1] if err.column else None
            position = err.column
            if name is not None and name in table.column_names:
                position = table.column_names.index(name) + 1  # where it is in this file
            raise DataFormatError(
                display,
                f"patient {block_ids[_patient]}: {err.message}",
                (err.line or 0) + int(offsets[_patient]) + line_offset,
                position,
                name,
            )
        bad_index = {i for i, _e in bad}
        skipped = [SkippedFile(names[i], e.message) for i, e in bad]
        keep = np.isin(np.repeat(np.arange(len(block_ids)), np.diff(offsets)), list(bad_index))
        table = table.filter(pa.array(~keep))
        ids = ids[~keep]
        if sets is not None:
            sets = sets.filter(pa.array(~keep))
    patient = np.asarray([_canonical_id(i) for i in ids], dtype=object)
    if sets is None:
        sets = pa.array([_set_of(i) for i in patient], pa.string())
    table = table.add_column(0, PATIENT, pa.array(patient, pa.string())).add_column(
        1, SOURCE_SET, sets
    )
    return _cast_canonical(table), len(block_ids), skipped


def _canonical_id(raw) -> str:
    if isinstance(raw, (int, np.integer)):
        return f"p{int(raw):06d}"
    return str(raw)


def _set_of(patient_id: str) -> str | None:
    match = _PATIENT_FILE.fullmatch(patient_id)
    return source_set_from_id(int(match.group(1))) if match else None


def _locate_csv_error(path: Path) -> DataFormatError | None:
    """Slow path for a consolidated CSV that Arrow refused: first bad line and column."""
    import csv

    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            return DataFormatError(str(path), "empty input: no header", line=1)
        numeric = {i for i, name in enumerate(header) if name in HEADER}
        for line_no, fields in enumerate(reader, start=2):
            if len(fields) != len(header):
                return DataFormatError(
                    str(path), f"{len(fields)} fields, expected {len(header)}", line=line_no
                )
            for i in numeric:
                token = fields[i]
                if token not in (MISSING_TOKEN, "") and not _NUMBER.fullmatch(token):
                    return DataFormatError(
                        str(path),
                        f"{token!r} in column {header[i]} is not a number or {MISSING_TOKEN}",
                        line=line_no,
                        column=i + 1 if header == list(HEADER) else None,
                    )
    return None
