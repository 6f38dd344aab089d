"""The greedy policy of a trained checkpoint, served from the bare RLModule (no Ray needed).

RLlib's env-to-module connectors do not run when a bare RLModule is served, so the observation
normalisation training used (`BoxNormalization`, inside the env creator) is applied here again,
from the same env's Box bounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from training.rl_config import (
    RLOptions,
    load_options,
    make_raw_env,
    normalization_constants,
    normalize,
    resolved_env_kwargs,
)
from training.rl_train import MODULE_SUBDIR, OPTIONS_FILE


class GreedyPolicy:
    """argmax_a Q(s, a) of a trained DQN checkpoint; callable on one raw observation."""

    def __init__(self, module, options: RLOptions, observation_space: gym.spaces.Box) -> None:
        self.module = module
        self.options = options
        self.observation_space = observation_space
        self.center_, self.scale_ = normalization_constants(observation_space)

    def prepare(self, observations: np.ndarray) -> np.ndarray:
        """Raw observations (env units) -> the network's input, as in training."""
        obs = np.asarray(observations, dtype=np.float32)
        if self.options.normalize_obs:
            obs = normalize(obs, self.center_, self.scale_)
        return obs

    def q_values(self, observations: np.ndarray) -> np.ndarray:
        """Q-values, shape (batch, actions), for a batch of raw observations."""
        import torch
        from ray.rllib.core.columns import Columns

        obs = self.prepare(np.atleast_2d(observations))
        with torch.no_grad():
            out = self.module.compute_q_values({Columns.OBS: torch.from_numpy(obs)})
        return out["qf_preds"].cpu().numpy()

    def actions(self, observations: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of raw observations."""
        return np.argmax(self.q_values(observations), axis=-1)

    def __call__(self, observation: np.ndarray) -> int:
        return int(self.actions(np.asarray(observation)[None])[0])


def load_policy(checkpoint: str | Path) -> GreedyPolicy:
    """The greedy policy of an algorithm checkpoint written by `sepsis-rl train`."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint)
    module_dir = checkpoint / MODULE_SUBDIR
    options_file = checkpoint / OPTIONS_FILE
    if not module_dir.is_dir() or not options_file.exists():
        raise FileNotFoundError(
            f"{checkpoint} is not a checkpoint written by `sepsis-rl train` "
            f"(expected {MODULE_SUBDIR} and {OPTIONS_FILE} inside it); "
            "pass a run's checkpoints/last or checkpoints/best"
        )
    options = load_options(options_file)
    module = RLModule.from_checkpoint(str(module_dir.resolve()))
    module.eval()
    env = make_raw_env({"env_id": options.env, "env_kwargs": resolved_env_kwargs(options)})
    space = env.observation_space
    env.close()
    return GreedyPolicy(module, options, space)


# --- SepsisEnv: evaluation against the baselines ------------------------------------------------
EVAL_POLICIES = ("random", "no_treatment", "all_treatments", "protocol")
"""Baselines of `sepsis_env.policies.BASELINES` the learned policy is compared with."""
COMPARED_METRICS = ("return", "survival", "death", "discharge", "length")
"""Per-episode metrics compared pairwise with the protocol."""
REFERENCE = "protocol"
"""The policy differences are taken against."""
LEARNED = "dqn"
"""Name of the learned greedy policy in reports and figures."""
POLICY_NAMES = {
    LEARNED: "Learned policy (DQN, greedy)",
    "protocol": "Clinician protocol",
    "random": "Random",
    "no_treatment": "No treatment",
    "all_treatments": "All treatments always",
}
"""How each policy is called in figures and the report."""
HYPOTENSION_MAP_MMHG = 65.0  # Surviving Sepsis Campaign MAP target
HYPOXAEMIA_SPO2 = 92.0  # BTS oxygen target lower bound


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


def sepsis_policies(policy: GreedyPolicy) -> dict:
    """The learned greedy policy and the baselines, as `policy(obs, rng) -> action` callables."""
    from sepsis_env.policies import BASELINES

    policies = {LEARNED: lambda obs, rng: policy(obs)}
    policies.update({name: BASELINES[name] for name in EVAL_POLICIES})
    return policies


def evaluation_env_kwargs(options: RLOptions, split: str) -> dict:
    """The training env's `gymnasium.make` arguments with the patient split replaced."""
    kwargs = resolved_env_kwargs(options)
    kwargs["split"] = split
    return kwargs


def evaluate_checkpoint(
    checkpoint: str | Path,
    episodes: int = 2000,
    seed: int = 10_000,
    split: str = "test",
    cohort: str | Path | None = None,
) -> dict:
    """Paired evaluation of the greedy policy and the baselines on `split` patients.

    `cohort` replaces the cohort path the policy was trained with (e.g. after the run folder
    moved). Returns `{"evaluations": {name: Evaluation}, "steps": {"obs", "actions"} of the
    learned policy, "report": JSON-ready dict}`; the report has every policy's metrics overall
    and per age group (95% CIs), the paired differences to the protocol, and the learned policy's
    paired differences to each baseline.
    """
    from sepsis_env.env import AGE_GROUPS
    from sepsis_env.policies import evaluate, paired_difference

    policy = load_policy(checkpoint)
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
    return {"evaluations": evaluations, "steps": steps, "report": report}


def beats_protocol(report: dict) -> dict[str, bool]:
    """Whether the learned policy's 95% CI of the difference to the protocol is above zero."""
    overall = report["difference_to_protocol"][LEARNED]["overall"]
    return {metric: overall[metric][1] > 0 for metric in ("return", "survival")}


def comparison_table(report: dict) -> list[dict]:
    """Rows (policy, group, metric, estimate, lower, upper, difference to protocol with CI)."""
    rows = []
    for name, groups in report["policies"].items():
        for group, metrics in groups.items():
            for metric, (est, lo, hi) in metrics.items():
                diff = report["difference_to_protocol"].get(name, {}).get(group, {}).get(metric)
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
                    }
                )
    return rows


def write_evaluation(result: dict, out_dir: str | Path) -> list[Path]:
    """`evaluation.json`, `evaluation.csv` and the PNG figures; returns the paths written."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json", out / "evaluation.csv"]
    written[0].write_text(json.dumps(result["report"], indent=2, default=float))
    pd.DataFrame(comparison_table(result["report"])).to_csv(written[1], index=False)
    run_dir = Path(result["report"]["checkpoint"]).resolve().parent.parent
    written += write_figures(result, run_dir, out)
    return written


# --- Figures ------------------------------------------------
def write_figures(result: dict, run_dir: Path, out: Path) -> list[Path]:
    """The evaluation figures as PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    episodes_csv = run_dir / "episodes.csv"
    if episodes_csv.exists():
        paths.append(plot_training_returns(episodes_csv, out / "training_returns.png"))
    paths.append(plot_return_histograms(result["evaluations"], out / "evaluation_returns.png"))
    paths.append(plot_typical_patients(result, out / "vitals_typical_patients.png"))
    paths.append(plot_action_frequencies(result["steps"], out / "actions_by_group_and_state.png"))
    return paths


def plot_training_returns(episodes_csv: Path, path: Path, window: int = 100) -> Path:
    """Return of every training episode, its rolling mean, and (when the run had a greedy
    evaluation) the greedy policy's mean return on the fixed validation episodes."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(episodes_csv)
    episode = np.arange(1, len(df) + 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(episode, df["episode_return"], ".", ms=2, alpha=0.25, color="C7",
            label="training episode (exploring)")  # fmt: skip
    rolling = df["episode_return"].rolling(window, min_periods=max(1, window // 5)).mean()
    ax.plot(episode, rolling, lw=2, color="C0", label=f"rolling mean of {window} episodes")
    metrics_csv = episodes_csv.with_name("metrics.csv")
    if metrics_csv.is_file():
        metrics = pd.read_csv(metrics_csv)
        if "eval_return_mean" in metrics and metrics["eval_return_mean"].notna().any():
            valid = metrics.dropna(subset=["eval_return_mean"])
            ax.plot(valid["episodes"], valid["eval_return_mean"], "o-", ms=4, color="C3",
                    label="greedy policy, validation patients")  # fmt: skip
    ax.set(
        xlabel="training episode",
        ylabel="episode return",
        title="Return during training",
    )
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_return_histograms(evaluations: dict, path: Path) -> Path:
    """Histogram of evaluation returns per policy, on shared bins."""
    import matplotlib.pyplot as plt

    all_returns = np.concatenate([e.returns for e in evaluations.values()])
    bins = np.linspace(all_returns.min(), all_returns.max(), 40)
    fig, axes = plt.subplots(
        len(evaluations), 1, figsize=(9, 1.8 * len(evaluations)), sharex=True, sharey=True
    )
    for ax, (name, e) in zip(axes, evaluations.items(), strict=True):
        ax.hist(e.returns, bins=bins, color="C0" if name == LEARNED else "C7")
        ax.axvline(e.returns.mean(), color="C3", lw=1.5)
        ax.set_title(
            f"{POLICY_NAMES.get(name, name)}: mean {e.returns.mean():.2f}", fontsize=9, loc="left"
        )
        ax.set_ylabel("episodes")
    axes[-1].set_xlabel(
        "episode return (red line: mean; near +15: discharged alive, near -15: died)"
    )
    fig.suptitle("Returns on test patients, one episode per patient and policy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def typical_episode_indices(evaluation) -> list[int]:
    """One episode per age group whose start MAP is the group's median: a typical patient."""
    from sepsis_env.env import AGE_GROUPS

    picks = []
    for g in range(len(AGE_GROUPS)):
        idx = np.flatnonzero(evaluation.age_group == g)
        if len(idx):
            maps = evaluation.start_map[idx]
            picks.append(int(idx[np.argmin(np.abs(maps - np.median(maps)))]))
    return picks


def trace_episode(policy, env_id: str, kwargs: dict, seed: int, episode: int):
    """Observations and actions of one episode (reset with `seed + episode`, as in evaluate)."""
    env = make_raw_env({"env_id": env_id, "env_kwargs": kwargs})
    obs, _ = env.reset(seed=seed + episode)
    rng = np.random.default_rng([seed, episode])
    observations, actions, done = [obs], [], False
    while not done:
        action = int(policy(obs, rng))
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        done = terminated or truncated
    env.close()
    return np.array(observations), np.array(actions), info.get("outcome", "")


def plot_typical_patients(result: dict, path: Path) -> Path:
    """Vitals over one episode under each policy, for a typical patient of each age group."""
    import matplotlib.pyplot as plt

    from sepsis_env.env import OBS_INDEX

    report = result["report"]
    policy = load_policy(report["checkpoint"])
    kwargs = evaluation_env_kwargs(policy.options, report["env_kwargs"]["split"])
    if "cohort" in report["env_kwargs"]:
        kwargs["cohort"] = report["env_kwargs"]["cohort"]  # the patients the evaluation used
    policies = sepsis_policies(policy)
    picks = typical_episode_indices(result["evaluations"][REFERENCE])
    vitals = (
        ("MAP", "MAP (mmHg)", 65.0),
        ("O2Sat", "SpO2 (%)", 92.0),
        ("HR", "Heart rate (bpm)", None),
        ("Lactate", "Lactate (mmol/L)", 2.0),
    )
    hours = OBS_INDEX["hours"]
    styles = ("-", "--", ":", "-.", (0, (5, 1)))
    # Per patient: a row of vitals, and under it the treatments each policy gave, full width.
    fig = plt.figure(figsize=(15, 5.6 * len(picks)))
    grid = fig.add_gridspec(2 * len(picks), len(vitals), height_ratios=[1.0, 0.62] * len(picks))
    for row, episode in enumerate(picks):
        age = result["evaluations"][REFERENCE].age[episode]
        axes = [fig.add_subplot(grid[2 * row, col]) for col in range(len(vitals))]
        lanes_ax = fig.add_subplot(grid[2 * row + 1, :])
        lanes, lane_labels, longest = [], [], 0.0
        for k, (name, pol) in enumerate(policies.items()):
            obs, actions, outcome = trace_episode(
                pol, policy.options.env, kwargs, report["seed"], episode
            )
            t = obs[:, hours]
            width = 2.6 if name == LEARNED else 1.4
            for ax, (vital, _, _) in zip(axes, vitals, strict=True):
                ax.plot(
                    t, obs[:, OBS_INDEX[vital]], color=f"C{k}", ls=styles[k % len(styles)],
                    lw=width, label=POLICY_NAMES.get(name, name),
                )  # fmt: skip
            # Treatment lanes: which support ran in each interval (oxygen, ventilation, pressors).
            base = 4 * (len(policies) - 1 - k)
            step = t[1] - t[0] if len(t) > 1 else 4.0
            longest = max(longest, float(t[-1]))
            for j, flag in enumerate(("oxygen", "ventilation", "vasopressors")):
                on = [(t[i], step) for i in range(len(actions)) if obs[i + 1, OBS_INDEX[flag]]]
                lanes_ax.broken_barh(on, (base + j, 0.9), color=f"C{j}")
            lanes.append(base + 1.45)
            lane_labels.append(f"{POLICY_NAMES.get(name, name)}: {outcome}")
        for ax, (_, label, threshold) in zip(axes, vitals, strict=True):
            if threshold is not None:
                ax.axhline(threshold, color="0.6", lw=0.8, ls=":")
            ax.set_title(label, fontsize=10)
            ax.set_xlim(0, longest)
            ax.tick_params(labelsize=8)
        axes[0].set_ylabel(f"patient aged {int(age)}", fontsize=11, fontweight="bold")
        lanes_ax.set_yticks(lanes, lane_labels, fontsize=9)
        lanes_ax.set_xlim(0, longest)
        lanes_ax.set_xlabel("hours since the start of the episode", fontsize=9)
        lanes_ax.set_title(
            "treatment given: blue oxygen, orange ventilation, green vasopressors (ends at "
            "discharge or death)",
            fontsize=9,
        )
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=10,
               bbox_to_anchor=(0.5, 1.0))  # fmt: skip
    fig.suptitle(
        "One typical test patient per age group (median starting MAP of the group), treated by "
        "each policy: same patient, same random stream. Dotted grey: MAP 65, SpO2 92, lactate 2.",
        y=0.985, fontsize=11,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def action_frequencies(steps: dict) -> dict[str, np.ndarray]:
    """Share of each action chosen by the learned policy, by age group and by state."""
    from sepsis_env.env import ACTION_NAMES, AGE_GROUPS, OBS_INDEX, age_group

    obs, actions = steps["obs"], steps["actions"]
    groups = {}
    ages = np.array([age_group(a) for a in obs[:, OBS_INDEX["Age"]]]) if len(obs) else np.array([])
    for g, (label, _, _) in enumerate(AGE_GROUPS):
        groups[f"age {label}"] = actions[ages == g]
    hypotensive = obs[:, OBS_INDEX["MAP"]] < HYPOTENSION_MAP_MMHG
    hypoxaemic = obs[:, OBS_INDEX["O2Sat"]] < HYPOXAEMIA_SPO2
    groups["MAP < 65"] = actions[hypotensive]
    groups["MAP >= 65"] = actions[~hypotensive]
    groups["SpO2 < 92"] = actions[hypoxaemic]
    groups["SpO2 >= 92"] = actions[~hypoxaemic]
    n = len(ACTION_NAMES)
    return {k: np.bincount(v, minlength=n) / max(1, len(v)) for k, v in groups.items()}


def plot_action_frequencies(steps: dict, path: Path) -> Path:
    """Stacked bars: how often the learned policy picks each action, by age group and state."""
    import matplotlib.pyplot as plt

    from sepsis_env.env import ACTION_NAMES

    freqs = action_frequencies(steps)
    fig, ax = plt.subplots(figsize=(11, 5))
    bottom = np.zeros(len(freqs))
    labels = list(freqs)
    for a, name in enumerate(ACTION_NAMES):
        share = np.array([freqs[k][a] for k in labels])
        ax.bar(labels, share, bottom=bottom, label=name, color=plt.cm.tab10(a))
        bottom += share
    ax.set(
        ylabel="share of the learned policy's decisions",
        title="Learned policy on test patients: actions by age group and by state",
    )
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- recommend ------------------------------------------------
VITALS = ("HR", "O2Sat", "SBP", "DBP", "MAP", "Resp", "Temp", "Lactate", "Age")
"""Vitals a patient file must give, by PhysioNet name."""
CONTEXT_DEFAULTS = {
    "oxygen": 0.0,
    "ventilation": 0.0,
    "vasopressors": 0.0,
    "ventilation_hours": 0.0,
    "vasopressor_hours": 0.0,
    "stable_hours": 0.0,
    "hours": 0.0,
}
"""What a clinician may not have at hand: no support running, at the start of the episode."""
FLAGS = ("oxygen", "ventilation", "vasopressors")


class PatientError(ValueError):
    """A patient file that cannot be turned into an observation; the message says why."""


def patient_observation(patient: dict, source: str = "patient") -> np.ndarray:
    """The SepsisEnv observation for a patient given by PhysioNet names (+ optional context).

    Raises `PatientError` naming every missing, unknown, non-numeric or impossible value.
    """
    from sepsis_env.env import OBS_HIGH, OBS_INDEX, OBS_LOW, OBS_NAMES, OBS_UNITS

    if not isinstance(patient, dict):
        raise PatientError(
            f"{source}: expected a JSON object of vitals, got {type(patient).__name__}"
        )
    problems = []
    missing = [name for name in VITALS if name not in patient]
    if missing:
        problems.append(f"missing vitals {missing} (required: {list(VITALS)})")
    unknown = sorted(set(patient) - set(OBS_NAMES))
    if unknown:
        problems.append(f"unknown fields {unknown} (known: {list(OBS_NAMES)})")
    values = dict(CONTEXT_DEFAULTS)
    for name, raw in patient.items():
        if name not in OBS_INDEX:
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            problems.append(f"{name}: {raw!r} is not a number")
            continue
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name}: {raw!r} is not a number")
            continue
        i = OBS_INDEX[name]
        if not np.isfinite(value):
            problems.append(f"{name}: {raw!r} is not a finite number")
        elif not OBS_LOW[i] <= value <= OBS_HIGH[i]:
            problems.append(
                f"{name}: {value:g} {OBS_UNITS[i]} is impossible "
                f"(allowed {OBS_LOW[i]:g} to {OBS_HIGH[i]:g} {OBS_UNITS[i]})"
            )
        elif name in FLAGS and value not in (0.0, 1.0):
            problems.append(f"{name}: {value:g} must be 0 (not running) or 1 (running)")
        values[name] = value
    if not problems and values["SBP"] < values["DBP"]:
        problems.append(f"SBP {values['SBP']:g} below DBP {values['DBP']:g} mmHg is impossible")
    if not problems and not values["DBP"] <= values["MAP"] <= values["SBP"]:
        problems.append(
            f"MAP {values['MAP']:g} must lie between DBP {values['DBP']:g} and "
            f"SBP {values['SBP']:g} mmHg"
        )
    if problems:
        raise PatientError(f"{source}: " + "; ".join(problems))
    return np.array([values[name] for name in OBS_NAMES], dtype=np.float32)


def recommend(checkpoint: str | Path, patient: dict, source: str = "patient") -> dict:
    """The greedy action and the Q-value of every action for one patient state."""
    from sepsis_env.env import ACTION_NAMES, OBS_NAMES

    policy = load_policy(checkpoint)
    if not policy.options.env.split(":")[-1].startswith("SepsisEnv"):
        raise ValueError(f"{checkpoint} was trained on {policy.options.env}, not SepsisEnv")
    obs = patient_observation(patient, source)
    q = policy.q_values(obs[None])[0]
    action = int(np.argmax(q))
    return {
        "action": action,
        "action_name": ACTION_NAMES[action],
        "q_values": {ACTION_NAMES[a]: float(q[a]) for a in range(len(ACTION_NAMES))},
        "observation": {name: float(v) for name, v in zip(OBS_NAMES, obs, strict=True)},
    }
