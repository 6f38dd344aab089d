"""`sepsis-rl run`: the whole study, from raw data (or the synthetic default) to a report.

Stages, each writing its own folder under `--out` and skipped on a rerun when its inputs have not
changed (`training.study.stages`):

    raw/         synthetic cohort (.psv), only when no --data is given
    prepared/    data prepare: canonical table, split, cleaning, features, environment cohort
    classify/    classifiers with and without oversampling, on real held-out patients
    hourly/      hourly early warning: an alarm every hour, scored by the PhysioNet/CinC 2019
                 normalised utility beside qSOFA and SIRS, with a timeline of test patients
                 (`training.study.hourly`; reads `prepared/` only; `hourly: {enabled: false}`
                 leaves it out)
    rl/          the RL agent (default: Dueling Double DQN) on SepsisEnv (training patients of the
                 environment cohort)
    evaluation/  greedy policy against the clinical baselines on test patients
    offline/     a policy learned offline from the clinicians' logs, its off-policy estimates
                 beside its simulated truth (`training.study.offline`; `offline: {enabled:
                 false}` leaves it out)
    report.html, report.md

A crashed or interrupted run continues where it stopped when rerun: finished stages are reused,
an interrupted DQN run resumes from its last checkpoint with its replay buffer.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_prep.prepare import ENV_COHORT_FILE
from training.study import layout
from training.study.layout import (
    CLASSIFY,
    EVALUATION,
    HOURLY,
    OFFLINE,
    PREPARED,
    RAW,
    RAW_PSV,
    RL,
    RL_STARTED,
)
from training.study.options import (
    StudyOptions,
    classify_config_of,
    hourly_config_of,
    hourly_options_of,
    offline_options_of,
    prepare_options_of,
    rl_options_of,
)
from training.study.stages import Stage, files_fingerprint, fingerprint

STUDY_VERSION = 1  # bump when a stage's meaning changes, so old outputs are not reused


INTERRUPTED = threading.Event()
"""Set by the command line's SIGINT handler. Ctrl-C also reaches Ray's worker processes, and
RLlib's fault tolerance can absorb the resulting KeyboardInterrupt inside `algo.train()`; the
training loop checks this flag after every iteration so that Ctrl-C always stops the run."""


Notify = Callable[[str], None]
Progress = Callable[[str, int, int | None], None]
"""progress(description, done, total) of a long step."""


@dataclass
class StudyResult:
    """Where everything went, and which stages ran or were reused."""

    out: Path
    ran: list[str]
    reused: list[str]
    report_html: Path
    report_md: Path


def run_study(
    out: Path,
    options: StudyOptions,
    data: Path | None = None,
    notify: Notify | None = None,
    progress: Progress | None = None,
    stage_done: Callable[[Path], None] | None = None,
) -> StudyResult:
    """Run (or continue) the study in `out`. Returns what ran and where the report is.

    `stage_done(folder)` is called after each stage that ran (e.g. to copy it to shared storage
    at once, so that a job stopped later keeps what it finished)."""
    notify = notify or (lambda _text: None)
    run = StudyRun(Path(out), options, data, notify, progress, stage_done)
    run.out.mkdir(parents=True, exist_ok=True)
    # The report describes the stages as they were; it is rebuilt at the end, and until then an
    # old one must not sit beside stages that are being redone.
    for name in layout.REPORT_FILES:
        (run.out / name).unlink(missing_ok=True)
    for spec in STAGES:
        if spec.needed(run):
            run_or_reuse(spec, run)

    # The report (cheap: always rebuilt from the stage outputs).
    from training.study.report import write_report

    notify("[report] writing report.html and report.md")
    html_path, md_path = write_report(run.out, options, data)
    return StudyResult(run.out, run.ran, run.reused, html_path, md_path)


@dataclass
class StudyRun:
    """One run of the study: its inputs, and what the stages have done so far."""

    out: Path
    options: StudyOptions
    data: Path | None
    notify: Notify
    progress: Progress | None
    stage_done: Callable[[Path], None] | None
    keys: dict[str, str] = field(default_factory=dict)
    """The key of every stage met so far (a later stage's key includes its inputs' keys)."""
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def folder(self, name: str) -> Path:
        return self.out / name

    @property
    def input_path(self) -> Path:
        """The raw data the study prepares: the user's files, or the synthetic cohort."""
        return Path(self.data) if self.data is not None else self.folder(RAW) / RAW_PSV

    @property
    def input_key(self) -> str:
        return files_fingerprint(Path(self.data)) if self.data is not None else self.keys[RAW]

    @property
    def cohort(self) -> Path:
        """The environment cohort the RL stages train and evaluate on."""
        return (self.folder(PREPARED) / ENV_COHORT_FILE).resolve()


@dataclass(frozen=True)
class StageSpec:
    """A stage of the study: what its outputs depend on, what it says, and how it runs."""

    name: str
    key: Callable[[StudyRun], dict[str, Any]]
    """Everything the stage's outputs depend on (settings, and the keys of its inputs)."""
    message: Callable[[StudyRun], str]
    run: Callable[[Stage, StudyRun], None]
    """Writes the stage's outputs and marks the stage done."""
    needed: Callable[[StudyRun], bool] = lambda run: True
    clear_first: bool = True
    """Empty the stage's folder before it reruns (the RL stage decides itself: it may resume)."""


def run_or_reuse(spec: StageSpec, run: StudyRun) -> None:
    """Reuse the stage if it finished before with the same key, else run it from scratch."""
    stage = Stage(
        spec.name, run.folder(spec.name), fingerprint({"v": STUDY_VERSION, **spec.key(run)})
    )
    run.keys[spec.name] = stage.key
    if stage.is_done():
        run.reused.append(spec.name)
        return
    run.notify(spec.message(run))
    stage.invalidate()  # starts the stage's clock
    if spec.clear_first and stage.directory.exists():
        # Old outputs were made from other inputs, and none of them may survive next to the
        # new ones (e.g. a GAN report of an earlier run with CTGAN).
        shutil.rmtree(stage.directory)
    spec.run(stage, run)
    run.ran.append(spec.name)
    if run.stage_done:
        run.stage_done(stage.directory)


def _rl_key(run: StudyRun) -> dict[str, Any]:
    # Keyed on the options with the cohort path relative to the study folder, so that a study
    # moved or copied (e.g. back from shared storage) still reuses its trained policy.
    rl_key = _rl_options(run).to_dict()
    rl_key["env_kwargs"] = _portable(rl_key["env_kwargs"])
    return {"prepared": run.keys[PREPARED], "rl": rl_key}


def _portable(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`env_kwargs` with the cohort path relative to the study folder."""
    return {**env_kwargs, "cohort": f"{PREPARED}/{ENV_COHORT_FILE}"}


def _hourly_key(run: StudyRun) -> dict[str, Any]:
    # The hourly section reads the prepared folder only: a change of the per-patient classifiers
    # or of RL leaves it as it is. Keyed on the effective HourlyConfig (its defaults included)
    # and the timeline; `enabled` is left out, so that turning the section off and on again
    # reuses it.
    from dataclasses import asdict

    return {
        "prepared": run.keys[PREPARED],
        "hourly": asdict(hourly_config_of(run.options)),
        "timeline_patients": hourly_options_of(run.options).timeline_patients,
        "seed": run.options.seed,
    }


def _offline_key(run: StudyRun) -> dict[str, Any]:
    # The offline section reads the environment cohort only (not the rl stage's policy): a
    # change of the RL options leaves it as it is. `enabled` is left out, so that turning the
    # section off and on again reuses it.
    from dataclasses import asdict

    offline = asdict(offline_options_of(run.options))
    del offline["enabled"]
    return {
        "prepared": run.keys[PREPARED],
        "offline": offline,
        "env_kwargs": _portable(_offline_env_kwargs(run, "train")),
        "seed": run.options.seed,
    }


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        RAW,
        key=lambda run: {"patients": run.options.patients, "seed": run.options.seed},
        message=lambda run: f"[raw] generating {run.options.patients:,} synthetic stays",
        run=lambda stage, run: _synthesise(stage, run.options),
        needed=lambda run: run.data is None,
    ),
    StageSpec(
        PREPARED,
        key=lambda run: {
            "input": run.input_key,
            "prepare": run.options.prepare,
            "seed": run.options.seed,
        },
        message=lambda run: f"[prepared] reading and preparing {run.input_path}",
        run=lambda stage, run: _prepare(stage, run.input_path, run.options, run.progress),
    ),
    StageSpec(
        CLASSIFY,
        key=lambda run: {
            "prepared": run.keys[PREPARED],
            "classify": run.options.classify,
            "settings": run.options.classifier_settings,
            "seed": run.options.seed,
        },
        message=lambda run: "[classify] training classifiers with and without oversampling",
        run=lambda stage, run: _classify(stage, run.folder(PREPARED), run.options, run.progress),
    ),
    StageSpec(
        HOURLY,
        key=_hourly_key,
        message=lambda run: _hourly_message(hourly_config_of(run.options)),
        run=lambda stage, run: _hourly(stage, run),
        needed=lambda run: hourly_options_of(run.options).enabled,
    ),
    StageSpec(
        RL,
        key=_rl_key,
        message=lambda run: f"[rl] training {_algorithm_name(run)} on Ray RLlib",
        run=lambda stage, run: _train(stage, _rl_options(run), run.notify),
        clear_first=False,
    ),
    StageSpec(
        EVALUATION,
        key=lambda run: {
            "rl": run.keys[RL],
            "episodes": run.options.evaluation_episodes,
            "seed": run.options.seed,
        },
        message=lambda run: (
            f"[evaluation] {run.options.evaluation_episodes:,} paired episodes per policy"
        ),
        run=lambda stage, run: _evaluate(stage, run.folder(RL), run.cohort, run.options),
    ),
    StageSpec(
        OFFLINE,
        key=_offline_key,
        message=lambda run: (
            f"[offline] {offline_options_of(run.options).stays:,} clinician stays logged, "
            f"{offline_options_of(run.options).algo} trained on them, off-policy evaluation "
            "beside the simulated truth"
        ),
        run=lambda stage, run: _offline(stage, run),
        needed=lambda run: offline_options_of(run.options).enabled,
    ),
)
"""The study's stages, in the order they run; each reads only the folders of stages before it."""


def _synthesise(stage: Stage, options: StudyOptions) -> None:
    from data_prep.synth import generate_cohort, write_psv_files
    from sepsis_rl.common.files import staged_directory

    table = generate_cohort(options.patients, seed=options.seed)
    with staged_directory(stage.directory / RAW_PSV) as folder:
        write_psv_files(table, folder)
    stage.mark_done({"patients": options.patients})


def _prepare(
    stage: Stage, input_path: Path, options: StudyOptions, progress: Progress | None
) -> None:
    from data_prep.prepare import prepare

    report = prepare(
        input_path,
        stage.directory,
        prepare_options_of(options),
        progress=None if progress is None else (lambda d, t: progress("reading", d, t)),
    )
    stage.mark_done({"patients": report["raw"]["patients"]})


def _classify(
    stage: Stage, prepared_dir: Path, options: StudyOptions, progress: Progress | None
) -> None:
    from training.classification.experiment import run_classification

    config = classify_config_of(options)
    run_classification(prepared_dir, stage.directory, config, progress=progress)
    stage.mark_done()


def _hourly_message(config) -> str:
    pairs = len(config.models) * len(config.oversample)
    return (
        f"[hourly] hourly early warning: {pairs} models ({', '.join(config.models)} x "
        f"{', '.join(config.oversample)}) on at most {config.max_train_hours:,} training hours, "
        "scored by the PhysioNet/CinC 2019 utility beside qSOFA and SIRS"
    )


def _hourly(stage: Stage, run: StudyRun) -> None:
    from training.study.hourly import run_hourly_section

    config = hourly_config_of(run.options)
    section = run_hourly_section(
        run.folder(PREPARED),
        stage.directory,
        hourly_options_of(run.options),
        config,
        seed=run.options.seed,
        progress=run.progress,
    )
    stage.mark_done({"timeline_patients": len(section["timeline"]["patients"])})


def _algorithm_name(run: StudyRun) -> str:
    from training.rl.options import ALGORITHM_NAMES

    algo = run.options.rl.get("algo", "dqn")
    return ("the " if algo == "dqn" else "") + ALGORITHM_NAMES.get(algo, algo)


def _rl_options(run: StudyRun):
    return rl_options_of(run.options, env_kwargs={"cohort": str(run.cohort), "split": "train"})


def _train(stage: Stage, rl_options, notify: Notify) -> None:
    from training.rl.run_dir import RunDir, is_checkpoint
    from training.rl.train import train

    started = stage.directory / RL_STARTED
    resumable = (
        started.is_file()
        and yaml.safe_load(started.read_text()).get("key") == stage.key
        and is_checkpoint(RunDir(stage.directory).last)
    )
    if not resumable and stage.directory.exists():
        shutil.rmtree(stage.directory)
    stage.directory.mkdir(parents=True, exist_ok=True)
    started.write_text(yaml.safe_dump({"key": stage.key}))
    if resumable:
        notify("[rl] resuming the interrupted run from its last checkpoint and replay buffer")
    try:
        train(
            rl_options,
            stage.directory,
            resume=resumable,
            on_iteration=_iteration_reporter(rl_options, notify),
        )
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    stage.mark_done()


def _iteration_reporter(rl_options, notify: Notify) -> Callable[[Any], None]:
    """A line per training iteration, with the budget that will stop the run; stops the run on
    Ctrl-C (see `INTERRUPTED`)."""
    limits = [
        f"{rl_options.episodes:,} episodes" if rl_options.episodes else "",
        f"{rl_options.env_steps:,} env steps" if rl_options.env_steps else "",
        f"{rl_options.time_budget_s:g} s" if rl_options.time_budget_s else "",
    ]
    until = " or ".join(x for x in limits if x)

    def on_iteration(m) -> None:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        notify(
            f"[rl] iteration {m.iteration}: {m.env_steps:,} env steps, {m.episodes:,} episodes, "
            f"{m.time_s:.0f} s (stops at {until}); training return {m.episode_return_mean:.2f}"
        )

    return on_iteration


def _evaluate(stage: Stage, rl_dir: Path, cohort: Path, options: StudyOptions) -> None:
    from sepsis_rl.common.files import staged_directory
    from training.rl.evaluate import TEST_SEED, evaluate_checkpoint, write_evaluation
    from training.rl.run_dir import RunDir, is_checkpoint

    run = RunDir(rl_dir)
    checkpoint = run.best if is_checkpoint(run.best) else run.last
    result = evaluate_checkpoint(
        checkpoint,
        episodes=options.evaluation_episodes,
        seed=TEST_SEED + options.seed,
        cohort=cohort,
    )
    with staged_directory(stage.directory) as folder:
        write_evaluation(result, folder)
    stage.mark_done({"checkpoint": str(checkpoint)})


def _offline_env_kwargs(run: StudyRun, split: str) -> dict[str, Any]:
    """SepsisEnv's arguments as the rl stage trains (`train`) and the evaluation stage tests
    (`test`): the study's environment cohort, one patient split."""
    from training.rl.envs import evaluation_env_kwargs

    return evaluation_env_kwargs(_rl_options(run), split)


def _offline(stage: Stage, run: StudyRun) -> None:
    from training.rl.evaluate import TEST_SEED
    from training.study.offline import run_offline

    stage.directory.mkdir(parents=True, exist_ok=True)
    results = run_offline(
        stage.directory,
        offline_options_of(run.options),
        logs_kwargs=_offline_env_kwargs(run, "train"),
        test_kwargs=_offline_env_kwargs(run, "test"),
        test_seed=TEST_SEED + run.options.seed,  # the evaluation stage's test episodes
        seed=run.options.seed,
    )
    stage.mark_done({"stays": results["logs"]["stays"], "algo": results["policy"]["algo"]})
