"""Which algorithm learns best in the same wall time? DQN, PPO, APPO and IMPALA, 3 seeds each.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python benchmarks/bench_algorithms.py \
        --out results/bench_algorithms      # 4 algos x 3 seeds x 2 envs x 180 s: ~80 min
    python benchmarks/bench_algorithms.py --algos dqn,ppo --seeds 0 --budget-s 20 \
        --out /tmp/bench_alg_smoke          # smoke run, about 2 minutes
    python benchmarks/bench_algorithms.py --report-only --out results/bench_algorithms

Every run is `training.rl.train.train` (the code behind `sepsis-rl train --algo ...`) with the
same wall-clock budget (`--budget-s`, counted by the training loop from the first iteration; the
last iteration may overshoot it), in its own folder `<out>/<env>_<algo>_seed<seed>` (replaced if
it exists), evaluated
every `--eval-interval` iterations. Options come from `<config-dir>/<env>_<algo>.yaml` when it
exists (`sepsis_ppo.yaml`, `icu_sepsis_ppo.yaml`, ...); otherwise SepsisEnv runs use the
defaults and ICU-Sepsis runs `<config-dir>/icu_sepsis.yaml` (DQN's tuned file: its env settings,
network and env runners; only DQN reads its top-level training options), with `algo` set.

(a) SepsisEnv: the greedy policy's validation return and survival minus the clinician protocol's
    (paired, the 2,000 fixed validation episodes of training's evaluation) against wall time and
    env steps; then `checkpoints/best` (else `last`) on 2,000 test episodes
    (`training.rl.evaluate.evaluate_checkpoint`, seed `TEST_SEED`): learned minus protocol and
    minus the age-adaptive protocol, return and survival, with 95% intervals.
(b) ICU-Sepsis: the exact value of the greedy policy (metrics.csv `eval_return_mean`) against
    wall time and env steps, beside random, clinicians and optimal computed in the same run, and
    the wall time and env steps to first reach the target 0.86.

Wall time is measured from the call to `train` (building the algorithm included). Prints one
table (each seed and the median per algorithm) and the two verdicts; writes `results.json`
(with every learning curve), `results.csv` (one row per run), `curves_sepsis.png` and
`curves_icu_sepsis.png` (median over seeds, min-max band) in `--out`. A run that fails is
recorded with its error and the benchmark goes on. `--report-only` redraws table and figures
from `results.json`. ICU-Sepsis needs the optional package: pip install -e ".[icu-sepsis]".
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_DIR = REPO / "training" / "configs"
DEFAULT_OUT = Path("results/bench_algorithms")
ICU_SEPSIS_FALLBACK = "icu_sepsis.yaml"
"""ICU-Sepsis options file used when `<env>_<algo>.yaml` does not exist (DQN's tuned settings)."""

SEPSIS, ICU_SEPSIS = "sepsis", "icu-sepsis"
ENV_IDS = {SEPSIS: "SepsisEnv-v0", ICU_SEPSIS: "icu-sepsis"}
"""`RLOptions.env` of each `--envs` name."""
ICU_TARGET = 0.86
"""Exact value the ICU-Sepsis runs race to (`sepsis_env.icu_sepsis.TARGET_VALUE`)."""
FAILED, INTERRUPTED = "failed", "interrupted"
"""Statuses of a run that left no result (the others: "ok", and "test failed" on SepsisEnv)."""
COLORS = {"dqn": "tab:blue", "ppo": "tab:orange", "appo": "tab:green", "impala": "tab:red"}

CURVE_KEYS = (
    "iteration",
    "env_steps",
    "wall_s",
    "value",
    "return_vs_protocol",
    "survival_vs_protocol",
)
"""Per-iteration points of a run's learning curve (`value`: validation return on SepsisEnv,
the exact value on ICU-Sepsis)."""


# --- Options of one run --------------------------------------------------------------------------
def options_file(config_dir: Path, env: str, algo: str) -> Path | None:
    """The file a run's options come from: `<env>_<algo>.yaml`, else the env's fallback."""
    own = config_dir / f"{env.replace('-', '_')}_{algo}.yaml"
    if own.is_file():
        return own
    if env == ICU_SEPSIS:
        return config_dir / ICU_SEPSIS_FALLBACK
    return None


def run_options(args: argparse.Namespace, env: str, algo: str, seed: int):
    """The `RLOptions` of one run: its options file (or the defaults), then this benchmark's
    algorithm, seed, budget and evaluation interval. Raises ValueError for a file written for
    another environment or algorithm."""
    from sepsis_env.ids import bare_id
    from sepsis_rl.common.config_files import read_config_file
    from training.rl.options import load_options, options_from_dict

    path = options_file(args.config_dir, env, algo)
    if path is not None:
        written = read_config_file(path, what="RL option names")
        if written.get("algo", algo) != algo and path.name != ICU_SEPSIS_FALLBACK:
            raise ValueError(f"{path} is for algo {written['algo']!r}, not {algo!r}")
    options = load_options(path)
    if bare_id(options.env) != bare_id(ENV_IDS[env]):
        raise ValueError(f"{path} trains on {options.env}, not on {ENV_IDS[env]} ({env})")
    changes = {
        "algo": algo,
        "seed": seed,
        "time_budget_s": args.budget_s,
        "episodes": None,
        "env_steps": None,
        "evaluation_interval": args.eval_interval,
    }
    return options_from_dict(changes, base=options), str(path) if path else "defaults"


# --- One run -------------------------------------------------------------------------------------
def new_run(env: str, algo: str, seed: int) -> dict[str, Any]:
    return {
        "env": env,
        "algo": algo,
        "seed": seed,
        "status": FAILED,
        "error": None,
        "curve": {key: [] for key in CURVE_KEYS},
    }


def train_run(args: argparse.Namespace, env: str, algo: str, seed: int) -> dict[str, Any]:
    """Train one (env, algo, seed) within the budget; on SepsisEnv then test its best policy.
    Never raises for a failing run (KeyboardInterrupt aside): the error is recorded instead."""
    from training.rl.train import TrainingInterrupted, train

    run = new_run(env, algo, seed)
    folder = args.out / f"{env.replace('-', '_')}_{algo}_seed{seed}"
    run["run_dir"] = str(folder)
    curve = run["curve"]
    start = time.monotonic()

    def record(m) -> None:
        points = (
            m.iteration,
            m.env_steps,
            time.monotonic() - start,
            m.eval_return_mean,
            m.eval_return_minus_protocol,
            m.eval_survival_minus_protocol,
        )
        for key, value in zip(CURVE_KEYS, points, strict=True):
            curve[key].append(value)
        tail = (
            f"exact {m.eval_return_mean:.4f}"
            if env == ICU_SEPSIS
            else f"val return vs protocol {m.eval_return_minus_protocol:+.3f}"
        )
        print(
            f"    iter {m.iteration:>4} {m.env_steps:>8} steps {points[2]:>6.0f} s  {tail}",
            flush=True,
        )

    try:
        options, source = run_options(args, env, algo, seed)
        run["options_file"] = source
        shutil.rmtree(folder, ignore_errors=True)  # this benchmark's own folder: a fresh run
        result = train(options, folder, on_iteration=record)
    except TrainingInterrupted as stopped:  # Ctrl-C: the benchmark stops after this run
        run.update(status=INTERRUPTED, error=stopped.result.stop_reason)
        run["wall_s"] = time.monotonic() - start
        return run
    except Exception as err:  # a crashed run is a result too: record it and go on
        run["error"] = failure(err)
        run["wall_s"] = time.monotonic() - start
        print(f"    FAILED: {run['error'].splitlines()[-1]}", flush=True)
        return run
    run.update(
        status="ok",
        stop_reason=result.stop_reason,
        iterations=result.iterations,
        env_steps=result.env_steps,
        train_s=result.elapsed_s,
        wall_s=time.monotonic() - start,
        steps_per_s=result.env_steps / result.elapsed_s if result.elapsed_s > 0 else math.nan,
    )
    if env == SEPSIS:
        checkpoint = result.best_checkpoint or result.last_checkpoint
        run["tested_checkpoint"] = checkpoint
        try:
            run["test"], run["test_s"] = sepsis_test(checkpoint)
        except Exception as err:
            run["status"], run["error"] = "test failed", failure(err)
            print(f"    TEST FAILED: {run['error'].splitlines()[-1]}", flush=True)
    return run


def failure(err: BaseException) -> str:
    """The error and the last frames of its traceback (enough to find where it happened)."""
    frames = traceback.format_exception(err)
    return "".join(frames[-4:]).strip()


def sepsis_test(checkpoint: str) -> tuple[dict[str, dict[str, list[float]]], float]:
    """Learned minus protocol and minus the age-adaptive protocol on the test episodes, return
    and survival, each (estimate, lower, upper); and the seconds the evaluation took."""
    from training.rl.evaluate import TEST_EPISODES, TEST_SEED, evaluate_checkpoint
    from training.rl.policy import HAND_RULE, REFERENCE

    start = time.monotonic()
    report = evaluate_checkpoint(checkpoint, TEST_EPISODES, TEST_SEED)["report"]
    against = report["learned_minus_baseline"]
    test = {
        baseline: {
            m: [float(x) for x in against[baseline]["overall"][m]] for m in ("return", "survival")
        }
        for baseline in (REFERENCE, HAND_RULE)
    }
    return test, time.monotonic() - start


# --- Summaries of runs ---------------------------------------------------------------------------
def finished(run: dict[str, Any]) -> bool:
    """Whether a run trained to its budget (its test evaluation may still have failed)."""
    return run["status"] not in (FAILED, INTERRUPTED)


def sepsis_summary(run: dict[str, Any]) -> dict[str, float]:
    """Final and best validation differences to the protocol, and the test ones."""
    from training.rl.policy import HAND_RULE, REFERENCE

    curve = run["curve"]
    returns = np.asarray(curve["return_vs_protocol"], dtype=float)
    evaluated = np.isfinite(returns)
    out: dict[str, float] = {"val_return_final": math.nan, "val_return_best": math.nan}
    out["val_survival_best"] = math.nan
    if evaluated.any():
        survival = np.asarray(curve["survival_vs_protocol"], dtype=float)[evaluated]
        returns = returns[evaluated]
        best = int(np.argmax(returns))
        out.update(
            val_return_final=returns[-1],
            val_return_best=returns[best],
            val_survival_best=survival[best],
        )
    for baseline, short in ((REFERENCE, "protocol"), (HAND_RULE, "age_adaptive")):
        for metric in ("return", "survival"):
            est, lo, hi = run.get("test", {}).get(baseline, {}).get(metric, [math.nan] * 3)
            out |= {f"test_{metric}_vs_{short}": est, f"test_{metric}_vs_{short}_lo": lo}
            out[f"test_{metric}_vs_{short}_hi"] = hi
    return out


def icu_summary(run: dict[str, Any], target: float = ICU_TARGET) -> dict[str, float]:
    """Final and best exact value; wall time and env steps at the first evaluation at or above
    `target` (NaN: not reached)."""
    curve = run["curve"]
    values = np.asarray(curve["value"], dtype=float)
    out = {"exact_final": math.nan, "exact_best": math.nan, "target_wall_s": math.nan}
    out["target_env_steps"] = math.nan
    if np.isfinite(values).any():
        out.update(exact_final=values[np.isfinite(values)][-1], exact_best=np.nanmax(values))
        hits = np.nonzero(values >= target)[0]
        if len(hits):
            first = int(hits[0])
            out.update(
                target_wall_s=curve["wall_s"][first], target_env_steps=curve["env_steps"][first]
            )
    return out


def summary_of(run: dict[str, Any]) -> dict[str, Any]:
    """One flat row per run (what `results.csv` holds)."""
    row = {key: run.get(key) for key in ("env", "algo", "seed", "status", "options_file")}
    for key in ("iterations", "env_steps", "train_s", "wall_s", "steps_per_s", "test_s"):
        row[key] = run.get(key, math.nan)
    row |= sepsis_summary(run) if run["env"] == SEPSIS else icu_summary(run)
    row["error"] = (run.get("error") or "").splitlines()[-1] if run.get("error") else ""
    return row


def median_of(values: list[float], missing_is_inf: bool = False) -> float:
    """Median over seeds of the finite values; with `missing_is_inf`, NaN counts as infinite
    (a seed that never reached the target), so the median is inf when most never did."""
    x = np.asarray(values, dtype=float)
    if missing_is_inf:
        x = np.where(np.isnan(x), np.inf, x)
        return float(np.median(x)) if x.size else math.nan
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


# --- The table -----------------------------------------------------------------------------------
def fmt(value: float, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    if math.isinf(value):
        return f"{'not reached':>{width}}"
    return f"{format(value, spec):>{width}}"


def interval_text(row: dict[str, Any], key: str, points: bool = False) -> str:
    from sepsis_rl.common.intervals import format_interval

    triple = (row[key], row[f"{key}_lo"], row[f"{key}_hi"])
    return format_interval(triple, 2, signed=True, points=points)


def print_sepsis_table(rows: list[dict[str, Any]], algos: list[str]) -> None:
    print(
        "(a) SepsisEnv: greedy policy minus the clinician protocol; validation (2,000 fixed "
        "episodes, during training) and test (2,000 episodes, checkpoints/best, 95% intervals)"
    )
    header = (
        f"{'algo':<7}{'seed':>6} {'iters':>5} {'env steps':>9} {'steps/s':>7} "
        f"{'val ret final':>13} {'val ret best':>12} {'val surv best':>13}  "
        f"{'test return vs protocol':>24} {'>0':>3}  {'test survival vs protocol':>26}  "
        f"{'test return vs age-adaptive':>27}"
    )
    print(header)
    for algo in algos:
        mine = [r for r in rows if r["algo"] == algo]
        for r in mine:
            if not finished(r):
                print(f"{algo:<7}{r['seed']:>6}  {r['status'].upper()}: {r['error']}")
                continue
            above = r["test_return_vs_protocol_lo"] > 0
            print(
                f"{algo:<7}{r['seed']:>6} {fmt(r['iterations'], 'd', 5)} "
                f"{fmt(r['env_steps'], ',d', 9)} {fmt(r['steps_per_s'], '.0f', 7)} "
                f"{fmt(r['val_return_final'], '+.3f', 13)} {fmt(r['val_return_best'], '+.3f', 12)} "
                f"{fmt(100 * r['val_survival_best'], '+.1f', 10)} pp  "
                f"{interval_text(r, 'test_return_vs_protocol'):>24} "
                f"{'yes' if above else 'no':>3}  "
                f"{interval_text(r, 'test_survival_vs_protocol', points=True):>26}  "
                f"{interval_text(r, 'test_return_vs_age_adaptive'):>27}"
            )
        done = [r for r in mine if finished(r)]
        if not done:
            continue
        med = {
            k: median_of([r[k] for r in done]) for k in done[0] if k.startswith(("val_", "test_"))
        }
        above = sum(r["test_return_vs_protocol_lo"] > 0 for r in done)
        print(
            f"{algo:<7}{'median':>6} {'':>5} "
            f"{fmt(median_of([r['env_steps'] for r in done]), ',.0f', 9)} "
            f"{fmt(median_of([r['steps_per_s'] for r in done]), '.0f', 7)} "
            f"{fmt(med['val_return_final'], '+.3f', 13)} {fmt(med['val_return_best'], '+.3f', 12)} "
            f"{fmt(100 * med['val_survival_best'], '+.1f', 10)} pp  "
            f"{fmt(med['test_return_vs_protocol'], '+.2f', 24)} {f'{above}/{len(mine)}':>3}  "
            f"{fmt(100 * med['test_survival_vs_protocol'], '+.1f', 23)} pp  "
            f"{fmt(med['test_return_vs_age_adaptive'], '+.2f', 27)}"
        )


def print_icu_table(
    rows: list[dict[str, Any]], algos: list[str], reference: dict[str, float]
) -> None:
    print(
        f"(b) ICU-Sepsis: exact value of the greedy policy (random {reference['random']:.4f}, "
        f"clinicians {reference['clinicians']:.4f}, optimal {reference['optimal']:.4f}, "
        f"best with the runs' action set {reference['restricted_optimum']:.4f}); target "
        f"{ICU_TARGET:.2f}"
    )
    print(
        f"{'algo':<7}{'seed':>6} {'iters':>5} {'env steps':>9} {'steps/s':>7} "
        f"{'exact final':>11} {'exact best':>10} {'vs clinicians':>13} "
        f"{'wall s to target':>16} {'steps to target':>15}"
    )
    for algo in algos:
        mine = [r for r in rows if r["algo"] == algo]
        for r in mine:
            if not finished(r):
                print(f"{algo:<7}{r['seed']:>6}  {r['status'].upper()}: {r['error']}")
                continue
            reached = math.isfinite(r["target_wall_s"])
            print(
                f"{algo:<7}{r['seed']:>6} {fmt(r['iterations'], 'd', 5)} "
                f"{fmt(r['env_steps'], ',d', 9)} {fmt(r['steps_per_s'], '.0f', 7)} "
                f"{fmt(r['exact_final'], '.4f', 11)} {fmt(r['exact_best'], '.4f', 10)} "
                f"{fmt(r['exact_best'] - reference['clinicians'], '+.4f', 13)} "
                f"{fmt(r['target_wall_s'] if reached else math.inf, '.0f', 16)} "
                f"{fmt(r['target_env_steps'] if reached else math.inf, ',.0f', 15)}"
            )
        done = [r for r in mine if finished(r)]
        if not done:
            continue
        best = median_of([r["exact_best"] for r in done])
        print(
            f"{algo:<7}{'median':>6} {'':>5} "
            f"{fmt(median_of([r['env_steps'] for r in done]), ',.0f', 9)} "
            f"{fmt(median_of([r['steps_per_s'] for r in done]), '.0f', 7)} "
            f"{fmt(median_of([r['exact_final'] for r in done]), '.4f', 11)} {fmt(best, '.4f', 10)} "
            f"{fmt(best - reference['clinicians'], '+.4f', 13)} "
            f"{fmt(icu_median_time(done, 'target_wall_s', mine), '.0f', 16)} "
            f"{fmt(icu_median_time(done, 'target_env_steps', mine), ',.0f', 15)}"
        )


def icu_median_time(done: list[dict], key: str, all_runs: list[dict]) -> float:
    """Median over all seeds of an algorithm (failed ones and those that never reached the
    target count as infinite)."""
    values = [r[key] for r in done] + [math.nan] * (len(all_runs) - len(done))
    return median_of(values, missing_is_inf=True)


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if math.isfinite(seconds) else "not reached"


def print_verdicts(rows: list[dict[str, Any]], algos: list[str], envs: list[str]) -> None:
    """The two questions the benchmark answers, with their evidence."""
    print("\nVerdicts")
    if SEPSIS in envs:
        counts = {}
        for algo in algos:
            mine = [r for r in rows if r["env"] == SEPSIS and r["algo"] == algo]
            counts[algo] = (sum(r["test_return_vs_protocol_lo"] > 0 for r in mine), len(mine))
        every = all(k == n and n > 0 for k, n in counts.values())
        each = ", ".join(f"{a} {k}/{n}" for a, (k, n) in counts.items())
        print(
            f"  SepsisEnv: every algorithm beats the clinician protocol on test return (95% "
            f"interval above 0) in every seed within the budget: {'YES' if every else 'NO'} "
            f"(seeds above 0: {each})"
        )
    if ICU_SEPSIS in envs:
        times = {}
        for algo in algos:
            mine = [r for r in rows if r["env"] == ICU_SEPSIS and r["algo"] == algo]
            done = [r for r in mine if finished(r)]
            best = median_of([r["exact_best"] for r in done])
            times[algo] = (icu_median_time(done, "target_wall_s", mine), best)
        # Fastest median time to the target; among those that never got there, the best value.
        winner = min(times, key=lambda a: (times[a][0], -np.nan_to_num(times[a][1], nan=-1)))
        each = ", ".join(f"{a} {seconds_text(t)} (best {b:.4f})" for a, (t, b) in times.items())
        print(
            f"  ICU-Sepsis: median wall time to first reach {ICU_TARGET:.2f} (median best exact "
            f"value): {each}"
        )
        w_time, _ = times[winner]
        line = f"  ICU-Sepsis: best algorithm {winner} ({seconds_text(w_time)})"
        if not math.isfinite(w_time):
            line = (
                f"  ICU-Sepsis: no algorithm reached {ICU_TARGET:.2f} in most seeds; highest "
                f"median best exact value: {winner}"
            )
        if "dqn" not in times:
            line += "; DQN was not run"
        elif winner == "dqn":
            line += ": DQN itself"
        else:
            d_time, _ = times["dqn"]
            line += f" vs DQN ({seconds_text(d_time)})"
            if math.isfinite(w_time) and math.isfinite(d_time):
                line += f": {w_time / d_time:.2f}x DQN's wall time"
        print(line)


# --- Figures -------------------------------------------------------------------------------------
def band(runs: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[np.ndarray, ...] | None:
    """Median, min and max over seeds of `y_key` on a common grid of `x_key`, up to where the
    shortest seed's curve ends (beyond it the band would cover fewer seeds)."""
    curves = []
    for run in runs:
        x = np.asarray(run["curve"][x_key], dtype=float)
        y = np.asarray(run["curve"][y_key], dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.sum() >= 1:
            curves.append((x[keep], y[keep]))
    if not curves:
        return None
    lo = max(x[0] for x, _ in curves)
    hi = min(x[-1] for x, _ in curves)
    grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
    ys = np.array([np.interp(grid, x, y) for x, y in curves])
    return grid, np.median(ys, axis=0), ys.min(axis=0), ys.max(axis=0), len(curves)


def draw_bands(
    ax, runs: list[dict[str, Any]], algos: list[str], x_key: str, y_key: str, scale: float = 1.0
) -> None:
    """Each algorithm's median curve over seeds and its min-max band (a point with an error bar
    while every seed has a single evaluation)."""
    for algo in algos:
        drawn = band([r for r in runs if r["algo"] == algo], x_key, y_key)
        if drawn is None:
            continue
        grid, median, low, high, seeds = drawn
        color = COLORS.get(algo)
        label = f"{algo} (median of {seeds} seeds, min-max)"
        if len(grid) == 1:
            spread = scale * np.array([median - low, high - median])
            ax.errorbar(grid, scale * median, yerr=spread, color=color, marker="o", label=label)
            continue
        ax.plot(grid, scale * median, color=color, lw=1.6, label=label)
        ax.fill_between(grid, scale * low, scale * high, color=color, alpha=0.2, lw=0)


def shared_legend(fig, ax) -> None:
    """One legend under the panels (inside them it would hide the curves)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)


def plot_sepsis(runs: list[dict[str, Any]], algos: list[str], path: Path) -> Path:
    """Validation return and survival minus the protocol's against wall time and env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    panels = [("return_vs_protocol", "return minus protocol", 1.0)]
    panels.append(("survival_vs_protocol", "survival minus protocol (pp)", 100.0))
    for row, (y_key, y_label, scale) in enumerate(panels):
        for col, (x_key, x_label) in enumerate(
            [("wall_s", "wall time (s)"), ("env_steps", "env steps")]
        ):
            ax = axes[row, col]
            draw_bands(ax, runs, algos, x_key, y_key, scale)
            ax.axhline(0, color="black", lw=0.8, ls="--", label="clinician protocol")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"validation {y_label}")
            ax.grid(alpha=0.3)
    shared_legend(fig, axes[0, 0])
    fig.suptitle("SepsisEnv: greedy policy minus the clinician protocol, 2,000 validation episodes")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_icu(
    runs: list[dict[str, Any]], algos: list[str], reference: dict[str, float], path: Path
) -> Path:
    """Exact value against wall time and env steps, with the reference values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    lines = [
        (reference["optimal"], "optimal", "black", "-"),
        (reference["restricted_optimum"], "optimal with the action set", "gray", "-."),
        (ICU_TARGET, "target", "tab:purple", "--"),
        (reference["clinicians"], "clinicians", "tab:brown", ":"),
        (reference["random"], "random", "tab:gray", ":"),
    ]
    for ax, (x_key, x_label) in zip(
        axes, [("wall_s", "wall time (s)"), ("env_steps", "env steps")], strict=True
    ):
        draw_bands(ax, runs, algos, x_key, "value")
        for value, label, color, style in lines:
            ax.axhline(value, color=color, ls=style, lw=1, label=f"{label} {value:.4f}")
        ax.set_xlabel(x_label)
        ax.set_ylabel("exact value of the greedy policy (P(survival))")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(reference["random"] - 0.01, reference["optimal"] + 0.01)
    shared_legend(fig, axes[0])
    fig.suptitle("ICU-Sepsis: exact value of the greedy policy")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- Results files -------------------------------------------------------------------------------
def icu_reference(args: argparse.Namespace) -> dict[str, float]:
    """Random, clinician and optimal exact values (and the optimum of the runs' action set),
    computed here with the inadmissible-action strategy the ICU-Sepsis runs train with."""
    from sepsis_env import icu_sepsis
    from training.rl.icu_sepsis import env_settings, exact_evaluator, restricted_optimum

    options, _ = run_options(args, ICU_SEPSIS, args.algos[0], args.seeds[0])
    settings = env_settings(options)
    values = exact_evaluator(settings.inadmissible_action_strategy).baselines_
    return {
        "random": values.random,
        "clinicians": values.expert,
        "optimal": values.optimal,
        "restricted_optimum": restricted_optimum(settings),
        "target": icu_sepsis.TARGET_VALUE,
        "strategy": settings.inadmissible_action_strategy,
        "action_set": settings.action_set,
    }


def write_results(out: Path, payload: dict[str, Any]) -> None:
    """`results.json` (everything, curves included) and `results.csv` (one row per run)."""
    import pandas as pd

    from sepsis_rl.common.files import write_json_atomic, write_text_atomic

    write_json_atomic(out / "results.json", payload)
    text = io.StringIO()
    pd.DataFrame([summary_of(r) for r in payload["runs"]]).to_csv(text, index=False)
    write_text_atomic(out / "results.csv", text.getvalue())


def report(payload: dict[str, Any], out: Path) -> None:
    """The table, the verdicts and the figures."""
    runs, algos, envs = payload["runs"], payload["algos"], payload["envs"]
    rows = [summary_of(r) for r in runs]
    budget = payload["budget_s"]
    print(f"\nResults: {len(runs)} runs, {budget:g} s wall budget each, seeds {payload['seeds']}")
    figures = []
    if SEPSIS in envs:
        print_sepsis_table([r for r in rows if r["env"] == SEPSIS], algos)
        sepsis_runs = [r for r in runs if r["env"] == SEPSIS]
        figures.append(plot_sepsis(sepsis_runs, algos, out / "curves_sepsis.png"))
    if ICU_SEPSIS in envs and payload.get("icu_reference"):
        print()
        print_icu_table(
            [r for r in rows if r["env"] == ICU_SEPSIS], algos, payload["icu_reference"]
        )
        icu_runs = [r for r in runs if r["env"] == ICU_SEPSIS]
        figures.append(
            plot_icu(icu_runs, algos, payload["icu_reference"], out / "curves_icu_sepsis.png")
        )
    print_verdicts(rows, algos, envs)
    print(
        f"\nfiles: {out / 'results.json'}, {out / 'results.csv'}, " + ", ".join(map(str, figures))
    )


# --- Command line --------------------------------------------------------------------------------
def csv_list(kind):
    return lambda text: [kind(x.strip()) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from training.rl.options import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--algos", type=csv_list(str), default=list(ALGORITHMS), help="dqn,ppo,appo,impala"
    )
    parser.add_argument("--seeds", type=csv_list(int), default=[0, 1, 2], help="0,1,2")
    parser.add_argument("--budget-s", type=float, default=180.0, help="wall seconds per run")
    parser.add_argument(
        "--envs", type=csv_list(str), default=[SEPSIS, ICU_SEPSIS], help="sepsis,icu-sepsis"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="<env>_<algo>.yaml files"
    )
    parser.add_argument("--eval-interval", type=int, default=1, help="evaluate every N iterations")
    parser.add_argument(
        "--report-only", action="store_true", help="table and figures from results.json"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.algos) - set(ALGORITHMS)) + sorted(set(args.envs) - set(ENV_IDS))
    if unknown:
        parser.error(
            f"unknown algorithm or env {unknown}; algorithms {ALGORITHMS}, envs {tuple(ENV_IDS)}"
        )
    if args.eval_interval < 1 or args.budget_s <= 0 or not args.seeds or not args.algos:
        parser.error("--eval-interval >= 1, --budget-s > 0, at least one seed and one algorithm")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        import json

        report(json.loads((args.out / "results.json").read_text()), args.out)
        return 0

    import ray

    from sepsis_env import icu_sepsis
    from sepsis_rl.common.files import check_output_folder
    from sepsis_rl.common.ray_local import init_ray

    check_output_folder(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "algos": args.algos,
        "seeds": args.seeds,
        "envs": args.envs,
        "budget_s": args.budget_s,
        "eval_interval": args.eval_interval,
        "config_dir": str(args.config_dir),
        "cpus": os.cpu_count(),
        "runs": [],
    }
    if ICU_SEPSIS in args.envs:
        try:
            icu_sepsis.require_icu_sepsis()
        except icu_sepsis.ICUSepsisNotInstalledError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        payload["icu_reference"] = icu_reference(args)
    print(
        f"algorithms {args.algos} x seeds {args.seeds} x envs {args.envs}, {args.budget_s:g} s "
        f"wall each; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; out {args.out}"
    )
    if "icu_reference" in payload:
        ref = payload["icu_reference"]
        print(
            f"ICU-Sepsis exact references (inadmissible actions: {ref['strategy']}): random "
            f"{ref['random']:.4f}, clinicians {ref['clinicians']:.4f}, "
            f"optimal {ref['optimal']:.4f}, optimal with action set {ref['action_set']} "
            f"{ref['restricted_optimum']:.4f}"
        )
    start = time.monotonic()
    init_ray(num_cpus=2)
    try:
        for env in args.envs:
            for algo in args.algos:
                for seed in args.seeds:
                    print(
                        f"\n== {env} / {algo} / seed {seed}  [{time.monotonic() - start:.0f} s]",
                        flush=True,
                    )
                    payload["runs"].append(train_run(args, env, algo, seed))
                    write_results(args.out, payload)
                    if payload["runs"][-1]["status"] == INTERRUPTED:
                        raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("\ninterrupted: reporting the runs finished so far", file=sys.stderr)
    finally:
        ray.shutdown()
    payload["total_s"] = time.monotonic() - start
    write_results(args.out, payload)
    report(payload, args.out)
    print(f"total {payload['total_s']:.0f} s; load at the end {os.getloadavg()[0]:.1f}")
    return 0 if all(r["status"] == "ok" for r in payload["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
