"""Benchmark: ingest of a full-size PhysioNet-format cohort to Parquet, against the naive loop.

Target (issue 2): the 40,336-file cohort to Parquet in at most 10 s on 2 cores, at least 10x
faster than `pandas.read_csv` per file then `concat`, peak memory under 3 GB. Also times the
synthetic generator that makes the cohort (target: a few minutes at most).

    python benchmarks/bench_ingest.py [--patients 40336] [--data DIR] [--keep]

Each ingest runs in its own process so that its peak memory (max RSS) is its own. Both read the
same files after one warm-up pass, so neither pays for a cold page cache alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(which: str, data: str, out: str) -> None:
    import pandas as pd

    start = time.perf_counter()
    if which == "project":
        import pyarrow.parquet as pq

        from data_prep.reader import read_cohort

        result = read_cohort(Path(data))
        pq.write_table(result.table, out)
        rows = result.table.num_rows
    else:  # the naive loop the issue compares against
        frames = []
        for path in sorted(Path(data).rglob("*.psv")):
            frame = pd.read_csv(path, sep="|")
            frame["patient_id"] = path.stem
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        table.to_parquet(out)
        rows = len(table)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows, "peak_mb": _peak_mb()}))


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(which: str, data: Path, workdir: Path) -> dict:
    out = workdir / f"{which}.parquet"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", which, str(data), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=40_336)
    parser.add_argument("--data", type=Path, help="reuse .psv files already written here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    from data_prep.synth import generate_cohort, write_psv_files

    workdir = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    data = args.data or workdir / "psv"
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, load average "
        f"{os.getloadavg()[0]:.1f} (wall times stretch when other work shares the cores)"
    )
    if args.data is None:
        t0 = time.perf_counter()
        table = generate_cohort(args.patients, seed=0)
        t1 = time.perf_counter()
        write_psv_files(table, data)
        t2 = time.perf_counter()
        print(
            f"synthetic cohort: {args.patients:,} stays, {len(table):,} rows: generated in "
            f"{t1 - t0:.1f} s, written as .psv in {t2 - t1:.1f} s (target: a few minutes)"
        )
        del table
    files = sorted(data.rglob("*.psv"))
    for f in files:  # warm the page cache once for both contestants
        f.read_bytes()
    naive = _run("naive", data, workdir)
    ours = _run("project", data, workdir)
    speedup = naive["seconds"] / ours["seconds"]
    print(f"files: {len(files):,}   rows: {ours['rows']:,}")
    print(f"{'ingest to Parquet':<40}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for label, r in (
        ("naive: pandas.read_csv per file+concat", naive),
        ("sepsis-rl reader (validating)", ours),
    ):
        print(f"{label:<40}{r['seconds']:>9.2f}{r['cpu']:>9.2f}{r['peak_mb']:>9.0f}")  # fmt: skip
    print(f"speedup: {speedup:.1f}x (target >= 10x); project ingest {ours['seconds']:.2f} s "
          f"(target <= 10 s); peak {ours['peak_mb']:.0f} MB (target < 3000 MB)")  # fmt: skip
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")


if __name__ == "__main__":
    main()
