"""DQN speed on this machine, each figure beside its baseline or floor, all in one run.

    python benchmarks/bench_rl.py                       # everything (about 10 minutes)
    python benchmarks/bench_rl.py --skip-peer           # without Stable-Baselines3
    python benchmarks/bench_rl.py --skip-target         # throughput only
    pip install -e ".[bench]"                           # Stable-Baselines3, for the peer

1. Learner updates per second at batch 128 (replay sample + gradient step + priorities): RLlib's
   own DQN path (its episode replay buffer and learner connectors), this project's `FastDQN`
   path (numpy buffer, `learner_group.update(batch=...)`), and the floor: the same Dueling
   Double DQN update on the same prioritized batches in a plain PyTorch loop, one thread.
2. Env steps per second end to end with learning (whole training iterations) at the same replay
   ratio, about 32 replayed transitions per sampled one: RLlib's DQN asked for 16 (it replays
   about 31, counting the driver's idle env runner), `FastDQN` at 32, sampling synchronously
   and asynchronously, with 1 and 2 env runners.
3. The peer: Stable-Baselines3's DQN (no dueling, no prioritized replay: the usual single-process
   choice) with the same network sizes, batch, learning rate, target update and replay ratio,
   one process, one thread.
4. Wall time from the start of training to the first greedy evaluation whose mean return reaches
   the clinician protocol's on the same 2,000 validation episodes (evaluated every 1,000 env steps
   for both, evaluation time included), `FastDQN` with the default options and SB3, over
   several seeds (median and each seed).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import numpy as np  # noqa: E402

BATCH = 128
REPLAY_RATIO = 32.0
EVAL_EVERY_STEPS = 1000


def rate(step: Callable[[], None], seconds: float) -> float:
    """Calls of `step` per second over `seconds` (after one warm-up call)."""
    step()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls / (time.perf_counter() - start)


def bench_options(**changes):
    from training.rl.options import RLOptions

    base = {
        "num_env_runners": 1,
        "num_cpus_per_env_runner": 0.5,
        "evaluation_interval": 0,
        "episodes": None,
        "time_budget_s": None,
        "seed": 0,
    }
    return RLOptions(**{**base, **changes})


def stock_config(options):
    """RLlib's own DQN with the same options: its episode buffer (with the same priority
    floor) and learner. Intensity 16: RLlib then replays about 31 per sampled step."""
    from ray.rllib.algorithms.dqn import DQNConfig

    from training.rl.dqn import build_dqn_config

    values = build_dqn_config(options).to_dict()
    for key in ("sample_async", "_learner_class", "learner_class"):
        values.pop(key, None)
    config = DQNConfig().update_from_dict(values)
    config.replay_buffer_config = {
        "type": "PrioritizedEpisodeReplayBuffer",
        "capacity": options.replay_capacity,
        "alpha": options.replay_alpha,
        "beta": options.replay_beta,
    }
    config.training(training_intensity=options.training_intensity / 2)
    return config


def lifetime(algo) -> dict:
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        NUM_AGENT_STEPS_SAMPLED_LIFETIME,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )

    return {
        NUM_ENV_STEPS_SAMPLED_LIFETIME: algo.metrics.peek(
            (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
        ),
        NUM_AGENT_STEPS_SAMPLED_LIFETIME: algo.metrics.peek(
            (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}
        ),
    }


def stock_update(algo) -> Callable[[], None]:
    """One update as RLlib's DQN training step does it."""
    from ray.rllib.utils.metrics import LEARNER_RESULTS, TD_ERROR_KEY
    from ray.rllib.utils.numpy import convert_to_numpy
    from ray.rllib.utils.replay_buffers.utils import update_priorities_in_episode_replay_buffer

    cfg, timesteps = algo.config, lifetime(algo)

    def step() -> None:
        episodes = algo.local_replay_buffer.sample(
            num_items=BATCH, n_step=cfg.n_step, batch_length_T=0, lookback=0,
            min_batch_length_T=0, gamma=cfg.gamma, beta=cfg.replay_buffer_config.get("beta"),
            sample_episodes=True,
        )  # fmt: skip
        results = algo.learner_group.update(episodes=episodes, timesteps=timesteps)
        td = []
        for result in results:
            for module_results in result.values():
                if TD_ERROR_KEY in module_results:
                    td.extend(convert_to_numpy(module_results.pop(TD_ERROR_KEY).peek()))
        algo.metrics.aggregate(results, key=LEARNER_RESULTS)
        update_priorities_in_episode_replay_buffer(
            replay_buffer=algo.local_replay_buffer,
            td_errors={"default_policy": {TD_ERROR_KEY: np.concatenate(td)}},
        )

    return step


def fast_update(algo) -> Callable[[], None]:
    """One update as `FastDQN.training_step` does it, metrics reduced every 8 updates (a
    training step at the default options runs about 8)."""
    timesteps, count = lifetime(algo), [0]

    def step() -> None:
        count[0] += 1
        algo._update_once(timesteps, reduce_metrics=count[0] % 8 == 0)

    return step


def torch_floor(buffer, obs_dim: int, n_actions: int, options) -> Callable[[], None]:
    """The same update in a plain PyTorch loop: dueling network of the same sizes, Adam, double
    Q targets, Huber loss weighted by the importance weights, gradient clipping, priorities."""
    import torch
    from torch import nn

    hidden, head = list(options.fcnet_hiddens), list(options.head_fcnet_hiddens)

    def mlp(sizes: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers)

    class Dueling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = mlp([obs_dim, *hidden])
            self.value = nn.Sequential(mlp([hidden[-1], *head]), nn.Linear(head[-1], 1))
            self.advantage = nn.Sequential(mlp([hidden[-1], *head]), nn.Linear(head[-1], n_actions))

        def forward(self, x):
            h = self.encoder(x)
            a = self.advantage(h)
            return self.value(h) + a - a.mean(-1, keepdim=True)

    q, target = Dueling(), Dueling()
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=float(options.lr))

    def step() -> None:
        b = buffer.sample(BATCH)
        obs, next_obs = torch.from_numpy(b["obs"]), torch.from_numpy(b["new_obs"])
        actions = torch.from_numpy(b["actions"]).long()
        q_all = q(torch.cat([obs, next_obs]))
        q_taken = q_all[:BATCH].gather(1, actions[:, None]).squeeze(1)
        with torch.no_grad():
            best = q_all[BATCH:].argmax(1, keepdim=True)
            bootstrap = target(next_obs).gather(1, best).squeeze(1)
            done = torch.from_numpy(b["terminateds"]).float()
            discount = options.gamma ** torch.from_numpy(b["n_step"])
            y = torch.from_numpy(b["rewards"]) + discount * (1 - done) * bootstrap
        weights = torch.from_numpy(b["weights"])
        loss = (weights * nn.functional.huber_loss(q_taken, y, reduction="none")).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(q.parameters(), options.grad_clip)
        optimizer.step()
        buffer.update_priorities((q_taken - y).abs().detach().numpy())

    return step


def learner_rates(seconds: float) -> dict[str, float]:
    """Section 1: updates/s of the stock path, the FastDQN path and the plain PyTorch floor,
    measured in alternating blocks (the machine's load drifts)."""
    import torch

    from training.rl.dqn import build_dqn_config, configure_learner_process

    options = bench_options(num_steps_sampled_before_learning_starts=500)
    configure_learner_process(options)
    torch.set_num_threads(1)
    stock = stock_config(options).build_algo()
    fast = build_dqn_config(options).build_algo()
    try:
        for algo in (stock, fast):
            for _ in range(3):
                algo.train()  # fills the buffers (and warms the learners)
        module = fast.get_module()
        space, n_actions = module.observation_space, module.action_space.n
        paths = {
            "stock": stock_update(stock),
            "fast": fast_update(fast),
            "floor": torch_floor(fast.local_replay_buffer, space.shape[0], n_actions, options),
        }
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(3):
            for name, step in paths.items():
                rates[name].append(rate(step, seconds / 3))
    finally:
        stock.stop()
        fast.stop()
    return {name: float(np.median(values)) for name, values in rates.items()}


def end_to_end(config, seconds: float) -> dict[str, float]:
    """Whole training iterations for `seconds` after a warm-up: env steps/s, updates/s and the
    replay ratio achieved."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    algo = config.build_algo()
    try:
        trained = lambda r: r["learners"][DEFAULT_MODULE_ID]["num_module_steps_trained_lifetime"]  # noqa: E731
        first = algo.train()
        while trained(first) == 0:
            first = algo.train()
        steps0, trained0 = first["num_env_steps_sampled_lifetime"], trained(first)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            last = algo.train()
        wall = time.perf_counter() - start
    finally:
        algo.stop()
    steps = last["num_env_steps_sampled_lifetime"] - steps0
    replayed = trained(last) - trained0
    return {
        "env_steps_per_s": steps / wall,
        "updates_per_s": replayed / BATCH / wall,
        "replay_ratio": replayed / max(1, steps),
    }


class ValidationScore:
    """The greedy policy's mean return minus the protocol's on the 2,000 fixed validation
    episodes: the same episodes, seed and protocol as training's evaluation."""

    def __init__(self) -> None:
        import gymnasium as gym

        import sepsis_env  # noqa: F401
        from sepsis_env.policies import clinician_protocol, evaluate_vector, per_row
        from training.rl.options import SEPSIS_EVALUATION_EPISODES
        from training.rl.validation import VALIDATION_SEED

        self.envs = gym.make_vec(
            "SepsisEnv-v0",
            num_envs=SEPSIS_EVALUATION_EPISODES,
            vectorization_mode="vector_entry_point",
            split="val",
        )
        protocol = per_row(clinician_protocol, SEPSIS_EVALUATION_EPISODES, VALIDATION_SEED)
        self.protocol = evaluate_vector(protocol, self.envs, VALIDATION_SEED)
        self.seed = VALIDATION_SEED

    def __call__(self, actions: Callable[[np.ndarray], np.ndarray]) -> float:
        from sepsis_env.policies import evaluate_vector, paired_difference

        greedy = evaluate_vector(lambda obs, _: actions(obs), self.envs, self.seed)
        return paired_difference(greedy, self.protocol, "return")[0]


def fast_time_to_protocol(budget_s: float, seed: int) -> dict[str, float]:
    """Section 4 for FastDQN: the default options, evaluated every iteration (1,000 env steps)."""
    from training.rl.dqn import build_dqn_config, configure_learner_process
    from training.rl.options import RLOptions
    from training.rl.results import metrics_of

    options = RLOptions(seed=seed, evaluation_interval=1, episodes=None)
    start = time.monotonic()
    configure_learner_process(options)
    algo = build_dqn_config(options).build_algo()
    reached, steps = float("nan"), 0
    try:
        while time.monotonic() - start < budget_s:
            m = metrics_of(algo.train(), options, float("nan"))
            steps = m.env_steps
            if m.eval_return_minus_protocol >= 0:
                reached = time.monotonic() - start
                break
    finally:
        algo.stop()
    return {"seconds": reached, "env_steps": float(steps)}


SB3_TOTAL_STEPS = 500_000
"""The step count SB3's exploration schedule is laid out over (its schedules are fractions of
the `learn` call's total): epsilon then decays over the same 10,000 steps as ours."""


def sb3_model(seed: int):
    """Stable-Baselines3's DQN on the same normalised SepsisEnv (training split), with the
    project's default network sizes, batch, learning rate, target update, learning start and
    exploration, and the same replay ratio (train every 4 steps, one batch of 128: 32)."""
    from stable_baselines3 import DQN

    from training.rl.envs import env_config_of, make_env

    options = bench_options(seed=seed)
    env = make_env(env_config_of(options))
    net = list(options.fcnet_hiddens) + list(options.head_fcnet_hiddens)
    train_freq = int(BATCH / REPLAY_RATIO)
    return DQN(
        "MlpPolicy",
        env,
        learning_rate=float(options.lr),
        buffer_size=options.replay_capacity,
        learning_starts=options.num_steps_sampled_before_learning_starts,
        batch_size=BATCH,
        gamma=options.gamma,
        train_freq=train_freq,
        gradient_steps=1,
        target_update_interval=options.target_network_update_freq,
        exploration_initial_eps=options.epsilon_start,
        exploration_final_eps=options.epsilon_end,
        exploration_fraction=options.epsilon_timesteps / SB3_TOTAL_STEPS,
        max_grad_norm=options.grad_clip,
        policy_kwargs={"net_arch": net},
        seed=seed,
        device="cpu",
    )


def sb3_run(model, budget_s: float, every: int, check: Callable[[], bool]) -> tuple[float, int]:
    """One `learn` call over `SB3_TOTAL_STEPS` (so the exploration schedule is ours), stopped
    when `check()`, called every `every` env steps, is true or the wall budget is used up.
    Returns the seconds and env steps at the stop."""
    from stable_baselines3.common.callbacks import BaseCallback

    start = time.monotonic()

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % every:
                return True
            return not (check() or time.monotonic() - start > budget_s)

    model.learn(total_timesteps=SB3_TOTAL_STEPS, callback=Stop())
    return time.monotonic() - start, model.num_timesteps


def sb3_rate(seconds: float, seed: int) -> dict[str, float]:
    """Section 3: SB3's env steps/s with learning, measured after learning starts."""
    model = sb3_model(seed)
    marks: list[tuple[float, int]] = []

    def mark() -> bool:
        marks.append((time.perf_counter(), model.num_timesteps))
        return marks[-1][0] - marks[0][0] > seconds

    sb3_run(model, seconds + 60, 1000, lambda: model.num_timesteps >= 2000 and mark())
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"env_steps_per_s": (s1 - s0) / (t1 - t0)}


def sb3_time_to_protocol(budget_s: float, seed: int, score: ValidationScore) -> dict[str, float]:
    """Section 4 for SB3: evaluated every 1,000 env steps on the same validation episodes."""
    import torch

    from training.rl.envs import normalization_constants, normalize

    start = time.monotonic()
    model = sb3_model(seed)
    center, scale = normalization_constants(score.envs.single_observation_space)
    reached = [False]

    def greedy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            q = model.q_net(torch.from_numpy(normalize(obs, center, scale)))
        return q.argmax(-1).numpy()

    def check() -> bool:
        reached[0] = score(greedy) >= 0
        return reached[0]

    _, steps = sb3_run(model, budget_s - (time.monotonic() - start), EVAL_EVERY_STEPS, check)
    seconds = time.monotonic() - start
    return {"seconds": seconds if reached[0] else float("nan"), "env_steps": float(steps)}


def median_of(runs: list[dict[str, float]], key: str) -> float:
    """Median of `key` over runs; a run that never reached the target counts as infinite."""
    return float(np.median([r[key] if np.isfinite(r["seconds"]) else np.inf for r in runs]))


def print_time_to_protocol(name: str, runs: list[dict[str, float]]) -> None:
    """Each seed's wall time and env steps to the protocol's return, and their medians."""
    each = ", ".join(f"{r['seconds']:.1f} s/{r['env_steps']:,.0f}" for r in runs)
    print(f"   {name:<19} median {median_of(runs, 'seconds'):5.1f} s, "
          f"{median_of(runs, 'env_steps'):7,.0f} env steps  (each seed: {each}; nan: not "
          "within the budget)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per rate measurement")
    parser.add_argument("--target-budget", type=float, default=600.0)
    parser.add_argument("--skip-target", action="store_true")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-seeds", type=int, default=5, help="seeds of section 4")
    args = parser.parse_args()

    import gymnasium as gym
    import ray
    import torch

    from sepsis_rl.common.ray_local import init_ray
    from training.rl.dqn import build_dqn_config

    torch.set_num_threads(1)
    init_ray(num_cpus=2)
    try:
        print(f"ray {ray.__version__}, gymnasium {gym.__version__}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        print("\n1. learner updates/s, batch 128 (replay sample + update + priorities)")
        r = learner_rates(args.seconds)
        print(f"   RLlib's DQN path (episode buffer, connectors)  {r['stock']:6.0f}")
        print(f"   FastDQN path (numpy buffer, ready batches)     {r['fast']:6.0f}")
        print(f"   floor: plain PyTorch loop, same update, 1 thread {r['floor']:5.0f}")
        print(f"   FastDQN at {100 * r['fast'] / r['floor']:.0f}% of the floor "
              f"(RLlib's DQN at {100 * r['stock'] / r['floor']:.0f}%)")  # fmt: skip

        print(f"\n2. env steps/s end to end with learning, replay ratio ~{REPLAY_RATIO:g}")
        runs = {
            "RLlib's DQN, 1 env runner (intensity 16)": stock_config(bench_options()),
            "FastDQN, 1 env runner, synchronous": build_dqn_config(
                bench_options(sample_async=False)
            ),
            "FastDQN, 1 env runner, async sampling": build_dqn_config(bench_options()),
            "FastDQN, 2 env runners, async sampling": build_dqn_config(
                bench_options(num_env_runners=2)
            ),
        }
        e2e = {}
        for name, config in runs.items():
            e2e[name] = end_to_end(config, args.seconds)
            e = e2e[name]
            print(f"   {name:<42} {e['env_steps_per_s']:6.0f} env steps/s, "
                  f"{e['updates_per_s']:4.0f} updates/s, replay ratio {e['replay_ratio']:4.1f}",
                  flush=True)  # fmt: skip
        baseline = e2e["RLlib's DQN, 1 env runner (intensity 16)"]["env_steps_per_s"]
        best = max(e["env_steps_per_s"] for e in e2e.values())
        print(f"   fastest FastDQN run: {best / baseline:.1f}x RLlib's DQN")

        if not args.skip_peer:
            print("\n3. peer: Stable-Baselines3 DQN, same sizes and replay ratio, one process")
            peer = sb3_rate(args.seconds, args.seed)
            print(f"   SB3 DQN                                    {peer['env_steps_per_s']:6.0f} "
                  f"env steps/s (FastDQN best: {best:.0f})")  # fmt: skip

        if not args.skip_target:
            seeds = range(args.seed, args.seed + args.target_seeds)
            print(
                "\n4. wall time to the protocol's return on 2,000 validation episodes, seeds "
                f"{seeds.start}-{seeds.stop - 1} (one seed says little: the crossing is noisy)"
            )
            fast = [fast_time_to_protocol(args.target_budget, seed) for seed in seeds]
            print_time_to_protocol("FastDQN (defaults)", fast)
            if not args.skip_peer:
                score = ValidationScore()
                sb3 = [sb3_time_to_protocol(args.target_budget, seed, score) for seed in seeds]
                print_time_to_protocol("SB3 DQN", sb3)
                ratio = median_of(fast, "seconds") / median_of(sb3, "seconds")
                print(f"   median wall time: FastDQN {ratio:.1f}x SB3's")
        print(f"\nload at the end {os.getloadavg()[0]:.1f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
