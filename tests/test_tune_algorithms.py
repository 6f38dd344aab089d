"""`sepsis-rl tune rl --algo dqn|ppo|appo|impala`: each algorithm's search space, its nested
options (`ppo.lr` is `RLOptions.ppo.lr`), PBT's mutations, trial placement, and one real PPO search
through the command line."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from sepsis_rl.common.config_files import OptionsError
from training.rl.algorithms import build_config
from training.rl.options import ALGORITHMS, RLOptions, load_options
from tuning.rl_search import (
    RLSearch,
    best_options,
    decode,
    encode,
    learning_rate_of,
    option_value,
    trial_resources,
    with_values,
)
from tuning.spaces import (
    PBT_MUTABLES,
    RL_SPACE,
    RL_SPACES,
    Choice,
    Integer,
    Uniform,
    clip_to_space,
    suggest,
    tune_space,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

TESTS_DIR = Path(__file__).parent
SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
TOY_ENV = "test_rl_toyenv:SignGame-v0"
PG_ALGORITHMS = ("ppo", "appo", "impala")


def _draw(space, n: int, seed: int = 0) -> list[dict]:
    """`n` points of `space` drawn the way the ASHA search draws them (Optuna define-by-run)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(n):
        trial = study.ask()
        suggest(space, trial)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


def _in_range(dimension, value) -> bool:
    if isinstance(dimension, Choice):
        return value in dimension.values
    return dimension.low <= value <= dimension.high


def _rllib_value(config, name: str):
    """What the RLlib config holds for the searched option `name`."""
    field = name.rpartition(".")[2]
    if field.startswith("replay_"):
        return config.replay_buffer_config[field.removeprefix("replay_")]
    if field == "epsilon_timesteps":
        return config.epsilon[-1][0]
    if field in ("fcnet_hiddens", "head_fcnet_hiddens", "vf_share_layers"):
        return config.model_config[field]
    if field == "train_batch_size" and "." in name:
        return config.train_batch_size_per_learner
    if field == "gae_lambda":
        return config.lambda_
    return getattr(config, field)


def test_every_algorithm_has_a_space_and_pbt_mutates_only_its_continuous_options() -> None:
    assert set(RL_SPACES) == set(ALGORITHMS) == set(PBT_MUTABLES)
    assert RL_SPACES["dqn"] is RL_SPACE
    for algo, space in RL_SPACES.items():
        for name in PBT_MUTABLES[algo]:
            # PBT perturbs by multiplying; clip_to_space can only bound Uniform/Integer values.
            assert isinstance(space[name], Uniform | Integer), (algo, name)
        for name in space:
            head = name.partition(".")[0]
            assert "." not in name or head == algo, f"{algo} searches another algorithm's {name}"
            option_value(RLOptions(algo=algo), name)  # every name is an option


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_sampled_point_builds_valid_options_and_a_valid_rllib_config(algo: str) -> None:
    space = RL_SPACES[algo]
    base = RLOptions(algo=algo, env="CartPole-v1").to_dict()
    for params in _draw(space, 25, seed=1):
        assert set(params) == set(space)
        options = best_options({"base": base, **params})
        assert options.algo == algo
        config = build_config(options)
        config.validate()  # RLlib's own checks, e.g. a PPO minibatch no larger than the batch
        for name, value in decode(params).items():
            assert option_value(options, name) == value, name
            assert _rllib_value(config, name) == value, name
            assert _in_range(space[name], params[name]), (name, params[name])


@pytest.mark.parametrize("algo", PG_ALGORITHMS)
def test_pbt_initial_points_from_tune_domains_are_valid_too(algo: str) -> None:
    domains = tune_space(RL_SPACES[algo])
    base = RLOptions(algo=algo, env="CartPole-v1").to_dict()
    for _ in range(10):
        params = {name: domain.sample() for name, domain in domains.items()}
        build_config(best_options({"base": base, **params})).validate()


def test_nested_suggestions_land_in_their_fields_and_keep_the_base_s_other_fields() -> None:
    base = RLOptions(algo="ppo", lr=1e-4, ppo={"train_batch_size": 256, "minibatch_size": 64})
    options = best_options(
        {"base": base.to_dict(), "ppo.lr": 2e-3, "ppo.num_epochs": 3, "gamma": 0.95}
    )
    assert options.ppo.lr == 2e-3 and options.ppo.num_epochs == 3 and options.gamma == 0.95
    # What the trial did not draw stays the base's: its other PPO fields and DQN's own lr.
    assert options.ppo.train_batch_size == 256 and options.ppo.minibatch_size == 64
    assert options.lr == 1e-4 and options.appo == base.appo
    # A value outside what the option allows is refused by name, as in a config file.
    with pytest.raises(OptionsError, match=r"ppo\.clip_param"):
        with_values(base, {"ppo.clip_param": -0.2})
    with pytest.raises(OptionsError, match="bogus"):
        with_values(base, {"ppo.bogus": 1})


def test_a_dqn_trial_ignores_the_pg_space_and_keeps_its_top_level_fields() -> None:
    base = RLOptions(algo="dqn").to_dict()
    options = best_options({"base": base, "lr": 1e-3, "ppo.lr": 1e-2})
    assert options.lr == 1e-3 and options.ppo.lr == RLOptions().ppo.lr


@pytest.mark.parametrize(
    ("algo", "field"), [("dqn", "lr"), ("ppo", "ppo"), ("appo", "appo"), ("impala", "impala")]
)
def test_the_learning_rate_reset_after_a_pbt_restore_reads_the_algorithm_s_own_field(
    algo: str, field: str
) -> None:
    rates = {"lr": 1e-4, "ppo.lr": 2e-4, "appo.lr": 3e-4, "impala.lr": 4e-4}  # all different
    options = with_values(RLOptions(algo=algo), rates)
    assert learning_rate_of(options) == rates["lr" if field == "lr" else f"{field}.lr"]


def test_the_default_point_of_a_ppo_search_is_the_base_s_nested_values() -> None:
    base = RLOptions(algo="ppo", fcnet_hiddens=[64, 64], ppo={"lr": 1e-3, "num_epochs": 5})
    point = RLSearch(base=base).default_point()
    assert point["ppo.lr"] == 1e-3 and point["ppo.num_epochs"] == 5
    assert point["fcnet_hiddens"] == "64x64" and "lr" not in point
    assert encode(base, RL_SPACES["ppo"]) == point
    held = RLSearch(base=base, hold=("ppo.train_batch_size", "ppo.minibatch_size"))
    assert "ppo.train_batch_size" not in held.space and "ppo.lr" in held.space
    with pytest.raises(ValueError, match="hold"):
        RLSearch(base=base, hold=("replay_alpha",))  # a DQN option: not searched for PPO


def test_pbt_perturbations_of_pg_options_are_clipped_into_their_ranges() -> None:
    clipped = clip_to_space(
        {"ppo.clip_param": 0.4 * 1.2, "ppo.entropy_coeff": 1e-6, "ppo.num_epochs": 10},
        RL_SPACES["ppo"],
    )
    assert clipped["ppo.clip_param"] == 0.4 and clipped["ppo.entropy_coeff"] == 1e-4
    assert clipped["ppo.num_epochs"] == 10  # a choice: left alone
    clipped = clip_to_space({"appo.vf_loss_coeff": 2.0}, RL_SPACES["appo"])
    assert clipped["appo.vf_loss_coeff"] == 1.0


@pytest.mark.parametrize("algo", PG_ALGORITHMS)
def test_pbt_of_a_pg_search_mutates_its_own_options_and_clips_them(algo: str) -> None:
    from tuning.rl_search import _search_start

    search = RLSearch(base=RLOptions(algo=algo), scheduler="pbt", hold=(f"{algo}.grad_clip",))
    start = _search_start(search, concurrency=1)
    mutations = start.scheduler._hyperparam_mutations
    assert set(mutations) == set(PBT_MUTABLES[algo]) and f"{algo}.lr" in mutations
    # The initial configurations are drawn from the algorithm's space, minus what is held.
    assert f"{algo}.entropy_coeff" in start.param_space and "replay_alpha" not in start.param_space
    assert f"{algo}.grad_clip" not in start.param_space
    explore = pickle.loads(pickle.dumps(start.scheduler._custom_explore_fn))  # Tune saves it
    explored = explore({f"{algo}.lr": 1.0, "gamma": 1.2})
    assert explored == {f"{algo}.lr": 2e-3, "gamma": 0.999}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_a_default_trial_of_every_algorithm_fits_two_at_once_on_two_cores(algo: str) -> None:
    from sepsis_rl.cli.tune import search_base_options

    base = search_base_options(None, {"algo": algo})
    bundles = trial_resources(RLSearch(base=base)).bundles
    # The driver (with its learner) and the env runner, half a CPU each: RLlib asks for no
    # remote learner and no aggregator actor that Tune would not count.
    assert bundles == [{"CPU": 0.5}, {"CPU": 0.5}], bundles
    config = build_config(base)
    assert config.num_learners == 0 and config.num_env_runners == 1


def test_dotted_set_overrides_reach_the_nested_options() -> None:
    from sepsis_rl.cli.tune import search_base_options

    base = search_base_options(
        None, {"algo": "appo", "appo.train_batch_size": 256, "appo.clip_param": 0.3}
    )
    assert base.appo.train_batch_size == 256 and base.appo.clip_param == 0.3
    assert base.appo.lr == RLOptions().appo.lr and base.num_cpus_per_env_runner == 0.5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    return env


def test_an_unknown_algorithm_is_refused_before_ray_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SEPSIS_RL), "tune", "rl", "--algo", "sac", "--storage", "tune"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "algo" in result.stderr and "'ppo'" in result.stderr
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
def test_a_real_ppo_search_scores_every_trial_and_exports_a_ppo_config(tmp_path: Path) -> None:
    """Two PPO configurations, two iterations each, on the 10-step toy env through the command
    line: every trial reports the greedy return, and the best configuration reads back as PPO."""
    sets = {
        "env": TOY_ENV,
        "min_sample_timesteps_per_iteration": 256,
        "ppo.train_batch_size": 256,
        "ppo.minibatch_size": 64,
        "ppo.num_epochs": 1,
    }
    result = subprocess.run(
        [
            str(SEPSIS_RL), "tune", "rl", "--algo", "ppo",
            *[arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")],
            "--hold", "ppo.train_batch_size,ppo.minibatch_size,ppo.num_epochs",
            "--num-samples", "2", "--iterations-per-trial", "2", "--eval-episodes", "5",
            "--time-budget", "90", "--storage", "tune",
        ],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = tmp_path / "tune" / "rl"
    search = json.loads((folder / "search.json").read_text())
    assert search["algo"] == "ppo" and "ppo.lr" in search["params"]
    assert "ppo.train_batch_size" not in search["params"]

    table = pd.read_csv(folder / "analysis" / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    assert all(0.0 <= score <= 10.0 for score in table["eval_return"])  # 10 steps, reward 0/1
    for trial in folder.glob("trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == [1, 2]
        assert all(r["eval_episodes"] == 5 and "epsilon" not in r for r in rows)
        assert math.isfinite(rows[-1]["loss"])  # PPO's total loss, under DQN's old key's name
        checkpoint = sorted(trial.glob("checkpoint_*"))[-1] / "algo"
        assert checkpoint.is_dir() and not (checkpoint / "replay_buffer.pkl").exists()
    assert "# RL (PPO) search" in (folder / "analysis" / "summary.md").read_text()

    best_file = folder / "analysis" / "best_config.yaml"
    exported = yaml.safe_load(best_file.read_text())
    assert exported["algo"] == "ppo" and isinstance(exported["ppo"], dict)
    options = load_options(best_file)
    best = table.iloc[0]
    assert options.algo == "ppo" and options.env == TOY_ENV
    assert options.ppo.lr == pytest.approx(best["ppo.lr"])
    assert options.ppo.entropy_coeff == pytest.approx(best["ppo.entropy_coeff"])
    assert options.ppo.train_batch_size == 256 and options.ppo.num_epochs == 1
