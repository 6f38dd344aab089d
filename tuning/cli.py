"""`sepsis-rl tune classifiers | rl` and `sepsis-rl analyze`: the command-line layer of tuning.

Only this module prints and chooses exit codes; the work is done in `tuning.*`.
Exit codes: 0 done; 1 the search ran but no trial produced a score; 2 bad input;
130 interrupted (the search is saved: run the same command with --resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_NO_RESULT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

tune_app = typer.Typer(
    help="Search hyper-parameters with Ray Tune (results survive interruption: --resume).",
    no_args_is_help=True,
)

StorageOpt = Annotated[
    str, typer.Option(help="Local folder or URI (s3://, gs://) for the experiment.")
]
NameOpt = Annotated[str | None, typer.Option(help="Experiment folder name under --storage.")]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the interrupted search in --storage/--name (Tuner.restore).")
]
SeedOpt = Annotated[int, typer.Option(help="Seeds the search and every trial.")]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else local Ray).")
]


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _budget(seconds: float) -> float | None:
    return None if seconds <= 0 else seconds


def _run(run, address: str | None):
    """Start (or join) Ray, run the search, stop the Ray this process started."""
    import ray

    from tuning.runner import SearchError, init_ray

    started = init_ray(address)
    try:
        return run()
    except SearchError as err:
        raise _fail(str(err)) from None
    finally:
        if started:
            ray.shutdown()


def _report(outcome, local: bool, command: str) -> None:
    """Print how the search ended; exits 130 when it was interrupted."""
    statuses: dict[str, int] = {}
    for trial in outcome.trials:
        statuses[trial["status"]] = statuses.get(trial["status"], 0) + 1
    console.print(
        f"{len(outcome.trials)} trials in {outcome.path}: "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(statuses.items()))
    )
    if not outcome.finished:
        err_console.print(
            f"search interrupted; its state is saved. Continue it with: {command} --resume"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if not local:
        console.print(
            f"results are in {outcome.path}; copy the folder and run `sepsis-rl analyze` on it"
        )


def _analyse(folder: Path) -> Any:
    from tuning.analysis import AnalysisError, write_analysis

    try:
        analysis, out = write_analysis(folder)
    except AnalysisError as err:
        raise _fail(str(err), EXIT_NO_RESULT) from None
    console.print((out / "summary.md").read_text(), markup=False, highlight=False)
    console.print(f"analysis written to {out}")
    if analysis.best is None:
        raise typer.Exit(EXIT_NO_RESULT)
    return analysis


@tune_app.command("classifiers")
def tune_classifiers_cmd(
    data: Annotated[Path, typer.Option(help="Folder written by `sepsis-rl data prepare`.")],
    metric: Annotated[
        str, typer.Option(help="Cross-validated metric: pr_auc, roc_auc or brier.")
    ] = "pr_auc",
    folds: Annotated[int, typer.Option(help="Patient-grouped CV folds (training patients).")] = 3,
    num_samples: Annotated[int, typer.Option(help="Configurations to try.")] = 12,
    time_budget: Annotated[
        float, typer.Option(help="Seconds before the search stops (0: no limit).")
    ] = 600.0,
    seed: SeedOpt = 0,
    models: Annotated[
        str, typer.Option(help="Model families to search, comma-separated.")
    ] = "logreg,random_forest,xgboost,svm",
    oversample: Annotated[
        str, typer.Option(help="Oversampling modes to search, comma-separated.")
    ] = "none,smote,ctgan",
    scheduler: Annotated[str, typer.Option(help="asha (early stopping) or fifo.")] = "asha",
    repeats: Annotated[
        int, typer.Option(help="Seeds per configuration (> 1 needs --scheduler fifo).")
    ] = 1,
    max_failures: Annotated[int, typer.Option(help="Retries of a failing trial.")] = 1,
    storage: StorageOpt = "results/tune",
    name: NameOpt = None,
    resume: ResumeOpt = False,
    refit: Annotated[
        bool, typer.Option(help="Refit the best configuration and score it on test patients.")
    ] = True,
    address: AddressOpt = None,
) -> None:
    """Search model family, oversampling and hyper-parameters by patient-grouped CV."""
    from training.classify import DataFolderError
    from tuning.classifier_search import ClassifierSearch, refit_best, run_classifier_search
    from tuning.runner import experiment_path, is_uri

    search = ClassifierSearch(
        data=data,
        metric=metric,
        n_folds=folds,
        num_samples=num_samples,
        time_budget_s=_budget(time_budget),
        seed=seed,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        oversample=tuple(o.strip() for o in oversample.split(",") if o.strip()),
        scheduler=scheduler,
        repeats=repeats,
        storage=storage,
        name=name or "classifiers",
        max_failures=max_failures,
    )
    try:
        search.validate()
    except ValueError as err:
        raise _fail(str(err)) from None
    command = f"sepsis-rl tune classifiers --data {data} --storage {storage} --name {search.name}"
    try:
        outcome = _run(lambda: run_classifier_search(search, resume=resume), address)
    except DataFolderError as err:
        raise _fail(str(err)) from None
    _report(outcome, not is_uri(storage), command)
    if is_uri(storage):
        return
    folder = Path(experiment_path(storage, search.name))
    if refit:
        from tuning.analysis import FINAL_DIR, AnalysisError, load_analysis

        try:
            best = load_analysis(folder).best
        except AnalysisError as err:
            raise _fail(str(err), EXIT_NO_RESULT) from None
        if best is not None:
            console.print(
                f"refitting the best configuration ({best.params}) on the training patients; "
                "the test patients are scored now, once"
            )
            refit_best(data, folder / FINAL_DIR, best.config, search.metric)
    _analyse(folder)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@tune_app.command("rl")
def tune_rl_cmd(
    config: Annotated[
        Path | None, typer.Option(help="Base options (the YAML/JSON file `train` reads).")
    ] = None,
    env: Annotated[str | None, typer.Option(help="Gymnasium id (overrides --config).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a base option: --set env_steps=... (repeatable)."),
    ] = None,
    num_samples: Annotated[int, typer.Option(help="Configurations to try.")] = 6,
    iterations_per_trial: Annotated[int, typer.Option(help="RLlib iterations per trial.")] = 6,
    time_budget: Annotated[
        float, typer.Option(help="Seconds before the search stops (0: no limit).")
    ] = 600.0,
    seed: SeedOpt = 0,
    scheduler: Annotated[str, typer.Option(help="asha (with Optuna), pbt, or fifo.")] = "asha",
    perturbation_interval: Annotated[int, typer.Option(help="PBT: iterations between steps.")] = 2,
    repeats: Annotated[
        int, typer.Option(help="Seeds per configuration (> 1 needs --scheduler fifo).")
    ] = 1,
    eval_episodes: Annotated[
        int | None,
        typer.Option(
            help="Greedy evaluation episodes after each iteration [default: 2,000 fixed "
            "validation episodes for SepsisEnv, run as one batch; 20 for other envs]."
        ),
    ] = None,
    eval_split: Annotated[
        str,
        typer.Option(help="Patients of the greedy evaluation (SepsisEnv split; 'none': as train)."),
    ] = "val",
    env_runners: Annotated[int | None, typer.Option(help="Env runners per trial.")] = None,
    cpus_per_env_runner: Annotated[
        float | None, typer.Option(help="CPUs per env runner (fractional is fine).")
    ] = None,
    cpus_for_driver: Annotated[
        float, typer.Option(help="CPUs per trial driver (runs the learner and evaluation).")
    ] = 0.5,
    max_failures: Annotated[int, typer.Option(help="Retries of a failing trial.")] = 1,
    storage: StorageOpt = "results/tune",
    name: NameOpt = None,
    resume: ResumeOpt = False,
    address: AddressOpt = None,
) -> None:
    """Search DQN hyper-parameters, scored by the greedy policy's evaluation return."""
    from training.rl_config import load_options
    from tuning.rl_search import RLSearch, run_rl_search
    from tuning.runner import experiment_path, is_uri

    overrides = _parse_sets(set_ or [])
    given = {
        "env": env,
        "num_env_runners": env_runners,
        "num_cpus_per_env_runner": cpus_per_env_runner,
    }
    overrides.update({k: v for k, v in given.items() if v is not None})
    try:
        base = load_options(config, overrides)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise _fail(str(err)) from None
    # The builder evaluates on this split (RLOptions.evaluation_split); "none": the training one.
    base.evaluation_split = None if eval_split.lower() == "none" else eval_split
    search = RLSearch(
        base=base,
        num_samples=num_samples,
        iterations_per_trial=iterations_per_trial,
        time_budget_s=_budget(time_budget),
        seed=seed,
        scheduler=scheduler,
        perturbation_interval=perturbation_interval,
        repeats=repeats,
        eval_episodes=eval_episodes,
        cpus_for_main_process=cpus_for_driver,
        storage=storage,
        name=name or "rl",
        max_failures=max_failures,
    )
    try:
        search.validate()
    except ValueError as err:
        raise _fail(str(err)) from None
    command = f"sepsis-rl tune rl --storage {storage} --name {search.name}"
    outcome = _run(lambda: run_rl_search(search, resume=resume), address)
    _report(outcome, not is_uri(storage), command)
    if not is_uri(storage):
        _analyse(Path(experiment_path(storage, search.name)))


def analyze_cmd(
    results_dir: Annotated[
        Path, typer.Argument(help="Experiment folder (<storage>/<name>) of a `tune` search.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: RESULTS_DIR/analysis).")
    ] = None,
) -> None:
    """Rank the trials of a search, plot them, and export the best configuration (no Ray needed)."""
    from tuning.analysis import AnalysisError, write_analysis

    try:
        analysis, folder = write_analysis(results_dir, out)
    except AnalysisError as err:
        raise _fail(str(err)) from None
    console.print((folder / "summary.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote trials.csv, trials.md, figures and summary.md to {folder}")
    if analysis.best is None:
        raise typer.Exit(EXIT_NO_RESULT)
    command = "classify --config" if analysis.search["kind"] == "classifiers" else "train --config"
    console.print(f"best configuration: {folder / 'best_config.yaml'} (for `sepsis-rl {command}`)")


def register(app: typer.Typer) -> None:
    """Add `tune classifiers`, `tune rl` and `analyze` to the root `sepsis-rl` app."""
    app.add_typer(tune_app, name="tune")
    app.command("analyze")(analyze_cmd)
