"""Time and memory of `sepsis-rl classify` on a full-size synthetic cohort.

Run: `python benchmarks/bench_classify.py [--patients 40336] [--work /tmp/bench_classify]`.
Steps, each the real command in its own process: `data synth` -> `data prepare` ->
`classify --oversample none` -> `classify --oversample all` (4 models x 3 modes, CTGAN at its
default epochs). Each step's wall time and peak memory are printed: the peak resident memory of
the whole process tree (sampled from /proc every 0.2 s, so loky workers count) and the largest
single process (from the kernel's rusage). Targets (issue 4), on 2 cores: `--oversample none`
within 3 minutes, `--oversample all` within 20 minutes. Results go under --work, never into the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

FULL_COHORT = 40_336
NONE_TARGET_S = 3 * 60
ALL_TARGET_S = 20 * 60
SAMPLE_EVERY_S = 0.2
CLI = [sys.executable, "-m", "sepsis_rl.cli"]


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0) for pid in tree)


def run_step(name: str, command: list[str], log: Path) -> dict:
    """Run one command, sampling its process tree's memory; fail loudly if it fails."""
    start = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss_bytes(process.pid))
                done.wait(SAMPLE_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{name} failed with exit code {code}; see {log}:\n{log.read_text()[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    result = {
        "step": name,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "load_average_1min_after": round(os.getloadavg()[0], 1),
        "peak_tree_rss_mb": round(peak / 2**20),
        "peak_process_rss_mb": round(usage.ru_maxrss / 1024),
    }
    print(
        f"{name:<28} {seconds:8.1f} s wall, {cpu:8.1f} s CPU, "
        f"load {result['load_average_1min_after']:4.1f}; peak memory "
        f"{result['peak_tree_rss_mb']:>6,} MB (process tree), "
        f"{result['peak_process_rss_mb']:>6,} MB (largest process)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=FULL_COHORT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_classify"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-data", action="store_true", help="Skip synth/prepare if present.")
    parser.add_argument("--modes", default="none,all", help="Which classify runs: none, all.")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    raw, prepared = work / "raw", work / "prepared"
    print(f"cohort: {args.patients:,} synthetic patients, seed {args.seed}; work dir {work}")
    print(
        f"cores available: {len(os.sched_getaffinity(0))}; load average now "
        f"{os.getloadavg()[0]:.1f} (other users' work slows every wall time below)",
        flush=True,
    )
    steps = []
    if not (args.reuse_data and (prepared / "features.parquet").is_file()):
        steps.append(
            run_step(
                "data synth",
                [
                    *CLI,
                    "data",
                    "synth",
                    "--patients",
                    str(args.patients),
                    "--out",
                    str(raw),
                    "--seed",
                    str(args.seed),
                ],
                work / "synth.log",
            )
        )
        steps.append(
            run_step(
                "data prepare",
                [*CLI, "data", "prepare", "--input", str(raw), "--out", str(prepared)],
                work / "prepare.log",
            )
        )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        out = work / f"classify_{mode}"
        steps.append(
            run_step(
                f"classify --oversample {mode}",
                [
                    *CLI,
                    "classify",
                    "--data",
                    str(prepared),
                    "--out",
                    str(out),
                    "--oversample",
                    mode,
                    "--seed",
                    str(args.seed),
                ],
                work / f"classify_{mode}.log",
            )
        )
        metrics = json.loads((out / "metrics.json").read_text())
        print(
            "  parts, wall/CPU s: "
            + ", ".join(
                f"{part} {wall:.1f}/{metrics['cpu_seconds'][part]:.1f}"
                for part, wall in metrics["timings_seconds"].items()
            ),
            flush=True,
        )
    targets = {"none": NONE_TARGET_S, "all": ALL_TARGET_S}
    for mode in modes:
        step = next(s for s in steps if s["step"] == f"classify --oversample {mode}")
        verdict = "PASS" if step["seconds"] <= targets[mode] else "FAIL"
        print(
            f"classify --oversample {mode}: {step['seconds']:.0f} s wall, "
            f"{step['cpu_seconds']:.0f} s CPU (target {targets[mode]} s wall) {verdict}"
        )
    # One file per set of modes, so a later `--modes none` run does not overwrite `all`'s record.
    record = work / f"bench_classify_{'_'.join(modes)}.json"
    record.write_text(json.dumps(steps, indent=2) + "\n")
    print(f"recorded in {record}")


if __name__ == "__main__":
    main()
