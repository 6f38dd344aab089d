"""`sepsis-rl run`: the whole study, from raw data (or the synthetic default) to a report.

Stages, each writing its own folder under `--out` and skipped on a rerun when its inputs have not
changed (`training.stages`):

    raw/         synthetic cohort (.psv), only when no --data is given
    prepared/    data prepare: canonical table, split, cleaning, features, environment cohort
    classify/    classifiers with and without oversampling, on real held-out patients
    rl/          Dueling Double DQN on SepsisEnv (training patients of the environment cohort)
    evaluation/  greedy policy against the clinical baselines on test patients
    report.html, report.md

A crashed or interrupted run continues where it stopped when rerun: finished stages are reused,
an interrupted DQN run resumes from its last checkpoint with its replay buffer.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from data_prep.prepare import ENV_COHORT_FILE
from training.stages import Stage, files_fingerprint, fingerprint

STUDY_VERSION = 1  # bump when a stage's meaning changes, so old outputs are not reused
INTERRUPTED = threading.Event()
"""Set by the command line's SIGINT handler. Ctrl-C also reaches Ray's worker processes, and
RLlib's fault tolerance can absorb the resulting KeyboardInterrupt inside `algo.train()`; the
training loop checks this flag after every iteration so that Ctrl-C always stops the run."""


@dataclass
class StudyOptions:
    """Every option of `sepsis-rl run`; a config file (YAML/JSON) sets any of them."""

    patients: int = 10_000
    """Synthetic stays to generate when no --data is given."""
    seed: int = 0
    """The run's one seed, passed to every stage."""
    prepare: dict[str, Any] = field(default_factory=dict)
    """Overrides of `data_prep.prepare.PrepareOptions` (missing_threshold, outliers, ...)."""
    classify: dict[str, Any] = field(
        default_factory=lambda: {"oversample": ["none", "smote", "ctgan"], "n_boot": 1000}
    )
    """Overrides of `training.classify.ClassifyConfig`; `settings` holds model options."""
    classifier_settings: dict[str, Any] = field(default_factory=lambda: {"ctgan_epochs": 100})
    """Overrides of `training.classifiers.ClassifierSettings` (ctgan_epochs, xgb_rounds, ...)."""
    rl: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.rl_config.RLOptions` (episodes, lr, num_env_runners, ...)."""
    evaluation_episodes: int = 2000
    """Paired evaluation episodes per policy on test patients."""
    quick: bool = False
    """Set by `--quick`: the report then says it is a short demonstration run."""


QUICK = {
    "quick": True,
    "patients": 2500,
    "classifier_settings": {
        "ctgan_epochs": 20,
        "rf_trees": 100,
        "xgb_rounds": 150,
        "svm_components": 150,
    },
    "classify": {"oversample": ["none", "smote", "ctgan"], "n_boot": 300},
    "rl": {"episodes": None, "time_budget_s": 50, "evaluation_interval": 0},
    "evaluation_episodes": 2000,
}
"""`--quick`: a small cohort and short budgets; the whole study in about 3 minutes."""


def load_study_options(path: Path | None, quick: bool, seed: int | None) -> StudyOptions:
    """Defaults, then `--quick`, then the config file, then `--seed`."""
    values: dict[str, Any] = {}
    if quick:
        values = _merge(values, QUICK)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the study config ({exc})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the study config must be a mapping of option: value")
        unknown = set(loaded) - {f.name for f in fields(StudyOptions)}
        if unknown:
            raise ValueError(
                f"{path}: unknown options {sorted(unknown)}; "
                f"known: {[f.name for f in fields(StudyOptions)]}"
            )
        values = _merge(values, loaded)
    options = StudyOptions()
    for key, value in values.items():
        base = getattr(options, key)
        setattr(options, key, _merge(base, value) if isinstance(base, dict) else value)
    if seed is not None:
        options.seed = seed
    return options


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


Notify = Callable[[str], None]


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
    notify: Notify = print,
    progress: Callable[[str, int, int | None], None] | None = None,
    stage_done: Callable[[Path], None] | None = None,
) -> StudyResult:
    """Run (or continue) the study in `out`. Returns what ran and where the report is.

    `stage_done(folder)` is called after each stage that ran (e.g. to copy it to shared storage
    at once, so that a job stopped later keeps what it finished)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    reused: list[str] = []
    # The report describes the stages as they were; it is rebuilt at the end, and until then an
    # old one must not sit beside stages that are being redone.
    for name in ("report.html", "report.md"):
        (out / name).unlink(missing_ok=True)

    def stage(name: str, key_parts: dict) -> Stage:
        return Stage(name, out / name, fingerprint({"v": STUDY_VERSION, **key_parts}))

    def ran_stage(stage: Stage) -> None:
        ran.append(stage.name)
        if stage_done:
            stage_done(stage.directory)

    def fresh(stage: Stage) -> None:
        """Empty a stage's folder before it reruns: its old outputs were made from other
        inputs, and none of them may survive next to the new ones (e.g. a GAN report of an
        earlier run with CTGAN)."""
        stage.invalidate()
        if stage.directory.exists():
            shutil.rmtree(stage.directory)

    # 1. Raw data: the synthetic default, or the user's files.
    if data is None:
        raw = stage("raw", {"patients": options.patients, "seed": options.seed})
        if raw.is_done():
            reused.append("raw")
        else:
            notify(f"[raw] generating {options.patients:,} synthetic stays")
            fresh(raw)
            _synthesise(raw, options)
            ran_stage(raw)
        input_path, input_key = raw.directory / "psv", raw.key
    else:
        input_path, input_key = Path(data), files_fingerprint(Path(data))

    # 2. Data preparation.
    prepared = stage(
        "prepared", {"input": input_key, "prepare": options.prepare, "seed": options.seed}
    )
    if prepared.is_done():
        reused.append("prepared")
    else:
        notify(f"[prepared] reading and preparing {input_path}")
        fresh(prepared)
        _prepare(prepared, input_path, options, progress)
        ran_stage(prepared)

    # 3. Classifiers.
    classify = stage(
        "classify",
        {
            "prepared": prepared.key,
            "classify": options.classify,
            "settings": options.classifier_settings,
            "seed": options.seed,
        },
    )
    if classify.is_done():
        reused.append("classify")
    else:
        notify("[classify] training classifiers with and without oversampling")
        fresh(classify)
        _classify(classify, prepared.directory, options, progress)
        ran_stage(classify)

    # 4. Reinforcement learning.
    rl_options = _rl_options(options, prepared.directory)
    # Keyed on the options with the cohort path relative to the study folder, so that a study
    # moved or copied (e.g. back from shared storage) still reuses its trained policy.
    rl_key = rl_options.to_dict()
    rl_key["env_kwargs"] = {**rl_key["env_kwargs"], "cohort": f"prepared/{ENV_COHORT_FILE}"}
    rl = stage("rl", {"prepared": prepared.key, "rl": rl_key})
    if rl.is_done():
        reused.append("rl")
    else:
        notify("[rl] training the Dueling Double DQN on Ray RLlib")
        rl.invalidate()  # starts the stage's clock; _train decides whether to resume
        _train(rl, rl_options, notify)
        ran_stage(rl)

    # 5. Evaluation on test patients.
    evaluation = stage(
        "evaluation", {"rl": rl.key, "episodes": options.evaluation_episodes, "seed": options.seed}
    )
    if evaluation.is_done():
        reused.append("evaluation")
    else:
        notify(f"[evaluation] {options.evaluation_episodes:,} paired episodes per policy")
        fresh(evaluation)
        _evaluate(evaluation, rl.directory, prepared.directory, options)
        ran_stage(evaluation)

    # 6. The report (cheap: always rebuilt from the stage outputs).
    from training.report import write_report

    notify("[report] writing report.html and report.md")
    html_path, md_path = write_report(out, options, data)
    return StudyResult(out, ran, reused, html_path, md_path)


def _synthesise(stage: Stage, options: StudyOptions) -> None:
    from data_prep.outputs import staged_directory
    from data_prep.synth import generate_cohort, write_psv_files

    stage.invalidate()
    table = generate_cohort(options.patients, seed=options.seed)
    with staged_directory(stage.directory / "psv") as folder:
        write_psv_files(table, folder)
    stage.mark_done({"patients": options.patients})


def _prepare(stage: Stage, input_path: Path, options: StudyOptions, progress) -> None:
    from data_prep.prepare import PrepareOptions, prepare

    stage.invalidate()
    prepare_options = PrepareOptions(**{"seed": options.seed, **options.prepare})
    report = prepare(
        input_path,
        stage.directory,
        prepare_options,
        progress=None if progress is None else (lambda d, t: progress("reading", d, t)),
    )
    stage.mark_done({"patients": report["raw"]["patients"]})


def _classify(stage: Stage, prepared_dir: Path, options: StudyOptions, progress) -> None:
    from training.classifiers import ClassifierSettings
    from training.classify import ClassifyConfig, run_classification

    stage.invalidate()
    settings = ClassifierSettings(**{"seed": options.seed, **options.classifier_settings})
    values = dict(options.classify)
    for key in ("oversample", "models"):
        if key in values:
            values[key] = tuple(values[key])
    config = ClassifyConfig(**values, settings=settings)
    run_classification(
        prepared_dir,
        stage.directory,
        config,
        progress=None if progress is None else (lambda text, d, t: progress(text, d, t)),
    )
    stage.mark_done()


def _rl_options(options: StudyOptions, prepared_dir: Path):
    from training.rl_config import RLOptions, options_from_dict

    base = RLOptions(seed=options.seed)
    kwargs = {"cohort": str((prepared_dir / ENV_COHORT_FILE).resolve()), "split": "train"}
    return options_from_dict({**options.rl, "env_kwargs": kwargs}, base=base)


def _train(stage: Stage, rl_options, notify: Notify) -> None:
    from training.rl_train import RunDir, train

    run = RunDir(stage.directory)
    started = stage.directory / "started.yaml"
    resumable = (
        started.is_file()
        and yaml.safe_load(started.read_text()).get("key") == stage.key
        and (run.last / "rllib_checkpoint.json").exists()
    )
    if not resumable and stage.directory.exists():
        shutil.rmtree(stage.directory)
    stage.directory.mkdir(parents=True, exist_ok=True)
    started.write_text(yaml.safe_dump({"key": stage.key}))
    if resumable:
        notify("[rl] resuming the interrupted run from its last checkpoint and replay buffer")

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

    try:
        train(rl_options, stage.directory, resume=resumable, on_iteration=on_iteration)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    stage.mark_done()


def _evaluate(stage: Stage, rl_dir: Path, prepared_dir: Path, options: StudyOptions) -> None:
    from data_prep.outputs import staged_directory
    from training.rl_eval import evaluate_checkpoint, write_evaluation
    from training.rl_train import RunDir

    run = RunDir(rl_dir)
    checkpoint = run.best if (run.best / "rllib_checkpoint.json").exists() else run.last
    stage.invalidate()
    result = evaluate_checkpoint(
        checkpoint,
        episodes=options.evaluation_episodes,
        seed=10_000 + options.seed,
        cohort=(prepared_dir / ENV_COHORT_FILE).resolve(),
    )
    with staged_directory(stage.directory) as folder:
        write_evaluation(result, folder)
    stage.mark_done({"checkpoint": str(checkpoint)})


def options_document(options: StudyOptions) -> dict[str, Any]:
    """The options as written into the report and `study.yaml`."""
    return asdict(replace(options))
