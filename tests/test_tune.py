"""Tuning without Ray running: search spaces, folds, config files, resources, the analysis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from training.classification.models import ClassifierSettings
from training.classification.options import (
    ClassifyConfig,
    classify_config_dict,
    classify_config_from_file,
)
from training.rl.dqn import build_dqn_config
from training.rl.options import RLOptions
from tuning.analysis import (
    COMPLETED,
    ERROR,
    STOPPED,
    export_best_config,
    gain_over_default,
    load_analysis,
    write_analysis,
)
from tuning.classifier_search import (
    ClassifierSearch,
    patient_folds,
    settings_of,
    trial_classify_config,
)
from tuning.rl_search import RLSearch, best_options, decode, encode, trial_resources
from tuning.spaces import CLASSIFIER_SPACE, RL_SPACE, Branch, clip_to_space, restrict, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _draw(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(n):
        trial = study.ask()
        suggest(space, trial)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


def test_a_model_s_hyperparameters_are_drawn_only_when_that_model_is() -> None:
    branch = CLASSIFIER_SPACE["model"]
    assert isinstance(branch, Branch)
    own = {m: set(branch.then[m]) for m in branch.values}
    others = set().union(*own.values())
    seen = set()
    for params in _draw(CLASSIFIER_SPACE, 60):
        model = params["model"]
        seen.add(model)
        assert own[model] <= set(params)
        assert not (others - own[model]) & set(params), params
        if params["oversample"] == "none":
            assert "sampling_strategy" not in params and "ctgan_epochs" not in params
        if params["oversample"] == "ctgan":
            assert 10 <= params["ctgan_epochs"] <= 150
    assert seen == set(branch.values)


def test_restricting_a_space_keeps_only_the_chosen_families() -> None:
    space = restrict(CLASSIFIER_SPACE, model=["xgboost"], oversample=["none", "smote"])
    draws = _draw(space, 20)
    assert {d["model"] for d in draws} == {"xgboost"}
    assert {d["oversample"] for d in draws} <= {"none", "smote"}
    with pytest.raises(ValueError, match="unknown model"):
        restrict(CLASSIFIER_SPACE, model=["knn"])


def test_rl_draws_stay_in_their_ranges_and_build_a_dqn_config() -> None:
    for params in _draw(RL_SPACE, 15):
        config = {"base": RLOptions(env="CartPole-v1").to_dict(), **params}
        options = best_options(config)
        assert 1e-5 <= options.lr <= 3e-3 and 1 <= options.n_step <= 5
        dqn = build_dqn_config(options)  # the builder `train` uses
        assert dqn.lr == options.lr
        assert dqn.model_config["fcnet_hiddens"] == decode(params)["fcnet_hiddens"]
        assert dqn.replay_buffer_config["alpha"] == params["replay_alpha"]


def test_pbt_perturbations_are_clipped_into_the_searched_ranges() -> None:
    # PBT multiplies by 1.2: gamma 0.99 would become 1.188, a discount above one.
    perturbed = {
        "gamma": 0.99 * 1.2,
        "replay_beta": 0.9 * 1.2,
        "lr": 1e-6,
        "n_step": 6.0,
        "fcnet_hiddens": "64x64",
    }
    clipped = clip_to_space(perturbed)
    assert clipped["gamma"] == 0.999 and clipped["replay_beta"] == 1.0
    assert clipped["lr"] == 1e-5 and clipped["n_step"] == 5 and isinstance(clipped["n_step"], int)
    assert clipped["fcnet_hiddens"] == "64x64"


def test_the_default_rl_point_is_the_base_options() -> None:
    base = RLOptions(lr=1e-3, fcnet_hiddens=[64, 64])
    point = encode(base)
    assert point["lr"] == 1e-3 and point["fcnet_hiddens"] == "64x64"
    assert decode(point)["fcnet_hiddens"] == [64, 64]
    assert encode(RLOptions(fcnet_hiddens=[7, 7])) is None  # not a searchable choice


def test_repeat_seeds_offset_the_trial_seed() -> None:
    base = RLOptions().to_dict() | {"seed": 5}
    assert best_options({"base": base, "__trial_index__": 2}).seed == 7
    assert settings_of({"seed": 3, "__trial_index__": 1, "model": "logreg"}).seed == 4


def test_folds_keep_every_patient_on_one_side_and_both_classes_in_each() -> None:
    ids = [f"p{i:04d}" for i in range(300)]
    labels = np.array([1 if i % 10 == 0 else 0 for i in range(300)])
    folds = patient_folds(ids, labels, 3, seed=0)
    held_all = np.concatenate([held for _, held in folds])
    assert sorted(held_all.tolist()) == list(range(300))
    for fit, held in folds:
        assert not set(fit) & set(held)
        assert labels[held].sum() >= 9 and labels[fit].sum() >= 19
    assert [h.tolist() for _, h in folds] == [
        h.tolist() for _, h in patient_folds(ids, labels, 3, 0)
    ]


def test_a_best_config_file_round_trips_into_classify_config(tmp_path: Path) -> None:
    config = {
        "model": "xgboost",
        "oversample": "smote",
        "xgb_depth": 6,
        "seed": 2,
        "sampling_strategy": 0.5,
    }
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(classify_config_dict(trial_classify_config(config, "roc_auc"))))
    loaded = classify_config_from_file(path, base=ClassifyConfig(n_boot=200))
    assert loaded.models == ("xgboost",) and loaded.oversample == ("smote",)
    assert loaded.select_metric == "roc_auc" and loaded.n_boot == 200
    assert loaded.settings.xgb_depth == 6 and loaded.settings.sampling_strategy == 0.5
    assert loaded.settings.seed == 2
    assert loaded.settings.xgb_rounds == ClassifierSettings().xgb_rounds
    loaded.validate()


def test_a_config_file_with_an_unknown_field_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: [logreg]\nsettings: {xgb_dpeth: 3}\n")
    with pytest.raises(ValueError, match="xgb_dpeth"):
        classify_config_from_file(path)


def test_search_options_are_checked() -> None:
    with pytest.raises(ValueError, match="fifo"):
        ClassifierSearch(data=Path("x"), repeats=2).validate()
    with pytest.raises(ValueError, match="metric = 'f1'"):
        ClassifierSearch(data=Path("x"), metric="f1").validate()
    with pytest.raises(ValueError, match="fifo"):
        RLSearch(repeats=3, scheduler="pbt").validate()
    with pytest.raises(ValueError, match="scheduler = 'hyperband'"):
        RLSearch(scheduler="hyperband").validate()


def test_sepsis_trials_are_compared_on_validation_patients() -> None:
    from tuning.rl_search import trial_options

    base = RLOptions(env="SepsisEnv-v0").to_dict()
    options = trial_options({"base": base, "trial": {"eval_episodes": 7}, "lr": 1e-3})
    config = build_dqn_config(options)
    assert config.env_config["env_kwargs"]["split"] == "train"  # trains on training patients
    evaluation = config.get_evaluation_config_object()
    assert evaluation.env_config["env_kwargs"]["split"] == "val"
    assert evaluation.explore is False
    assert config.evaluation_interval == 1 and config.evaluation_duration == 7


def test_a_sepsis_trial_is_scored_on_the_batched_validation_episodes() -> None:
    """A real one-iteration trial: its score is the greedy mean return on 300 validation
    episodes, with an interval over those episodes."""
    import ray

    from tuning.rl_search import METRIC, run_trial

    base = RLOptions(
        env="SepsisEnv-v0",
        num_env_runners=0,
        min_sample_timesteps_per_iteration=300,
        num_steps_sampled_before_learning_starts=200,
        training_intensity=2,
    ).to_dict()
    trial = {"iterations": 1, "eval_episodes": 300, "checkpoint_every": 1,
             "cpus_for_main_process": 1}  # fmt: skip
    rows: list[dict] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_trial({"base": base, "trial": trial}, lambda row, _: rows.append(row))
    finally:
        ray.shutdown()
    (row,) = rows
    assert row["eval_episodes"] == 300
    assert row[f"{METRIC}_ci_low"] < row[METRIC] < row[f"{METRIC}_ci_high"]


def test_a_trial_asks_for_fractional_cpus_that_fit_two_cores() -> None:
    base = RLOptions(num_env_runners=1, num_cpus_per_env_runner=0.5)
    bundles = trial_resources(RLSearch(base=base, cpus_for_main_process=0.5)).bundles
    assert bundles == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert sum(b["CPU"] for b in bundles) <= 2 / 2  # two trials at once on 2 CPUs


# -- the analysis, on a hand-made experiment folder ------------------------------------------------


def _trial(folder: Path, trial_id: str, params: dict, folds: list[float], error: str | None = None):
    trial = folder / f"trial_{trial_id}"
    trial.mkdir(parents=True)
    config = {
        "search": {"data": "x", "metric": "pr_auc", "n_folds": 3, "fold_seed": 0},
        "fixed": {},
        "seed": 0,
        **params,
    }
    (trial / "params.json").write_text(json.dumps(config))
    rows = []
    for i, score in enumerate(folds, start=1):
        rows.append(
            {
                "cv_pr_auc": float(np.mean(folds[:i])),
                "fold_pr_auc": score,
                "training_iteration": i,
                "trial_id": trial_id,
                "timestamp": 100 + i,
                "done": False,
            }
        )
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (trial / "error.txt").write_text(f"Traceback ...\n{error}\n")
    return trial


@pytest.fixture
def fake_experiment(tmp_path: Path) -> Path:
    folder = tmp_path / "exp"
    folder.mkdir()
    search = {
        "kind": "classifiers",
        "metric": "cv_pr_auc",
        "mode": "max",
        "per_step_metric": "fold_pr_auc",
        "step_name": "fold",
        "max_steps": 3,
        "params": ["model", "logreg_c", "xgb_depth", "oversample"],
        "space": {},
        "default": {"model": "logreg", "oversample": "none", "logreg_c": 0.1},
        "scheduler": "asha",
        "select_metric": "pr_auc",
    }
    (folder / "search.json").write_text(json.dumps(search))
    _trial(
        folder,
        "aaa",
        {"model": "logreg", "oversample": "none", "logreg_c": 0.1},
        [0.20, 0.22, 0.21],
    )
    _trial(
        folder,
        "bbb",
        {"model": "xgboost", "oversample": "none", "xgb_depth": 4},
        [0.30, 0.32, 0.31],
    )
    _trial(folder, "ccc", {"model": "xgboost", "oversample": "smote", "xgb_depth": 8}, [0.90])
    _trial(
        folder,
        "ddd",
        {"model": "logreg", "oversample": "smote", "logreg_c": 3.0},
        [0.25],
        error="ValueError: sampling_strategy too low",
    )
    trials = [
        {"trial_id": t, "status": s, "error": None}
        for t, s in [
            ("aaa", "TERMINATED"),
            ("bbb", "TERMINATED"),
            ("ccc", "TERMINATED"),
            ("ddd", "ERROR"),
        ]
    ]
    (folder / "trials.json").write_text(json.dumps({"finished": True, "trials": trials}))
    return folder


def test_complete_trials_rank_before_a_lucky_early_stopped_one(fake_experiment: Path) -> None:
    analysis = load_analysis(fake_experiment)
    assert [t.trial_id for t in analysis.trials][:2] == ["bbb", "aaa"]
    assert analysis.best.trial_id == "bbb"  # not ccc, whose one fold scored 0.9
    statuses = {t.trial_id: t.status for t in analysis.trials}
    assert statuses == {"aaa": COMPLETED, "bbb": COMPLETED, "ccc": STOPPED, "ddd": ERROR}
    assert "sampling_strategy too low" in analysis.table.set_index("trial_id").loc["ddd", "error"]


def test_the_gain_over_default_is_paired_over_folds(fake_experiment: Path) -> None:
    gain = gain_over_default(load_analysis(fake_experiment))
    assert gain["default"] == "aaa" and gain["best"] == "bbb"
    assert gain["gain"] == pytest.approx(0.10)
    # Every fold improved by exactly 0.10: a paired interval has no width.
    assert gain["low"] == pytest.approx(0.10) and gain["high"] == pytest.approx(0.10)


def test_analysis_writes_tables_figures_summary_and_a_classify_config(
    fake_experiment: Path, tmp_path: Path
) -> None:
    analysis, out = write_analysis(fake_experiment, tmp_path / "out")
    for name in (
        "trials.csv",
        "trials.md",
        "learning_curves.png",
        "metric_vs_params.png",
        "summary.md",
        "best_config.yaml",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "seed_spread.png").exists()  # no configuration was repeated
    table = pd.read_csv(out / "trials.csv")
    assert table["trial_id"].tolist()[:2] == ["bbb", "aaa"]
    summary = (out / "summary.md").read_text()
    assert "2 completed, 1 stopped early (by the scheduler" in summary and ", 1 failed" in summary
    assert "**0.1**" in summary  # the gain
    config = classify_config_from_file(out / "best_config.yaml")
    assert config.models == ("xgboost",) and config.settings.xgb_depth == 4
    export_best_config(analysis, tmp_path / "again.yaml")


def test_analysis_needs_no_ray(fake_experiment: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from tuning.analysis import write_analysis; "
        f"write_analysis({str(fake_experiment)!r}, {str(tmp_path / 'o')!r}); "
        "assert 'ray' not in sys.modules, 'analysis imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_analysis_of_a_folder_without_a_search_says_what_to_pass(tmp_path: Path) -> None:
    from tuning.analysis import AnalysisError

    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "search.json").write_text("{}")
    with pytest.raises(AnalysisError, match="did you mean one of: rl"):
        load_analysis(tmp_path)


def test_a_default_rl_trial_asks_for_one_cpu_so_two_run_on_a_laptop(tmp_path) -> None:
    from sepsis_rl.cli.tune import search_base_options

    base = search_base_options(None, {})
    assert base.num_cpus_per_env_runner == 0.5
    search = RLSearch(base=base)
    cpus = sum(b.get("CPU", 0.0) for b in trial_resources(search).bundles)
    assert cpus == 1.0
    # The user's choice wins, from the command line or from the options file.
    assert search_base_options(None, {"num_cpus_per_env_runner": 1.0}).num_cpus_per_env_runner == 1
    config = tmp_path / "base.yaml"
    config.write_text("num_cpus_per_env_runner: 2\n")
    assert search_base_options(config, {}).num_cpus_per_env_runner == 2


def test_asha_grace_period_must_fit_the_trial() -> None:
    with pytest.raises(ValueError, match="grace_period"):
        RLSearch(base=RLOptions(), iterations_per_trial=3, grace_period=4).validate()
    RLSearch(base=RLOptions(), iterations_per_trial=3, grace_period=2).validate()
