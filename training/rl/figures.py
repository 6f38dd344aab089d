"""Figures of a trained policy: training returns, test returns, typical patients, actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sepsis_env.env import OBS_INDEX
from sepsis_env.physiology import LACTATE_STABLE_MMOL_L, MAP_TARGET_MMHG, SPO2_STABLE_PCT
from training.rl.envs import evaluation_env_kwargs, make_raw_env
from training.rl.policy import (
    HAND_RULE,
    LEARNED,
    POLICY_NAMES,
    REFERENCE,
    load_policy,
    sepsis_policies,
)


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
    if "differences" in result:
        paths.append(plot_differences(result["differences"], out / "differences_to_hand_rule.png"))
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


TRACED_VITALS = (
    ("MAP", "MAP (mmHg)", MAP_TARGET_MMHG),
    ("O2Sat", "SpO2 (%)", SPO2_STABLE_PCT),
    ("HR", "Heart rate (bpm)", None),
    ("Lactate", "Lactate (mmol/L)", LACTATE_STABLE_MMOL_L),
)
"""Vitals drawn for each typical patient: observation name, axis label, clinical threshold."""
TREATMENT_LANES = ("oxygen", "ventilation", "vasopressors")
"""The organ supports drawn as lanes under each patient's vitals (blue, orange, green)."""
LANE_COLORS = ("C0", "C1", "C2")
"""Colours of the `TREATMENT_LANES`; no policy is drawn in them."""
POLICY_STYLES = {
    LEARNED: ("black", "-", 2.6),
    REFERENCE: ("C3", "--", 1.6),
    HAND_RULE: ("C4", "-.", 1.6),
}
"""(colour, line style, width) of the policies a reader compares: the learned policy and the two
protocols it must beat; the other baselines take `OTHER_STYLES` in turn."""
OTHER_STYLES = (("C7", ":"), ("C5", (0, (5, 1))), ("C6", (0, (1, 2))), ("C8", (0, (3, 1, 1, 1))))
OTHER_WIDTH = 1.2
LANE_INCHES = 0.42
"""Height of one policy's three treatment lanes in the typical-patient figure."""
VITALS_INCHES = 3.0
"""Height of one patient's row of vitals in the typical-patient figure."""


def policy_styles(names) -> dict[str, tuple]:
    """(colour, line style, width) of each policy in `names`, for the line figures."""
    others = iter(OTHER_STYLES * len(names))
    return {name: POLICY_STYLES.get(name) or (*next(others), OTHER_WIDTH) for name in names}


def plot_typical_patients(result: dict, path: Path) -> Path:
    """Vitals over one episode under each policy, for a typical patient of each age group."""
    import matplotlib.pyplot as plt

    report = result["report"]
    policy = load_policy(report["checkpoint"])
    kwargs = evaluation_env_kwargs(policy.options, report["env_kwargs"]["split"])
    if "cohort" in report["env_kwargs"]:
        kwargs["cohort"] = report["env_kwargs"]["cohort"]  # the patients the evaluation used
    policies = sepsis_policies(policy)
    styles = policy_styles(policies)
    picks = typical_episode_indices(result["evaluations"][REFERENCE])
    # Per patient: a row of vitals, and under it the treatments each policy gave, full width.
    lanes_inches = LANE_INCHES * len(policies)
    header_inches = 1.1  # the title's two lines, the legend's two rows
    height = header_inches + (VITALS_INCHES + lanes_inches + 1.2) * len(picks)
    fig = plt.figure(figsize=(15, height))
    grid = fig.add_gridspec(
        2 * len(picks),
        len(TRACED_VITALS),
        height_ratios=[VITALS_INCHES, lanes_inches] * len(picks),
    )
    for row, episode in enumerate(picks):
        axes = [fig.add_subplot(grid[2 * row, col]) for col in range(len(TRACED_VITALS))]
        lanes_ax = fig.add_subplot(grid[2 * row + 1, :])
        traces = {
            name: trace_episode(pol, policy.options.env, kwargs, report["seed"], episode)
            for name, pol in policies.items()
        }
        longest = max(float(obs[-1, OBS_INDEX["hours"]]) for obs, _, _ in traces.values())
        _draw_vitals(axes, traces, styles, longest)
        _draw_treatment_lanes(lanes_ax, traces, styles, longest)
        age = result["evaluations"][REFERENCE].age[episode]
        axes[0].set_ylabel(f"patient aged {int(age)}", fontsize=11, fontweight="bold")
    # The legend in two rows, the policies a reader compares on the first.
    entries = dict(zip(*reversed(fig.axes[0].get_legend_handles_labels()), strict=True))
    order = sorted(policies, key=lambda name: name not in POLICY_STYLES)
    ncol = (len(order) + 1) // 2
    labels = _column_major([POLICY_NAMES.get(name, name) for name in order], ncol)
    top = 1 - header_inches / height
    fig.legend([entries[label] for label in labels], labels, loc="upper center", ncol=ncol,
               fontsize=10, bbox_to_anchor=(0.5, 1 - 0.5 / height), frameon=False,
               handlelength=3.5)  # fmt: skip
    fig.suptitle(
        "One typical test patient per age group (median starting MAP of the group), treated by "
        "each policy: same patient, same random stream. Dotted grey: "
        f"MAP {MAP_TARGET_MMHG:g}, SpO2 {SPO2_STABLE_PCT:g}, lactate {LACTATE_STABLE_MMOL_L:g}.\n"
        "Lines that coincide hide each other: the lanes show what each policy did.",
        y=1 - 0.1 / height, va="top", fontsize=11,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _column_major(items: list, ncol: int) -> list:
    """`items` reordered so that a legend, which fills its columns first, reads them by rows."""
    nrows = -(-len(items) // ncol)
    return [
        items[r * ncol + c] for c in range(ncol) for r in range(nrows) if r * ncol + c < len(items)
    ]


def _draw_vitals(axes: list, traces: dict, styles: dict, longest: float) -> None:
    """One panel per traced vital: a line per policy, the clinical threshold dotted."""
    for name, (obs, _, _) in traces.items():
        t = obs[:, OBS_INDEX["hours"]]
        color, style, width = styles[name]
        for ax, (vital, _, _) in zip(axes, TRACED_VITALS, strict=True):
            ax.plot(
                t, obs[:, OBS_INDEX[vital]], color=color, ls=style, lw=width,
                label=POLICY_NAMES.get(name, name),
            )  # fmt: skip
    for ax, (_, label, threshold) in zip(axes, TRACED_VITALS, strict=True):
        if threshold is not None:
            ax.axhline(threshold, color="0.6", lw=0.8, ls=":")
        ax.set_title(label, fontsize=10)
        ax.set_xlim(0, longest)
        ax.tick_params(labelsize=8)


def _draw_treatment_lanes(ax, traces: dict, styles: dict, longest: float) -> None:
    """Which organ support ran in each interval, a lane per support and policy, with the
    episode's outcome in the policy's label (written in the policy's line colour)."""
    ticks, labels = [], []
    for k, (name, (obs, actions, outcome)) in enumerate(traces.items()):
        t = obs[:, OBS_INDEX["hours"]]
        base = 4 * (len(traces) - 1 - k)
        step = t[1] - t[0] if len(t) > 1 else 4.0
        for flag, color, lane in zip(TREATMENT_LANES, LANE_COLORS, range(3), strict=True):
            on = [(t[i], step) for i in range(len(actions)) if obs[i + 1, OBS_INDEX[flag]]]
            ax.broken_barh(on, (base + lane, 0.9), color=color)
        if k:
            ax.axhline(base + 3.45, color="0.85", lw=0.6)
        ticks.append(base + 1.45)
        labels.append(f"{POLICY_NAMES.get(name, name)}: {outcome}")
    ax.set_yticks(ticks, labels, fontsize=9)
    for label, name in zip(ax.get_yticklabels(), traces, strict=True):
        label.set_color(styles[name][0])
        label.set_fontweight("bold" if name in POLICY_STYLES else "normal")
    ax.set_ylim(-0.3, 4 * len(traces) - 0.8)
    ax.set_xlim(0, longest)
    ax.set_xlabel("hours since the start of the episode", fontsize=9)
    ax.set_title(
        "treatment given: blue oxygen, orange ventilation, green vasopressors (ends at "
        "discharge or death)",
        fontsize=9,
    )


def action_frequencies(steps: dict) -> dict[str, np.ndarray]:
    """Share of each action chosen by the learned policy, by age group and by state."""
    from sepsis_env.env import ACTION_NAMES, AGE_GROUPS, age_group

    obs, actions = steps["obs"], steps["actions"]
    groups = {}
    ages = np.array([age_group(a) for a in obs[:, OBS_INDEX["Age"]]]) if len(obs) else np.array([])
    for g, (label, _, _) in enumerate(AGE_GROUPS):
        groups[f"age {label}"] = actions[ages == g]
    hypotensive = obs[:, OBS_INDEX["MAP"]] < MAP_TARGET_MMHG
    hypoxaemic = obs[:, OBS_INDEX["O2Sat"]] < SPO2_STABLE_PCT
    groups[f"MAP < {MAP_TARGET_MMHG:g}"] = actions[hypotensive]
    groups[f"MAP >= {MAP_TARGET_MMHG:g}"] = actions[~hypotensive]
    groups[f"SpO2 < {SPO2_STABLE_PCT:g}"] = actions[hypoxaemic]
    groups[f"SpO2 >= {SPO2_STABLE_PCT:g}"] = actions[~hypoxaemic]
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


def plot_differences(differences: dict, path: Path, max_points: int = 20_000) -> Path:
    """Where the learned policy's vasopressor decision differs from the age-adaptive protocol's
    (test states by age and MAP, on and off vasopressors, with the rule's thresholds), and what
    taking each treatment decision from the rule instead changes in survival (paired, 95% CIs)."""
    import matplotlib.pyplot as plt

    from sepsis_env.physiology import VASOPRESSOR_MAP_GAIN_MMHG, age_response, perfusion_map
    from sepsis_env.policies import MAP_VASOPRESSOR_WEAN_MMHG
    from training.rl.differences import TREATMENT_FLAGS, TREATMENTS

    states = differences["states"]
    obs, learned, rule = states["obs"], states["learned"], states["rule"]
    vaso = TREATMENTS.index("vasopressors")
    learned_gives = TREATMENT_FLAGS[learned][:, vaso]
    rule_gives = TREATMENT_FLAGS[rule][:, vaso]
    on_vaso = obs[:, OBS_INDEX["vasopressors"]] > 0.5
    keep = np.random.default_rng(0).permutation(len(obs))[:max_points]
    ages = np.linspace(18, 95, 200)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    panels = (
        (axes[0], on_vaso, "on vasopressors: continue or wean?", "continues", "weans"),
        (axes[1], ~on_vaso, "off vasopressors: start or not?", "starts", "does not start"),
    )
    for ax, where, title, gives, withholds in panels:
        sel = keep[where[keep]]
        agree = learned_gives[sel] == rule_gives[sel]
        more = learned_gives[sel] & ~rule_gives[sel]
        less = ~learned_gives[sel] & rule_gives[sel]
        age, mean_ap = obs[sel, OBS_INDEX["Age"]], obs[sel, OBS_INDEX["MAP"]]
        ax.scatter(age[agree], mean_ap[agree], s=3, c="0.8", label="same decision", rasterized=True)
        ax.scatter(age[more], mean_ap[more], s=5, c="C3",
                   label=f"learned {gives}, rule {withholds}", rasterized=True)  # fmt: skip
        ax.scatter(age[less], mean_ap[less], s=5, c="C0",
                   label=f"learned {withholds}, rule {gives}", rasterized=True)  # fmt: skip
        threshold = perfusion_map(ages, np.maximum)
        if where is on_vaso:
            threshold = threshold + VASOPRESSOR_MAP_GAIN_MMHG * age_response(ages, np.maximum)
            ax.axhline(MAP_VASOPRESSOR_WEAN_MMHG, color="k", ls=":", lw=1,
                       label="clinician protocol weans above")  # fmt: skip
        ax.plot(ages, threshold, color="k", lw=1.2, label="age-adaptive threshold")
        share = 100 * (1 - agree.mean()) if len(agree) else float("nan")
        ax.set(xlabel="age (years)", ylabel="MAP (mmHg)",
               title=f"{title}\n{share:.1f}% of {where.sum():,} test states differ")  # fmt: skip
        ax.legend(fontsize=7, loc="best", markerscale=3, framealpha=0.9)
    ax = axes[2]
    rows = [r for r in differences["swaps"] if r["policy"] != "rule"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    width = 0.8 / len(TREATMENTS)
    for t, treatment in enumerate(TREATMENTS):
        values = [next(r for r in rows if r["policy"] == f"rule's {treatment}" and r["group"] == g)
                  for g in groups]  # fmt: skip
        est = np.array([100 * v["survival"][0] for v in values])
        err = np.array([[100 * (v["survival"][0] - v["survival"][1]) for v in values],
                        [100 * (v["survival"][2] - v["survival"][0]) for v in values]])  # fmt: skip
        x = np.arange(len(groups)) + (t - 1) * width
        ax.bar(x, est, width, yerr=err, capsize=3, color=f"C{t}",
               label=f"rule's {treatment} decision")  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set(xlabel="age group (years)", ylabel="survival change (points)",
           title="One decision taken from the age-adaptive protocol,\nminus the learned "
           "policy (paired, 95% CIs)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
