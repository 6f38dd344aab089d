"""`sepsis-rl train | evaluate | recommend`: the command-line layer of the RL agents (DQN, PPO,
APPO, IMPALA; offline, from logs: BC, MARWIL, CQL).

Only this module prints and chooses exit codes; the work is done in `training.rl`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from sepsis_rl.cli.console import (
    EXIT_INTERRUPTED,
    check_out_folder,
    console,
    err_console,
    fail,
    parse_sets,
)
from sepsis_rl.common.intervals import format_interval
from training.rl.evaluate import COMPARED_METRICS, TEST_EPISODES, TEST_SEED

AlgoOpt = Annotated[
    str | None,
    typer.Option(
        "--algo",
        help="dqn | ppo | appo | impala; with train --offline: bc | marwil | cql. train: the "
        "algorithm (default: the config's, else dqn); evaluate, recommend: refuse a checkpoint "
        "of another algorithm.",
    ),
]


def train_cmd(
    algo: AlgoOpt = None,
    env: Annotated[str | None, typer.Option(help="Gymnasium id, also module:EnvId-v0.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON file with RLOptions fields.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory (metrics, checkpoints).")] = Path(
        "runs/dqn"
    ),
    episodes: Annotated[int | None, typer.Option(help="Budget: training episodes.")] = None,
    env_steps: Annotated[int | None, typer.Option(help="Budget: sampled env steps.")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Budget: wall seconds.")] = None,
    num_env_runners: Annotated[int | None, typer.Option(help="Parallel env runners.")] = None,
    seed: Annotated[int | None, typer.Option(help="The run's seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any RLOptions field: --set lr=1e-3 (repeatable)."),
    ] = None,
    sync_to: Annotated[
        str | None, typer.Option(help="Mirror the run dir to shared storage (s3://, gs://).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")
    ] = None,
    offline: Annotated[
        Path | None,
        typer.Option(
            "--offline",
            help="Learn from this logs folder only (`sepsis-rl logs`), with --algo bc, marwil "
            "or cql; never acts in the env.",
        ),
    ] = None,
) -> None:
    """Train a treatment policy on Ray RLlib: Dueling Double DQN with prioritized replay (the
    default), PPO, APPO or IMPALA; or, from logged decisions (--offline LOGS), behaviour cloning,
    MARWIL or discrete CQL."""
    from training.rl.options import OFFLINE_ALGORITHMS, is_offline, load_options
    from training.rl.run_dir import load_run_options
    from training.rl.train import TrainingInterrupted, train

    if offline is not None:
        online_only = {
            "--resume": resume or None,
            "--env": env,
            "--episodes": episodes,
            "--env-steps": env_steps,
            "--num-env-runners": num_env_runners,
            "--sync-to": sync_to,
            "--address": address,
        }
        given_online = [flag for flag, value in online_only.items() if value is not None]
        if given_online:
            raise fail(
                f"train --offline does not take {', '.join(given_online)}: the env is the one "
                "the logs name, the budget is --time-budget or --set <algo>={iterations: N}, "
                "the learner runs in this process (no Ray cluster), and an offline run cannot "
                "be resumed (train again)"
            )
        return train_offline_cmd(offline, algo, config, out, time_budget, seed, set_)

    check_out_folder(out)
    overrides: dict[str, Any] = parse_sets(set_)
    given = {
        "algo": None if resume else algo,
        "env": env,
        "num_env_runners": num_env_runners,
        "seed": seed,
        "episodes": episodes,
        "env_steps": env_steps,
        "time_budget_s": time_budget,
    }
    overrides.update({k: v for k, v in given.items() if v is not None})
    if any(v is not None for v in (episodes, env_steps, time_budget)):
        # An explicit budget replaces the default one instead of adding to it.
        for key in ("episodes", "env_steps", "time_budget_s"):
            overrides.setdefault(key, None)
    try:
        options = load_run_options(out, overrides) if resume else load_options(config, overrides)
        if resume and algo is not None and algo != options.algo:
            raise ValueError(
                f"{out} is a {options.algo} run; it cannot be resumed with --algo {algo} "
                "(leave --algo out, or train a new run in another --out)"
            )
        # `load_options` skips None overrides; an explicit budget clears the other budgets.
        for key in ("episodes", "env_steps", "time_budget_s"):
            if key in overrides and overrides[key] is None:
                setattr(options, key, None)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise fail(str(err)) from err
    if is_offline(options.algo):
        raise fail(
            f"--algo {options.algo} learns from logged decisions: pass --offline LOGS_DIR (a "
            f"folder written by `sepsis-rl logs`); online training offers the other algorithms, "
            f"not {', '.join(OFFLINE_ALGORITHMS)}"
        )

    console.print(
        f"training {options.algo.upper()} on [bold]{options.env}[/bold] -> {out} "
        f"(budget: episodes={options.episodes}, env_steps={options.env_steps}, "
        f"time={options.time_budget_s}s; env runners={options.num_env_runners})"
    )
    table_header = (
        f"{'iter':>5} {'env steps':>10} {'episodes':>9} {'steps/s':>8} "
        f"{'return':>9} {'eval':>9} {'vs prot':>8} {'surv vs':>8} {'loss':>8} {'eps':>5} "
        f"{'runners':>7}"
    )
    console.print(
        "eval: mean return of the greedy policy on validation episodes; vs prot / surv vs: its "
        "paired return and survival difference to the clinician protocol there (SepsisEnv)",
        style="dim",
    )
    console.print(table_header, style="bold", soft_wrap=True)

    def show(m) -> None:
        console.print(
            f"{m.iteration:>5} {m.env_steps:>10} {m.episodes:>9} {_fmt(m.steps_per_s, 0):>8} "
            f"{_fmt(m.episode_return_mean):>9} {_fmt(m.eval_return_mean):>9} "
            f"{_fmt(m.eval_return_minus_protocol):>8} {_fmt(m.eval_survival_minus_protocol, 3):>8} "
            f"{_fmt(m.loss, 3):>8} {m.epsilon:>5.2f} {m.healthy_env_runners:>7}",
            soft_wrap=True,  # one row per line also when the output is not a terminal
        )

    try:
        result = train(
            options, out, resume=resume, on_iteration=show, sync_uri=sync_to, ray_address=address
        )
    except TrainingInterrupted as stopped:
        result = stopped.result
        err_console.print(
            f"[yellow]{result.stop_reason}[/] after {result.iterations} iterations; saved "
            f"{result.last_checkpoint}. Continue with the same command plus --resume.",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: {out} keeps its last saved checkpoint, if any "
            "(continue with --resume)",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, ConnectionError) as err:
        raise fail(str(err)) from None
    console.print(
        f"stopped: {result.stop_reason} after {result.iterations} iterations, "
        f"{result.env_steps} env steps, {result.episodes} episodes, {result.elapsed_s:.0f} s; "
        f"best eval return {_fmt(result.best_eval_return)}"
    )
    console.print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}")


def train_offline_cmd(
    logs: Path,
    algo: str | None,
    config: Path | None,
    out: Path,
    time_budget: float | None,
    seed: int | None,
    set_: list[str] | None,
) -> None:
    """`train --offline LOGS`: check the options and the logs before any work (exit 2, no run
    folder), then train BC, MARWIL or CQL on the logs' train stays."""
    from training.rl.offline.data import LogsError
    from training.rl.offline.train import load_offline_data, train_offline
    from training.rl.options import OFFLINE_ALGORITHMS, is_offline, load_options
    from training.rl.train import INTERRUPTED

    check_out_folder(out)
    overrides: dict[str, Any] = parse_sets(set_)
    given = {"algo": algo, "seed": seed, "time_budget_s": time_budget}
    overrides.update({k: v for k, v in given.items() if v is not None})
    try:
        options = load_options(config, overrides)
        if not is_offline(options.algo):
            raise ValueError(
                f"train --offline learns with --algo {' | '.join(OFFLINE_ALGORITHMS)}, not "
                f"{options.algo}" + ("" if algo is not None else " (pass --algo)")
            )
        options, data = load_offline_data(logs, options)
    except (LogsError, ValueError, FileNotFoundError, TypeError) as err:
        raise fail(str(err)) from None
    own = getattr(options, options.algo)
    console.print(
        f"training {options.algo.upper()} offline on {logs} ({data.stays['train']} train stays, "
        f"{data.stays['val']} validation stays; env {options.env}) -> {out} "
        f"(budget: iterations={own.iterations}, time={options.time_budget_s}s)"
    )
    console.print(
        "val loss: negative log-likelihood of the logged actions (bc, marwil) or TD loss (cql) "
        "on the validation stays (selects checkpoints/best); agree: greedy action = logged one",
        style="dim",
    )
    console.print(
        f"{'iter':>5} {'updates':>8} {'time s':>7} {'loss':>9} {'val loss':>9} {'agree':>6}",
        style="bold",
        soft_wrap=True,
    )

    def show(row: dict[str, Any]) -> None:
        console.print(
            f"{row['iteration']:>5} {row['updates']:>8} {row['time_s']:>7.1f} "
            f"{_fmt(row['loss'], 4):>9} {_fmt(row['val_loss'], 4):>9} "
            f"{_fmt(row['val_agreement'], 3):>6}",
            soft_wrap=True,
        )

    try:
        run = train_offline(logs, options, out, data=data, on_iteration=show)
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: {out} keeps its checkpoints written so far", highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, ConnectionError) as err:
        raise fail(str(err)) from None
    summary = json.loads((run / "summary.json").read_text())
    console.print(
        f"stopped: {summary['stop_reason']} after {summary['iterations']} iterations "
        f"({summary['updates']} updates), {summary['elapsed_s']:.0f} s; best val loss "
        f"{_fmt(summary['best_val_loss'], 4)} at iteration {summary['best_iteration']} "
        f"(agreement {_fmt(summary['best_val_agreement'], 3)})"
    )
    console.print(f"last checkpoint: {summary['last_checkpoint']}")
    console.print(f"best checkpoint: {summary['best_checkpoint']}")
    if summary["stop_reason"].startswith(INTERRUPTED):
        raise typer.Exit(EXIT_INTERRUPTED)


def _ci_table(title: str, by_policy: dict) -> Table:
    """One row per policy and age group, each metric as estimate [95% CI]."""
    table = Table(title=title)
    for col in ("policy", "group", *COMPARED_METRICS):
        table.add_column(col)
    for name, groups in by_policy.items():
        for group, m in groups.items():
            table.add_row(name, group, *(format_interval(m[k]) for k in COMPARED_METRICS))
    return table


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(help="checkpoints/last or checkpoints/best.")],
    episodes: Annotated[
        int, typer.Option(min=1, help="Test episodes per policy (paired).")
    ] = TEST_EPISODES,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation episodes.")] = TEST_SEED,
    out: Annotated[
        Path | None, typer.Option(help="Where to write tables and figures (default: run/eval).")
    ] = None,
    env: Annotated[
        str | None, typer.Option(help="icu-sepsis: exact value from the MDP's matrices.")
    ] = None,
    export_policy: Annotated[
        Path | None, typer.Option(help="ICU-Sepsis: write the greedy action per state (.npy).")
    ] = None,
    algo: AlgoOpt = None,
) -> None:
    """Greedy policy vs random, no-treatment, all-treatments, the clinician protocol and the
    age-adaptive protocol (the best hand rule) on test patients.

    On ICU-Sepsis (`--env icu-sepsis`, or a checkpoint trained on it) the greedy policy's value is
    computed exactly instead, beside the random, clinician and optimal values."""
    from sepsis_env.ids import is_icu_sepsis
    from training.rl.icu_sepsis import trained_on_icu_sepsis
    from training.rl.policy import check_algorithm

    if out is not None:
        check_out_folder(out)
    if algo is not None:
        try:
            check_algorithm(checkpoint, algo)
        except (FileNotFoundError, ValueError) as err:
            raise fail(str(err)) from None
    if is_icu_sepsis(env) or trained_on_icu_sepsis(checkpoint):
        return evaluate_icu_sepsis(checkpoint, export_policy, out)
    from training.rl.evaluate import beats, evaluate_checkpoint
    from training.rl.evaluate import write_evaluation as write
    from training.rl.policy import HAND_RULE, LEARNED, REFERENCE

    out = out or checkpoint.resolve().parent.parent / "eval"
    check_out_folder(out)
    try:
        result = evaluate_checkpoint(checkpoint, episodes=episodes, seed=seed)
        written = write(result, out)  # all files or none (staged)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise fail(str(err)) from None
    report = result["report"]
    console.print(
        _ci_table(f"{episodes} test episodes per policy (paired), 95% CI", report["policies"])
    )
    console.print(
        _ci_table(
            f"difference to the {REFERENCE} (paired, 95% CI)", report["difference_to_protocol"]
        )
    )
    console.print(
        _ci_table(
            f"{LEARNED} minus each baseline (paired, 95% CI)", report["learned_minus_baseline"]
        )
    )
    for baseline, words in ((REFERENCE, "the protocol"), (HAND_RULE, "the age-adaptive protocol")):
        verdict = beats(report, baseline)
        console.print(
            f"{LEARNED} beats {words} (CI above zero): "
            + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in verdict.items())
        )
    console.print(
        f"where {LEARNED} and the age-adaptive protocol differ (minus {LEARNED}, paired, 95% CI):"
    )
    for row in report["differences_to_hand_rule"]["swaps"]:
        if row["group"] == "overall":
            console.print(
                f"  {row['policy']:<22} return {format_interval(row['return'], 2, signed=True)}"
                f"  survival {format_interval(row['survival'], points=True)}"
            )
    for path in written:
        console.print(f"wrote {path}")


def recommend_cmd(
    checkpoint: Annotated[Path, typer.Option(help="checkpoints/last or checkpoints/best.")],
    patient: Annotated[Path, typer.Option(help="JSON file: HR, O2Sat, SBP, DBP, MAP, ...")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    algo: AlgoOpt = None,
) -> None:
    """Recommended action for one patient state, with every action's Q-value (DQN) or
    probability (PPO, APPO, IMPALA)."""
    from training.rl.recommend import PatientError, read_patient_file, recommend

    try:
        data = read_patient_file(patient)
    except PatientError as err:
        raise fail(str(err)) from None
    try:
        result = recommend(checkpoint, data, source=str(patient), algo=algo)
    except (PatientError, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from err
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"recommended: [bold]{result['action']} {result['action_name']}[/bold]")
    kind = "q_values" if "q_values" in result else "probabilities"
    title = {
        "q_values": "Q-value of every action (expected return)",
        "probabilities": f"Probability of every action under the {result['algo']} policy",
    }[kind]
    table = Table(title=title)
    table.add_column("action")
    table.add_column("Q" if kind == "q_values" else "probability", justify="right")
    best = max(result[kind].values())
    for name, value in result[kind].items():
        table.add_row(name, f"{value:.3f}", style="bold green" if value == best else None)
    console.print(table)


def evaluate_icu_sepsis(
    checkpoint: Path, export_policy: Path | None = None, out: Path | None = None
) -> None:
    """Print the exact value of the checkpoint's greedy policy beside the references; write the
    report (JSON), the learning curve (PNG) and, if asked, the greedy action per state (.npy)."""
    from sepsis_env.icu_sepsis import ICUSepsisNotInstalledError
    from sepsis_rl.common.files import staged_directory
    from training.rl.icu_sepsis import (
        evaluate_checkpoint,
        exact_evaluator,
        format_report,
        plot_exact_learning_curve,
    )

    run_dir = checkpoint.resolve().parent.parent
    out = out or run_dir / "eval"
    check_out_folder(out)
    try:
        actions, report = evaluate_checkpoint(checkpoint)
    except (ICUSepsisNotInstalledError, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from err
    console.print(format_report(report))

    metrics_csv = run_dir / "metrics.csv"
    names = ["icu_sepsis_exact.json"] + (
        ["icu_sepsis_learning_curve.png"] if metrics_csv.exists() else []
    )
    with staged_directory(out) as stage:  # both files or neither
        payload = {"checkpoint": str(checkpoint), **report.to_dict()}
        (stage / names[0]).write_text(json.dumps(payload, indent=2))
        if metrics_csv.exists():
            reference = exact_evaluator(report.strategy).baselines_
            plot_exact_learning_curve(metrics_csv, stage / names[1], reference)
    written = [out / name for name in names]
    if export_policy is not None:
        export_policy.parent.mkdir(parents=True, exist_ok=True)
        np.save(export_policy, actions)
        written.append(export_policy)
    for path in written:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate` and `recommend` to the root `sepsis-rl` app."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("recommend")(recommend_cmd)
