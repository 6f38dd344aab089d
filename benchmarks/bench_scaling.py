"""How each part of a `FastDQN` training step performs, and what that predicts on a cluster.

    python benchmarks/bench_scaling.py                   # about 3-4 minutes on 2 cores
    python benchmarks/bench_scaling.py --seconds 4       # shorter measurement windows
    python benchmarks/bench_scaling.py --skip-cluster    # without the two-node check

SepsisEnv-v0, the default network, batch 128, training intensity 32, env runners with 4 envs x
16 steps per sampling round (the `RLOptions` defaults). One `FastDQN.training_step` takes a
round from every env runner, adds it to the numpy buffer, runs intensity x sampled / batch
updates (each: replay sample, `learner_group.update`, priorities) and syncs weights once.

1. sampling: env steps/s of one env runner (`synchronous_parallel_sample`, explore policy), and
   of two for comparison;
2. learner: updates/s of the local learner (`algo._update_once`, as bench_rl's `fast_update`),
   of one remote learner, and of two remote learners (data-parallel, gloo, fractional CPUs: on
   2 cores this measures the overhead of remote learners, not a speed-up);
3. replay ops: `buffer.sample(128)`, `buffer.update_priorities`, `buffer.add` of one round;
4. weight sync: seconds per `env_runner_group.sync_weights(...)` with 1 and 2 env runners;
5. the model: end-to-end env steps/s at 8, 32 and 128 CPUs for the best split of CPUs between
   env runners and learners, and for one learner (today's default);
6. a check on a local two-node cluster (`ray.cluster_utils.Cluster`, 1 CPU per node): sampling
   with an env runner on each node, and whole training iterations against the model.

Each figure is printed per wall second on this machine (shared with other work: the 1-minute
load average at the end of its window is printed beside it) and per CPU second of the
processes on its critical path, which is what a dedicated vCPU gives: the model uses the
CPU-second figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import numpy as np  # noqa: E402
from bench_rl import BATCH, bench_options, fast_update, lifetime  # noqa: E402

from training.rl.options import RLOptions  # noqa: E402

DEFAULTS = RLOptions()
INTENSITY = float(DEFAULTS.training_intensity)
ROUND_STEPS = DEFAULTS.num_envs_per_env_runner * DEFAULTS.rollout_fragment_length
"""Env steps one env runner samples per round (4 envs x 16 steps)."""
CPU_COUNTS = (8, 32, 128)

# The model's assumptions for learners on different machines (not measured: every learner of
# this benchmark runs on this machine, and their allreduce goes over loopback).
ALLREDUCE_STEP_LATENCY_S = 100e-6
"""One step of gloo's ring allreduce between EC2 instances in one availability zone: one TCP
message (~50-100 us round trip within an AZ), taken at the upper end."""
NETWORK_BYTES_PER_S = 10e9 / 8
"""m5.xlarge and c5.2xlarge: "up to 10 Gbit/s"."""
FLOAT_BYTES = 4


# -- measuring --------------------------------------------------------------------------------
def load(value: float | None = None) -> str:
    """The 1-minute load average (now, or a window's), to print beside every figure."""
    return f"[load {os.getloadavg()[0] if value is None else value:.1f}]"


@dataclass
class Window:
    """What one measurement window saw: units of work (calls, env steps), wall seconds, CPU
    seconds of each process on the critical path (in its clock's order), the load at its end."""

    units: float
    wall: float
    cpu: np.ndarray
    load: float

    @property
    def per_wall_s(self) -> float:
        return self.units / self.wall

    @property
    def per_cpu_s(self) -> float:
        return self.units / float(self.cpu.sum())

    @property
    def wall_s_per_unit(self) -> float:
        return self.wall / self.units


def measure(step: Callable[[], float], seconds: float, clock: Callable[[], np.ndarray]) -> Window:
    """Call `step` (which returns its units of work) for `seconds` after one warm-up call."""
    step()
    cpu0, start, units = clock(), time.perf_counter(), 0.0
    while time.perf_counter() - start < seconds:
        units += step()
    wall = time.perf_counter() - start
    return Window(units, wall, clock() - cpu0, os.getloadavg()[0])


def _process_cpu(_actor=None) -> float:
    return time.process_time()


def driver_clock() -> np.ndarray:
    """CPU seconds of this process (the driver: local learner, replay buffer, weight sync)."""
    return np.array([time.process_time()])


def runner_clock(algo) -> Callable[[], np.ndarray]:
    """CPU seconds of each remote env runner."""
    group = algo.env_runner_group
    return lambda: np.array(group.foreach_env_runner(_process_cpu, local_env_runner=False))


def learner_clock(algo) -> Callable[[], np.ndarray]:
    """CPU seconds of the driver, then of each remote learner."""

    def clock() -> np.ndarray:
        learners = algo.learner_group.foreach_learner(_process_cpu)
        return np.array([time.process_time(), *(r.get() for r in learners)])

    return clock


# -- 1. sampling ------------------------------------------------------------------------------
def sampling(algo, seconds: float) -> tuple[Window, list]:
    """Synchronous rounds from every remote env runner (`FastDQN` without `sample_async`), and
    the rounds' episodes. The metrics are aggregated afterwards, so that bench_rl's `lifetime`
    finds the env-step count the learner needs."""
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS

    rounds, metrics = [], []

    def step() -> float:
        episodes, round_metrics = synchronous_parallel_sample(
            worker_set=algo.env_runner_group,
            concat=True,
            sample_timeout_s=algo.config.sample_timeout_s,
            _uses_new_env_runners=True,
            _return_metrics=True,
        )
        rounds.append(episodes)
        metrics.extend(round_metrics)
        return sum(len(e) for e in episodes)

    window = measure(step, seconds, runner_clock(algo))
    algo.metrics.aggregate(metrics, key=ENV_RUNNER_RESULTS)
    return window, rounds


def fill_buffer(algo, rounds: list) -> Window:
    """Add sampled rounds to the buffer: CPU seconds and env steps (units) of `buffer.add`."""
    buffer, steps = algo.local_replay_buffer, sum(len(e) for r in rounds for e in r)
    cpu0, start = time.process_time(), time.perf_counter()
    for episodes in rounds:
        buffer.add(episodes)
    cpu = np.array([time.process_time() - cpu0])
    return Window(steps, time.perf_counter() - start, cpu, os.getloadavg()[0])


# -- 2. learner -------------------------------------------------------------------------------
@dataclass
class Learner:
    """Update windows of one learner setup (units: updates; cpu: the driver, then each remote
    learner), measured in rounds that alternate with the other setups: figures are medians."""

    learners: int  # 0: the local learner in the driver
    windows: list[Window]
    torch_threads: list[int]

    def _median(self, per_window: Callable[[Window], float]) -> float:
        return float(np.median([per_window(w) for w in self.windows]))

    @property
    def per_wall_s(self) -> float:
        return self._median(lambda w: w.per_wall_s)

    @property
    def driver_s(self) -> float:
        """Driver CPU seconds per update (replay ops, dispatch; with a local learner, all)."""
        return self._median(lambda w: float(w.cpu[0]) / w.units)

    @property
    def learner_s(self) -> float:
        """CPU seconds per update of the busiest remote learner (0 for a local learner)."""
        return self._median(lambda w: float(w.cpu[1:].max(initial=0.0)) / w.units)

    @property
    def critical_s(self) -> float:
        """CPU seconds per update on the critical path: the driver waits for the learners."""
        return self._median(lambda w: float(w.cpu[0] + w.cpu[1:].max(initial=0.0)) / w.units)

    @property
    def load(self) -> float:
        return max(w.load for w in self.windows)


def _torch_threads(_learner) -> int:
    import torch

    return torch.get_num_threads()


def _trained_parameters(learner_) -> int:
    """Parameters the learner's optimizer updates (what data-parallel learners allreduce)."""
    optimizer = learner_.get_optimizer()
    return sum(p.numel() for group in optimizer.param_groups for p in group["params"])


def update_window(algo, seconds: float) -> Window:
    """Updates as `FastDQN.training_step` runs them (`_update_once`, metrics reduced every 8)."""
    remote = not algo.learner_group.is_local
    update = fast_update(algo)

    def step() -> float:
        update()
        return 1.0

    return measure(step, seconds, learner_clock(algo) if remote else driver_clock)


def learners_alternating(algos: dict, seconds: float, rounds: int = 3) -> dict[int, Learner]:
    """`update_window` of each algorithm in turn, `rounds` times (the machine's load drifts)."""
    windows: dict[int, list[Window]] = {n: [] for n in algos}
    for _ in range(rounds):
        for n, algo in algos.items():
            windows[n].append(update_window(algo, seconds / rounds))
    return {
        n: Learner(
            n, windows[n], [r.get() for r in a.learner_group.foreach_learner(_torch_threads)]
        )
        for n, a in algos.items()
    }


def split_batch_update(algo, seconds: float) -> Window:
    """`learner_group.update` alone (no priorities) on one batch of BATCH rows split among the
    learners: what `num_learners` does with today's `train_batch_size` of 128."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    timesteps, count = lifetime(algo), [0]

    def step() -> float:
        count[0] += 1
        batch = algo.local_replay_buffer.sample(BATCH)
        ma_batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=BATCH)
        algo.learner_group.update(
            batch=ma_batch, timesteps=timesteps, reduce_metrics=count[0] % 8 == 0
        )
        return 1.0

    return measure(step, seconds, learner_clock(algo))


# -- 3. replay ops ----------------------------------------------------------------------------
def replay_ops(algo, seconds: float) -> dict[str, Window]:
    """`buffer.sample(BATCH)` and `buffer.update_priorities` of BATCH TD errors, in the driver."""
    buffer = algo.local_replay_buffer
    td_errors = np.random.default_rng(0).exponential(size=BATCH).astype(np.float32)

    def sample() -> float:
        buffer.sample(BATCH)
        return 1.0

    def priorities() -> float:
        buffer.update_priorities(td_errors)
        return 1.0

    return {
        f"buffer.sample({BATCH})": measure(sample, seconds, driver_clock),
        f"update_priorities({BATCH})": measure(priorities, seconds, driver_clock),
    }


# -- 4. weight sync ---------------------------------------------------------------------------
def weight_sync(algo, seconds: float) -> tuple[Window, Window]:
    """Seconds per `sync_weights` as the training step calls it (it sends the weights and does
    not wait for the env runners), and per sync followed by a no-op call on every env runner
    (which runs after `set_state` in the actor's queue: the weights applied everywhere)."""
    group = algo.env_runner_group

    def sync() -> float:
        group.sync_weights(
            from_worker_or_learner_group=algo.learner_group,
            policies=["default_policy"],
            inference_only=True,
        )
        return 1.0

    def sync_applied() -> float:
        sync()
        group.foreach_env_runner(_process_cpu, local_env_runner=False)
        return 1.0

    return measure(sync, seconds, driver_clock), measure(sync_applied, seconds, driver_clock)


# -- sections 1-4: what one machine measures --------------------------------------------------
@dataclass
class Measurements:
    sampling: dict[int, Window]  # env runners -> window (units: env steps)
    add: Window  # units: env steps
    replay: dict[str, Window]
    learners: dict[int, Learner]  # 0 local, 1 and 2 remote (BATCH rows each)
    split: Window  # 2 remote learners, BATCH rows between them
    sync: dict[str, tuple[Window, Window]]
    parameters: int


def measure_all(seconds: float) -> Measurements:
    """Sections 1-4 on one local Ray with 2 logical CPUs."""
    import ray

    from sepsis_rl.common.ray_local import init_ray
    from training.rl.dqn import build_dqn_config, configure_learner_process

    def build(**changes):
        return build_dqn_config(bench_options(**changes)).build_algo()

    init_ray(num_cpus=2)
    configure_learner_process(DEFAULTS)
    algos = {}
    try:
        algo = build(num_env_runners=2, num_cpus_per_env_runner=0.5)
        try:
            sampled_2, _ = sampling(algo, seconds)
            sync_2 = weight_sync(algo, seconds / 4)
        finally:
            algo.stop()

        # The local learner, and 1 and 2 remote learners with BATCH rows each (total
        # train_batch_size L x BATCH), alive together (logical CPU fractions) so that their
        # update windows can alternate.
        algos[0] = build(num_env_runners=1, num_cpus_per_env_runner=0.5)
        (parameters,) = [
            r.get() for r in algos[0].learner_group.foreach_learner(_trained_parameters)
        ]
        sampled_1, rounds = sampling(algos[0], seconds)
        add = fill_buffer(algos[0], rounds)
        replay = replay_ops(algos[0], seconds / 3)
        sync_1 = weight_sync(algos[0], seconds / 4)
        for n in (1, 2):
            algos[n] = build(
                num_env_runners=1,
                num_cpus_per_env_runner=0.25,
                num_learners=n,
                num_cpus_per_learner=0.25,
                train_batch_size=n * BATCH,
            )
            fill_buffer(algos[n], sampling(algos[n], 1.0)[1])
        learners = learners_alternating(algos, 3 * seconds)
        sync_remote = weight_sync(algos[1], seconds / 4)
        split = split_batch_update(algos[2], seconds / 2)
    finally:
        for algo in algos.values():
            algo.stop()
        ray.shutdown()
    return Measurements(
        sampling={1: sampled_1, 2: sampled_2},
        add=add,
        replay=replay,
        learners=learners,
        split=split,
        sync={
            "local learner, 1 env runner": sync_1,
            "local learner, 2 env runners": sync_2,
            "remote learner, 1 env runner": sync_remote,
        },
        parameters=parameters,
    )


def print_measurements(m: Measurements) -> None:
    print(
        f"\n1. sampling, explore policy, {DEFAULTS.num_envs_per_env_runner} envs x "
        f"{DEFAULTS.rollout_fragment_length} steps per round, synchronous rounds"
    )
    for runners, w in m.sampling.items():
        print(
            f"   {runners} env runner(s): {w.per_wall_s / runners:6.0f} env steps/s per runner "
            f"(wall), {w.per_cpu_s:6.0f} per runner CPU s  {load(w.load)}"
        )

    rounds = len(m.learners[0].windows)
    print(
        f"\n2. learner updates/s, {BATCH} rows per learner (replay sample + update + priorities);"
        f" medians of {rounds} alternating windows"
    )
    names = {0: "local learner (in the driver)", 1: "1 remote learner", 2: "2 remote learners"}
    for n, lrn in m.learners.items():
        parts = (
            f"; driver {1e3 * lrn.driver_s:.2f} + learner {1e3 * lrn.learner_s:.2f} ms" if n else ""
        )
        print(
            f"   {names[n]:<32} {lrn.per_wall_s:5.0f} (wall), {1 / lrn.critical_s:5.0f} per CPU s "
            f"of the critical path{parts}  {load(lrn.load)}"
        )
    split_s = float(m.split.cpu[0] + m.split.cpu[1:].max()) / m.split.units
    print(
        f"   {'2 remote, 64 rows each, no prios':<32} {m.split.per_wall_s:5.0f} (wall), "
        f"{1 / split_s:5.0f} per CPU s (today's train_batch_size=128 split by num_learners=2)  "
        f"{load(m.split.load)}"
    )
    local = m.learners[0].critical_s
    print(
        f"   per-learner efficiency (local update time / update time): 1 remote "
        f"{local / m.learners[1].critical_s:.2f}, 2 remote {local / m.learners[2].critical_s:.2f}"
        f" (CPU s); torch threads {[lrn.torch_threads for lrn in m.learners.values()]}; "
        f"{m.parameters:,} trained parameters"
    )
    print(
        "   On 2 cores the remote learners share the cores with the driver and other work: "
        "these figures\n   measure the overhead of remote learners (Ray calls, DDP, gloo over "
        "loopback), not a speed-up."
    )

    print("\n3. replay ops in the driver")
    for name, w in m.replay.items():
        print(
            f"   {name:<24} {w.per_wall_s:7.0f} /s (wall), {w.per_cpu_s:7.0f} per CPU s  "
            f"{load(w.load)}"
        )
    print(
        f"   buffer.add of sampled rounds: {m.add.per_cpu_s:,.0f} env steps per CPU s "
        f"({1e3 * ROUND_STEPS / m.add.per_cpu_s:.2f} ms per round of {ROUND_STEPS})  "
        f"{load(m.add.load)}"
    )

    print("\n4. weight sync, ms per call; per call + applied on every env runner (wall)")
    for name, (call, applied) in m.sync.items():
        print(
            f"   {name:<30} {1e3 * call.wall_s_per_unit:6.2f}; {1e3 * applied.wall_s_per_unit:6.2f}"
            f"  {load(applied.load)}"
        )


# -- 5. the model -----------------------------------------------------------------------------
@dataclass
class Rates:
    """The model's inputs, per dedicated CPU (the CPU-second figures; sync in wall seconds)."""

    sample_per_runner: float  # env steps/s of one env runner
    update_local_s: float  # seconds per update of the local learner (replay ops included)
    driver_s: tuple[float, float]  # driver seconds per update with 1 and 2 remote learners
    learner_s: tuple[float, float]  # busiest learner's seconds per update with 1 and 2
    add_s_per_step: float
    sync_local_s: tuple[float, float]  # per training step, local learner, 1 and 2 env runners
    sync_remote_s: float  # per training step, remote learner(s), 1 env runner
    parameters: int
    allreduce_step_s: float = ALLREDUCE_STEP_LATENCY_S  # assumed, not measured

    @classmethod
    def of(cls, m: Measurements) -> Rates:
        applied = {name: pair[1].wall_s_per_unit for name, pair in m.sync.items()}
        return cls(
            sample_per_runner=m.sampling[1].per_cpu_s,
            update_local_s=m.learners[0].critical_s,
            driver_s=(m.learners[1].driver_s, m.learners[2].driver_s),
            learner_s=(m.learners[1].learner_s, m.learners[2].learner_s),
            add_s_per_step=1 / m.add.per_cpu_s,
            sync_local_s=(
                applied["local learner, 1 env runner"],
                applied["local learner, 2 env runners"],
            ),
            sync_remote_s=applied["remote learner, 1 env runner"],
            parameters=m.parameters,
        )


def allreduce_network_s(r: Rates, learners: int) -> float:
    """Ring allreduce of the gradients between `learners` machines: 2(L-1) steps, each one
    latency plus 1/L of the gradients over the network."""
    if learners < 2:
        return 0.0
    chunk = r.parameters * FLOAT_BYTES / learners
    return 2 * (learners - 1) * (r.allreduce_step_s + chunk / NETWORK_BYTES_PER_S)


def update_parts(r: Rates, learners: int) -> dict[str, float]:
    """Seconds per update, by part. Local learner (L = 0): as measured. L remote learners with
    BATCH rows each: the driver's cost (replay ops on L x BATCH rows, dispatch, results) linear
    in L through the measured L = 1 and 2; the busiest learner's CPU as measured with 2 (DDP
    and gloo over loopback included) or 1; plus the network part of a ring allreduce, which the
    loopback measurement lacks."""
    if learners == 0:
        return {"learner": r.update_local_s}
    (d1, d2), (c1, c2) = r.driver_s, r.learner_s
    return {
        "driver (replay, dispatch)": d1 + (learners - 1) * max(0.0, d2 - d1),
        "learner": c1 if learners == 1 else c2,
        "allreduce (network)": allreduce_network_s(r, learners),
    }


def sync_s(r: Rates, runners: int, learners: int) -> float:
    """Seconds of weight sync per training step: linear in the env runners through the
    measured 1 and 2; from remote learners the measured extra of fetching their weights."""
    one, two = r.sync_local_s
    base = one if learners == 0 else r.sync_remote_s
    return base + (runners - 1) * max(0.0, two - one)


@dataclass
class Prediction:
    runners: int
    learners: int
    env_steps_per_s: float
    bottleneck: str
    shares: dict[str, float]  # of the driver's time per training step


def predict(r: Rates, runners: int, learners: int) -> Prediction:
    """env steps/s = min(R s, S / T). A training step takes one round from every env runner
    (S = R x 64 env steps; with `sample_async` they sample the next one meanwhile); the driver
    spends T = add(S) + N x update + sync on it, N = S x I / (max(L, 1) x B) updates."""
    steps = runners * ROUND_STEPS
    updates = steps * INTENSITY / (max(1, learners) * BATCH)
    parts = {k: updates * v for k, v in update_parts(r, learners).items()}
    parts["replay add"] = steps * r.add_s_per_step
    parts["weight sync"] = sync_s(r, runners, learners)
    total = sum(parts.values())
    shares = {k: v / total for k, v in parts.items()}
    driver_rate, sampling_rate = steps / total, runners * r.sample_per_runner
    if sampling_rate < driver_rate:
        return Prediction(runners, learners, sampling_rate, "sampling", shares)
    return Prediction(runners, learners, driver_rate, max(shares, key=shares.get), shares)


def best_split(r: Rates, cpus: int, tolerance: float = 0.005) -> Prediction:
    """The best use of at most `cpus` CPUs: 1 for the driver, the others env runners and remote
    learners (1 CPU each; L = 0: the learner runs in the driver). Of the splits within
    `tolerance` of the highest predicted rate, the one that uses the fewest CPUs."""
    options = [predict(r, runners, n) for n in range(cpus - 1) for runners in range(1, cpus - n)]
    top = max(p.env_steps_per_s for p in options)
    near = [p for p in options if p.env_steps_per_s >= (1 - tolerance) * top]
    return min(near, key=lambda p: (p.runners + p.learners, -p.env_steps_per_s))


def smallest_near(r: Rates, target: float, fraction: float = 0.95) -> tuple[int, Prediction]:
    """The fewest CPUs whose best split reaches `fraction` of `target` env steps/s."""
    cpus = 2
    while best_split(r, cpus).env_steps_per_s < fraction * target:
        cpus += 1
    return cpus, best_split(r, cpus)


def print_model(r: Rates) -> None:
    u = 1 / r.update_local_s
    print(
        f"\n5. model, per dedicated CPU: intensity I={INTENSITY:g}, B={BATCH} rows per learner, "
        f"{ROUND_STEPS} env steps per runner round"
    )
    print(
        f"   s = {r.sample_per_runner:.0f} env steps/s per runner; local learner u = {u:.0f} "
        f"updates/s, u B / I = {u * BATCH / INTENSITY:.0f} env steps/s"
    )
    per_extra_learner = max(0.0, r.driver_s[1] - r.driver_s[0])
    print(
        f"   L remote learners (total batch L x {BATCH}), per update: driver "
        f"{1e3 * r.driver_s[0]:.2f} ms + (L-1) x {1e3 * per_extra_learner:.2f} ms, learner "
        f"{1e3 * r.learner_s[1]:.2f} ms (L=1: {1e3 * r.learner_s[0]:.2f}),\n"
        f"   network ring allreduce 2(L-1) x ({1e6 * r.allreduce_step_s:.0f} us + "
        f"{r.parameters * FLOAT_BYTES / 1e3:.0f} kB / L at {8 * NETWORK_BYTES_PER_S / 1e9:.0f} "
        "Gbit/s) (assumed)"
    )
    for n in (1, 2, 4, 8, 16, 32, 64):
        t = sum(update_parts(r, n).values())
        print(
            f"     L={n:<3} {1e3 * t:6.2f} ms per update of {n * BATCH:5d} rows, efficiency "
            f"{r.update_local_s / t:.2f} per learner, learner-bound "
            f"{n * BATCH / (INTENSITY * t):6.0f} env steps/s"
        )
    print(
        f"   {'CPUs':>5}  {'best split (CPUs used)':<24} {'env steps/s':>11}  {'bottleneck':<36}"
        " | local learner, R=CPUs-1: env steps/s; R that gives 99%"
    )
    for cpus in CPU_COUNTS:
        b = best_split(r, cpus)
        one = predict(r, cpus - 1, 0)
        enough = next(
            n
            for n in range(1, cpus)
            if predict(r, n, 0).env_steps_per_s >= 0.99 * one.env_steps_per_s
        )
        used = f"R={b.runners} L={b.learners} ({1 + b.runners + b.learners})"
        share = f" ({b.shares[b.bottleneck]:.0%})" if b.bottleneck in b.shares else ""
        print(
            f"   {cpus:>5}  {used:<24} {b.env_steps_per_s:>11.0f}  {b.bottleneck + share:<36} | "
            f"{one.env_steps_per_s:6.0f} ({one.bottleneck}); R={enough}"
        )
    top = best_split(r, max(CPU_COUNTS))
    cpus, near = smallest_near(r, top.env_steps_per_s)
    print(
        f"   95% of the {max(CPU_COUNTS)}-CPU rate with {cpus} CPUs (R={near.runners}, "
        f"L={near.learners}: {near.env_steps_per_s:.0f} env steps/s)"
    )
    # Sensitivity: the 2-learner CPU figure may be inflated by 2 busy cores (gloo waiting for a
    # descheduled peer); assume instead that a learner costs its 1-learner figure at any L and
    # that an allreduce step takes half the assumed latency.
    lean = replace(
        r, learner_s=(r.learner_s[0], r.learner_s[0]), allreduce_step_s=r.allreduce_step_s / 2
    )
    figures = ", ".join(
        f"{c} CPUs {best_split(lean, c).env_steps_per_s:.0f} (L={best_split(lean, c).learners})"
        for c in CPU_COUNTS
    )
    print(
        f"   optimistic (learner at its 1-learner cost for every L, allreduce steps "
        f"{1e6 * lean.allreduce_step_s:.0f} us): {figures}"
    )
    # And the other way: every extra learner costs the driver as much as the first one does
    # (the slope between 1 and 2 learners is a difference of two noisy figures), and an
    # allreduce step takes twice the assumed latency.
    heavy = replace(
        r, driver_s=(r.driver_s[0], 2 * r.driver_s[0]), allreduce_step_s=2 * r.allreduce_step_s
    )
    figures = ", ".join(
        f"{c} CPUs {best_split(heavy, c).env_steps_per_s:.0f} (L={best_split(heavy, c).learners})"
        for c in CPU_COUNTS
    )
    print(
        f"   pessimistic (each extra learner costs the driver {1e3 * heavy.driver_s[0]:.2f} ms, "
        f"allreduce steps {1e6 * heavy.allreduce_step_s:.0f} us): {figures}"
    )


# -- 6. two nodes -----------------------------------------------------------------------------
def train_rate(algo, seconds: float) -> Window:
    """Whole training iterations after learning has started. Units: env steps; cpu: the
    driver, then each env runner."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import (
        LEARNER_RESULTS,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
        NUM_MODULE_STEPS_TRAINED_LIFETIME,
    )

    def trained(result: dict) -> float:
        module = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
        return module.get(NUM_MODULE_STEPS_TRAINED_LIFETIME, 0)

    runners = runner_clock(algo)

    def clock() -> np.ndarray:
        return np.concatenate([driver_clock(), runners()])

    result = algo.train()
    while trained(result) == 0:
        result = algo.train()
    steps0, cpu0, start = result[NUM_ENV_STEPS_SAMPLED_LIFETIME], clock(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = algo.train()
    wall = time.perf_counter() - start
    steps = result[NUM_ENV_STEPS_SAMPLED_LIFETIME] - steps0
    return Window(steps, wall, clock() - cpu0, os.getloadavg()[0])


def two_node_check(seconds: float, rates: Rates) -> None:
    """A local cluster of two nodes (1 CPU each), an env runner on each: sampling, then whole
    training iterations against the model. The cluster gets its own Ray temp dir, so that no
    other process's `ray.init()` finds it through /tmp/ray/ray_current_cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from training.rl.dqn import build_dqn_config

    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Unix socket paths
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        options = bench_options(num_env_runners=2, num_cpus_per_env_runner=1.0)
        algo = build_dqn_config(options).build_algo()
        try:
            nodes = algo.env_runner_group.foreach_env_runner(
                lambda _: ray.get_runtime_context().get_node_id(), local_env_runner=False
            )
            sampled, _ = sampling(algo, seconds)
            trained = train_rate(algo, 2 * seconds)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(temp_dir, ignore_errors=True)

    model = predict(rates, 2, 0)
    driver_cpu, runner_cpu = float(trained.cpu[0]), float(trained.cpu[1:].sum())
    print(f"   env runners on {len(set(nodes))} distinct nodes")
    print(
        f"   sampling, 2 runners: {sampled.per_wall_s / 2:6.0f} env steps/s per runner (wall), "
        f"{sampled.per_cpu_s:6.0f} per runner CPU s (one node: {rates.sample_per_runner:.0f})  "
        f"{load(sampled.load)}"
    )
    print(
        f"   training iterations (sample_async, local learner): {trained.per_wall_s:5.0f} env "
        f"steps/s (wall), {trained.units / driver_cpu:5.0f} per driver CPU s, "
        f"{trained.units / runner_cpu:5.0f} per runner CPU s  {load(trained.load)}"
    )
    print(
        f"   model, R=2 L=0: {model.env_steps_per_s:5.0f} env steps/s per dedicated driver CPU "
        f"(bottleneck: {model.bottleneck}); runners could give {2 * rates.sample_per_runner:.0f}"
    )
    print(
        "   Both nodes share this machine's 2 cores with the driver and other work, over "
        "loopback: this\n   checks that runners on two nodes sample and train as on one, and "
        "the driver-side model;\n   not network costs, and not wall-clock speed."
    )


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        return "CPU model unknown"
    return names[0] if names else "CPU model unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement window")
    parser.add_argument("--skip-cluster", action="store_true", help="skip the two-node check")
    args = parser.parse_args()

    import gymnasium as gym
    import ray
    import torch

    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu_model()}; ray {ray.__version__}, gymnasium "
        f"{gym.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs  {load()}"
    )
    start = time.perf_counter()
    measured = measure_all(args.seconds)
    print_measurements(measured)
    rates = Rates.of(measured)
    print_model(rates)
    print("\n6. two nodes on this machine (ray.cluster_utils.Cluster, 1 CPU each)")
    if args.skip_cluster:
        print("   skipped (--skip-cluster)")
    else:
        two_node_check(args.seconds, rates)
    print(f"\ntotal {time.perf_counter() - start:.0f} s  {load()}")


if __name__ == "__main__":
    main()
