"""How fast does the project's DQN learn a known optimum? The ICU-Sepsis benchmark MDP.

Trains with the project's own pipeline (`build_dqn_config` + `training.rl.train.train`, the same
code as `sepsis-rl train --env icu-sepsis --config training/configs/icu_sepsis.yaml`) for up to
1M env steps. Every evaluation values the greedy policy exactly from the shipped transition matrices
(no sampling), so the learning curve has no evaluation noise. Prints exact value against env
steps and wall time, the steps and time at which the target (0.86) is first reached, and saves
the learning curve as a PNG.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python benchmarks/bench_icu_sepsis.py \
        --out /tmp/bench_icu_sepsis            # about 30-60 min on 2 shared cores

Needs the optional package: pip install -e ".[icu-sepsis]".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "training" / "configs" / "icu_sepsis.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="RLOptions file")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_icu_sepsis"))
    parser.add_argument("--env-steps", type=int, default=1_000_000, help="env-step budget")
    parser.add_argument("--time-budget", type=float, default=None, help="wall seconds budget")
    parser.add_argument("--num-env-runners", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--target", type=float, default=None, help="exact value to reach")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from sepsis_env import icu_sepsis
    from training.rl.icu_sepsis import (
        env_settings,
        evaluate_checkpoint,
        exact_learning_curve,
        first_reaching,
        plot_exact_learning_curve,
        restricted_optimum,
    )
    from training.rl.options import load_options
    from training.rl.train import train

    try:
        icu_sepsis.require_icu_sepsis()
    except icu_sepsis.ICUSepsisNotInstalledError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    target = args.target if args.target is not None else icu_sepsis.TARGET_VALUE
    overrides = {
        "env_steps": args.env_steps,
        "episodes": None,
        "time_budget_s": args.time_budget,
        "num_env_runners": args.num_env_runners,
        "seed": args.seed,
    }
    options = load_options(args.config, {k: v for k, v in overrides.items() if v is not None})
    options.episodes = None
    options.time_budget_s = args.time_budget
    if options.evaluation_interval < 1:
        options.evaluation_interval = 1
    settings = env_settings(options)
    strategy = settings.inadmissible_action_strategy

    print(f"ICU-Sepsis benchmark: config {args.config}, out {args.out}")
    start = time.monotonic()
    evaluator = icu_sepsis.ExactEvaluator(strategy)
    reference = evaluator.baselines_
    print(
        f"exact reference values (inadmissible actions: {strategy}): "
        f"random {reference.random:.4f}, clinicians {reference.expert:.4f}, "
        f"optimal {reference.optimal:.4f}; target {target:.2f} "
        f"({100 * icu_sepsis.gap_closed(target, reference):.0f}% of the gap)  "
        f"[{time.monotonic() - start:.1f} s]"
    )
    print(
        f"env: observation {settings.observation}, action set {settings.action_set}"
        + (f" (max {settings.max_actions})" if settings.action_set == "admissible" else "")
        + f"; best value reachable with this action set {restricted_optimum(settings):.4f}"
    )
    print(
        "options: "
        + ", ".join(
            f"{k}={v}"
            for k, v in options.to_dict().items()
            if k not in ("custom_resources_per_env_runner",)
        )
    )
    print(f"{'iter':>5} {'env steps':>10} {'wall s':>7} {'steps/s':>8} {'exact':>7} {'gap':>6}")

    first_hit: dict[str, float] = {}

    def show(m) -> None:
        wall = time.monotonic() - start
        if m.eval_return_mean == m.eval_return_mean:  # evaluated this iteration (not NaN)
            gap = icu_sepsis.gap_closed(m.eval_return_mean, reference)
            if m.eval_return_mean >= target and not first_hit:
                first_hit.update(steps=m.env_steps, wall=wall, value=m.eval_return_mean)
            print(
                f"{m.iteration:>5} {m.env_steps:>10} {wall:>7.0f} {m.steps_per_s:>8.0f} "
                f"{m.eval_return_mean:>7.4f} {100 * gap:>5.1f}%",
                flush=True,
            )

    shutil.rmtree(args.out, ignore_errors=True)
    result = train(options, args.out, on_iteration=show)
    wall = time.monotonic() - start

    steps, values = exact_learning_curve(Path(args.out) / "metrics.csv")
    figure = plot_exact_learning_curve(
        Path(args.out) / "metrics.csv", Path(args.out) / "icu_sepsis_learning_curve.png", reference
    )
    _, last_report = evaluate_checkpoint(result.last_checkpoint)
    best_report = None
    if result.best_checkpoint:
        _, best_report = evaluate_checkpoint(result.best_checkpoint)

    print()
    print(
        f"stopped: {result.stop_reason}; {result.env_steps} env steps, {result.iterations} "
        f"iterations, {wall:.0f} s wall ({result.elapsed_s:.0f} s in the training loop); "
        f"load average at the end {os.getloadavg()[1]:.1f} (5 min) on {os.cpu_count()} CPUs"
    )
    if first_hit:
        print(
            f"target {target:.2f} first reached at {first_hit['steps']:.0f} env steps, "
            f"{first_hit['wall']:.0f} s wall (exact value {first_hit['value']:.4f})"
        )
    else:
        print(f"target {target:.2f} not reached (best exact value {values.max():.4f})")
    above = values >= target
    print(
        f"evaluations at or above target: {int(above.sum())} of {len(values)}; "
        f"last 5 exact values: {', '.join(f'{v:.4f}' for v in values[-5:])}"
    )
    print(
        f"final greedy policy (checkpoints/last): exact {last_report.value:.4f}, "
        f"gap closed {100 * last_report.gap_closed:.1f}%"
    )
    if best_report is not None:
        print(
            f"best greedy policy (checkpoints/best): exact {best_report.value:.4f}, "
            f"gap closed {100 * best_report.gap_closed:.1f}%"
        )
    print(f"learning curve: {figure}")
    reached = first_reaching(steps, values, target)
    return 0 if reached is not None else 1


if __name__ == "__main__":
    sys.exit(main())
