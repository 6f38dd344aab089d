"""Discrete CQL: the project's DQN (RLlib's dueling double-DQN module and loss, `FastDQN`) trained
on logged transitions only, with the conservative penalty of CQL(H) (Kumar et al. 2020):

    loss = TD loss + alpha * mean_i w_i [logsumexp_a Q(s_i, a) - Q(s_i, a_i)]

where a_i is the logged action and w_i the sample weight (1: the logged transitions are sampled
uniformly). The penalty pushes down the Q-values of actions the logs rarely took and up the
logged ones, so the greedy policy does not chase the over-estimated values of actions it has no
data on. RLlib 2.60's own CQL is SAC-based and continuous-action only, hence this small learner.

`DiscreteCQL.training_step` replaces sampling the env with drawing batches from the logged
transitions (`load_transitions`, the project's replay buffer with alpha = 0: uniform sampling,
unit weights, no priorities); it never builds env runners (`_is_online = False`, as RLlib's
MARWIL). The target network is updated every `target_network_update_freq` transitions trained
on: DQN's learner reads that counter where online training passes the sampled env steps.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TIMERS,
)

from training.rl.fast_dqn import RESULTS, FastDQN, FastDQNConfig, FastDQNTorchLearner
from training.rl.replay import PrioritizedTransitionBuffer

CQL_PENALTY_KEY = "cql_penalty"
"""Learner-result key of the conservative penalty (before the alpha weight)."""


def cql_penalty(
    q_values: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """CQL(H)'s penalty: the (weighted) mean over the batch of logsumexp_a Q(s, a) - Q(s, a_logged).

    `q_values` (B, n_actions), `actions` (B,) the logged actions, `weights` (B,) or None (all 1).
    It is >= 0 and unchanged when every Q(s, .) moves by the same amount."""
    q_logged = q_values.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    gap = torch.logsumexp(q_values, dim=-1) - q_logged
    return torch.mean(gap if weights is None else weights * gap)


class DiscreteCQLTorchLearner(FastDQNTorchLearner):
    """`FastDQNTorchLearner` (RLlib's DQN loss, TD errors returned apart) plus alpha x the CQL
    penalty on the online network's Q(s, .)."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        td_loss = super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        penalty = cql_penalty(fwd_out[QF_PREDS], batch[Columns.ACTIONS], batch.get("weights"))
        self.metrics.log_value((module_id, CQL_PENALTY_KEY), penalty, window=1)
        return td_loss + config.cql_alpha * penalty


class DiscreteCQLConfig(FastDQNConfig):
    """`FastDQNConfig` of `DiscreteCQL`: DQN's `.training(...)` options plus `cql_alpha` (the
    penalty's weight) and `updates_per_iteration` (gradient steps per `train()`). Offline: no
    env runners, and no minimum of sampled env steps per iteration (nothing is sampled; RLlib's
    default of 1000 would make `train()` loop forever)."""

    def __init__(self, algo_class=None) -> None:
        super().__init__(algo_class=algo_class or DiscreteCQL)
        self._is_online = False
        self.cql_alpha = 0.1
        self.updates_per_iteration = 100
        self.n_step = 1
        self.min_sample_timesteps_per_iteration = 0
        self.min_time_s_per_iteration = 0

    def training(
        self, *, cql_alpha=NotProvided, updates_per_iteration=NotProvided, **kwargs
    ) -> DiscreteCQLConfig:
        super().training(**kwargs)
        if cql_alpha is not NotProvided:
            self.cql_alpha = cql_alpha
        if updates_per_iteration is not NotProvided:
            self.updates_per_iteration = updates_per_iteration
        return self

    def get_default_learner_class(self):
        return DiscreteCQLTorchLearner

    def validate(self) -> None:
        super().validate()
        if self.cql_alpha < 0:
            self._value_error(f"cql_alpha must be >= 0, got {self.cql_alpha}")
        if self.num_atoms != 1:
            self._value_error("discrete CQL needs num_atoms = 1 (no distributional Q)")
        if self.n_step != 1:
            self._value_error("discrete CQL trains on one-step TD targets: n_step must be 1")


class DiscreteCQL(FastDQN):
    """Discrete CQL on logged transitions; see the module docstring. Call `load_transitions`
    once before `train()`."""

    @classmethod
    def get_default_config(cls) -> DiscreteCQLConfig:
        return DiscreteCQLConfig()

    def setup(self, config) -> None:
        super().setup(config)
        self.transitions_trained_ = 0

    def _create_local_replay_buffer_if_necessary(self, config):
        return None  # the logged transitions come with `load_transitions`

    def load_transitions(self, transitions: dict[str, np.ndarray]) -> None:
        """The logged transitions to train on: OBS and NEXT_OBS as the network sees them
        (normalised), ACTIONS, REWARDS, TERMINATEDS, TRUNCATEDS, each with one row per step."""
        count = len(transitions[Columns.ACTIONS])
        seed = self.config.seed
        buffer = PrioritizedTransitionBuffer(capacity=count, alpha=0.0, beta=0.0, seed=seed)
        buffer.add_transitions({**transitions, "n_step": np.ones(count, np.float32)})
        self.local_replay_buffer = buffer

    def training_step(self) -> None:
        """`updates_per_iteration` gradient steps, each on a uniform batch of logged transitions."""
        if self.local_replay_buffer is None:
            raise RuntimeError("DiscreteCQL has no logged transitions: call load_transitions first")
        size = self.config.total_train_batch_size
        updates = self.config.updates_per_iteration
        for i in range(updates):
            batch = self.local_replay_buffer.sample(size)
            self.transitions_trained_ += size
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                results = self.learner_group.update(
                    batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=size),
                    # DQN's learner updates the target network from this counter.
                    timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.transitions_trained_},
                    reduce_metrics=i == updates - 1,
                )
        self.metrics.aggregate(
            [r[RESULTS] for r in results if r[RESULTS] is not None], key=LEARNER_RESULTS
        )
