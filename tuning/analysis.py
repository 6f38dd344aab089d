"""`sepsis-rl analyze RESULTS_DIR`: what a search found, as tables, figures and a config file.

Reads only files (Ray need not run, and the folder may have been copied from a cluster):
`search.json` (ours: what was searched), each trial folder's `params.json`, `result.json` and
`error.txt` (Tune's), and each trial's final status from `trials.json` (ours, written when the
search ends) or, for an interrupted search, from Tune's `experiment_state-*.json`.

A trial's score is its metric at its last report: the cross-validated mean over the folds it ran
(classifiers) or the greedy evaluation return after its last iteration (RL). Trials that ran every
step rank before trials stopped early, whose scores rest on fewer folds or iterations; the best
trial is the top complete one.

Writes into the output folder:

    trials.csv, trials.md        every trial, sorted: score, status, steps, config, error
    best_config.yaml             the best configuration, ready for `sepsis-rl classify --config`
                                 (classifier search) or `sepsis-rl train --config` (RL search:
                                 every option, `algo` included, nested options as mappings)
    learning_curves.png          the metric per fold / iteration of the top trials
    metric_vs_params.png         score against each hyper-parameter
    seed_spread.png              scores of configurations repeated over seeds (when any are)
    summary.md                   best configuration, its score with an interval, the gain over
                                 the default configuration, counts of failed and stopped trials
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sepsis_rl.common.intervals import difference_of_independent, t_interval
from sepsis_rl.common.markdown import markdown_table
from tuning.runner import SEARCH_FILE, TRIALS_FILE, saved_statuses

TOP_CURVES = 5
FIGURE_DPI = 110
FINAL_DIR = "final"
"""Inside the experiment folder: the classifier refit on test patients (`classify`'s outputs)."""
COMPLETED, STOPPED, ERROR, UNFINISHED = "completed", "stopped early", "error", "unfinished"


class AnalysisError(ValueError):
    """The folder cannot be analysed; the message says why and what to pass instead."""


@dataclass
class Trial:
    """One trial as its files describe it."""

    trial_id: str
    folder: Path
    config: dict[str, Any]
    params: dict[str, Any]
    """The searched parameters only."""
    history: pd.DataFrame
    status: str
    error: str | None
    score: float = float("nan")
    steps: int = 0
    initial_params: dict[str, Any] = field(default_factory=dict)
    """The searched parameters the trial started with (PBT mutates `params` as it goes)."""

    @property
    def complete(self) -> bool:
        return self.status == COMPLETED


@dataclass
class Analysis:
    """A search, read back from its folder."""

    folder: Path
    search: dict[str, Any]
    trials: list[Trial]
    """Sorted: complete before incomplete, then by score (best first)."""
    best: Trial | None
    default: Trial | None
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.search["metric"]

    @property
    def maximize(self) -> bool:
        return self.search["mode"] == "max"

    @property
    def title(self) -> str:
        """What was searched: CLASSIFIERS, or RL with its algorithm (searches written before
        there was a choice of algorithm searched DQN)."""
        kind = self.search["kind"].upper()
        if self.search["kind"] != "rl":
            return kind
        algo = self.search.get("algo") or self.search.get("base_options", {}).get("algo", "dqn")
        return f"{kind} ({algo.upper()})"


# -- reading ---------------------------------------------------------------------------------------


def load_analysis(folder: str | Path) -> Analysis:
    """Read an experiment folder written by `sepsis-rl tune ...` (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnalysisError(f"{folder} is not a folder")
    search_file = folder / SEARCH_FILE
    if not search_file.is_file() and _is_hourly_search(folder):
        raise AnalysisError(
            f"{folder} is a `tune classifiers --task hourly` search (in-process, not Ray Tune): "
            f"it is ranked already, every trial in {folder / 'trials.csv'} and the best in "
            f"{folder / 'best.json'}; `sepsis-rl analyze` reads the Ray Tune searches"
        )
    if not search_file.is_file():
        candidates = sorted(p.parent.name for p in folder.glob(f"*/{SEARCH_FILE}"))
        hint = f"; did you mean one of: {', '.join(candidates)}" if candidates else ""
        raise AnalysisError(
            f"{folder} has no {SEARCH_FILE}: pass the experiment folder a `sepsis-rl tune` "
            f"command wrote (<storage>/<name>){hint}"
        )
    search = json.loads(search_file.read_text())
    statuses = _statuses(folder)
    trials = [
        _read_trial(trial_folder, search, statuses)
        for trial_folder in sorted(p.parent for p in folder.glob("*/params.json"))
    ]
    never_ran = sorted(set(statuses) - {t.trial_id for t in trials})
    if not trials:
        raise AnalysisError(f"{folder} holds no trial folders yet: the search ran no trial")
    trials.sort(key=lambda t: _sort_key(t, search["mode"] == "max"))
    best = next((t for t in trials if t.complete and math.isfinite(t.score)), None)
    notes = []
    if best is None:
        best = next((t for t in trials if math.isfinite(t.score)), None)
        if best is not None:
            notes.append("No trial ran every step; the best is chosen among incomplete trials.")
    if never_ran:
        finished = _search_finished(folder)
        notes.append(
            f"{len(never_ran)} more trial(s) were created but never started: "
            + (
                "the time budget ran out first (a new search with a larger --time-budget, or "
                "more --num-samples, would run them)."
                if finished
                else "the search was interrupted (`--resume` runs them)."
            )
        )
    default = _find_default(trials, search.get("default"))
    return Analysis(folder, search, trials, best, default, trial_table(trials, search), notes)


def _search_finished(folder: Path) -> bool:
    """Whether the search ended by itself (all trials, or the time budget), not interrupted."""
    trials_file = folder / TRIALS_FILE
    if not trials_file.is_file():
        return False
    return bool(json.loads(trials_file.read_text()).get("finished"))


def _statuses(folder: Path) -> dict[str, dict[str, Any]]:
    """trial id -> {"status", "error"}: Tune's saved experiment state (what a resume would
    continue from), with the errors our trials.json recorded."""
    recorded: dict[str, dict[str, Any]] = {}
    trials_file = folder / TRIALS_FILE
    if trials_file.is_file():
        recorded = {t["trial_id"]: t for t in json.loads(trials_file.read_text())["trials"]}
    saved = saved_statuses(str(folder))
    out = {}
    for trial_id in set(recorded) | set(saved):
        entry = dict(recorded.get(trial_id, {"error": None}))
        entry["status"] = saved.get(trial_id, entry.get("status"))
        out[trial_id] = entry
    return out


def _read_trial(folder: Path, search: dict[str, Any], statuses: dict[str, dict]) -> Trial:
    config = json.loads((folder / "params.json").read_text())
    history, first_config = _read_history(folder / "result.json")
    initial = {k: first_config[k] for k in search["params"] if k in first_config}
    trial_id = folder.name.removeprefix("trial_")
    params = {k: config[k] for k in search["params"] if k in config}
    error = _error_of(folder)
    known = statuses.get(trial_id, {})
    error = error or known.get("error")
    metric = search["metric"]
    steps = int(history["training_iteration"].max()) if "training_iteration" in history else 0
    score = float("nan")
    if metric in history and history[metric].notna().any():
        score = float(history[metric].dropna().iloc[-1])
    tune_status = known.get("status")
    if error and tune_status == "TERMINATED":
        # Tune retried it (FailureConfig) and the retry finished: the error is history.
        error = f"recovered after a failure, retried from its checkpoint: {error}"
    if tune_status == "ERROR" or (error and tune_status != "TERMINATED"):
        status = ERROR
    elif steps >= int(search["max_steps"]):
        status = COMPLETED
    elif tune_status == "TERMINATED" and search.get("scheduler") == "pbt":
        # PBT stops no trial early; one that cloned a finished trial ends with fewer own steps.
        status = COMPLETED
    elif tune_status == "TERMINATED":
        status = STOPPED
    else:
        status = UNFINISHED
    initial = initial or params
    return Trial(trial_id, folder, config, params, history, status, error, score, steps, initial)


def _read_history(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The trial's reports (one row per iteration) and the configuration of its first report."""
    if not path.is_file():
        return pd.DataFrame(), {}
    rows = []
    first_config: dict[str, Any] | None = None
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            config = row.pop("config", None)
            if first_config is None and isinstance(config, dict):
                first_config = config
            rows.append(row)
    history = pd.DataFrame(rows)
    if "training_iteration" in history:
        # A trial interrupted between writing a result and registering its checkpoint resumes from
        # the earlier checkpoint and reports that iteration again: keep the latest report of each.
        history = history.drop_duplicates("training_iteration", keep="last").reset_index(drop=True)
    return history, first_config or {}


def _error_of(folder: Path) -> str | None:
    path = folder / "error.txt"
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error (empty error.txt)"


def _sort_key(trial: Trial, maximize: bool) -> tuple[int, float]:
    score = trial.score if math.isfinite(trial.score) else (-math.inf if maximize else math.inf)
    return (0 if trial.complete else 1, -score if maximize else score)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _find_default(trials: list[Trial], default: dict[str, Any] | None) -> Trial | None:
    """The trial (the first, if repeated over seeds) that ran the default configuration."""
    if not default:
        return None
    matches = [  # by the parameters it started with: PBT changes them as the trial runs
        t
        for t in trials
        if all(k in t.initial_params and _same(t.initial_params[k], v) for k, v in default.items())
    ]
    return min(matches, key=lambda t: t.history["timestamp"].min()) if matches else None


def best_checkpoint(trial: Trial, metric: str, maximize: bool) -> Path | None:
    """The trial's kept checkpoint with the best score (Tune keeps the best few)."""
    if "checkpoint_dir_name" not in trial.history or metric not in trial.history:
        return None
    rows = trial.history.dropna(subset=["checkpoint_dir_name", metric])
    rows = rows[[(trial.folder / name).is_dir() for name in rows["checkpoint_dir_name"]]]
    if rows.empty:
        return None
    pick = rows[metric].idxmax() if maximize else rows[metric].idxmin()
    return trial.folder / rows.loc[pick, "checkpoint_dir_name"]


def trial_table(trials: list[Trial], search: dict[str, Any]) -> pd.DataFrame:
    """One row per trial in ranking order: rank, id, score, status, steps, params, error."""
    rows = []
    for rank, trial in enumerate(trials, start=1):
        row = {
            "rank": rank,
            "trial_id": trial.trial_id,
            search["metric"]: trial.score,
            "status": trial.status,
            search["step_name"] + "s": trial.steps,
        }
        row.update({k: trial.params.get(k) for k in search["params"]})
        row["seed_index"] = trial.config.get("__trial_index__", 0)
        row["error"] = trial.error or ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    # Parameters never drawn (e.g. of a model family no trial chose) are dropped.
    return frame.dropna(axis=1, how="all")


# -- intervals -------------------------------------------------------------------------------------


def step_values(trial: Trial, column: str) -> list[float]:
    """A per-step column of a trial's history (e.g. each fold's score)."""
    if column not in trial.history:
        return []
    return [float(v) for v in trial.history[column].tolist() if v is not None]


def score_interval(analysis: Analysis, trial: Trial) -> tuple[float, float, float, str]:
    """(score, low, high, what the interval is over) for one trial."""
    search = analysis.search
    if search["kind"] == "classifiers":
        mean, low, high = t_interval(step_values(trial, search["per_step_metric"]))
        return mean, low, high, f"95% t-interval over {trial.steps} cross-validation folds"
    last = trial.history.iloc[-1] if len(trial.history) else {}
    low = float(last.get(f"{analysis.metric}_ci_low", float("nan")))
    high = float(last.get(f"{analysis.metric}_ci_high", float("nan")))
    episodes = int(last.get("eval_episodes", 0) or 0)
    return trial.score, low, high, f"95% normal interval over {episodes} greedy evaluation episodes"


def gain_over_default(analysis: Analysis) -> dict[str, Any] | None:
    """Best minus default score (sign: positive is better), with an interval."""
    best, default = analysis.best, analysis.default
    if best is None or default is None:
        return None
    sign = 1.0 if analysis.maximize else -1.0
    search = analysis.search
    if search["kind"] == "classifiers":
        column = search["per_step_metric"]
        a, b = step_values(best, column), step_values(default, column)
        n = min(len(a), len(b))
        diffs = [sign * (x - y) for x, y in zip(a[:n], b[:n], strict=True)]
        mean, low, high = t_interval(diffs)
        over = f"paired over the {n} folds both ran (same folds for every trial)"
    else:
        best_score = score_interval(analysis, best)[:3]
        default_score = score_interval(analysis, default)[:3]
        # Positive is better: best - default when maximising, default - best when minimising.
        pair = (best_score, default_score) if sign > 0 else (default_score, best_score)
        mean, low, high = difference_of_independent(*pair)
        over = (
            "normal interval combining both trials' intervals over their evaluation episodes, "
            "as if independent (conservative: both ran the same validation episodes); it does "
            "not include the spread across training seeds (see --repeats)"
        )
    return {
        "gain": mean,
        "low": low,
        "high": high,
        "over": over,
        "best": best.trial_id,
        "default": default.trial_id,
        "default_score": default.score,
        "default_status": default.status,
    }


def seed_groups(analysis: Analysis) -> dict[str, list[Trial]]:
    """Configurations run with more than one seed: label -> its trials."""
    groups: dict[str, list[Trial]] = {}
    for trial in analysis.trials:
        key = json.dumps({k: trial.params[k] for k in sorted(trial.params)}, default=str)
        groups.setdefault(key, []).append(trial)
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    return {f"config {i + 1}": v for i, v in enumerate(repeated.values())}


# -- the best configuration as a config file -------------------------------------------------------


def _is_hourly_search(folder: Path) -> bool:
    """Whether `folder` holds what `tuning.hourly_search.run_hourly_search` writes."""
    from tuning.hourly_search import BEST_FILE, TRIALS_FILE

    return (folder / TRIALS_FILE).is_file() and (folder / BEST_FILE).is_file()


def export_best_config(analysis: Analysis, path: Path) -> Path:
    """Write the best configuration as the config file its command reads; returns the path."""
    if analysis.best is None:
        raise AnalysisError("no trial reported a score; there is no best configuration to export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if analysis.search["kind"] == "classifiers":
        from training.classification.options import classify_config_dict
        from tuning.classifier_search import trial_classify_config

        select_metric = analysis.search.get("select_metric", "pr_auc")
        values = classify_config_dict(trial_classify_config(analysis.best.config, select_metric))
        header = "# sepsis-rl classify --config this-file --data DIR --out DIR\n"
        path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    else:
        from tuning.rl_search import export_options

        export_options(analysis.best.config, path)
        path.write_text("# sepsis-rl train --config this-file --out DIR\n" + path.read_text())
    return path


# -- figures ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _saved(fig, path: Path) -> Path:
    """Write `fig` to `path` and close it."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def plot_learning_curves(analysis: Analysis, path: Path) -> Path:
    """The metric after each fold / iteration for the top trials (and the default)."""
    plt = _pyplot()
    search = analysis.search
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    shown = analysis.trials[:TOP_CURVES]
    if analysis.default is not None and analysis.default not in shown:
        shown = [*shown, analysis.default]
    for trial in shown:
        if analysis.metric not in trial.history:
            continue
        label = f"{trial.trial_id} ({trial.status})"
        if trial is analysis.default:
            label += " default"
        style = "--" if trial is analysis.default else "-"
        ax.plot(
            trial.history["training_iteration"],
            trial.history[analysis.metric],
            style,
            marker="o",
            lw=2.4 if trial is analysis.best else 1.2,
            label=label,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel=search["step_name"],
        ylabel=analysis.metric,
        title=f"Top {TOP_CURVES} trials (thick: best)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _saved(fig, path)


def plot_metric_vs_params(analysis: Analysis, path: Path) -> Path:
    """One panel per hyper-parameter: each trial's score against the value it tried."""
    plt = _pyplot()
    params = [p for p in analysis.search["params"] if p in analysis.table]
    columns = 3
    rows = max(1, math.ceil(len(params) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    space = _flat_space(analysis.search.get("space", {}))
    complete = analysis.table["status"] == COMPLETED
    for ax, name in zip(axes.flat, params, strict=False):
        values = analysis.table[name]
        scores = analysis.table[analysis.metric]
        present = values.notna()
        numeric = pd.api.types.is_numeric_dtype(values[present]) and not pd.api.types.is_bool_dtype(
            values[present]
        )
        if numeric:
            x = values[present].astype(float)
            if space.get(name, {}).get("log"):
                ax.set_xscale("log")
        else:
            categories = sorted({str(v) for v in values[present]})
            codes = {c: i for i, c in enumerate(categories)}
            x = values[present].map(lambda v, codes=codes: codes[str(v)]).astype(float)
            ax.set_xticks(range(len(categories)), categories, rotation=30, fontsize=7)
        done = complete[present]
        ax.scatter(x[done], scores[present][done], s=22, label=COMPLETED)
        ax.scatter(x[~done], scores[present][~done], s=22, marker="x", label="stopped/unfinished")
        ax.set(xlabel=name, ylabel=analysis.metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    if params:
        axes.flat[0].legend(fontsize=7)
    return _saved(fig, path)


def _flat_space(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    flat: dict[str, dict[str, Any]] = {}
    for name, dim in space.items():
        flat[name] = dim
        for subs in dim.get("then", {}).values():
            flat.update(subs)
    return flat


def plot_seed_spread(analysis: Analysis, path: Path) -> Path | None:
    """Scores of each configuration that ran with several seeds; None when none did."""
    groups = seed_groups(analysis)
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 4.2))
    labels = list(groups)
    data = [[t.score for t in groups[label] if math.isfinite(t.score)] for label in labels]
    ax.boxplot(data, tick_labels=labels)
    for i, values in enumerate(data, start=1):
        ax.scatter(np.full(len(values), i), values, s=18, zorder=3)
    ax.set(ylabel=analysis.metric, title="Spread across seeds of repeated configurations")
    ax.grid(alpha=0.3)
    return _saved(fig, path)


# -- the summary -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def counts(analysis: Analysis) -> dict[str, int]:
    """Trials per status."""
    out = {s: 0 for s in (COMPLETED, STOPPED, ERROR, UNFINISHED)}
    for trial in analysis.trials:
        out[trial.status] += 1
    return out


def final_test_metrics(analysis: Analysis) -> dict[str, Any] | None:
    """The classifier refit's test-patient metrics (`final/metrics.json`), if it was run."""
    path = analysis.folder / FINAL_DIR / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary_markdown(analysis: Analysis) -> str:
    """The short report a person reads first: the blocks below, those with nothing to say left
    out, separated by blank lines."""
    best = analysis.best
    if best is None:
        blocks = [
            _overview(analysis),
            _notes(analysis),
            "No trial reported a score, so there is no best configuration.",
        ]
    else:
        blocks = [
            _overview(analysis),
            _notes(analysis),
            _best_configuration(analysis, best),
            _best_checkpoint(analysis, best),
            _test_score(analysis),
            _gain_section(analysis),
            _seed_spread_section(analysis),
            _failed_trials_section(analysis),
            _files_section(analysis),
        ]
    return "\n\n".join(block for block in blocks if block) + "\n"


def _overview(analysis: Analysis) -> str:
    """Title; metric, scheduler and trials per status."""
    search, n = analysis.search, counts(analysis)
    return (
        f"# {analysis.title} search: {analysis.folder.name}\n\n"
        f"Metric: `{analysis.metric}` ({'higher' if analysis.maximize else 'lower'} is better), "
        f"scheduler {search['scheduler']}, {len(analysis.trials)} trials: {n[COMPLETED]} "
        f"completed, {n[STOPPED]} stopped early (by the scheduler, or cut when the time budget "
        f"ran out), {n[ERROR]} failed, {n[UNFINISHED]} unfinished."
    )


def _notes(analysis: Analysis) -> str:
    return "\n\n".join(f"Note: {note}" for note in analysis.notes)


def _best_configuration(analysis: Analysis, best: Trial) -> str:
    """The best trial, its score with an interval, and its parameters."""
    score, low, high, over = score_interval(analysis, best)
    parameters = markdown_table(
        ["parameter", "value"], [(k, _fmt(v)) for k, v in best.params.items()]
    )
    return (
        f"## Best configuration: trial {best.trial_id} ({best.status})\n\n"
        f"Score: **{_fmt(score)}** [{_fmt(low)}, {_fmt(high)}] ({over}).\n\n{parameters}"
    )


def _best_checkpoint(analysis: Analysis, best: Trial) -> str:
    checkpoint = best_checkpoint(best, analysis.metric, analysis.maximize)
    if checkpoint is None:
        return ""
    if analysis.search["kind"] != "rl":
        return f"Best checkpoint: `{checkpoint}` (fold scores)."
    from training.rl.run_dir import BUFFER_FILE
    from tuning.rl_search import ALGO_SUBDIR

    buffer = (checkpoint / ALGO_SUBDIR / BUFFER_FILE).is_file()  # DQN's; PG algorithms have none
    what = f"RLlib checkpoint{' with replay buffer' if buffer else ''} in `{ALGO_SUBDIR}/`"
    return f"Best checkpoint: `{checkpoint}` ({what})."


def _test_score(analysis: Analysis) -> str:
    """The refit classifier's score on the test patients, when it was refit."""
    final = final_test_metrics(analysis)
    if final is None or analysis.search["kind"] != "classifiers":
        return ""
    metric = analysis.search.get("select_metric", "pr_auc")
    estimate = final.get("best", {}).get("test", {}).get(metric)
    if not isinstance(estimate, dict):
        return ""
    return (
        f"Refit on all training patients, scored once on the test patients: {metric} "
        f"{_fmt(estimate['value'])} [{_fmt(estimate['ci_low'])}, {_fmt(estimate['ci_high'])}] "
        f"(95% bootstrap CI; `{FINAL_DIR}/`)."
    )


def _gain_section(analysis: Analysis) -> str:
    gain = gain_over_default(analysis)
    if gain is None:
        text = (
            "The default configuration was not among the trials (it lies outside the searched "
            "space, or the search was stopped before it ran)."
        )
    elif gain["best"] == gain["default"]:
        text = (
            f"The default configuration is the best found (score {_fmt(gain['default_score'])}):"
            " the search found nothing better."
        )
    else:
        text = (
            f"Default (trial {gain['default']}, {gain['default_status']}): "
            f"{_fmt(gain['default_score'])}. Improvement of the best over it: "
            f"**{_fmt(gain['gain'])}** [{_fmt(gain['low'])}, {_fmt(gain['high'])}] "
            f"({gain['over']}; positive is better)."
        )
    return f"## Gain over the default configuration\n\n{text}"


def _seed_spread_section(analysis: Analysis) -> str:
    """Mean and standard deviation of each configuration repeated over seeds."""
    groups = seed_groups(analysis)
    if not groups:
        return ""
    rows = []
    for label, trials in groups.items():
        values = [t.score for t in trials if math.isfinite(t.score)]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append((label, len(trials), _fmt(float(np.mean(values))), _fmt(sd)))
    table = markdown_table(["configuration", "seeds", "mean", "sd"], rows)
    return f"## Spread across seeds\n\n{table}"


def _failed_trials_section(analysis: Analysis) -> str:
    errors = [f"- {t.trial_id}: {t.error}" for t in analysis.trials if t.status == ERROR]
    if not errors:
        return ""
    return "## Failed trials\n\n" + "\n".join(errors)


def _files_section(analysis: Analysis) -> str:
    seed_spread = ", `seed_spread.png`" if seed_groups(analysis) else ""
    return (
        "## Files\n\n"
        "`trials.csv` / `trials.md` (every trial, ranked), `best_config.yaml`, "
        f"`learning_curves.png`, `metric_vs_params.png`{seed_spread}."
    )


def table_markdown(table: pd.DataFrame) -> str:
    """The trial table as Markdown."""
    rows = [
        [v if isinstance(v, str) else _fmt(v) for v in row] for row in table.itertuples(index=False)
    ]
    return markdown_table(list(table.columns), rows) + "\n"


def write_analysis(folder: str | Path, out: str | Path | None = None) -> tuple[Analysis, Path]:
    """Analyse `folder` and write every output (module docstring) into `out`."""
    analysis = load_analysis(folder)
    out = Path(out) if out is not None else analysis.folder / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    analysis.table.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(table_markdown(analysis.table))
    if analysis.best is not None:
        export_best_config(analysis, out / "best_config.yaml")
    plot_learning_curves(analysis, out / "learning_curves.png")
    plot_metric_vs_params(analysis, out / "metric_vs_params.png")
    plot_seed_spread(analysis, out / "seed_spread.png")
    (out / "summary.md").write_text(summary_markdown(analysis))
    return analysis, out
