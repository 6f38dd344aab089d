"""Exact evaluation of DQN policies on the ICU-Sepsis benchmark, during and after training.

ICU-Sepsis ships its transition matrices, so the greedy policy of the Q-network can be valued
exactly (`sepsis_env.icu_sepsis`, a linear solve) instead of by sampled episodes. Two hooks use
that here:

* `exact_evaluation_function(options)` is RLlib's `custom_evaluation_function` for ICU-Sepsis
  runs (chosen by `training.rl.validation.custom_evaluation_for`): every evaluation iteration it
  values the current greedy policy exactly and reports that value as the evaluation return, so
  `metrics.csv`'s `eval_return_mean` is the exact value, the progress table shows it and
  `checkpoints/best` is the best policy by exact value. It also reports the fraction of the
  random-to-optimal gap closed.
* `evaluate_checkpoint(path)` is `sepsis-rl evaluate --env icu-sepsis`: the greedy action of every
  state of a saved checkpoint and its exact report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sepsis_env import icu_sepsis
from sepsis_env.ids import is_icu_sepsis
from training.rl.options import RLOptions, load_options, resolved_env_kwargs
from training.rl.policy import GreedyPolicy, evaluation_module, load_policy
from training.rl.results import (
    EPISODE_RETURN_MEAN,
    EXACT_VALUE_KEY,
    GAP_CLOSED_KEY,
    report_evaluation,
    results_of,
)
from training.rl.run_dir import OPTIONS_FILE


@dataclass(frozen=True)
class EnvSettings:
    """The `ICUSepsisBenchmarkEnv` arguments of a run (its `env_kwargs`, defaults filled in)."""

    observation: str = icu_sepsis.DEFAULT_OBSERVATION
    inadmissible_action_strategy: str = icu_sepsis.DEFAULT_INADMISSIBLE_STRATEGY
    action_set: str = icu_sepsis.DEFAULT_ACTION_SET
    max_actions: int = icu_sepsis.DEFAULT_MAX_ACTIONS


def env_settings(options: RLOptions) -> EnvSettings:
    """The run's observation encoding, inadmissible-action strategy and action set."""
    return EnvSettings(**resolved_env_kwargs(options))


def restricted_optimum(settings: EnvSettings) -> float:
    """The best exact value reachable with the run's action set (the optimum for `all`)."""
    evaluator = exact_evaluator(settings.inadmissible_action_strategy)
    if settings.action_set == "all":
        return evaluator.baselines_.optimal
    table = icu_sepsis.action_table(settings.max_actions)
    _, policy = icu_sepsis.value_iteration(evaluator.mdp_, actions=table)
    return evaluator.value(policy)


def greedy_actions(module, options: RLOptions) -> np.ndarray:
    """The greedy action of `module` (an RLlib DQN RLModule) in every one of the 716 states."""
    settings = env_settings(options)
    policy = GreedyPolicy(module, options, icu_sepsis.observation_space(settings.observation))
    return icu_sepsis.greedy_policy_table(
        policy.actions, settings.observation, settings.action_set, settings.max_actions
    )


@functools.cache
def exact_evaluator(
    strategy: str = icu_sepsis.DEFAULT_INADMISSIBLE_STRATEGY,
) -> icu_sepsis.ExactEvaluator:
    """The exact evaluator of one inadmissible-action strategy, built once per process (loading
    the matrices and value iteration take a few seconds)."""
    return icu_sepsis.ExactEvaluator(strategy)


def trained_on_icu_sepsis(checkpoint: str | Path) -> bool:
    """Whether a `sepsis-rl train` checkpoint was trained on ICU-Sepsis.

    Only reads the options (YAML, nothing unpickled) and never raises for a bad file: False
    then, and `load_policy`, which checks the checkpoint first, says what is wrong with it.
    """
    options_file = Path(checkpoint) / OPTIONS_FILE
    if not options_file.is_file():
        return False
    try:
        env = load_options(options_file).env
    except ValueError:
        return False
    return isinstance(env, str) and is_icu_sepsis(env)


def exact_evaluation_function(
    options: RLOptions,
) -> Callable[[Any, Any], tuple[dict[str, Any], int, int]]:
    """RLlib `custom_evaluation_function` valuing the current greedy policy exactly."""

    def evaluate(algorithm, eval_workers) -> tuple[dict[str, Any], int, int]:
        evaluator = exact_evaluator(env_settings(options).inadmissible_action_strategy)
        module = evaluation_module(algorithm, eval_workers)
        was_training = module.training
        module.eval()
        try:
            report = evaluator.report(greedy_actions(module, options))
        finally:
            module.train(was_training)
        results = {
            EPISODE_RETURN_MEAN: report.value,
            EXACT_VALUE_KEY: report.value,
            GAP_CLOSED_KEY: report.gap_closed,
        }
        report_evaluation(algorithm, results)
        return results_of(results), 0, 0

    return evaluate


def evaluate_checkpoint(
    checkpoint: str | Path,
) -> tuple[np.ndarray, icu_sepsis.PolicyReport]:
    """Greedy action per state of a `sepsis-rl train` checkpoint and its exact report."""
    policy = load_policy(checkpoint)
    if not is_icu_sepsis(policy.options.env):
        raise ValueError(
            f"{checkpoint} was trained on {policy.options.env}, not on ICU-Sepsis "
            f"({icu_sepsis.GYM_ID})"
        )
    settings = env_settings(policy.options)
    actions = icu_sepsis.greedy_policy_table(
        policy.actions, settings.observation, settings.action_set, settings.max_actions
    )
    return actions, exact_evaluator(settings.inadmissible_action_strategy).report(actions)


def format_report(report: icu_sepsis.PolicyReport) -> str:
    """The exact values as a small table (for the command line)."""
    rows = [
        ("learned (greedy)", report.value),
        ("random", report.random),
        ("clinicians (expert)", report.expert),
        ("optimal (value iteration)", report.optimal),
    ]
    lines = [f"exact expected return (P(survival)), inadmissible actions: {report.strategy}"]
    lines += [f"  {name:<27} {value:.4f}" for name, value in rows]
    lines.append(f"  random-to-optimal gap closed {100 * report.gap_closed:.1f}%")
    lines.append(
        f"  states where the policy picks an optimal action: "
        f"{100 * report.agreement_with_optimal:.1f}%"
    )
    return "\n".join(lines)


def exact_evaluation_for(
    options: RLOptions,
) -> Callable[[Any, Any], tuple[dict[str, Any], int, int]] | None:
    """The exact evaluation function for ICU-Sepsis runs; None (sampled episodes) otherwise.

    Raises `ICUSepsisNotInstalledError` (with the install command) for an ICU-Sepsis run without
    the optional package, in the driver, before any env runner fails on it."""
    if not is_icu_sepsis(options.env):
        return None
    icu_sepsis.require_icu_sepsis()
    return exact_evaluation_function(options)


def exact_learning_curve(metrics_csv: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, exact value) of every evaluated iteration in a run's `metrics.csv`."""
    import pandas as pd

    metrics = pd.read_csv(metrics_csv)
    evaluated = metrics.dropna(subset=["eval_return_mean"])
    evaluated = evaluated.drop_duplicates(subset=["iteration"], keep="last")
    return evaluated["env_steps"].to_numpy(), evaluated["eval_return_mean"].to_numpy()


def first_reaching(
    steps: np.ndarray, values: np.ndarray, target: float = icu_sepsis.TARGET_VALUE
) -> int | None:
    """Env steps at the first evaluation whose exact value is at least `target` (None: never)."""
    hits = np.nonzero(values >= target)[0]
    return int(steps[hits[0]]) if len(hits) else None


def plot_exact_learning_curve(
    metrics_csv: str | Path,
    path: str | Path,
    reference: icu_sepsis.Baselines,
    target: float = icu_sepsis.TARGET_VALUE,
    title: str = "DQN on ICU-Sepsis: exact value of the greedy policy",
) -> Path:
    """PNG of the exact value against env steps, with random, clinician, optimal and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = exact_learning_curve(metrics_csv)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, values, color="tab:blue", lw=1.5, label="learned (greedy), exact")
    lines = [
        (reference.optimal, "optimal (value iteration)", "tab:green", "-"),
        (target, "target", "tab:red", "--"),
        (reference.expert, "clinicians", "tab:purple", ":"),
        (reference.random, "random", "tab:gray", ":"),
    ]
    for value, label, color, style in lines:
        ax.axhline(value, color=color, ls=style, lw=1, label=f"{label} {value:.4f}")
    reached = first_reaching(steps, values, target)
    if reached is not None:
        ax.axvline(reached, color="tab:red", lw=0.8, alpha=0.5)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("expected return = P(survival)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
