"""Every options class refuses a bad value when it is built, naming the field's path, what was
given, what is allowed and the field's docstring; good values, the shipped config files and the
presets are still accepted; and every command that takes options exits 2 with that message
before any work (no Ray, no data read, no output folder).
"""

# ruff: noqa: E501  (the tables read one case a line)
from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_prep.cleaning import OUTLIER_MODES
from data_prep.prepare import PrepareOptions
from sepsis_rl.common.config_files import OptionsError, build_options
from training.classification.models import ClassifierSettings
from training.classification.options import ClassifyConfig, classify_config_from_file
from training.rl.options import RLOptions, load_options, options_from_dict
from training.study.options import (
    QUICK,
    StudyOptions,
    classify_config_of,
    load_study_options,
    prepare_options_of,
    rl_options_of,
)
from tuning.classifier_search import ClassifierSearch
from tuning.rl_search import RLSearch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TOY_ENV = "test_rl_toyenv:SignGame-v0"
BEFORE_RAY_S = 15.0
"""A refused command must end well before `train` would have started Ray (about 20 s)."""


def help_of(cls: type, name: str) -> str:
    """The first words of a field's docstring, as an error quotes them."""
    return " ".join(cls.__pydantic_fields__[name].description.split())[:30]


def refusal(build) -> str:
    with pytest.raises(OptionsError) as caught:
        build()
    return str(caught.value)


# -- RLOptions -------------------------------------------------------------------------------------

RL_BAD = [
    ({"episodes": "ten"}, "episodes = 'ten'", "an integer > 0, or null"),
    ({"time_budget_s": "20"}, "time_budget_s = '20'", "a number > 0, or null"),
    ({"episodes": -5}, "episodes = -5", "an integer > 0"),
    ({"episodes": True}, "episodes = True", "an integer > 0"),
    ({"gamma": 1.5}, "gamma = 1.5", "a number >= 0 and <= 1"),
    ({"num_env_runners": -1}, "num_env_runners = -1", "an integer >= 0"),
    ({"fcnet_hiddens": 128}, "fcnet_hiddens = 128", "a non-empty list, each an integer > 0"),
    ({"fcnet_hiddens": [64, 0]}, "fcnet_hiddens[1] = 0", "an integer > 0"),
    ({"train_batch_size": 0}, "train_batch_size = 0", "an integer > 0"),
    ({"lr": "fast"}, "lr = 'fast'", "a number > 0, or a list"),
    ({"lr": [[10, 1e-3], [0, 1e-4]]}, "lr = [[10", "starts at env step 0"),
    ({"fcnet_activation": "sigmoid"}, "fcnet_activation = 'sigmoid'", "one of 'relu', 'tanh'"),
    ({"evaluation_split": "test"}, "evaluation_split = 'test'", "one of 'train', 'val', or null"),
    ({"dueling": "yes"}, "dueling = 'yes'", "true or false"),
    ({"custom_resources_per_env_runner": {"gpu_node": -1}}, "custom_resources_per_env_runner.gpu_node = -1", ">= 0"),
    ({"env": "CartPol-v1"}, "env = 'CartPol-v1'", "Did you mean: `CartPole`?"),
    ({"env": "CartPole-v9"}, "env = 'CartPole-v9'", "`v9`"),
    ({"env": "no_such_module:X-v0"}, "env = 'no_such_module:X-v0'", "cannot import 'no_such_module'"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "path", "allowed"), RL_BAD, ids=[c[1] for c in RL_BAD])
def test_rl_options_refuse_a_bad_value_naming_it(values, path, allowed) -> None:
    message = refusal(lambda: options_from_dict(values, where="c.yaml"))
    assert message.startswith("c.yaml: ")
    assert path in message and allowed in message
    assert help_of(RLOptions, next(iter(values))) in message


def test_an_unknown_rl_option_is_named_with_the_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("episods: 3\n")
    message = refusal(lambda: load_options(tmp_path / "c.yaml"))
    assert f"{tmp_path / 'c.yaml'}: unknown option(s) ['episods']" in message
    assert "valid: algo, env, env_kwargs" in message and "episodes" in message


def test_several_bad_options_are_listed_together() -> None:
    message = refusal(lambda: RLOptions(episodes=-5, gamma=1.5, num_env_runners=-1))
    assert message.startswith("3 options are not valid:")
    assert all(f"\n  - {name} = " in message for name in ("episodes", "gamma", "num_env_runners"))


def test_a_bad_assignment_is_refused_and_leaves_the_value() -> None:
    options = RLOptions()
    with pytest.raises(OptionsError, match="episodes = 0"):
        options.episodes = 0
    with pytest.raises(OptionsError, match="starts at env step 0"):
        options.lr = [[5, 1e-3], [10, 1e-4]]
    assert (options.episodes, options.lr) == (RLOptions().episodes, RLOptions().lr)
    options.episodes = None  # an explicit budget clears the others (`train`)
    assert options.episodes is None


RL_GOOD = [
    {"gamma": 1, "tau": 1, "num_cpus_per_env_runner": 0.5},  # ints where numbers are expected
    {"lr": [[0, 1e-3], [1_000_000, 1e-4]], "episodes": None, "time_budget_s": None},
    {"env": "CartPole-v1", "evaluation_split": None},
    {"env": "icu-sepsis", "normalize_obs": False},
    {"env": "sepsis_env:SepsisEnv-v0", "env_kwargs": {"split": "val"}},
    {"env": TOY_ENV},
]


@pytest.mark.parametrize("values", RL_GOOD, ids=[str(v) for v in RL_GOOD])
def test_good_rl_options_are_accepted(values) -> None:
    options = options_from_dict(values)
    assert {k: getattr(options, k) for k in values} == values


def test_rl_options_stay_standard_dataclasses_for_ray_and_tune() -> None:
    from ray import cloudpickle

    options = RLOptions(env=TOY_ENV, lr=[[0, 1e-3], [1000, 1e-4]], episodes=None)
    assert pickle.loads(pickle.dumps(options)) == options
    assert cloudpickle.loads(cloudpickle.dumps(options)) == options
    assert dataclasses.replace(options, seed=4).seed == 4
    assert [f.name for f in dataclasses.fields(RLOptions)][:3] == ["algo", "env", "env_kwargs"]
    # A Tune param space holds the options as plain data; a trial builds them back.
    assert options_from_dict(options.to_dict()) == options
    error = refusal(lambda: RLOptions(episodes=0))
    assert str(pickle.loads(pickle.dumps(OptionsError(*_problems(RLOptions, episodes=0))))) == error


def _problems(cls, **values):
    try:
        cls(**values)
    except OptionsError as err:
        return err.problems, err.where
    raise AssertionError("accepted")


@pytest.mark.parametrize("path", sorted((REPO / "training" / "configs").glob("*.y*ml")))
def test_the_shipped_rl_configs_are_accepted(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    options = load_options(path)

    def as_read(key: str, given):
        value = getattr(options, key)
        if isinstance(given, dict) and dataclasses.is_dataclass(value):  # ppo:, appo:, impala:
            return {k: getattr(value, k) for k in given}
        return value

    assert {k: as_read(k, v) for k, v in values.items() if k != "env"} == {
        k: v for k, v in values.items() if k != "env"
    }


# -- PrepareOptions, ClassifierSettings, ClassifyConfig ------------------------------------------

PREPARE_BAD = [
    ({"outliers": "clip2"}, "outliers = 'clip2'", "one of 'clip', 'drop', 'none'"),
    ({"missing_threshold": 2.0}, "missing_threshold = 2.0", "a number >= 0 and <= 1"),
    ({"iqr_k": "1.5"}, "iqr_k = '1.5'", "a number > 0"),
    ({"max_window_hours": 0}, "max_window_hours = 0", "an integer > 0"),
    ({"seed": -1}, "seed = -1", "an integer >= 0"),
    ({"train_fraction": 0.9, "val_fraction": 0.2}, "val_fraction = 0.2", "must stay below 1"),
]


@pytest.mark.parametrize(
    ("values", "path", "allowed"), PREPARE_BAD, ids=[c[1] for c in PREPARE_BAD]
)
def test_prepare_options_refuse_a_bad_value(values, path, allowed) -> None:
    message = refusal(lambda: PrepareOptions(**values))
    assert path in message and allowed in message
    assert help_of(PrepareOptions, path.split(" ")[0]) in message


def test_prepare_outlier_modes_are_the_cleaning_steps_modes() -> None:
    import typing

    assert typing.get_args(PrepareOptions.__pydantic_fields__["outliers"].annotation) == (
        OUTLIER_MODES
    )
    for mode in OUTLIER_MODES:
        assert PrepareOptions(outliers=mode).outliers == mode


SETTINGS_BAD = [
    ({"ctgan_batch_size": 15}, "ctgan_batch_size = 15", "a multiple of 10"),
    ({"sampling_strategy": 2}, "sampling_strategy = 2", "a number > 0 and <= 1, or one of 'auto'"),
    ({"sampling_strategy": "half"}, "sampling_strategy = 'half'", "one of 'auto', 'minority'"),
    ({"calibration_folds": 1}, "calibration_folds = 1", "an integer >= 2"),
    ({"xgb_depth": "4"}, "xgb_depth = '4'", "an integer > 0"),
    ({"xgb_learning_rate": 0}, "xgb_learning_rate = 0", "a number > 0 and <= 1"),
]


@pytest.mark.parametrize(
    ("values", "path", "allowed"), SETTINGS_BAD, ids=[c[1] for c in SETTINGS_BAD]
)
def test_classifier_settings_refuse_a_bad_value(values, path, allowed) -> None:
    message = refusal(lambda: ClassifierSettings(**values))
    assert path in message and allowed in message


CLASSIFY_BAD = [
    ("oversample: [none, smot]\n", "oversample[1] = 'smot'", "one of 'none', 'smote', 'ctgan'"),
    ("models: []\n", "models = []", "a non-empty list, each one of 'logreg'"),
    ("n_boot: 50\n", "n_boot = 50", "an integer >= 100"),
    ("select_metric: accuracy\n", "select_metric = 'accuracy'", "one of 'pr_auc'"),
    ("threshold_rule: max\n", "threshold_rule = 'max'", "one of 'f1', 'youden'"),
    ("settings: {xgb_dpeth: 3}\n", "settings: unknown option(s) ['xgb_dpeth']", "valid: seed"),
    ("settings: {ctgan_batch_size: 15}\n", "settings.ctgan_batch_size = 15", "a multiple of 10"),
    ("settings: 5\n", "settings = 5", "a mapping of ClassifierSettings options"),
]


@pytest.mark.parametrize(
    ("text", "path", "allowed"), CLASSIFY_BAD, ids=[c[1] for c in CLASSIFY_BAD]
)
def test_a_classify_config_file_refuses_a_bad_value(tmp_path: Path, text, path, allowed) -> None:
    (tmp_path / "c.yaml").write_text(text)
    message = refusal(lambda: classify_config_from_file(tmp_path / "c.yaml"))
    assert message.startswith(f"{tmp_path / 'c.yaml'}: ")
    assert path in message and allowed in message


def test_a_classify_config_accepts_lists_single_names_and_partial_settings(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "models: [logreg, xgboost]\noversample: smote\nsettings: {xgb_depth: 6, "
        "sampling_strategy: 0.5}\n"
    )
    config = classify_config_from_file(tmp_path / "c.yaml", base=ClassifyConfig(n_boot=200))
    assert (config.models, config.oversample, config.n_boot) == (
        ("logreg", "xgboost"),
        ("smote",),
        200,
    )
    assert (config.settings.xgb_depth, config.settings.sampling_strategy) == (6, 0.5)
    assert config.settings.ctgan_epochs == ClassifierSettings().ctgan_epochs
    assert pickle.loads(pickle.dumps(config)) == config


# -- StudyOptions: every stage's part, up front ------------------------------------------------

STUDY_BAD = [
    ("patients: many\n", "patients = 'many'", "an integer > 0"),
    ("rl: 5\n", "rl = 5", "a mapping"),
    ("rl: {episodes: ten}\n", "rl.episodes = 'ten'", "an integer > 0, or null"),
    ("rl: {env: CartPol-v1}\n", "rl.env = 'CartPol-v1'", "Did you mean: `CartPole`?"),
    ("prepare: {outlier: clip}\n", "prepare: unknown option(s) ['outlier']", "valid: missing_threshold"),
    ("prepare: {outliers: clipped}\n", "prepare.outliers = 'clipped'", "one of 'clip'"),
    ("classify: {oversample: [none, smot]}\n", "classify.oversample[1] = 'smot'", "one of 'none'"),
    ("classify: {settings: {xgb_depth: 3}}\n", "classify.settings", "classifier_settings"),
    ("classifier_settings: {ctgan_epochs: 0}\n", "classifier_settings.ctgan_epochs = 0", "> 0"),
    ("evaluation_episodes: 0\n", "evaluation_episodes = 0", "an integer > 0"),
    ("patiens: 10\n", "unknown option(s) ['patiens']", "valid: patients"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "path", "allowed"), STUDY_BAD, ids=[c[1] for c in STUDY_BAD])
def test_a_study_config_refuses_a_bad_value_in_any_stage(tmp_path: Path, text, path, allowed):
    (tmp_path / "s.yaml").write_text(text)
    message = refusal(lambda: load_study_options(tmp_path / "s.yaml", quick=False, seed=None))
    assert message.startswith(f"{tmp_path / 's.yaml'}: ")
    assert path in message and allowed in message


def test_a_study_config_lists_every_stage_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "patients: many\nprepare: {outlier: clip}\nclassify: {oversample: [none, smot]}\n"
        "rl: {episodes: ten}\n"
    )
    message = refusal(lambda: load_study_options(tmp_path / "s.yaml", quick=True, seed=None))
    assert "4 options are not valid" in message
    for path in ("patients", "prepare: unknown", "classify.oversample[1]", "rl.episodes"):
        assert path in message


def test_the_quick_preset_and_defaults_give_valid_stage_options() -> None:
    for quick in (False, True):
        options = load_study_options(None, quick=quick, seed=3)
        assert prepare_options_of(options).seed == 3
        assert classify_config_of(options).settings.seed == 3
        assert rl_options_of(options).seed == 3
    quick = load_study_options(None, quick=True, seed=None)
    assert rl_options_of(quick).time_budget_s == QUICK["rl"]["time_budget_s"]
    assert classify_config_of(quick).n_boot == QUICK["classify"]["n_boot"]
    assert StudyOptions() == build_options(StudyOptions, dataclasses.asdict(StudyOptions()))


# -- the tuning searches ---------------------------------------------------------------------------

SEARCH_BAD = [
    (ClassifierSearch, {"data": "x", "metric": "f1"}, "metric = 'f1'", "one of 'pr_auc', 'roc_auc', 'brier'"),
    (ClassifierSearch, {"data": "x", "n_folds": 1}, "n_folds = 1", "an integer >= 2"),
    (ClassifierSearch, {"data": "x", "repeats": 2}, "repeats = 2", "--scheduler fifo"),
    (ClassifierSearch, {"data": "x", "models": ["knn"]}, "models[0] = 'knn'", "one of 'logreg'"),
    (ClassifierSearch, {"data": "x", "fixed": {"ctgan_batch_size": 15}}, "fixed.ctgan_batch_size = 15", "a multiple of 10"),
    (ClassifierSearch, {"data": "x", "fixed": {"xgb_dpeth": 3}}, "fixed: unknown option(s) ['xgb_dpeth']", "valid: seed"),
    (ClassifierSearch, {}, "data: required", "Folder written by"),
    (RLSearch, {"scheduler": "hyperband"}, "scheduler = 'hyperband'", "one of 'asha', 'pbt', 'fifo'"),
    (RLSearch, {"iterations_per_trial": 3, "grace_period": 4}, "grace_period = 4", "at most iterations_per_trial (3)"),
    (RLSearch, {"repeats": 3, "scheduler": "pbt"}, "repeats = 3", "--scheduler fifo"),
    (RLSearch, {"eval_episodes": 0}, "eval_episodes = 0", "an integer > 0, or null"),
    (RLSearch, {"base": {"episodes": 0}}, "base.episodes = 0", "an integer > 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "values", "path", "allowed"), SEARCH_BAD, ids=[c[2] for c in SEARCH_BAD]
)
def test_search_options_refuse_a_bad_value(cls, values, path, allowed) -> None:
    message = refusal(lambda: cls(**values))
    assert path in message and allowed in message


def test_good_search_options_are_accepted() -> None:
    search = ClassifierSearch(data="prepared", models=["xgboost"], repeats=2, scheduler="fifo")
    assert (search.data, search.models) == (Path("prepared"), ("xgboost",))
    rl = RLSearch(base={"env": "CartPole-v1"}, iterations_per_trial=3, grace_period=3)
    assert rl.base.env == "CartPole-v1" and pickle.loads(pickle.dumps(rl)) == rl


# -- the command line: exit 2 with the message, before any work ----------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


CLI_BAD = [
    ("train-episodes", {"c.yaml": "episodes: ten\n"}, ["train", "--config", "{tmp}/c.yaml", "--out", "{out}"], ["c.yaml", "episodes = 'ten'"]),
    ("train-time-budget", {"c.yaml": 'time_budget_s: "20"\n'}, ["train", "--config", "{tmp}/c.yaml", "--out", "{out}"], ["time_budget_s = '20'"]),
    ("train-lr", {"c.yaml": "lr: fast\n"}, ["train", "--config", "{tmp}/c.yaml", "--out", "{out}"], ["lr = 'fast'", "a number > 0"]),
    ("train-set-gamma", {}, ["train", "--set", "gamma=1.5", "--out", "{out}"], ["gamma = 1.5"]),
    ("train-env-typo", {}, ["train", "--env", "CartPol-v1", "--out", "{out}"], ["Did you mean: `CartPole`?"]),
    ("run-rl", {"s.yaml": "rl: {episodes: ten}\n"}, ["run", "--config", "{tmp}/s.yaml", "--out", "{out}"], ["rl.episodes = 'ten'"]),
    ("run-patients", {"s.yaml": "patients: many\n"}, ["run", "--config", "{tmp}/s.yaml", "--out", "{out}"], ["patients = 'many'"]),
    ("run-prepare", {"s.yaml": "prepare: {outlier: clip}\n"}, ["run", "--config", "{tmp}/s.yaml", "--out", "{out}"], ["prepare: unknown option(s) ['outlier']"]),
    ("run-rl-not-mapping", {"s.yaml": "rl: 5\n"}, ["run", "--config", "{tmp}/s.yaml", "--out", "{out}"], ["rl = 5"]),
    ("classify-config", {"c.yaml": "oversample: [none, smot]\n"}, ["classify", "--data", "{tmp}/nodata", "--config", "{tmp}/c.yaml", "--out", "{out}"], ["oversample[1] = 'smot'"]),
    ("tune-rl-config", {"c.yaml": "train_batch_size: 0\n"}, ["tune", "rl", "--config", "{tmp}/c.yaml", "--storage", "{out}"], ["train_batch_size = 0"]),
    ("tune-rl-eval-split", {}, ["tune", "rl", "--eval-split", "test", "--storage", "{out}"], ["evaluation_split = 'test'"]),
    ("tune-rl-scheduler", {}, ["tune", "rl", "--scheduler", "hyperband", "--storage", "{out}"], ["scheduler = 'hyperband'"]),
    ("tune-classifiers-metric", {}, ["tune", "classifiers", "--data", "{tmp}/nodata", "--metric", "f1", "--storage", "{out}"], ["metric = 'f1'"]),
    pytest.param("classify-flag", {}, ["classify", "--data", "{tmp}/nodata", "--select-metric", "accuracy", "--out", "{out}"], ["select_metric = 'accuracy'"], id="classify-flag"),
    pytest.param("prepare-flag", {}, ["data", "prepare", "--input", "{tmp}/nodata", "--missing-threshold", "2", "--out", "{out}"], ["missing_threshold = 2"], id="prepare-flag"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "files", "args", "expect"),
    [case if hasattr(case, "marks") else pytest.param(*case, id=case[0]) for case in CLI_BAD],
)
def test_a_bad_option_exits_2_before_any_work(tmp_path: Path, name, files, args, expect) -> None:
    for file, text in files.items():
        (tmp_path / file).write_text(text)
    out = tmp_path / "out"
    command = [str(SEPSIS_RL), *(a.format(tmp=tmp_path, out=out) for a in args)]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    for text in expect:
        assert text in " ".join(output.split()), output
    assert not out.exists()
    assert elapsed < BEFORE_RAY_S, f"{name} took {elapsed:.1f} s"
