"""PPO (clipped surrogate objective, GAE): the RLlib config of `algo: ppo`.

Synchronous: each iteration samples `ppo.train_batch_size` env steps with the current policy, then
runs `ppo.num_epochs` passes of minibatch updates. Options: `RLOptions.ppo` (`PPOOptions`).
"""

from __future__ import annotations

from training.rl.config_parts import policy_gradient_model, shared_config
from training.rl.options import RLOptions


def build_ppo_config(options: RLOptions):  # -> PPOConfig
    """The RLlib config of a PPO run."""
    from ray.rllib.algorithms.ppo import PPOConfig

    ppo = options.ppo
    # "auto": RLlib sizes the fragments so that the runners' envs fill the batch exactly.
    return (
        shared_config(PPOConfig(), options, rollout_fragment_length="auto")
        .rl_module(model_config=policy_gradient_model(options))
        .training(
            lr=ppo.lr,
            gamma=options.gamma,
            train_batch_size_per_learner=ppo.train_batch_size,
            minibatch_size=ppo.minibatch_size,
            num_epochs=ppo.num_epochs,
            lambda_=ppo.gae_lambda,
            clip_param=ppo.clip_param,
            vf_clip_param=ppo.vf_clip_param,
            vf_loss_coeff=ppo.vf_loss_coeff,
            entropy_coeff=ppo.entropy_coeff,
            grad_clip=ppo.grad_clip,
            use_kl_loss=ppo.use_kl_loss,
        )
    )
