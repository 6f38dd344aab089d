"""Does the Quickstart's learned policy reliably beat the clinician protocol? `sepsis-rl run
--quick` with seeds 0-9, each a fresh study folder, as a new user would run it.

    python benchmarks/bench_quick.py                  # seeds 0-9 (about 35 minutes)
    python benchmarks/bench_quick.py --seeds 0 1 2    # fewer

For each seed: the wall time of the whole quick study, and the learned policy's paired
difference to the clinician protocol (and to the age-adaptive protocol, when the evaluation has
it) in return and survival on the 2,000 test episodes, with 95% intervals. The summary counts
the seeds whose return interval lies above 0 (the target: at least 9 of 10, each study at most
3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sepsis_rl.common.intervals import format_interval

SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TIME_LIMIT_S = 180.0
"""The Quickstart's promise: the quick study in at most 3 minutes."""


def run_quick(seed: int, root: Path) -> dict:
    """One quick study; its time and the learned policy's differences to the protocols."""
    out = root / f"seed{seed}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = time.perf_counter()
    done = subprocess.run(
        [str(SEPSIS_RL), "run", "--quick", "--seed", str(seed), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"seed": seed, "seconds": seconds, "error": done.stderr[-2000:]}
    report = json.loads((out / "evaluation" / "evaluation.json").read_text())
    against = report["learned_minus_baseline"]
    row = {"seed": seed, "seconds": seconds}
    for name in ("protocol", "age_adaptive"):
        if name in against:
            overall = against[name]["overall"]
            row[name] = {"return": overall["return"], "survival": overall["survival"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--keep", type=Path, help="keep the study folders here")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_quick_"))
    print(f"sepsis-rl run --quick, seeds {args.seeds}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; studies in {root}")  # fmt: skip
    print(f"{'seed':>4} {'time':>6}  {'return vs protocol':>24} {'survival vs protocol':>26}"
          f"  {'return vs age-adaptive':>24}")  # fmt: skip
    rows = []
    for seed in args.seeds:
        row = run_quick(seed, root)
        rows.append(row)
        if "error" in row:
            print(f"{seed:>4} {row['seconds']:5.0f}s  failed: {row['error'][-300:]}")
            continue
        protocol = row["protocol"]
        line = (
            f"{seed:>4} {row['seconds']:5.0f}s  "
            f"{format_interval(protocol['return'], 2, signed=True):>24} "
            f"{format_interval(protocol['survival'], points=True):>26}"
        )
        if "age_adaptive" in row:
            line += f"  {format_interval(row['age_adaptive']['return'], 2, signed=True):>24}"
        print(line, flush=True)

    ok = [r for r in rows if "error" not in r]
    beats = sum(r["protocol"]["return"][1] > 0 for r in ok)
    survival = sum(r["protocol"]["survival"][1] > 0 for r in ok)
    slowest = max((r["seconds"] for r in rows), default=float("nan"))
    print(f"\nreturn interval above 0 against the protocol: {beats} of {len(rows)} seeds "
          f"(target: at least 9 of 10); survival: {survival} of {len(rows)}")  # fmt: skip
    if any("age_adaptive" in r for r in ok):
        adaptive = sum(r["age_adaptive"]["return"][1] > 0 for r in ok if "age_adaptive" in r)
        print(f"return interval above 0 against the age-adaptive protocol: {adaptive} of "
              f"{len(rows)}")  # fmt: skip
    print(f"slowest quick study {slowest:.0f} s (target: at most {TIME_LIMIT_S:.0f} s); "
          f"load at the end {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
