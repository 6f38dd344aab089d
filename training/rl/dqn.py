"""One place that turns the options of a DQN run into an RLlib config (new API stack).

`sepsis-rl train`, `sepsis-rl tune rl` and the study all call `build_dqn_config(RLOptions(...))`:
RLlib's dueling double DQN, trained by `training.rl.fast_dqn.FastDQN` on batches from the numpy
prioritized buffer of `training.rl.replay`.
"""

from __future__ import annotations

from training.rl.callbacks import log_episode_return
from training.rl.envs import ENV_NAME, env_config_of, evaluation_env_config_of, register_env
from training.rl.options import RLOptions, evaluation_episodes_of
from training.rl.validation import custom_evaluation_for


def configure_learner_process(options: RLOptions) -> None:
    """Settings of the process that hosts the (local) learner; call before building."""
    import torch

    torch.set_num_threads(options.learner_torch_threads)


def build_dqn_config(options: RLOptions):  # -> FastDQNConfig (import kept lazy: Ray is heavy)
    """The RLlib config of a run: dueling double DQN with prioritized n-step replay."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from training.rl.fast_dqn import REPLAY_BUFFER_TYPE, FastDQNConfig

    register_env()
    runner_resources = dict(options.custom_resources_per_env_runner)
    return (
        FastDQNConfig()
        .environment(ENV_NAME, env_config=env_config_of(options))
        .framework("torch")
        .env_runners(
            num_env_runners=options.num_env_runners,
            num_envs_per_env_runner=options.num_envs_per_env_runner,
            num_cpus_per_env_runner=options.num_cpus_per_env_runner,
            custom_resources_per_env_runner=runner_resources,
            rollout_fragment_length=options.rollout_fragment_length,
        )
        .learners(
            num_learners=options.num_learners,
            num_cpus_per_learner=options.num_cpus_per_learner if options.num_learners else "auto",
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
            sample_async=options.sample_async,
            replay_buffer_config={
                "type": REPLAY_BUFFER_TYPE,  # a string: RLlib imports the class
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
            evaluation_config=FastDQNConfig.overrides(
                explore=False, env_config=evaluation_env_config_of(options)
            ),
            custom_evaluation_function=custom_evaluation_for(options),
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
