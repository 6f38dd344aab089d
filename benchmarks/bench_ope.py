"""Do off-policy estimates tell the truth? Every estimator against the exact or simulated value.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python benchmarks/bench_ope.py --out results/bench_ope
    python benchmarks/bench_ope.py --sizes 500 --repeats 1 --offline-iterations 5 \
        --dqn-budget-s 20 --out /tmp/bench_ope_smoke        # smoke run, a few minutes

Logs are made as a hospital would hold them (`training.rl.offline.logs.simulate_logs`), then
each target policy's value is estimated from them alone (`training.rl.offline.ope`) and set
beside the truth:

(a) ICU-Sepsis: logs of `--sizes` clinician episodes (the package's expert policy, mixed with
    `--epsilon` uniform), `--repeats` independent logs per size. Targets: random, clinicians,
    optimal (value iteration), BC, MARWIL and discrete CQL trained offline on the train stays of
    separate logs of the largest size (never estimated from), and an online DQN
    (`training/configs/icu_sepsis.yaml`, `--dqn-budget-s`). Truth: the exact value (linear solve
    on the package's matrices).
(b) SepsisEnv: logs of the clinicians (the protocol with `CLINICIAN_NOISE` random decisions),
    same sizes. Targets: random, no treatment, the clinician protocol, the age-adaptive protocol,
    BC/MARWIL/CQL trained offline the same way, and an online DQN (defaults, `--dqn-budget-s`).
    Truth: the mean discounted return of `TRUTH_EPISODES` simulated episodes of the target on the
    logs' patients, with its own 95% interval.

For each env, log size and estimator: bias and RMSE of the estimates (over targets and repeats)
and the coverage of their 95% bootstrap intervals (how often the interval holds the truth; for
SepsisEnv the simulated truth's own interval is printed, it is much narrower than the estimates').
Then the offline policies' true values, and the issue's two verdicts. Writes `results.json` and
`results.csv` (one row per env, size, repeat, target and estimator) in `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ICU_CONFIG = REPO / "training" / "configs" / "icu_sepsis.yaml"
SEPSIS, ICU_SEPSIS = "SepsisEnv-v0", "icu-sepsis"
OFFLINE_ALGOS = ("bc", "marwil", "cql")
TRUTH_EPISODES = 20_000
"""Simulated episodes behind each SepsisEnv target's true value."""
TRUTH_SEED = 777_000
"""Seed of the truth simulations (other seeds than any logs')."""
COVERAGE_GOAL = 0.9
"""The issue's bar: an estimator whose interval covers the truth for this share of the targets."""
OFFLINE_GOAL = 0.85
TRAINING_LOGS_SEED = 500_001
"""Seed of the logs the offline policies learn from (none of the evaluated logs' seeds)."""
"""The issue's bar for an offline policy trained on 20,000 ICU-Sepsis clinician episodes."""


@dataclass
class Target:
    """A target policy: its action probabilities on raw logged observations, and its truth."""

    name: str
    probs: Callable[[np.ndarray], np.ndarray]
    truth: float
    truth_low: float = math.nan
    truth_high: float = math.nan


# --- Policies trained for the benchmark -----------------------------------------------------------
def train_offline_policies(
    logs_dir: Path, out: Path, env: str, iterations: int, seed: int
) -> dict[str, Path]:
    """BC, MARWIL and CQL trained on the train stays of `logs_dir`; their best checkpoints."""
    from training.rl.offline.train import train_offline
    from training.rl.options import load_options, options_from_dict

    base = load_options(ICU_CONFIG) if env == ICU_SEPSIS else None
    found = {}
    for algo in OFFLINE_ALGOS:
        options = options_from_dict(
            {"algo": algo, "seed": seed, "time_budget_s": None, algo: {"iterations": iterations}},
            base=base,
        )
        start = time.monotonic()
        run = train_offline(logs_dir, options, out / f"{algo}")
        found[algo] = run / "checkpoints" / "best"
        print(f"   trained {algo} offline in {time.monotonic() - start:.0f} s", flush=True)
    return found


def train_online_dqn(env: str, out: Path, budget_s: float, seed: int) -> Path:
    """An online DQN (ICU-Sepsis: its tuned config file; SepsisEnv: the defaults), `budget_s`."""
    import ray

    from sepsis_rl.common.ray_local import init_ray
    from training.rl.options import load_options, options_from_dict
    from training.rl.train import train

    base = load_options(ICU_CONFIG) if env == ICU_SEPSIS else None
    options = options_from_dict(
        {"seed": seed, "time_budget_s": budget_s, "episodes": None, "env_steps": None},
        base=base,
    )
    init_ray(num_cpus=2)
    try:
        start = time.monotonic()
        train(options, out)
        print(f"   trained DQN online in {time.monotonic() - start:.0f} s", flush=True)
    finally:
        ray.shutdown()
    return out / "checkpoints" / "best"


# --- What the logs allow (ICU-Sepsis) -------------------------------------------------------------
CEILING_MIN_VISITS = (1, 5, 10, 20, 50)
"""Least visits of a logged (state, action) pair for the count-model policies to use it."""


def icu_data_ceiling(steps, info) -> dict[str, Any]:
    """How far any offline policy learned from these stays can get, two ways, by exact value.

    (1) The count model: P-hat and r-hat from the logged (state, action) pairs, value iteration
    over the pairs logged at least k times, k in `CEILING_MIN_VISITS`, and the best k chosen with
    the exact truth (which no offline method has): an optimistic bound for model-based offline
    RL on these logs. (2) The true dynamics restricted to the same pairs: what a learner with
    perfect estimates of what it saw could reach."""
    from sepsis_env import icu_sepsis
    from training.rl.offline.ope import state_of_observation

    strategy = info.env_kwargs.get(
        "inadmissible_action_strategy", icu_sepsis.DEFAULT_INADMISSIBLE_STRATEGY
    )
    mdp = icu_sepsis.ICUSepsisMDP.from_package(strategy)
    table = icu_sepsis.observation_table(info.env_kwargs.get("observation", "onehot"))
    n_s, n_a = mdp.num_states, mdp.num_actions
    s = state_of_observation(steps.obs, table)
    s2 = state_of_observation(steps.next_obs, table)
    a, ended = steps.actions, steps.terminated
    count = np.zeros((n_s, n_a))
    np.add.at(count, (s, a), 1.0)
    reward = np.zeros((n_s, n_a))
    np.add.at(reward, (s, a), steps.rewards)
    moves = np.zeros((n_s, n_a, n_s))
    np.add.at(moves, (s[~ended], a[~ended], s2[~ended]), 1.0)
    seen = np.maximum(count, 1.0)
    fallback = icu_sepsis.expert_policy(mdp).argmax(axis=1)

    def greedy(expected: np.ndarray, flat: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        has = allowed.any(axis=1) & ~mdp.terminal
        values = np.zeros(n_s)
        for _ in range(20_000):
            q = expected + (flat @ values).reshape(n_s, n_a)
            new = np.where(has, np.where(allowed, q, -np.inf).max(axis=1), 0.0)
            if np.max(np.abs(new - values)) < 1e-10:
                break
            values = new
        return np.where(has, np.argmax(np.where(allowed, q, -np.inf), axis=1), fallback)

    model, oracle = {}, {}
    for k in CEILING_MIN_VISITS:
        allowed = count >= k
        flat_hat = (moves / seen[..., None]).reshape(-1, n_s)
        model[k] = icu_sepsis.policy_value(mdp, greedy(reward / seen, flat_hat, allowed))
        flat_true = mdp.transitions.reshape(-1, n_s)
        oracle[k] = icu_sepsis.policy_value(mdp, greedy(mdp.mean_rewards, flat_true, allowed))
    return {"stays": int(steps.n_stays), "count_model": model, "true_dynamics": oracle}


# --- Targets and their truth ----------------------------------------------------------------------
def icu_targets(info, checkpoints: dict[str, Path]) -> list[Target]:
    """ICU-Sepsis targets over the 25 package actions, each with its exact value."""
    from sepsis_env import icu_sepsis
    from training.rl.offline.ope import checkpoint_probabilities, state_of_observation
    from training.rl.policy import load_policy

    strategy = info.env_kwargs.get(
        "inadmissible_action_strategy", icu_sepsis.DEFAULT_INADMISSIBLE_STRATEGY
    )
    mdp = icu_sepsis.ICUSepsisMDP.from_package(strategy)
    evaluator = icu_sepsis.ExactEvaluator(strategy)
    table = icu_sepsis.observation_table(info.env_kwargs.get("observation", "onehot"))
    optimal = np.eye(icu_sepsis.NUM_ACTIONS)[icu_sepsis.value_iteration(mdp)[1]]
    matrices = {
        "random": icu_sepsis.random_policy(mdp),
        "clinicians": icu_sepsis.expert_policy(mdp),
        "optimal": optimal,
    }
    for name, checkpoint in checkpoints.items():
        probs = checkpoint_probabilities(load_policy(checkpoint), info)
        matrices[name] = probs(table)

    def by_state(matrix: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda obs: matrix[state_of_observation(obs, table)]

    return [Target(n, by_state(m), evaluator.value(m)) for n, m in matrices.items()]


def sepsis_targets(info, checkpoints: dict[str, Path]) -> list[Target]:
    """SepsisEnv targets, each with its simulated true value (mean discounted return of
    `TRUTH_EPISODES` episodes on the logs' patients) and that value's 95% interval."""
    from sepsis_env import ACTION_NAMES
    from sepsis_env.policies import age_adaptive_protocol, no_treatment
    from sepsis_rl.common.intervals import mean_interval
    from training.rl.offline.logs import (
        Behaviour,
        behaviour_policy,
        one_hot,
        simulate_logs,
        stay_returns,
    )
    from training.rl.offline.ope import checkpoint_probabilities
    from training.rl.policy import load_policy

    n = len(ACTION_NAMES)
    rng = np.random.default_rng(0)  # the rules below are deterministic and ignore it

    def rule(policy) -> Callable[[np.ndarray], np.ndarray]:
        return lambda obs: one_hot(np.array([policy(o, rng) for o in obs]), n)

    probs = {
        "random": behaviour_policy(SEPSIS, "random").probabilities,
        "no treatment": rule(no_treatment),
        "protocol": behaviour_policy(SEPSIS, "protocol").probabilities,
        "age-adaptive protocol": rule(age_adaptive_protocol),
    }
    for name, checkpoint in checkpoints.items():
        probs[name] = checkpoint_probabilities(load_policy(checkpoint), info)
    targets = []
    for name, fn in probs.items():
        steps, _ = simulate_logs(
            SEPSIS, Behaviour(name, n, fn), TRUTH_EPISODES, TRUTH_SEED, 0.0, info.env_kwargs
        )
        mean, low, high = mean_interval(stay_returns(steps, info.gamma))
        targets.append(Target(name, fn, mean, low, high))
    return targets


# --- One env ----------------------------------------------------------------------------------
def run_env(args: argparse.Namespace, env: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Logs, policies, targets and every estimate of one env; rows appended to `rows`."""
    from training.rl.offline.data import write_logs
    from training.rl.offline.logs import simulate_logs
    from training.rl.offline.ope import evaluate_offline

    folder = args.out / env.replace("-", "_").lower()
    print(f"\n== {env}: logs of {', '.join(f'{s:,}' for s in args.sizes)} clinician episodes, "
          f"{args.repeats} repeat(s), epsilon {args.epsilon}", flush=True)  # fmt: skip
    logs = {}
    for size in args.sizes:
        for rep in range(args.repeats):
            start = time.monotonic()
            steps, info = simulate_logs(env, "clinicians", size, 1000 * rep + 1, args.epsilon)
            logs[size, rep] = (steps, info)
            print(f"   logs {size:,} x rep {rep}: {len(steps):,} steps in "
                  f"{time.monotonic() - start:.1f} s", flush=True)  # fmt: skip
    largest = max(args.sizes)
    # The offline policies learn from logs of their own, so no estimate is made from stays the
    # policy was trained on.
    steps, info = simulate_logs(env, "clinicians", largest, TRAINING_LOGS_SEED, args.epsilon)
    train_dir = folder / "logs_for_training"
    train_dir.mkdir(parents=True, exist_ok=True)
    write_logs(steps, info, train_dir)
    checkpoints = train_offline_policies(
        train_dir, folder / "offline", env, args.offline_iterations, args.seed
    )
    ceiling = None
    if env == ICU_SEPSIS:
        from training.rl.offline.data import split_stays

        train_stays = split_stays(steps.n_stays, args.seed)["train"]
        ceiling = icu_data_ceiling(steps.select_stays(train_stays), info)
    checkpoints["online DQN"] = (
        Path(args.icu_dqn if env == ICU_SEPSIS else args.sepsis_dqn)
        if (args.icu_dqn if env == ICU_SEPSIS else args.sepsis_dqn)
        else train_online_dqn(env, folder / "dqn", args.dqn_budget_s, args.seed)
    )
    start = time.monotonic()
    targets = (icu_targets if env == ICU_SEPSIS else sepsis_targets)(info, checkpoints)
    print(f"   truth of {len(targets)} targets in {time.monotonic() - start:.0f} s", flush=True)
    start = time.monotonic()
    for (size, rep), (steps, info) in logs.items():
        for target in targets:
            report = evaluate_offline(
                steps, info, target.probs, bootstrap=args.bootstrap, seed=rep,
                refit_fqe=args.refit_fqe and env == ICU_SEPSIS,
            )  # fmt: skip
            for name, est in report.estimates.items():
                rows.append({
                    "env": env, "size": size, "rep": rep, "target": target.name,
                    "truth": target.truth, "truth_low": target.truth_low,
                    "truth_high": target.truth_high, "estimator": name, "value": est.value,
                    "low": est.low, "high": est.high,
                    "covered": bool(est.low <= target.truth <= est.high),
                    "ess": report.ess, "n_stays": report.n_stays,
                    "unsupported_mass": report.unsupported_mass,
                })  # fmt: skip
    print(f"   {len(logs) * len(targets)} evaluations in {time.monotonic() - start:.0f} s")
    return {
        "targets": {t.name: [t.truth, t.truth_low, t.truth_high] for t in targets},
        "offline": {a: str(c) for a, c in checkpoints.items()},
        "ceiling": ceiling,
    }


# --- Report -----------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bias, RMSE and coverage per env, size and estimator (over targets and repeats)."""
    out = []
    keys = sorted({(r["env"], r["size"], r["estimator"]) for r in rows})
    for env, size, estimator in keys:
        sel = [r for r in rows if (r["env"], r["size"], r["estimator"]) == (env, size, estimator)]
        err = np.array([r["value"] - r["truth"] for r in sel], dtype=float)
        ok = np.isfinite(err)
        by_target = {}
        for r in sel:
            by_target.setdefault(r["target"], []).append(r["covered"])
        out.append({
            "env": env, "size": size, "estimator": estimator, "n": int(ok.sum()),
            "bias": float(err[ok].mean()) if ok.any() else math.nan,
            "rmse": float(np.sqrt((err[ok] ** 2).mean())) if ok.any() else math.nan,
            "coverage": float(np.mean([r["covered"] for r in sel])),
            "targets_covered": sum(all(v) for v in by_target.values()),
            "targets": len(by_target),
        })  # fmt: skip
    return out


def print_report(rows, summary, envs: dict[str, dict[str, Any]]) -> None:
    for env, found in envs.items():
        print(f"\n{env}: estimate minus truth over targets x repeats; coverage of 95% intervals")
        print(f"   {'size':>7} {'estimator':<7} {'bias':>8} {'RMSE':>8} {'coverage':>9} "
              f"{'targets always covered':>24}")  # fmt: skip
        for s in (s for s in summary if s["env"] == env):
            print(
                f"   {s['size']:>7,} {s['estimator']:<7} {s['bias']:>+8.3f} {s['rmse']:>8.3f} "
                f"{s['coverage']:>9.0%} {s['targets_covered']:>12} of {s['targets']}"
            )
        largest = max(r["size"] for r in rows if r["env"] == env)
        print(f"\n   at {largest:,} stays, repeat 0: truth and each estimate [95% interval]")
        names = list(dict.fromkeys(r["estimator"] for r in rows if r["env"] == env))
        for target, (truth, lo, hi) in found["targets"].items():
            sel = {r["estimator"]: r for r in rows if (r["env"], r["size"], r["rep"],
                   r["target"]) == (env, largest, 0, target)}  # fmt: skip
            truth_text = f"{truth:.4f}" if math.isnan(lo) else f"{truth:.3f} [{lo:.3f}, {hi:.3f}]"
            ess = next(iter(sel.values()))["ess"] if sel else math.nan
            print(f"   {target:<22} truth {truth_text}  ESS {ess:,.0f}")
            print("      " + "  ".join(
                f"{n} {sel[n]['value']:.3f} [{sel[n]['low']:.3f}, {sel[n]['high']:.3f}]"
                + ("" if sel[n]["covered"] else "*") for n in names if n in sel))  # fmt: skip
    print("\n(* : the interval misses the truth)")


def verdicts(summary, envs) -> None:
    icu = envs.get(ICU_SEPSIS)
    if icu:
        offline = {a: icu["targets"][a][0] for a in OFFLINE_ALGOS if a in icu["targets"]}
        best = max(offline, key=offline.get) if offline else None
        if best:
            verdict = "met" if offline[best] >= OFFLINE_GOAL else "NOT met"
            print("\nICU-Sepsis offline policies' exact values: "
                  + ", ".join(f"{a} {v:.4f}" for a, v in offline.items())
                  + f" (clinicians 0.7818, optimal 0.8751): best {best} {offline[best]:.4f}, "
                  f"target >= {OFFLINE_GOAL}: {verdict}")  # fmt: skip
        ceiling = icu.get("ceiling")
        if ceiling:
            model, oracle = ceiling["count_model"], ceiling["true_dynamics"]
            best_k = max(model, key=model.get)
            by_k = ", ".join(f"k={k} {v:.4f}" for k, v in model.items())
            print(f"   what the {ceiling['stays']:,} training stays allow: count-model policy "
                  f"(pairs logged >= k times) {by_k}; best {model[best_k]:.4f} "
                  "(k chosen with the truth: an optimistic bound)")  # fmt: skip
            print("   the true dynamics restricted to the same pairs: "
                  + ", ".join(f"k={k} {v:.4f}" for k, v in oracle.items()))  # fmt: skip
    for env in envs:
        largest = max(s["size"] for s in summary if s["env"] == env)
        good = [s for s in summary if s["env"] == env and s["size"] == largest
                and s["coverage"] >= COVERAGE_GOAL]  # fmt: skip
        text = ", ".join(f"{s['estimator']} ({s['coverage']:.0%})" for s in good) or "none"
        print(f"{env}: estimators whose interval covers the truth in >= {COVERAGE_GOAL:.0%} of "
              f"targets x repeats at {largest:,} stays: {text}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="icu-sepsis,sepsis", help="icu-sepsis,sepsis")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2000, 20000])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="independent logs per size")
    parser.add_argument("--epsilon", type=float, default=0.0, help="uniform mixed into logs")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--offline-iterations", type=int, default=50)
    parser.add_argument("--refit-fqe", action=argparse.BooleanOptionalAction, default=True,
                        help="ICU-Sepsis: refit FQE in every resample")  # fmt: skip
    parser.add_argument("--dqn-budget-s", type=float, default=240.0)
    parser.add_argument("--icu-dqn", help="an ICU-Sepsis DQN checkpoint (else one is trained)")
    parser.add_argument("--sepsis-dqn", help="a SepsisEnv DQN checkpoint (else one is trained)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench_ope"))
    args = parser.parse_args()
    envs = [ICU_SEPSIS if e == "icu-sepsis" else SEPSIS for e in args.envs.split(",")]
    if ICU_SEPSIS in envs:
        from sepsis_env.icu_sepsis import require_icu_sepsis

        require_icu_sepsis()  # before any work: says how to install it
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    import torch

    torch.set_num_threads(1)
    start = time.monotonic()
    print(f"bench_ope: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; out {args.out}")
    rows: list[dict[str, Any]] = []
    found = {}
    for env in envs:
        found[env] = run_env(args, env, rows)
    summary = summarise(rows)
    print_report(rows, summary, found)
    verdicts(summary, found)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "results.json").write_text(
        json.dumps(
            {"summary": summary, "envs": found, "args": vars(args) | {"out": str(args.out)}},
            indent=1,
            default=str,
        )  # fmt: skip
    )
    print(f"\nwhole benchmark {time.monotonic() - start:.0f} s; load at the end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
