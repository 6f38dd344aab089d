"""Speed and memory of the hourly early-warning features on a full-size synthetic cohort.

Run: `python benchmarks/bench_hourly.py [--patients 40336] [--naive-patients 4000]`.
Steps: the project's synthetic generator writes the cohort (in a child process, so its own peak
memory is not counted here; cached as parquet under --work); this process reads it, fits
`HourlyFeatureBuilder` on a random training-sized share (70%) of the stays and times `transform`
on every hour; then times `naive_hourly_features`, the same features written the obvious way
with pandas groupby / groupby-rolling, on the first --naive-patients stays (too slow for the
whole cohort on 2 cores: its rate is extrapolated, and the output says so), and checks that both
agree on those stays. Target (issue): at least 200,000 hours/s for the features on the
40,336-stay cohort (1.55M hours), with the memory under about 3 GB.

Then (unless --no-classify) the whole hourly early-warning task on the same cohort: the table
and a stratified patient split are written as a prepared folder (`hourly.parquet`, `split.csv`:
what `classify --task hourly` reads), `sepsis-rl classify --task hourly --models xgboost
--oversample none` runs in a child process (wall time and its peak memory; targets: at most
5 minutes and 4 GB), the cohort is written as `.psv` files and `classify-score --task hourly`'s
work (read, features, predict, write one prediction file per patient) is timed (target: at least
100,000 hours/s), the model already loaded; beside it, in the same run, the same work done the
one-shot way (the whole table to pandas, every hour's features and predictions, then every file),
whose files must be byte for byte the same. Last, the model's test utility interval beside the
best clinical rule's (target: the model's interval lies above the rule's).

`naive_hourly_features` is also the reference the tests compare the fast builder with: its one
home is here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from data_prep.hourly_features import ROLLING_STATS, HourlyFeatureBuilder
from data_prep.schema import PATIENT, TIME

FULL_COHORT = 40_336
TARGET_HOURS_PER_S = 200_000
MEMORY_BUDGET_MB = 3 * 1024
FIT_SHARE = 0.7  # the default training split's share of patients
CLASSIFY_TARGET_S = 5 * 60
CLASSIFY_MEMORY_MB = 4 * 1024
SCORE_TARGET_HOURS_PER_S = 100_000


def naive_hourly_features(table: pd.DataFrame, builder: HourlyFeatureBuilder) -> pd.DataFrame:
    """The features of a fitted `builder`, computed with pandas groupby and groupby-rolling.

    Written from the definitions, for reading and checking: forward fill, cumulative counts and
    `rolling(w, min_periods=1)` per patient; hours since a measurement from ICULOS. Slow.
    """
    by_patient = table[PATIENT]
    groups = table.groupby(PATIENT, sort=False)
    hours = table[TIME].astype(float)
    out: dict[str, pd.Series] = {}
    largest = max(builder.windows_h)
    for name in builder.measurements_:
        observed = table[name].notna()
        last = groups[name].ffill()
        measured_at = hours.where(observed).groupby(by_patient, sort=False).ffill()
        out[f"{name}__last"] = last
        out[f"{name}__hours_since"] = hours - measured_at
        out[f"{name}__n_obs"] = observed.astype(float).groupby(by_patient, sort=False).cumsum()
        if name not in builder.rolling_columns_:
            continue
        earlier = last.groupby(by_patient, sort=False).shift(builder.change_h)
        out[f"{name}__delta_{builder.change_h}h"] = last - earlier
        for w in builder.windows_h:
            rolling = groups[name].rolling(w, min_periods=1)
            for stat in ROLLING_STATS:
                out[f"{name}__{stat}_{w}h"] = getattr(rolling, stat)().droplevel(0)
        counts = observed.astype(float).groupby(by_patient, sort=False).rolling(largest, 1).sum()
        out[f"{name}__n_obs_{largest}h"] = counts.droplevel(0)
    unit1 = table["Unit1"].astype(float)
    out[TIME] = hours
    out["Age"] = table["Age"].astype(float).replace(100.0, 90.0)
    out["Gender"] = table["Gender"].astype(float)
    out["Unit1"] = unit1.fillna(0.0)
    out["Unit2"] = table["Unit2"].astype(float).fillna(0.0)
    out["unit_known"] = unit1.notna().astype(float)
    out["HospAdmTime"] = table["HospAdmTime"].astype(float).fillna(builder.hosp_adm_median_)
    frame = pd.DataFrame({k: v.reindex(table.index) for k, v in out.items()})
    return frame[builder.feature_names_out_].astype(np.float32)


def _peak_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _cpu_s() -> float:
    """CPU seconds of this process so far, every thread, user and system."""
    times = os.times()
    return times.user + times.system


def _same_files(a: Path, b: Path) -> bool:
    """True when folders `a` and `b` hold the same file names with the same bytes."""
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _cohort(patients: int, seed: int, work: Path) -> tuple[Path, float]:
    """The synthetic cohort as parquet, generated by a child process unless already cached."""
    path = work / f"cohort_{patients}_seed{seed}.parquet"
    if path.is_file():
        return path, 0.0
    work.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from data_prep.synth import generate_cohort; "
        "generate_cohort(int(sys.argv[1]), seed=int(sys.argv[2])).to_parquet(sys.argv[3])"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(patients), str(seed), str(path)], check=True)
    return path, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=FULL_COHORT)
    parser.add_argument(
        "--naive-patients", type=int, default=4000, help="Stays the naive version runs on."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_hourly"))
    parser.add_argument(
        "--classify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also time classify --task hourly and the scoring of a .psv folder.",
    )
    args = parser.parse_args()

    print(
        f"cohort: {args.patients:,} synthetic stays, seed {args.seed}; cores available: "
        f"{len(os.sched_getaffinity(0))}; load average now {os.getloadavg()[0]:.1f} "
        "(other users' work slows every time below)",
        flush=True,
    )
    path, generated_s = _cohort(args.patients, args.seed, args.work)
    note = f"generated in {generated_s:.1f} s" if generated_s else "cached"
    table = pd.read_parquet(path)
    pa.default_memory_pool().release_unused()  # the reader's buffers, kept by arrow's allocator
    n_hours = len(table)
    print(
        f"table: {n_hours:,} hours ({note}, {path}); peak memory after reading {_peak_mb():,.0f} MB"
    )

    stays = table[PATIENT].unique()
    fit_stays = np.random.default_rng(args.seed).permutation(stays)[: int(FIT_SHARE * stays.size)]
    fit_rows = table[PATIENT].isin(fit_stays)
    start = time.perf_counter()
    builder = HourlyFeatureBuilder().fit(table[fit_rows])
    fit_s = time.perf_counter() - start
    resident_before = _resident_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    features = builder.transform(table)
    fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak_mb()
    fast_rate = n_hours / fast_s
    print(
        f"HourlyFeatureBuilder: fit {fit_s:.2f} s; transform {fast_s:.2f} s wall "
        f"({fast_cpu:.2f} s CPU) = {fast_rate:,.0f} hours/s; {features.shape[1]} features "
        f"({features.memory_usage(index=False).sum() / 2**20:,.0f} MB float32); rolling columns: "
        f"{', '.join(builder.rolling_columns_)}"
    )
    print(
        f"memory: {resident_before:,.0f} MB resident before transform (the table and the fitted "
        f"builder), peak (ru_maxrss) after transform {peak:,.0f} MB",
        flush=True,
    )

    subset_stays = set(stays[: args.naive_patients])
    subset = table[table[PATIENT].isin(subset_stays)]
    start, cpu_start = time.perf_counter(), time.process_time()
    naive = naive_hourly_features(subset, builder)
    naive_s, naive_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    naive_rate = len(subset) / naive_s
    scope = (
        "all hours"
        if len(subset) == n_hours
        else f"{len(subset):,} hours of the first {len(subset_stays):,} stays; "
        f"{n_hours:,} hours extrapolated to {n_hours / naive_rate:.0f} s"
    )
    print(
        f"naive pandas groupby-rolling: {naive_s:.2f} s wall ({naive_cpu:.2f} s CPU) = "
        f"{naive_rate:,.0f} hours/s ({scope})"
    )
    fast_subset = features.loc[subset.index]
    agree = np.allclose(
        naive.to_numpy(np.float64),
        fast_subset.to_numpy(np.float64),
        rtol=1e-5,
        atol=1e-4,
        equal_nan=True,
    )
    print(
        f"speed-up {fast_rate / naive_rate:.0f}x; fast and naive features agree on those hours: "
        f"{agree}"
    )
    met = fast_rate >= TARGET_HOURS_PER_S
    memory_met = peak <= MEMORY_BUDGET_MB
    print(
        f"target >= {TARGET_HOURS_PER_S:,} hours/s: {'met' if met else 'NOT met'} "
        f"({fast_rate:,.0f}); memory <= {MEMORY_BUDGET_MB:,} MB: "
        f"{'met' if memory_met else 'NOT met'} ({peak:,.0f} MB peak after transform, before the "
        "naive run)",
        flush=True,
    )
    if args.classify:
        del features, naive, fast_subset
        _bench_classify(table, args.seed, args.work / f"hourly_{args.patients}_seed{args.seed}")


def _bench_classify(table: pd.DataFrame, seed: int, work: Path) -> None:
    """Time `classify --task hourly` (child process) and the scoring of a .psv folder."""
    from data_prep.split import patient_labels, split_patients
    from data_prep.synth import write_psv_files

    prepared, out, psv = (work / n for n in ("prepared", "run", "psv"))
    # A new folder for the predictions, removed after the timing: deleting 40,000 files just
    # before it (ext4 mounted with `discard`) slowed the next file creations several-fold.
    predicted = work / f"pred-{os.getpid()}"
    one_shot = work / f"pred-one-shot-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    prepared.mkdir(parents=True, exist_ok=True)
    table.to_parquet(prepared / "hourly.parquet", index=False)
    split_patients(patient_labels(table), seed=seed).to_csv(prepared / "split.csv", index=False)
    command = ["classify", "--task", "hourly", "--data", str(prepared), "--out", str(out),
               "--models", "xgboost", "--oversample", "none", "--seed", str(seed)]  # fmt: skip
    peak_file = work / "classify_peak_mb.txt"
    code = (
        "import resource, sys\n"
        "from sepsis_rl.cli import app\n"
        "try:\n    app(sys.argv[2:], prog_name='sepsis-rl')\n"
        "except SystemExit as exit:\n    status = exit.code\n"
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
        " / 1024))\n"
        "sys.exit(status)\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(peak_file), *command], check=True)
    classify_s = time.perf_counter() - start
    peak = float(peak_file.read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    fitted = metrics["data"]["training_hours_fitted"]
    print(
        f"classify --task hourly (XGBoost, no oversampling; {fitted:,} training hours fitted): "
        f"{classify_s:.0f} s wall, peak {peak:,.0f} MB; parts (s): "
        f"{metrics['timings_seconds']}"
    )
    print(
        f"target <= {CLASSIFY_TARGET_S} s: "
        f"{'met' if classify_s <= CLASSIFY_TARGET_S else 'NOT met'}; "
        f"memory <= {CLASSIFY_MEMORY_MB:,} MB: "
        f"{'met' if peak <= CLASSIFY_MEMORY_MB else 'NOT met'}",
        flush=True,
    )

    from data_prep.reader import read_cohort
    from training.classification.hourly import (
        in_stay_order,
        load_hourly_model,
        score_psv_folder,
        write_challenge_predictions,
    )

    if not psv.is_dir():
        write_psv_files(table, psv)
    model = load_hourly_model(out / "model")
    # What `classify-score --task hourly` does once the model is loaded: read the folder, then
    # `score_psv_folder` (features, model and prediction files, whole stays a chunk at a time,
    # the files written while the next chunk is scored).
    start, cpu_start = time.perf_counter(), _cpu_s()
    hours = read_cohort(psv, allow_unlabelled=True).table
    read_s = time.perf_counter() - start
    files = score_psv_folder(model, hours, predicted)
    score_s, score_cpu = time.perf_counter() - start, _cpu_s() - cpu_start
    rate = hours.num_rows / score_s
    print(
        f"classify-score --task hourly: {hours.num_rows:,} hours of {files:,} .psv files in "
        f"{score_s:.1f} s wall ({score_cpu:.1f} s CPU; read {read_s:.1f}, then features + model "
        f"+ files {score_s - read_s:.1f}) = {rate:,.0f} hours/s; target >= "
        f"{SCORE_TARGET_HOURS_PER_S:,}: {'met' if rate >= SCORE_TARGET_HOURS_PER_S else 'NOT met'}",
        flush=True,
    )
    del hours
    # The same work the one-shot way, as classify-score did it before: the whole table to
    # pandas, every hour's features and predictions, then every file.
    start, cpu_start = time.perf_counter(), _cpu_s()
    whole = in_stay_order(read_cohort(psv, allow_unlabelled=True).table.to_pandas())
    read_s = time.perf_counter() - start
    predictions = model.predict_hours(whole)
    predict_s = time.perf_counter() - start - read_s
    write_challenge_predictions(whole[PATIENT].to_numpy(), predictions, one_shot)
    one_shot_s, one_shot_cpu = time.perf_counter() - start, _cpu_s() - cpu_start
    same = _same_files(predicted, one_shot)
    print(
        f"  one-shot baseline: {one_shot_s:.1f} s wall ({one_shot_cpu:.1f} s CPU; read "
        f"{read_s:.1f}, features + model {predict_s:.1f}, files "
        f"{one_shot_s - read_s - predict_s:.1f}) = {len(whole) / one_shot_s:,.0f} hours/s; "
        f"chunked {one_shot_s / score_s:.2f}x faster; files byte-identical: {same}; load "
        f"average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    del whole, predictions
    shutil.rmtree(predicted, ignore_errors=True)
    shutil.rmtree(one_shot, ignore_errors=True)

    best = metrics["best"]["test"]["utility"]
    rule_name = metrics["best_rule"]
    rule = metrics["rules"][rule_name]["test"]["utility"]
    above = best["ci_low"] > rule["ci_high"]
    print(
        f"test utility: model {best['value']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}]; "
        f"best rule ({rule_name}, chosen on validation) {rule['value']:.3f} "
        f"[{rule['ci_low']:.3f}, {rule['ci_high']:.3f}]; target: model's interval above the "
        f"rule's: {'met' if above else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
