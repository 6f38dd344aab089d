"""DQN speed on this machine: sampling and learning throughput, and time to the protocol's return.

    python benchmarks/bench_rl.py                       # all three measurements
    python benchmarks/bench_rl.py --skip-target         # throughput only (about 2 minutes)
    python benchmarks/bench_rl.py --target-budget 900   # give up on the target after 900 s

1. Env steps sampled per second and learner updates per second with 1 and 2 env runners, from
   RLlib's own timers (sampling and learner-update time per iteration), plus the end-to-end
   env steps per second of whole training iterations.
2. Wall time from `build` to the first greedy evaluation whose mean return reaches the clinician
   protocol's on the same 2,000 validation episodes (the evaluation that picks `best` in
   training, run after every iteration here).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402


def throughput(num_env_runners: int, iterations: int, seed: int) -> dict[str, float]:
    """Sampling, learning and end-to-end rates with the default options and `num_env_runners`.

    Sampling: rounds of `synchronous_parallel_sample` (all runners at once, exploring policy),
    the same call DQN's training step makes. Learning: replay-buffer sample + learner update of
    one batch, the same calls as the training step. End to end: whole training iterations.
    """
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    from training.rl.dqn import build_dqn_config, configure_learner_process
    from training.rl.options import RLOptions

    options = RLOptions(
        num_env_runners=num_env_runners,
        num_cpus_per_env_runner=0.5,
        evaluation_interval=0,
        num_steps_sampled_before_learning_starts=0,
        seed=seed,
    )
    configure_learner_process(options)
    algo = build_dqn_config(options).build_algo()
    try:
        algo.train()  # warm-up: actor start, first weights sync, torch init
        wall = steps_e2e = 0.0
        for _ in range(iterations):
            result = algo.train()
            wall += result["time_this_iter_s"]
            steps_e2e += result["env_runners"]["num_env_steps_sampled"]
        t0, sampled = time.perf_counter(), 0
        while time.perf_counter() - t0 < 10.0:
            episodes = synchronous_parallel_sample(
                worker_set=algo.env_runner_group, concat=True, _uses_new_env_runners=True
            )
            sampled += sum(len(e) for e in episodes)
        sample_rate = sampled / (time.perf_counter() - t0)
        buffer, updates = algo.local_replay_buffer, 0
        lifetime = {
            "num_env_steps_sampled_lifetime": result["num_env_steps_sampled_lifetime"],
            "num_agent_steps_sampled_lifetime": {},
        }
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 10.0:
            batch = buffer.sample(
                num_items=options.train_batch_size, n_step=options.n_step,
                gamma=options.gamma, beta=options.replay_beta, sample_episodes=True,
                batch_length_T=0, lookback=0, min_batch_length_T=0,
            )  # fmt: skip
            algo.learner_group.update(episodes=batch, timesteps=lifetime)
            updates += 1
        update_rate = updates / (time.perf_counter() - t0)
    finally:
        algo.stop()
    return {
        "env_steps_per_s_sampling": sample_rate,
        "learner_updates_per_s": update_rate,
        "env_steps_per_s_end_to_end": steps_e2e / wall,
    }


def time_to_protocol(budget_s: float, seed: int) -> dict[str, float]:
    """Train with the default options, the greedy policy evaluated after every iteration on the
    2,000 fixed validation episodes (paired with the protocol, `training.rl.validation`)."""
    from training.rl.dqn import build_dqn_config, configure_learner_process
    from training.rl.options import RLOptions
    from training.rl.results import metrics_of

    options = RLOptions(seed=seed, evaluation_interval=1)
    start = time.monotonic()
    configure_learner_process(options)
    algo = build_dqn_config(options).build_algo()
    best, reached_s, env_steps = -np.inf, float("nan"), 0
    try:
        while time.monotonic() - start < budget_s:
            m = metrics_of(algo.train(), options, float("nan"))
            env_steps = m.env_steps
            best = max(best, m.eval_return_minus_protocol)
            print(
                f"  {time.monotonic() - start:6.0f} s  {env_steps:>7} env steps  greedy "
                f"{m.eval_return_mean:6.2f}  minus protocol: return "
                f"{m.eval_return_minus_protocol:+6.2f}, survival "
                f"{100 * m.eval_survival_minus_protocol:+5.1f} pts",
                flush=True,
            )
            if m.eval_return_minus_protocol >= 0:
                reached_s = time.monotonic() - start
                break
    finally:
        algo.stop()
    return {"seconds_to_protocol": reached_s, "env_steps": float(env_steps),
            "best_return_minus_protocol": best}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--target-budget", type=float, default=900.0)
    parser.add_argument("--skip-target", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(f"ray {ray.__version__}, gymnasium {gym.__version__}, {os.cpu_count()} CPUs")
        print("DQN on SepsisEnv-v0 (default options, 0.5 CPU per env runner)")
        for runners in (1, 2):
            r = throughput(runners, args.iterations, args.seed)
            print(
                f"  {runners} env runner(s): {r['env_steps_per_s_sampling']:7.0f} env steps/s "
                f"sampled, {r['learner_updates_per_s']:6.1f} learner updates/s "
                f"(batch 128, incl. replay sampling), {r['env_steps_per_s_end_to_end']:6.0f} "
                "env steps/s end to end with learning (training intensity 16)",
                flush=True,
            )
        if not args.skip_target:
            print("time to reach the protocol's mean return (2,000 paired validation episodes):")
            t = time_to_protocol(args.target_budget, args.seed)
            if np.isfinite(t["seconds_to_protocol"]):
                print(f"  reached after {t['seconds_to_protocol']:.0f} s "
                      f"({t['env_steps']:.0f} env steps)")  # fmt: skip
            else:
                print(f"  not reached within {args.target_budget:.0f} s: best return minus "
                      f"protocol {t['best_return_minus_protocol']:+.2f}")  # fmt: skip
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
