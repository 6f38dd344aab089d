"""IMPALA and APPO (asynchronous actor-critic with V-trace): the RLlib configs of `algo: impala`
and `algo: appo`.

Env runners sample while the learner trains; the learner corrects for the policy lag with V-trace.
APPO adds PPO's clipped objective, a target network and a circular buffer that reuses each batch.
With `num_learners: 0` the learner is a thread in the driver (no extra CPU); no aggregator actors
(each would take a CPU that Tune does not count). Options: `RLOptions.impala` / `.appo`.
"""

from __future__ import annotations

from training.rl.config_parts import policy_gradient_model, shared_config
from training.rl.options import APPOOptions, IMPALAOptions, RLOptions


def _actor_critic(config, options: RLOptions, own: IMPALAOptions | APPOOptions):
    """The parts IMPALA and APPO share."""
    return (
        shared_config(config, options, own.rollout_fragment_length)
        .rl_module(model_config=policy_gradient_model(options))
        .learners(num_aggregator_actors_per_learner=0)
        .training(
            lr=own.lr,
            gamma=options.gamma,
            train_batch_size_per_learner=own.train_batch_size,
            vf_loss_coeff=own.vf_loss_coeff,
            entropy_coeff=own.entropy_coeff,
            grad_clip=own.grad_clip,
        )
    )


def build_impala_config(options: RLOptions):  # -> IMPALAConfig
    """The RLlib config of an IMPALA run."""
    from ray.rllib.algorithms.impala import IMPALAConfig

    impala = options.impala
    return _actor_critic(IMPALAConfig(), options, impala).training(
        vtrace_clip_rho_threshold=impala.vtrace_clip_rho_threshold,
        vtrace_clip_pg_rho_threshold=impala.vtrace_clip_pg_rho_threshold,
        broadcast_interval=impala.broadcast_interval,
    )


def build_appo_config(options: RLOptions):  # -> APPOConfig
    """The RLlib config of an APPO run (never `learner_queue_size`: APPO refuses it)."""
    from ray.rllib.algorithms.appo import APPOConfig

    appo = options.appo
    return _actor_critic(APPOConfig(), options, appo).training(
        clip_param=appo.clip_param,
        use_kl_loss=appo.use_kl_loss,
        circular_buffer_num_batches=appo.circular_buffer_num_batches,
        circular_buffer_iterations_per_batch=appo.circular_buffer_iterations_per_batch,
        target_network_update_freq=appo.target_network_update_freq,
        tau=appo.tau,
    )
