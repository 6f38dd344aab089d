"""Steps per second of SepsisEnv (single and vector) next to Gymnasium's CartPole.

Run: `python benchmarks/bench_env.py [--steps N] [--num-envs 1024]`. Actions are uniformly random
and drawn up front, so the figures measure the environments, not the action sampling. Both single
environments are made with `gymnasium.make` (time limit and checker wrappers included); both
vector environments with `vectorization_mode="vector_entry_point"`. Targets (issue 3):
40,000 steps/s single, 2,000,000 steps/s vector with 1,024 patients, on one core.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import sepsis_env  # noqa: F401  (registers SepsisEnv-v0)

SINGLE_TARGET = 40_000
VECTOR_TARGET = 2_000_000


def single_steps_per_second(env_id: str, steps: int, seed: int = 0) -> float:
    """Steps/s of one environment made with `gymnasium.make`, resetting when an episode ends."""
    env = gym.make(env_id)
    actions = np.random.default_rng(seed).integers(env.action_space.n, size=steps).tolist()
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def vector_steps_per_second(env_id: str, num_envs: int, vector_steps: int, seed: int = 0) -> float:
    """Sub-environment steps/s of the native vector environment (autoreset included)."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    rng = np.random.default_rng(seed)
    actions = rng.integers(envs.single_action_space.n, size=(vector_steps, num_envs))
    envs.reset(seed=seed)
    for a in actions[:10]:  # warm-up: first episodes and caches
        envs.step(a)
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    elapsed = time.perf_counter() - start
    envs.close()
    return vector_steps * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="single-env steps")
    parser.add_argument("--vector-steps", type=int, default=2_000, help="vector steps")
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    gym.make("SepsisEnv-v0").reset(seed=0)  # build the built-in cohort outside the timing
    rows = []
    for env_id in ("CartPole-v1", "SepsisEnv-v0"):
        single = max(single_steps_per_second(env_id, args.steps) for _ in range(args.repeats))
        vector = max(
            vector_steps_per_second(env_id, args.num_envs, args.vector_steps)
            for _ in range(args.repeats)
        )
        rows.append((env_id, single, vector))
    print(f"{'environment':<14} {'single steps/s':>16} {f'vector ({args.num_envs}) steps/s':>24}")
    for env_id, single, vector in rows:
        print(f"{env_id:<14} {single:>16,.0f} {vector:>24,.0f}")
    _, single, vector = rows[-1]
    single_met = "met" if single >= SINGLE_TARGET else "NOT met"
    vector_met = "met" if vector >= VECTOR_TARGET else "NOT met"
    print(
        f"SepsisEnv targets: single >= {SINGLE_TARGET:,} ({single_met}), "
        f"vector >= {VECTOR_TARGET:,} ({vector_met})"
    )


if __name__ == "__main__":
    main()
