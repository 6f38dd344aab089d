"""One place that turns the options of a DQN run into an RLlib `DQNConfig` (new API stack).

`sepsis-rl train` and `sepsis-rl tune rl` both call `build_dqn_config(RLOptions(...))`; a config
file (YAML or JSON) holds any subset of the `RLOptions` fields, the command line overrides it, and
the effective options are written next to the run as `config.yaml`.

The environment is created inside every env runner by `make_env`, registered with Ray under
`ENV_NAME`: it calls `gymnasium.make(env_id, **env_kwargs)` there, so an id in Gymnasium's
`module:EnvId-v0` form imports its module in each runner process, and it wraps the env in
`BoxNormalization`, the fixed affine map evaluation and `recommend` apply again outside RLlib.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

REPLAY_BUFFER_TYPE = "training.replay.PriorityFloorEpisodeReplayBuffer"
"""The replay buffer class of every run (imported by RLlib from this path)."""

ENV_NAME = "sepsis_rl_env"
"""The name under which `make_env` is registered with Ray's registry."""

DEFAULT_ENV_ID = "SepsisEnv-v0"
"""The environment trained by default (registered by `import sepsis_env`)."""

SEPSIS_TRAIN_KWARGS: dict[str, Any] = {"split": "train"}
"""`gymnasium.make` arguments SepsisEnv is trained with unless `env_kwargs` says otherwise:
only the training split's patients, so evaluation on the test split sees new patients."""

UNBOUNDED = 1e6
"""A Box bound larger than this in magnitude is treated as unbounded: that coordinate is passed
through unscaled (CartPole's velocities are bounded by float32's max)."""


@dataclass
class RLOptions:
    """Every option of a DQN run; the field list is the documentation."""

    # Environment
    env: str = DEFAULT_ENV_ID
    """Gymnasium id to train on, also `module:EnvId-v0` (the module is imported in each runner)."""
    env_kwargs: dict[str, Any] | None = None
    """Keyword arguments for `gymnasium.make` (None: SepsisEnv on the train split, else none)."""
    normalize_obs: bool = True
    """Map each bounded observation coordinate affinely from its Box bounds onto [-1, 1]."""
    seed: int = 0
    """The run's one seed: env runners, network initialisation, evaluation episodes."""

    # Network
    fcnet_hiddens: list[int] = field(default_factory=lambda: [128, 128])
    """Sizes of the shared hidden layers of the Q network."""
    fcnet_activation: str = "relu"
    """Activation of the hidden layers (relu, tanh, swish)."""
    head_fcnet_hiddens: list[int] = field(default_factory=lambda: [64])
    """Sizes of the hidden layers of each dueling head (value and advantage)."""

    # DQN
    dueling: bool = True
    """Dueling architecture: separate value and advantage streams."""
    double_q: bool = True
    """Double Q-learning: the online network picks the next action, the target network values it."""
    lr: float | list[list[float]] = 5e-4
    """Adam learning rate, or a piecewise-linear schedule `[[env_step, lr], ...]` over sampled env
    steps (for example `[[0, 1e-3], [1000000, 1e-4]]`)."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """Length of the n-step returns used as TD targets. RLlib 2.60's episode replay buffer never
    samples the last n-1 transitions of an episode, the ones that meet the outcome directly
    (see `training.replay`), so 1 is the default."""
    train_batch_size: int = 128
    """Transitions per learner update, drawn from the replay buffer."""
    training_intensity: float | None = 16.0
    """Replayed transitions per sampled transition (None: one update per sampling round)."""
    target_network_update_freq: int = 500
    """Env steps between target-network updates."""
    tau: float = 1.0
    """Target update mix: 1.0 copies the online weights, < 1 is a Polyak average."""
    grad_clip: float = 10.0
    """Gradient clipping by global norm."""
    num_steps_sampled_before_learning_starts: int = 1000
    """Env steps collected with the initial policy before the first update."""

    # Exploration
    epsilon_start: float = 1.0
    """Initial epsilon of epsilon-greedy exploration."""
    epsilon_end: float = 0.02
    """Final epsilon."""
    epsilon_timesteps: int = 10_000
    """Env steps over which epsilon decays linearly from start to end."""

    # Prioritized replay
    replay_capacity: int = 50_000
    """Capacity of the prioritized replay buffer, in transitions."""
    replay_alpha: float = 0.6
    """How strongly priorities shape sampling (0: uniform)."""
    replay_beta: float = 0.4
    """Importance-sampling correction of prioritized sampling (1: full correction)."""
    replay_priority_epsilon: float = 0.01
    """Added to each |TD error| to make its priority (reward units), so no transition's priority
    falls to ~0 and stalls learning (`training.replay.PriorityFloorEpisodeReplayBuffer`)."""

    # Sampling and resources
    num_env_runners: int = 1
    """Remote env-runner actors sampling in parallel (0: sample in the driver)."""
    num_envs_per_env_runner: int = 4
    """Environment copies stepped together in each env runner."""
    num_cpus_per_env_runner: float = 1.0
    """CPUs reserved per env runner (fractional values let runners share a core)."""
    rollout_fragment_length: int = 16
    """Env steps per env per sampling round (RLlib's 'auto' came out as 1: very slow)."""
    min_sample_timesteps_per_iteration: int = 1000
    """Env steps sampled per training iteration at least."""
    custom_resources_per_env_runner: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each env runner needs (for example to pin runners to a node)."""

    learner_torch_threads: int = 1
    """Torch threads of the learner in the driver: more threads slowed a small-MLP update about
    13-fold on a busy 2-core machine (0.64 s vs 0.048 s at batch 128)."""

    # Fault tolerance
    restart_failed_env_runners: bool = True
    """Replace an env runner that died (killed process, lost node) and keep training."""
    max_num_env_runner_restarts: int = 1000
    """How many env-runner restarts the run tolerates in total."""
    delay_between_env_runner_restarts_s: float = 2.0
    """Wait before restarting a failed env runner (RLlib's default is 60 s)."""

    # Evaluation during training (greedy, in the driver; picks the best checkpoint)
    evaluation_interval: int = 2
    """Evaluate the greedy policy every this many iterations (0: never)."""
    evaluation_episodes: int | None = None
    """Episodes per evaluation during training (None: 2,000 for SepsisEnv, the same validation
    episodes every time, run as one batch by `training.rl_validation`; 20 for other envs, which
    RLlib samples one step at a time)."""
    evaluation_split: str | None = "val"
    """Patient split of the evaluation env when the env takes a `split` (never the test split:
    the best checkpoint would be chosen on the patients it is later judged on)."""

    # Budget and bookkeeping (used by the training loop, not by RLlib)
    episodes: int | None = 3600
    """Stop after this many training episodes (the original study trained 2,000). With the
    defaults, 3,600 episodes take 7-8 minutes on 2 cores and `checkpoints/best` beat the
    protocol on return and survival on test patients in both seeds we ran (README)."""
    env_steps: int | None = None
    """Stop after this many sampled env steps."""
    time_budget_s: float | None = 840.0
    """Stop after this many seconds of wall time (default: 14 minutes, the quality target's cap)."""
    checkpoint_every: int = 10
    """Write the `last` checkpoint (with the replay buffer) every this many iterations."""

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (what `config.yaml` holds)."""
        return dataclasses.asdict(self)


def option_names() -> list[str]:
    """Names of all `RLOptions` fields."""
    return [f.name for f in dataclasses.fields(RLOptions)]


def options_from_dict(values: dict[str, Any], base: RLOptions | None = None) -> RLOptions:
    """`base` (or the defaults) with `values` applied; unknown keys raise `ValueError`."""
    unknown = sorted(set(values) - set(option_names()))
    if unknown:
        raise ValueError(
            f"unknown RL option(s) {unknown}; valid options are: {', '.join(option_names())}"
        )
    return dataclasses.replace(base or RLOptions(), **values)


def load_options(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RLOptions:
    """Options from a YAML or JSON file (any subset of the fields), then `overrides` on top."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text()
        try:
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(
                f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {err}"
            ) from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return options_from_dict(values)


def save_options(options: RLOptions, path: str | Path) -> None:
    """Write the effective options as YAML (readable by `load_options`)."""
    Path(path).write_text(yaml.safe_dump(options.to_dict(), sort_keys=False))


class BoxNormalization(gym.ObservationWrapper):
    """Maps each bounded Box coordinate affinely onto [-1, 1]; unbounded ones pass unchanged.

    The map depends only on the env's declared bounds, so training (inside RLlib's env runners),
    evaluation and `recommend` (outside RLlib, with a bare RLModule) apply exactly the same one.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"BoxNormalization needs a Box observation space, got {space}")
        self.center_, self.scale_ = normalization_constants(space)
        bounded = (np.abs(space.low) < UNBOUNDED) & (np.abs(space.high) < UNBOUNDED)
        low = np.where(bounded, -1.0, space.low).astype(np.float32)
        high = np.where(bounded, 1.0, space.high).astype(np.float32)
        self.observation_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return normalize(observation, self.center_, self.scale_)


def normalization_constants(space: gym.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """Center and half-width per coordinate; (0, 1) for unbounded coordinates."""
    low = np.asarray(space.low, dtype=np.float64)
    high = np.asarray(space.high, dtype=np.float64)
    bounded = (np.abs(low) < UNBOUNDED) & (np.abs(high) < UNBOUNDED) & (high > low)
    low, high = np.where(bounded, low, -1.0), np.where(bounded, high, 1.0)
    center = np.where(bounded, (low + high) / 2.0, 0.0)
    scale = np.where(bounded, (high - low) / 2.0, 1.0)
    return center.astype(np.float32), scale.astype(np.float32)


def normalize(observation: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The affine map of `BoxNormalization`, for one observation or a batch."""
    return ((np.asarray(observation, dtype=np.float32) - center) / scale).astype(np.float32)


def make_raw_env(env_config: dict[str, Any]) -> gym.Env:
    """The unwrapped-by-us Gymnasium env: `gymnasium.make(env_id, **env_kwargs)`."""
    env_id = resolve_env_id(env_config["env_id"])
    if _needs_sepsis_env(env_id):
        import sepsis_env  # noqa: F401  registers SepsisEnv-v0

    return gym.make(env_id, **env_config.get("env_kwargs", {}))


def make_env(env_config: dict[str, Any]) -> gym.Env:
    """Env creator run in every env runner: the raw env, normalised if asked."""
    env = make_raw_env(env_config)
    if env_config.get("normalize_obs", True):
        env = BoxNormalization(env)
    return env


def resolve_env_id(env_id: str) -> str:
    """Short names for ids (`icu-sepsis`) resolved to their Gymnasium ids."""
    from sepsis_env.icu_sepsis import ENV_ALIASES

    return ENV_ALIASES.get(env_id, env_id)


def _needs_sepsis_env(env_id: str) -> bool:
    """A bare `SepsisEnv-*` id needs `import sepsis_env` first (the `module:` form imports it)."""
    return env_id.startswith("SepsisEnv")


def is_sepsis_env(env_id: str) -> bool:
    """Whether `env_id` is SepsisEnv (`SepsisEnv-v0` or `sepsis_env:SepsisEnv-v0`)."""
    return env_id.split(":")[-1].startswith("SepsisEnv")


def resolved_env_kwargs(options: RLOptions) -> dict[str, Any]:
    """The `gymnasium.make` keyword arguments the run trains with."""
    if options.env_kwargs is not None:
        return dict(options.env_kwargs)
    if is_sepsis_env(options.env):
        return dict(SEPSIS_TRAIN_KWARGS)
    return {}


def env_config_of(options: RLOptions) -> dict[str, Any]:
    """The `env_config` dict handed to `make_env` in each runner."""
    return {
        "env_id": options.env,
        "env_kwargs": resolved_env_kwargs(options),
        "normalize_obs": options.normalize_obs,
    }


EPISODE_RETURNS_KEY = "episode_returns"
"""Result key (under `env_runners`) of the list of returns of the episodes ended this iteration."""


def log_episode_return(*, episode, metrics_logger=None, **kwargs) -> None:
    """`on_episode_end` callback: keep every episode's return, not only RLlib's mean."""
    if metrics_logger is not None:
        metrics_logger.log_value(
            EPISODE_RETURNS_KEY, float(episode.get_return()), reduce="item_series"
        )


def configure_learner_process(options: RLOptions) -> None:
    """Settings of the process that hosts the (local) learner; call before building."""
    import torch

    torch.set_num_threads(options.learner_torch_threads)


def register_env() -> None:
    """Register `make_env` under `ENV_NAME` (call in the driver before building the algorithm)."""
    from ray.tune.registry import register_env as ray_register_env

    ray_register_env(ENV_NAME, make_env)


def _custom_evaluation(options: RLOptions):
    """ICU-Sepsis (known dynamics) is evaluated exactly, SepsisEnv by paired validation episodes
    in its vector env; other envs by RLlib's sampled episodes (None)."""
    from training.rl_icu_sepsis import custom_evaluation_for
    from training.rl_validation import validation_function_for

    return custom_evaluation_for(options) or validation_function_for(options)


def evaluation_env_config_of(options: RLOptions) -> dict[str, Any]:
    """The `env_config` of the greedy evaluation during training (validation patients)."""
    config = env_config_of(options)
    if options.evaluation_split is not None and "split" in config["env_kwargs"]:
        config["env_kwargs"]["split"] = options.evaluation_split
    return config


SEPSIS_EVALUATION_EPISODES = 2000
"""Default validation episodes per evaluation for SepsisEnv (batched, well under a second)."""
SAMPLED_EVALUATION_EPISODES = 20
"""Default episodes per evaluation for other envs (sampled by RLlib)."""


def evaluation_episodes_of(options: RLOptions) -> int:
    """The episodes per evaluation during training, defaults resolved."""
    if options.evaluation_episodes is not None:
        return options.evaluation_episodes
    return SEPSIS_EVALUATION_EPISODES if is_sepsis_env(options.env) else SAMPLED_EVALUATION_EPISODES


def build_dqn_config(options: RLOptions):  # -> DQNConfig (import kept lazy: Ray is heavy)
    """The RLlib `DQNConfig` of a run: dueling double DQN with prioritized n-step replay."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    register_env()
    runner_resources = dict(options.custom_resources_per_env_runner)
    return (
        DQNConfig()
        .environment(ENV_NAME, env_config=env_config_of(options))
        .framework("torch")
        .env_runners(
            num_env_runners=options.num_env_runners,
            num_envs_per_env_runner=options.num_envs_per_env_runner,
            num_cpus_per_env_runner=options.num_cpus_per_env_runner,
            custom_resources_per_env_runner=runner_resources,
            rollout_fragment_length=options.rollout_fragment_length,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(options.fcnet_hiddens),
                fcnet_activation=options.fcnet_activation,
                head_fcnet_hiddens=list(options.head_fcnet_hiddens),
            )
        )
        .training(
            dueling=options.dueling,
            double_q=options.double_q,
            lr=options.lr,
            gamma=options.gamma,
            n_step=options.n_step,
            train_batch_size=options.train_batch_size,
            training_intensity=options.training_intensity,
            target_network_update_freq=options.target_network_update_freq,
            tau=options.tau,
            grad_clip=options.grad_clip,
            num_steps_sampled_before_learning_starts=options.num_steps_sampled_before_learning_starts,
            epsilon=[
                (0, options.epsilon_start),
                (options.epsilon_timesteps, options.epsilon_end),
            ],
            replay_buffer_config={
                # RLlib's PrioritizedEpisodeReplayBuffer with a priority floor; RLlib wants the
                # type as a string (it checks for "EpisodeReplayBuffer" in it).
                "type": REPLAY_BUFFER_TYPE,
                "capacity": options.replay_capacity,
                "alpha": options.replay_alpha,
                "beta": options.replay_beta,
                "priority_epsilon": options.replay_priority_epsilon,
            },
        )
        .evaluation(
            evaluation_interval=options.evaluation_interval or None,
            evaluation_duration=evaluation_episodes_of(options),
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=DQNConfig.overrides(
                explore=False, env_config=evaluation_env_config_of(options)
            ),
            custom_evaluation_function=_custom_evaluation(options),
        )
        .callbacks(on_episode_end=log_episode_return)
        .reporting(min_sample_timesteps_per_iteration=options.min_sample_timesteps_per_iteration)
        .fault_tolerance(
            restart_failed_env_runners=options.restart_failed_env_runners,
            max_num_env_runner_restarts=options.max_num_env_runner_restarts,
            delay_between_env_runner_restarts_s=options.delay_between_env_runner_restarts_s,
        )
        .debugging(seed=options.seed)
    )
