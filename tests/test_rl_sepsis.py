"""DQN on SepsisEnv: default env and split, evaluation against the baselines, recommend.

One tiny real training run (about 1,000 env steps) serves every test in this module; the
quality of its policy is not asserted here (see the benchmark and the report for that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sepsis_rl.cli import app
from training.rl.envs import env_config_of, evaluation_env_config_of, make_env
from training.rl.options import RLOptions

SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
VALIDATION_EPISODES = 200
PATIENT = {
    "HR": 112, "O2Sat": 90, "SBP": 88, "DBP": 50, "MAP": 62.7, "Resp": 26, "Temp": 38.6,
    "Lactate": 3.1, "Age": 71,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import ray

    from training.rl.train import train

    out = tmp_path_factory.mktemp("sepsis_run") / "run"
    options = RLOptions(
        episodes=None,
        env_steps=1000,
        num_env_runners=1,
        num_cpus_per_env_runner=0.5,
        min_sample_timesteps_per_iteration=500,
        num_steps_sampled_before_learning_starts=200,
        evaluation_interval=1,
        evaluation_episodes=VALIDATION_EPISODES,
        training_intensity=2,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train(options, out)
    finally:
        ray.shutdown()
    return out / "checkpoints" / "last"


def test_default_env_is_sepsis_on_the_training_split() -> None:
    options = RLOptions()
    assert options.env == "SepsisEnv-v0"
    config = env_config_of(options)
    assert config["env_kwargs"] == {"split": "train"}
    # the best checkpoint is chosen on validation patients, never on the test patients
    assert evaluation_env_config_of(options)["env_kwargs"] == {"split": "val"}
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    assert np.all(obs >= -1) and np.all(obs <= 1)
    assert env.unwrapped._cohort.split == "train"


def test_reward_scale_scales_the_training_rewards_only() -> None:
    """`reward_scale` multiplies every reward the training env runners see, step by step on the
    same patient and actions; the evaluation env keeps the env's own rewards."""
    plain = RLOptions(seed=3)
    scaled = RLOptions(seed=3, reward_scale=0.1)
    assert evaluation_env_config_of(scaled)["reward_scale"] == 1.0
    rewards = []
    for options in (plain, scaled):
        env = make_env(env_config_of(options))
        env.reset(seed=5)
        got = []
        for _ in range(30):
            _, reward, terminated, truncated, _ = env.step(1)
            got.append(reward)
            if terminated or truncated:
                break
        rewards.append(np.array(got))
    assert len(rewards[0]) == len(rewards[1]) and np.any(rewards[0] != 0)
    np.testing.assert_allclose(rewards[1], 0.1 * rewards[0], rtol=1e-6)


def test_best_checkpoint_is_chosen_on_fixed_paired_validation_episodes(checkpoint: Path) -> None:
    """The evaluation return that picked `best` is the mean return of its greedy policy on the
    same validation episodes, replayed here one by one, and its difference to the protocol is
    paired on those episodes."""
    import gymnasium as gym
    import pandas as pd

    from sepsis_env.policies import clinician_protocol, evaluate, paired_difference
    from training.rl.policy import load_policy
    from training.rl.validation import VALIDATION_SEED

    run = checkpoint.parent.parent
    summary = json.loads((run / "summary.json").read_text())
    policy = load_policy(run / "checkpoints" / "best")
    env = gym.make("SepsisEnv-v0", split="val")
    greedy = evaluate(lambda obs, rng: policy(obs), env, VALIDATION_EPISODES, VALIDATION_SEED)
    protocol = evaluate(clinician_protocol, env, VALIDATION_EPISODES, VALIDATION_SEED)
    assert greedy.returns.mean() == pytest.approx(summary["best_eval_return"], abs=1e-9)
    metrics = pd.read_csv(run / "metrics.csv").dropna(subset=["eval_return_minus_protocol"])
    best = metrics.loc[metrics["eval_return_mean"].idxmax()]
    assert best["eval_return_mean"] == pytest.approx(summary["best_eval_return"], abs=1e-9)
    difference = paired_difference(greedy, protocol)[0]
    assert best["eval_return_minus_protocol"] == pytest.approx(difference, abs=1e-9)
    survival = paired_difference(greedy, protocol, "survival")[0]
    assert best["eval_survival_minus_protocol"] == pytest.approx(survival, abs=1e-9)


def test_evaluate_writes_paired_comparison_and_figures(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = subprocess.run(
        [str(SEPSIS_RL), "evaluate", "--checkpoint", str(checkpoint), "--episodes", "60",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["policies"]) == {
        "learned",
        "random",
        "no_treatment",
        "all_treatments",
        "protocol",
        "age_adaptive",
    }
    assert report["env_kwargs"]["split"] == "test"
    for name, groups in report["policies"].items():
        assert set(groups) == {"overall", "18-40", "41-65", "66+"}, name
        assert groups["overall"]["episodes"][0] == 60
    diffs = report["difference_to_protocol"]
    assert "protocol" not in diffs
    for name, groups in diffs.items():
        for metric, (est, lo, hi) in groups["overall"].items():
            assert lo <= est <= hi, (name, metric)
    # random does worse than the protocol on the same patients
    assert diffs["random"]["overall"]["return"][0] < 0
    for png in ("training_returns", "evaluation_returns", "vitals_typical_patients",
                "actions_by_group_and_state", "differences_to_hand_rule"):  # fmt: skip
        assert (out / f"{png}.png").stat().st_size > 10_000, png
    swaps = report["differences_to_hand_rule"]["swaps"]
    assert {r["policy"] for r in swaps} == {"rule", "rule's oxygen", "rule's ventilation",
                                            "rule's vasopressors"}  # fmt: skip
    assert "rule's vasopressors" in done.stdout
    assert (out / "differences_to_hand_rule.csv").stat().st_size > 0
    assert "learned beats the protocol (CI above zero): return: " in done.stdout
    assert "learned beats the age-adaptive protocol (CI above zero): return: " in done.stdout
    assert "learned minus each baseline" in done.stdout


def test_evaluation_compares_the_learned_policy_with_the_age_adaptive_protocol(
    checkpoint: Path,
) -> None:
    """The best hand rule is evaluated on the same test patients as the learned policy, and the
    learned policy's paired difference to it is reported overall and in every age group."""
    from sepsis_env.env import AGE_GROUPS
    from sepsis_env.policies import age_adaptive_protocol, evaluate, paired_difference
    from training.rl.envs import evaluation_env_kwargs, make_raw_env
    from training.rl.evaluate import beats, comparison_table, evaluate_checkpoint
    from training.rl.policy import HAND_RULE, LEARNED, POLICY_NAMES, load_policy

    episodes, seed = 40, 123
    result = evaluate_checkpoint(checkpoint, episodes=episodes, seed=seed)
    report = result["report"]
    groups = {"overall", *(label for label, _, _ in AGE_GROUPS)}
    assert HAND_RULE in POLICY_NAMES
    assert set(report["policies"][HAND_RULE]) == groups
    assert report["policies"][HAND_RULE]["overall"]["episodes"][0] == episodes
    versus = report["learned_minus_baseline"][HAND_RULE]
    assert set(versus) == groups
    for group, metrics in versus.items():
        for metric, (est, lo, hi) in metrics.items():
            assert lo <= est <= hi, (group, metric)
    # The same numbers as the hand rule run on its own on the same episodes, paired.
    options = load_policy(checkpoint).options
    env = make_raw_env(
        {"env_id": options.env, "env_kwargs": evaluation_env_kwargs(options, "test")}
    )
    alone = evaluate(age_adaptive_protocol, env, episodes, seed)
    env.close()
    assert np.array_equal(alone.returns, result["evaluations"][HAND_RULE].returns)
    expected = paired_difference(result["evaluations"][LEARNED], alone, "survival")
    assert versus["overall"]["survival"] == pytest.approx(expected)
    verdict = beats(report, HAND_RULE)
    assert verdict == {"return": versus["overall"]["return"][1] > 0,
                       "survival": versus["overall"]["survival"][1] > 0}  # fmt: skip
    rows = [r for r in comparison_table(report) if r["policy"] == HAND_RULE]
    overall_return = next(r for r in rows if r["group"] == "overall" and r["metric"] == "return")
    assert overall_return["learned_minus"] == pytest.approx(versus["overall"]["return"][0])
    # Where they differ: the swap analysis's "rule" is the hand rule on the same episodes, so the
    # rule minus the learned policy is the negative of the learned minus the rule.
    swaps = report["differences_to_hand_rule"]["swaps"]
    rule_overall = next(r for r in swaps if r["policy"] == "rule" and r["group"] == "overall")
    assert rule_overall["survival"][0] == pytest.approx(-versus["overall"]["survival"][0])
    assert rule_overall["return"][0] == pytest.approx(-versus["overall"]["return"][0])


def test_recommend_gives_the_greedy_action_and_every_q_value(
    checkpoint: Path, tmp_path: Path
) -> None:
    from training.rl.policy import load_policy
    from training.rl.recommend import patient_observation

    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps(PATIENT))
    result = CliRunner().invoke(
        app, ["recommend", "--checkpoint", str(checkpoint), "--patient", str(patient), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["q_values"]) == 8
    assert out["action_name"] == max(out["q_values"], key=out["q_values"].get)
    policy = load_policy(checkpoint)
    obs = patient_observation(PATIENT)
    assert out["action"] == int(policy.actions(obs[None])[0])
    assert out["observation"]["ventilation"] == 0.0  # default: no support running


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MAP": None}, "missing vitals ['MAP']"),
        ({"HR": "fast"}, "HR: 'fast' is not a number"),
        ({"O2Sat": 140}, "O2Sat: 140 % is impossible"),
        ({"SBP": 40, "DBP": 60, "MAP": 50}, "SBP 40 below DBP 60"),
        ({"vasopressors": 0.5}, "vasopressors: 0.5 must be 0"),
        ({"Heartrate": 80}, "unknown fields ['Heartrate']"),
    ],
)
def test_recommend_rejects_bad_patients_with_a_clear_error(
    checkpoint: Path, tmp_path: Path, change: dict, message: str
) -> None:
    patient = {**PATIENT, **change}
    patient = {k: v for k, v in patient.items() if v is not None}
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(patient))
    result = CliRunner().invoke(
        app, ["recommend", "--checkpoint", str(checkpoint), "--patient", str(path)]
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_recommend_rejects_a_file_that_is_not_json(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_text('{"HR": 80,\n "MAP": }')
    result = CliRunner().invoke(
        app, ["recommend", "--checkpoint", str(checkpoint), "--patient", str(path)]
    )
    assert result.exit_code == 2
    assert "not valid JSON at line 2" in " ".join(result.output.split())


def test_metrics_record_the_learning_rate(checkpoint: Path) -> None:
    import pandas as pd

    metrics = pd.read_csv(checkpoint.parent.parent / "metrics.csv")
    learning = metrics.dropna(subset=["learning_rate"])
    assert len(learning) and (learning["learning_rate"] == RLOptions().lr).all()


RLLIB_WITH_MODULE_PATH_ID = """
import ray
from ray.rllib.algorithms.dqn import DQNConfig
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
config = (
    DQNConfig()
    .environment("sepsis_env:SepsisEnv-v0")
    .env_runners(num_env_runners=1, num_cpus_per_env_runner=0.5)
    .training(num_steps_sampled_before_learning_starts=100)
    .reporting(min_sample_timesteps_per_iteration=200)
)
algo = config.build_algo()
result = algo.train()
print("steps", int(result["env_runners"]["num_env_steps_sampled_lifetime"]))
print("healthy", algo.env_runner_group.num_healthy_remote_workers())
algo.stop()
ray.shutdown()
"""


def test_plain_rllib_runs_the_module_path_id_in_env_runner_processes(tmp_path: Path) -> None:
    """`"sepsis_env:SepsisEnv-v0"` needs no import: a remote env runner samples from it."""
    import os

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    result = subprocess.run(
        [sys.executable, "-c", RLLIB_WITH_MODULE_PATH_ID],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "healthy 1" in result.stdout
    assert int(result.stdout.split("steps ")[1].split()[0]) >= 200
