"""`sepsis-rl tune classifiers | rl` and `sepsis-rl analyze`: the command-line layer of tuning.

Only this module prints and chooses exit codes; the work is done in `tuning.*`.
Exit codes: 0 done; 1 the search ran but no trial produced a score; 2 bad input;
130 interrupted (the search is saved: run the same command with --resume).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from sepsis_rl.cli.console import (
    EXIT_INTERRUPTED,
    EXIT_NO_RESULT,
    check_out_folder,
    console,
    err_console,
    fail,
    parse_sets,
)

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
MaxConcurrentOpt = Annotated[
    int | None,
    typer.Option(
        help="Trials at once [default: as many as the cluster's CPUs hold at the start]; on an "
        "autoscaling cluster set it higher so that waiting trials bring up more nodes."
    ),
]
TRIAL_CPUS_PER_ENV_RUNNER = 0.5
"""`tune rl`'s CPUs per env runner unless --cpus-per-env-runner or the config sets it."""


def search_base_options(config: Path | None, overrides: dict[str, Any]) -> Any:
    """The RLOptions every `tune rl` trial starts from: `train`'s options from `config` with
    `overrides` (a nested option by its dotted path, `ppo.train_batch_size`), and half a CPU per
    env runner unless either sets it (sampling is light, the learner runs in the trial's driver:
    a trial asks for 1 CPU, so 2 run at once on 2 cores)."""
    from training.rl.options import load_options
    from tuning.rl_search import with_values

    flat = {k: v for k, v in overrides.items() if "." not in k}
    dotted = {k: v for k, v in overrides.items() if "." in k}
    if "num_cpus_per_env_runner" not in flat and not _config_sets(
        config, "num_cpus_per_env_runner"
    ):
        flat["num_cpus_per_env_runner"] = TRIAL_CPUS_PER_ENV_RUNNER
    options = load_options(config, flat)
    return with_values(options, dotted) if dotted else options


def _config_sets(config: Path | None, key: str) -> bool:
    """Whether the options file `config` sets `key` itself."""
    from sepsis_rl.common.config_files import ConfigFileError, read_config_file

    if config is None:
        return False
    try:
        return key in read_config_file(config)
    except ConfigFileError:
        return False  # load_options reports the broken file


def _check_storage(storage: str) -> None:
    """Refuse, before any work, a local --storage that exists and is not a folder."""
    from tuning.runner import is_uri

    if not is_uri(storage):
        check_out_folder(Path(storage), "--storage")


def _budget(seconds: float) -> float | None:
    return None if seconds <= 0 else seconds


def _run(run, address: str | None):
    """Start (or join) Ray, run the search, stop the Ray this process started."""
    import ray

    from sepsis_rl.common.ray_local import init_ray
    from tuning.runner import SearchError

    try:
        started = init_ray(address)
    except ConnectionError as err:
        raise fail(str(err)) from None
    try:
        return run()
    except SearchError as err:
        raise fail(str(err)) from None
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
        console.print(f"results are in {outcome.path}; analysing a local copy")


def _analyse(folder: Path) -> Any:
    from tuning.analysis import AnalysisError, write_analysis

    try:
        analysis, out = write_analysis(folder)
    except AnalysisError as err:
        raise fail(str(err), EXIT_NO_RESULT) from None
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
        str | None,
        typer.Option(
            help="Model families to search, comma-separated [default: logreg,random_forest,"
            "xgboost,svm; hourly: xgboost,logreg]."
        ),
    ] = None,
    oversample: Annotated[
        str | None,
        typer.Option(
            help="Oversampling modes to search, comma-separated [default: none,smote,ctgan; "
            "hourly: none,smote]."
        ),
    ] = None,
    scheduler: Annotated[str, typer.Option(help="asha (early stopping) or fifo.")] = "asha",
    repeats: Annotated[
        int, typer.Option(help="Seeds per configuration (> 1 needs --scheduler fifo).")
    ] = 1,
    max_failures: Annotated[int, typer.Option(help="Retries of a failing trial.")] = 1,
    max_concurrent: MaxConcurrentOpt = None,
    storage: StorageOpt = "results/tune",
    name: NameOpt = None,
    resume: ResumeOpt = False,
    refit: Annotated[
        bool, typer.Option(help="Refit the best configuration and score it on test patients.")
    ] = True,
    address: AddressOpt = None,
    task: Annotated[
        str,
        typer.Option(
            help="patients: patient-grouped CV on Ray Tune; hourly: hourly early warning, each "
            "trial scored by the validation normalised utility (Optuna in one process; "
            "--metric, --folds, --scheduler, --repeats and --address do not apply).",
        ),
    ] = "patients",
) -> None:
    """Search model family, oversampling and hyper-parameters by patient-grouped CV (or, with
    --task hourly, by the validation patients' normalised utility)."""
    if task == "hourly":
        _tune_hourly(data, num_samples, time_budget, seed, models, oversample, storage, name, refit)
        return
    if task != "patients":
        raise fail(f"--task must be patients or hourly, got {task!r}")
    models = models or "logreg,random_forest,xgboost,svm"
    oversample = oversample or "none,smote,ctgan"
    from training.classification.features import DataFolderError, load_features
    from tuning.classifier_search import ClassifierSearch, refit_best, run_classifier_search
    from tuning.runner import experiment_path, is_uri

    _check_storage(storage)
    try:
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
            max_concurrent=max_concurrent,
        )
        load_features(data)  # the prepared folder, checked before Ray starts
    except ValueError as err:
        raise fail(str(err)) from None
    command = f"sepsis-rl tune classifiers --data {data} --storage {storage} --name {search.name}"
    try:
        outcome = _run(lambda: run_classifier_search(search, resume=resume), address)
    except DataFolderError as err:
        raise fail(str(err)) from None
    _report(outcome, not is_uri(storage), command)
    location = experiment_path(storage, search.name)
    with _local_copy(location) as folder:
        if refit:
            _refit(folder, data, search.metric, refit_best)
            if is_uri(storage):
                _copy(str(folder / "final"), location + "/final")
        _analyse(folder)
        if is_uri(storage):
            _copy(str(folder / "analysis"), location + "/analysis")
            console.print(f"final model and analysis copied to {location}")


def _tune_hourly(
    data: Path,
    num_samples: int,
    time_budget: float,
    seed: int,
    models: str | None,
    oversample: str | None,
    storage: str,
    name: str | None,
    refit: bool,
) -> None:
    """`tune classifiers --task hourly`: options and data checked before any fit."""
    from tuning.hourly_search import (
        HOURLY_TUNE_METRIC,
        HourlySearch,
        refit_best_hourly,
        run_hourly_search,
    )
    from tuning.runner import is_uri

    if is_uri(storage):
        raise fail("--task hourly keeps its experiment on local disk: give a folder as --storage")
    values: dict[str, Any] = {
        "data": data,
        "num_samples": num_samples,
        "time_budget_s": _budget(time_budget),
        "seed": seed,
        "storage": storage,
        "name": name or "hourly",
    }
    for key, text in (("models", models), ("oversample", oversample)):
        if text is not None:
            values[key] = tuple(v.strip() for v in text.split(",") if v.strip())
    try:
        from training.classification.hourly import load_hourly

        search = HourlySearch(**values)
        check_out_folder(search.folder, "--storage/--name")
        table = load_hourly(data)
    except ValueError as err:  # OptionsError and DataFolderError included
        raise fail(str(err)) from None
    trials = run_hourly_search(search, table)
    del table
    console.print(trials.head(10).to_string(index=False))
    best = trials.iloc[0]
    console.print(
        f"best of {len(trials)} trials: validation utility {best[HOURLY_TUNE_METRIC]:.3f}; wrote "
        f"trials.csv and best.json to {search.folder}"
    )
    if refit:
        console.print("refitting the best configuration; the test patients are scored now, once")
        metrics = refit_best_hourly(search)
        utility = metrics["best"]["test"]["utility"]
        console.print(
            f"test utility {utility['value']:.3f} [{utility['ci_low']:.3f}, "
            f"{utility['ci_high']:.3f}]; wrote {search.folder / 'final'}"
        )


@contextlib.contextmanager
def _local_copy(location: str) -> Iterator[Path]:
    """The experiment folder on local disk: itself, or a temporary copy of a URI's contents."""
    from tuning.runner import is_uri

    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="sepsis-rl-tune-") as tmp:
        folder = Path(tmp) / Path(location.rstrip("/")).name
        _copy(location, str(folder))
        yield folder


def _copy(source: str, target: str) -> None:
    from sepsis_rl.common.files import copy_to_storage

    try:
        copy_to_storage(source, target)
    except (OSError, ValueError) as err:
        raise fail(f"copying {source} to {target} failed: {err}", 1) from None


def _refit(folder: Path, data: Path, metric: str, refit_best) -> None:
    """Refit the best configuration once and score the test patients; a resumed search whose
    final model exists does not touch the test patients again."""
    from tuning.analysis import FINAL_DIR, AnalysisError, load_analysis

    try:
        best = load_analysis(folder).best
    except AnalysisError as err:
        raise fail(str(err), EXIT_NO_RESULT) from None
    if best is None:
        return
    final = folder / FINAL_DIR
    record = final / "refit.json"
    if record.is_file() and json.loads(record.read_text()).get("trial_id") == best.trial_id:
        console.print(f"the best configuration was refitted before ({final}); not again")
        return
    console.print(
        f"refitting the best configuration ({best.params}) on the training patients; "
        "the test patients are scored now, once"
    )
    refit_best(data, final, best.config, metric)
    record.write_text(json.dumps({"trial_id": best.trial_id}) + "\n")


@tune_app.command("rl")
def tune_rl_cmd(
    config: Annotated[
        Path | None, typer.Option(help="Base options (the YAML/JSON file `train` reads).")
    ] = None,
    algo: Annotated[
        str | None,
        typer.Option(
            help="dqn | ppo | appo | impala: the algorithm whose hyper-parameters are searched "
            "(default: the --config file's algo, else dqn)."
        ),
    ] = None,
    env: Annotated[str | None, typer.Option(help="Gymnasium id (overrides --config).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a base option: --set env_steps=..., --set ppo.train_batch_size=256 "
            "(repeatable).",
        ),
    ] = None,
    hold: Annotated[
        str | None,
        typer.Option(
            help="Searched options to keep at the base's value, comma-separated "
            "(e.g. ppo.train_batch_size,ppo.num_epochs)."
        ),
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
    grace_period: Annotated[
        int,
        typer.Option(
            help="ASHA: iterations every trial runs before it can be stopped (the first one "
            "mostly fills the replay buffer)."
        ),
    ] = 2,
    max_failures: Annotated[int, typer.Option(help="Retries of a failing trial.")] = 1,
    max_concurrent: MaxConcurrentOpt = None,
    storage: StorageOpt = "results/tune",
    name: NameOpt = None,
    resume: ResumeOpt = False,
    address: AddressOpt = None,
) -> None:
    """Search the hyper-parameters of DQN, PPO, APPO or IMPALA (--algo), scored by the greedy
    policy's evaluation return."""
    from sepsis_rl.common.config_files import replace_fields
    from tuning.rl_search import RLSearch, run_rl_search
    from tuning.runner import experiment_path, is_uri

    _check_storage(storage)
    overrides = parse_sets(set_)
    given = {
        "algo": algo,
        "env": env,
        "num_env_runners": env_runners,
        "num_cpus_per_env_runner": cpus_per_env_runner,
    }
    overrides.update({k: v for k, v in given.items() if v is not None})
    try:
        base = search_base_options(config, overrides)
        # The builder evaluates on this split (RLOptions.evaluation_split); "none": the training
        # one. Set apart: None among the overrides would mean "not given".
        base = replace_fields(
            base, {"evaluation_split": None if eval_split.lower() == "none" else eval_split}
        )
        search = RLSearch(
            base=base,
            hold=tuple(h.strip() for h in (hold or "").split(",") if h.strip()),
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
            max_concurrent=max_concurrent,
            grace_period=min(grace_period, iterations_per_trial),
        )
    except (ValueError, FileNotFoundError) as err:  # ConfigFileError, OptionsError included
        raise fail(str(err)) from None
    command = f"sepsis-rl tune rl --storage {storage} --name {search.name}"
    outcome = _run(lambda: run_rl_search(search, resume=resume), address)
    _report(outcome, not is_uri(storage), command)
    location = experiment_path(storage, search.name)
    with _local_copy(location) as folder:
        _analyse(folder)
        if is_uri(storage):
            _copy(str(folder / "analysis"), location + "/analysis")
            console.print(f"analysis copied to {location}/analysis")


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
        raise fail(str(err)) from None
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
