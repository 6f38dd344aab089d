"""Dueling Double DQN with prioritized n-step replay: the RLlib config of `algo: dqn`.

Trained by `training.rl.fast_dqn.FastDQN` on batches from the numpy prioritized buffer of
`training.rl.replay`; the shared parts come from `training.rl.config_parts`.
"""

from __future__ import annotations

from training.rl.config_parts import configure_learner_process, q_network_model, shared_config
from training.rl.options import RLOptions

__all__ = ["build_dqn_config", "configure_learner_process"]


def build_dqn_config(options: RLOptions):  # -> FastDQNConfig (import kept lazy: Ray is heavy)
    """The RLlib config of a DQN run: dueling double DQN with prioritized n-step replay."""
    from training.rl.fast_dqn import REPLAY_BUFFER_TYPE, FastDQNConfig

    return (
        shared_config(FastDQNConfig(), options, options.rollout_fragment_length)
        .rl_module(model_config=q_network_model(options))
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
    )
