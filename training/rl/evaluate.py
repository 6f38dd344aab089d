"""The greedy policy against the clinical baselines on test patients: paired, with 95% intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.rl.differences import differences_to_rule
from training.rl.envs import evaluation_env_kwargs, make_raw_env
from training.rl.figures import write_figures
from training.rl.policy import HAND_RULE, LEARNED, REFERENCE, load_policy, sepsis_policies

# --- SepsisEnv: evaluation against the baselines ------------------------------------------------
COMPARED_METRICS = ("return", "survival", "death", "discharge", "length")
"""Per-episode metrics compared pairwise with the protocol."""
VERDICT_METRICS = ("return", "survival")
"""Metrics on which the learned policy is declared better or worse than a baseline."""

VERDICT_BASELINES = (REFERENCE, HAND_RULE)
"""Baselines the learned policy gets a verdict against (`evaluate`, the study report): the
clinician protocol and the best hand rule."""


TEST_EPISODES = 2000
"""Paired test episodes per policy unless told otherwise (`evaluate`, the study)."""
TEST_SEED = 10_000
"""Seed of the test episodes (episode i starts from `reset(seed=TEST_SEED + i)`); the study adds
its own seed to it. Apart from `VALIDATION_SEED`, so no test episode repeats a validation one."""


class RecordingPolicy:
    """Wraps a sepsis_env policy and records every (observation, action) it is asked for."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.observations: list[np.ndarray] = []
        self.actions: list[int] = []

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> int:
        action = int(self.policy(obs, rng))
        self.observations.append(np.asarray(obs, dtype=np.float32).copy())
        self.actions.append(action)
        return action


def evaluate_checkpoint(
    checkpoint: str | Path,
    episodes: int = TEST_EPISODES,
    seed: int = TEST_SEED,
    split: str = "test",
    cohort: str | Path | None = None,
    algo: str | None = None,
) -> dict:
    """Paired evaluation of the greedy policy and the baselines on `split` patients.

    `cohort` replaces the cohort path the policy was trained with (e.g. after the run folder
    moved). Returns `{"evaluations": {name: Evaluation}, "steps": {"obs", "actions"} of the
    learned policy, "report": JSON-ready dict}`; the report has every policy's metrics overall
    and per age group (95% CIs), the paired differences to the protocol, and the learned policy's
    paired differences to each baseline (the age-adaptive protocol, `HAND_RULE`, among them),
    and under `"differences_to_hand_rule"` where the learned policy and that rule differ and what
    each difference is worth (`training.rl.differences`; its per-state arrays are in the
    result's `"differences"`).
    """
    from sepsis_env.env import AGE_GROUPS
    from sepsis_env.policies import BASELINES, evaluate, paired_difference

    policy = load_policy(checkpoint, algo)
    env_id, kwargs = policy.options.env, evaluation_env_kwargs(policy.options, split)
    if cohort is not None:
        kwargs["cohort"] = str(cohort)
    recorder = RecordingPolicy(sepsis_policies(policy)[LEARNED])
    evaluations = {}
    for name, pol in sepsis_policies(policy).items():
        env = make_raw_env({"env_id": env_id, "env_kwargs": kwargs})
        evaluations[name] = evaluate(recorder if name == LEARNED else pol, env, episodes, seed)
        env.close()
    ref = evaluations[REFERENCE]
    groups = ref.age_group
    masks = {"overall": None} | {label: groups == g for g, (label, _, _) in enumerate(AGE_GROUPS)}
    report = {
        "checkpoint": str(checkpoint),
        "env": env_id,
        "env_kwargs": {k: str(v) for k, v in kwargs.items()},
        "episodes": episodes,
        "seed": seed,
        "policies": {name: e.summary() for name, e in evaluations.items()},
        "difference_to_protocol": {
            name: {
                group: {
                    metric: paired_difference(e, ref, metric, mask) for metric in COMPARED_METRICS
                }
                for group, mask in masks.items()
            }
            for name, e in evaluations.items()
            if name != REFERENCE
        },
        # The question a reader asks: how does the learned policy do against each baseline?
        "learned_minus_baseline": {
            name: {
                group: {
                    metric: paired_difference(evaluations[LEARNED], e, metric, mask)
                    for metric in COMPARED_METRICS
                }
                for group, mask in masks.items()
            }
            for name, e in evaluations.items()
            if name != LEARNED
        },
    }
    steps = {"obs": np.array(recorder.observations), "actions": np.array(recorder.actions)}
    differences = differences_to_rule(
        policy, BASELINES[HAND_RULE], steps, env_id, kwargs, episodes, seed
    )
    report["differences_to_hand_rule"] = {
        key: differences[key] for key in ("disagreement", "swaps")
    }
    return {
        "evaluations": evaluations,
        "steps": steps,
        "differences": differences,
        "report": report,
    }


def beats(report: dict, baseline: str = REFERENCE, group: str = "overall") -> dict[str, bool]:
    """Whether the 95% CI of the learned policy minus `baseline` (paired, in `group`) is above
    zero, for each of `VERDICT_METRICS`."""
    difference = report["learned_minus_baseline"][baseline][group]
    return {metric: difference[metric][1] > 0 for metric in VERDICT_METRICS}


def beats_protocol(report: dict) -> dict[str, bool]:
    """Whether the learned policy's 95% CI of the difference to the protocol is above zero."""
    return beats(report, REFERENCE)


def comparison_table(report: dict) -> list[dict]:
    """Rows (policy, group, metric, estimate, lower, upper, difference to protocol with CI, and
    for a baseline the learned policy minus it with CI)."""
    rows = []
    for name, groups in report["policies"].items():
        for group, metrics in groups.items():
            for metric, (est, lo, hi) in metrics.items():
                diff = report["difference_to_protocol"].get(name, {}).get(group, {}).get(metric)
                learned = report["learned_minus_baseline"].get(name, {}).get(group, {}).get(metric)
                rows.append(
                    {
                        "policy": name,
                        "group": group,
                        "metric": metric,
                        "estimate": est,
                        "lower": lo,
                        "upper": hi,
                        "diff_to_protocol": diff[0] if diff else 0.0 if name == REFERENCE else None,
                        "diff_lower": diff[1] if diff else None,
                        "diff_upper": diff[2] if diff else None,
                        "learned_minus": learned[0] if learned else None,
                        "learned_minus_lower": learned[1] if learned else None,
                        "learned_minus_upper": learned[2] if learned else None,
                    }
                )
    return rows


def difference_rows(report: dict) -> list[dict]:
    """`report["differences_to_hand_rule"]` as flat rows: one per disagreement (group,
    treatment) and one per swap (policy, group), each interval as estimate, lower, upper."""
    rows = []
    differences = report.get("differences_to_hand_rule", {})
    for kind, records in differences.items():
        for record in records:
            row: dict = {"analysis": kind}
            for key, value in record.items():
                if isinstance(value, list | tuple):
                    row |= {key: value[0], f"{key}_lower": value[1], f"{key}_upper": value[2]}
                else:
                    row[key] = value
            rows.append(row)
    return rows


def write_evaluation(result: dict, out_dir: str | Path) -> list[Path]:
    """`evaluation.json`, `evaluation.csv`, `differences_to_hand_rule.csv` and the PNG figures;
    returns the paths written. All or nothing: the files are written to a staging folder and
    moved into `out_dir` only when every one is complete, so a failure (or Ctrl-C) leaves
    `out_dir` as it was."""
    import pandas as pd

    from sepsis_rl.common.files import staged_directory

    out = Path(out_dir)
    run_dir = Path(result["report"]["checkpoint"]).resolve().parent.parent
    with staged_directory(out) as stage:
        staged = [
            stage / "evaluation.json",
            stage / "evaluation.csv",
            stage / "differences_to_hand_rule.csv",
        ]
        staged[0].write_text(json.dumps(result["report"], indent=2, default=float))
        pd.DataFrame(comparison_table(result["report"])).to_csv(staged[1], index=False)
        pd.DataFrame(difference_rows(result["report"])).to_csv(staged[2], index=False)
        staged += write_figures(result, run_dir, stage)
    return [out / path.relative_to(stage) for path in staged]
