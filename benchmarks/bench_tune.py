"""Trials per minute of both searches at the tiny budget, and Tune's overhead over direct runs.

Run: `python benchmarks/bench_tune.py [--data DIR] [--trials 4] [--rl-trials 3]`. Without
`--data` a 3,000-stay synthetic cohort is made and prepared first (about 20 s, not timed).

For each search (classifiers; DQN on CartPole; DQN on SepsisEnv, scored on its validation
episodes):
1. The search at the tiny budget with the concurrency the cluster allows: trials per minute.
2. The same search with one trial at a time, and then each of its trials' configurations run
   directly in this process by the same trial function (same folds or iterations, same
   checkpoints), one after the other. Tune's overhead is the difference in wall time per trial
   (actor start-up, result handling, experiment-state snapshots, checkpoint registration).

Every search uses the FIFO scheduler so each trial runs its whole budget in both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _prepared(data: Path | None, work: Path) -> Path:
    if data is not None:
        return data
    from data_prep.prepare import prepare
    from data_prep.synth import generate_cohort, write_psv_files

    raw = work / "raw"
    write_psv_files(generate_cohort(3000, seed=5), raw)
    prepare(raw, work / "prepared")
    return work / "prepared"


def _trial_configs(experiment: str) -> list[dict]:
    return [
        json.loads((trial / "params.json").read_text())
        for trial in sorted(Path(experiment).glob("trial_*"))
        if (trial / "params.json").is_file()
    ]


def _in_trial_seconds(experiment: str) -> float:
    """Sum over trials of the time Tune measured inside the trial function (`time_total_s`)."""
    total = 0.0
    for trial in Path(experiment).glob("trial_*"):
        path = trial / "result.json"
        lines = path.read_text().splitlines() if path.is_file() else []
        if lines:
            total += json.loads(lines[-1])["time_total_s"]
    return total


def _direct(configs: list[dict], run_one) -> float:
    """Seconds to run each configuration by `run_one`, one after the other, with the thread
    limits of a 1-CPU Ray worker (Ray sets OMP_NUM_THREADS=1 there; this process has none)."""
    from threadpoolctl import threadpool_limits

    total = 0.0
    with threadpool_limits(limits=1):
        for config in configs:
            seconds, _ = _timed(lambda config=config: run_one(config))
            total += seconds
    return total


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_classifiers(data: Path, work: Path, trials: int) -> dict:
    from tuning.classifier_search import ClassifierSearch, cross_validate, run_classifier_search

    def search(name: str, concurrency: int | None) -> ClassifierSearch:
        return ClassifierSearch(
            data=data,
            n_folds=3,
            num_samples=trials,
            time_budget_s=None,
            seed=0,
            models=("logreg", "xgboost"),
            oversample=("none", "smote"),
            scheduler="fifo",
            storage=str(work / "tune"),
            name=name,
            max_concurrent=concurrency,
        )

    wall, outcome = _timed(lambda: run_classifier_search(search("parallel", None)))
    serial_wall, serial = _timed(lambda: run_classifier_search(search("serial", 1)))
    direct = _direct(_trial_configs(serial.path), lambda c: cross_validate(c, lambda _m, _s: None))
    return {
        "search": "classifiers (3-fold CV)",
        "trials": len(outcome.trials),
        "wall_s": wall,
        "serial_wall_s": serial_wall,
        "direct_s": direct,
        "serial_trials": len(serial.trials),
        "in_trial_s": _in_trial_seconds(serial.path),
    }


def bench_rl(work: Path, trials: int, env: str = "CartPole-v1") -> dict:
    from training.rl.options import RLOptions
    from tuning.rl_search import RLSearch, run_rl_search, run_trial

    sepsis = env.startswith("SepsisEnv")
    base = RLOptions(
        env=env,
        num_env_runners=1,
        num_cpus_per_env_runner=0.5,
        num_steps_sampled_before_learning_starts=200,
        min_sample_timesteps_per_iteration=300,
        training_intensity=4,
        replay_capacity=5000,
    )

    def search(name: str, concurrency: int | None) -> RLSearch:
        return RLSearch(
            base=base,
            num_samples=trials,
            iterations_per_trial=2,
            time_budget_s=None,
            scheduler="fifo",
            # SepsisEnv: the default scoring, 2,000 fixed validation episodes in one batch.
            eval_episodes=None if sepsis else 5,
            storage=str(work / "tune"),
            name=name,
            max_concurrent=concurrency,
        )

    tag = "sepsis" if sepsis else "cartpole"
    wall, outcome = _timed(lambda: run_rl_search(search(f"rl_{tag}_parallel", None)))
    serial_wall, serial = _timed(lambda: run_rl_search(search(f"rl_{tag}_serial", 1)))
    direct = _direct(_trial_configs(serial.path), lambda c: run_trial(c, lambda _m, _c: None))
    label = "SepsisEnv, 2,000 val. eps" if sepsis else "CartPole"
    return {
        "search": f"DQN on {label} (2 it.)",
        "trials": len(outcome.trials),
        "wall_s": wall,
        "serial_wall_s": serial_wall,
        "direct_s": direct,
        "serial_trials": len(serial.trials),
        "in_trial_s": _in_trial_seconds(serial.path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a `data prepare` folder")
    parser.add_argument("--trials", type=int, default=4, help="classifier trials")
    parser.add_argument("--rl-trials", type=int, default=3, help="DQN trials")
    args = parser.parse_args()

    import ray

    from sepsis_rl.common.ray_local import init_ray

    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        data = _prepared(args.data, work)
        init_ray()
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            rows = [
                bench_classifiers(data, work, args.trials),
                bench_rl(work, args.rl_trials),
                bench_rl(work, args.rl_trials, "SepsisEnv-v0"),
            ]
        finally:
            ray.shutdown()
    print(f"Ray Tune searches at the tiny budget on {cpus:g} CPUs (FIFO; wall time, seconds)")
    header = (
        f"{'search':<40} {'trials':>6} {'wall':>7} {'trials/min':>10} | {'serial':>7} "
        f"{'in-trial':>8} {'direct':>7} {'overhead/trial':>14} {'overhead':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        per_trial = (r["serial_wall_s"] - r["direct_s"]) / max(1, r["serial_trials"])
        relative = 100 * per_trial * r["serial_trials"] / r["direct_s"]
        print(
            f"{r['search']:<40} {r['trials']:>6} {r['wall_s']:>7.1f} "
            f"{60 * r['trials'] / r['wall_s']:>10.2f} | {r['serial_wall_s']:>7.1f} "
            f"{r['in_trial_s']:>8.1f} "
            f"{r['direct_s']:>7.1f} {per_trial:>13.1f}s {relative:>7.0f}%"
        )
    print(
        "wall: the search with the cluster's concurrency; serial: the same search one trial at a "
        "time; in-trial: time Tune measured inside that search's trial functions (serial - "
        "in-trial is Tune's own scheduling and bookkeeping); direct: the serial search's trial "
        "configurations run by the same trial function without Tune, one after the other, with "
        "a Ray worker's thread limits. overhead = (serial - direct) per trial, and relative to "
        "direct."
    )


if __name__ == "__main__":
    main()
