"""What every algorithm's RLlib config shares: the environment and its normalisation, the env
runners, the learners, the greedy evaluation on validation patients, episode logging, fault
tolerance, reporting and the seed.

Each algorithm's builder (`training.rl.dqn`, `training.rl.ppo`, `training.rl.impala`) starts from
`shared_config(ItsConfig(), options, ...)` and adds only its own model and training settings, so
that adding the next algorithm is one file (and one line in `training.rl.algorithms.BUILDERS`).
"""

from __future__ import annotations

from typing import Any

from training.rl.callbacks import log_episode_return
from training.rl.envs import ENV_NAME, env_config_of, evaluation_env_config_of, register_env
from training.rl.options import RLOptions, evaluation_episodes_of
from training.rl.validation import custom_evaluation_for


def configure_learner_process(options: RLOptions) -> None:
    """Settings of the process that hosts the (local) learner; call before building."""
    import torch

    torch.set_num_threads(options.learner_torch_threads)


def shared_config(config: Any, options: RLOptions, rollout_fragment_length: int | str) -> Any:
    """`config` (an empty `AlgorithmConfig` of some algorithm) with every part the algorithms
    share set from `options`."""
    register_env()
    return (
        config.environment(ENV_NAME, env_config=env_config_of(options))
        .framework("torch")
        .env_runners(
            num_env_runners=options.num_env_runners,
            num_envs_per_env_runner=options.num_envs_per_env_runner,
            num_cpus_per_env_runner=options.num_cpus_per_env_runner,
            custom_resources_per_env_runner=dict(options.custom_resources_per_env_runner),
            rollout_fragment_length=rollout_fragment_length,
        )
        .learners(
            # Always explicit: IMPALA and APPO default to one remote learner, a third CPU that a
            # 2-core machine does not have (the run would wait for it forever).
            num_learners=options.num_learners,
            num_cpus_per_learner=options.num_cpus_per_learner if options.num_learners else "auto",
        )
        .evaluation(
            evaluation_interval=options.evaluation_interval or None,
            evaluation_duration=evaluation_episodes_of(options),
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=type(config).overrides(
                explore=False, env_config=evaluation_env_config_of(options)
            ),
            custom_evaluation_function=custom_evaluation_for(options),
        )
        .callbacks(on_episode_end=log_episode_return)
        .reporting(
            min_sample_timesteps_per_iteration=options.min_sample_timesteps_per_iteration,
            # IMPALA and APPO default to iterations of at least 10 s; here an iteration ends
            # when its env steps are sampled, as for DQN and PPO.
            min_time_s_per_iteration=0,
        )
        .fault_tolerance(
            restart_failed_env_runners=options.restart_failed_env_runners,
            max_num_env_runner_restarts=options.max_num_env_runner_restarts,
            delay_between_env_runner_restarts_s=options.delay_between_env_runner_restarts_s,
        )
        .debugging(seed=options.seed)
    )


def q_network_model(options: RLOptions) -> Any:
    """The Q network of DQN and of offline CQL: the shared hidden layers and the heads."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return DefaultModelConfig(
        fcnet_hiddens=list(options.fcnet_hiddens),
        fcnet_activation=options.fcnet_activation,
        head_fcnet_hiddens=list(options.head_fcnet_hiddens),
    )


def policy_gradient_model(options: RLOptions) -> Any:
    """The actor-critic network of PPO, APPO and IMPALA: the shared hidden layers, the policy
    and value heads, and whether the value function shares the hidden layers (explicit:
    `DefaultModelConfig` would otherwise share them)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return DefaultModelConfig(
        fcnet_hiddens=list(options.fcnet_hiddens),
        fcnet_activation=options.fcnet_activation,
        head_fcnet_hiddens=list(options.head_fcnet_hiddens),
        vf_share_layers=options.vf_share_layers,
    )
