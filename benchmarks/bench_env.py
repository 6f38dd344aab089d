"""Steps per second of SepsisEnv (single and vector) next to Gymnasium's CartPole.

Run: `python benchmarks/bench_env.py [--blocks 40] [--num-envs 1024]`. Actions are uniformly
random and drawn up front, so the figures measure the environments, not the action sampling.
Both single environments are made with `gymnasium.make` (time limit and checker wrappers
included) and reset when an episode ends; both vector environments with
`gymnasium.make_vec(..., vectorization_mode="vector_entry_point")` and autoreset.

Each environment is timed in short blocks, interleaved with the other environment's blocks, so
that both see the same machine load. Per block the benchmark records wall-clock and CPU time of
this process: steps per CPU second (all blocks' steps over all blocks' CPU time) is the speed on
one core even when other processes share the machine; the best and median wall-clock blocks show
how much the load took away. Targets (issue 3): 40,000 steps/s single, 2,000,000 steps/s vector
with 1,024 patients, on one core (the process pins itself to one CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import sepsis_env  # noqa: F401  (registers SepsisEnv-v0)

SINGLE_TARGET = 40_000
VECTOR_TARGET = 2_000_000
ENV_IDS = ("CartPole-v1", "SepsisEnv-v0")


def single_block(env_id: str, steps: int, seed: int = 0) -> Callable[[], tuple[float, float]]:
    """A function that runs `steps` steps of one environment and returns steps per wall-clock
    second and per CPU second."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def run() -> float:
        actions = rng.integers(env.action_space.n, size=steps).tolist()
        start, cpu = time.perf_counter(), time.process_time()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        return steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)

    return run


def vector_block(
    env_id: str, num_envs: int, steps: int, seed: int = 0
) -> Callable[[], tuple[float, float]]:
    """A function that runs `steps` vector steps and returns sub-environment steps per
    wall-clock second and per CPU second."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for a in rng.integers(envs.single_action_space.n, size=(20, num_envs)):  # first episodes end
        envs.step(a)

    def run() -> float:
        actions = rng.integers(envs.single_action_space.n, size=(steps, num_envs))
        start, cpu = time.perf_counter(), time.process_time()
        for a in actions:
            envs.step(a)
        total = steps * num_envs
        return total / (time.perf_counter() - start), total / (time.process_time() - cpu)

    return run


def measure(blocks: dict[str, Callable], repeats: int) -> dict[str, np.ndarray]:
    """(wall, CPU) steps/s of every block, `repeats` times, interleaved: arrays (repeats, 2).
    All blocks of an environment have the same number of steps."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name, run in blocks.items():
            rates[name].append(run())
    return {name: np.array(r) for name, r in rates.items()}


def per_cpu_second(rates: np.ndarray) -> float:
    """Total steps over total CPU time of equal-sized blocks: the harmonic mean of the rates."""
    return len(rates) / float(np.sum(1.0 / rates[:, 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40, help="timed blocks per environment")
    parser.add_argument("--single-steps", type=int, default=5_000, help="steps per single block")
    parser.add_argument("--vector-steps", type=int, default=32, help="steps per vector block")
    parser.add_argument("--num-envs", type=int, default=1024)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # the targets are for one core: pin this process to one
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    gym.make("SepsisEnv-v0").reset(seed=0)  # build the built-in cohort outside the timing
    single = measure({e: single_block(e, args.single_steps) for e in ENV_IDS}, args.blocks)
    vector = measure(
        {e: vector_block(e, args.num_envs, args.vector_steps) for e in ENV_IDS}, args.blocks
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':<14} {'single steps/s':^40} {f'vector ({args.num_envs}) steps/s':^46}")
    print(f"{'environment':<14}" + f" {'per CPU s':>12} {'best wall':>12} {'median wall':>13}" * 2)
    for env_id in ENV_IDS:
        cells = ""
        for rates in (single[env_id], vector[env_id]):
            wall, per_cpu = rates[:, 0], per_cpu_second(rates)
            cells += f" {per_cpu:>12,.0f} {wall.max():>12,.0f} {np.median(wall):>13,.0f}"
        print(f"{env_id:<14}{cells}")
    verdicts = []
    for label, rates, target in (
        ("single", single["SepsisEnv-v0"], SINGLE_TARGET),
        ("vector", vector["SepsisEnv-v0"], VECTOR_TARGET),
    ):
        per_cpu = per_cpu_second(rates)
        verdicts.append(f"{label} >= {target:,} {'met' if per_cpu >= target else 'NOT met'}")
    print("SepsisEnv targets (steps per CPU second): " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
