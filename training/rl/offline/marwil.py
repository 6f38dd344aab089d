"""Behaviour cloning and MARWIL (RLlib's algorithms, learners and modules, unchanged) trained on
logged transitions held in memory.

RLlib's BC learns pi(a | s) by maximising the likelihood of the logged actions; MARWIL (Wang et
al. 2018) weights each logged action by exp(beta * A / sqrt(running mean of A^2)), with the
advantage A = G - V(s) and a value function V fitted to the return G. RLlib's offline pipeline
(Ray Data and an `OfflinePreLearner`) turns every Parquet row into its own one-step episode, so
its MARWIL computes G as r + gamma V(s') from a copy of V frozen when the data is first mapped:
no return information ever reaches the advantages. Here G is the Monte-Carlo discounted return
of the rest of the logged stay (`Columns.VALUE_TARGETS`, computed per stay when the logs are
loaded, as in the MARWIL paper), and the batches go straight to the learner: no Ray Data, no
actor pool, the same data path as `training.rl.offline.cql`.
"""

from __future__ import annotations

import numpy as np
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.bc import BC, BCConfig
from ray.rllib.algorithms.marwil import MARWIL, MARWILConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import LEARNER_RESULTS, LEARNER_UPDATE_TIMER, TIMERS

from training.rl.replay import PrioritizedTransitionBuffer


class LoggedBatchesMixin:
    """An RLlib BC/MARWIL algorithm whose `training_step` runs `updates_per_iteration` gradient
    steps on uniform batches of the transitions given to `load_transitions` (not on RLlib's
    `OfflineData`)."""

    def load_transitions(self, transitions: dict[str, np.ndarray]) -> None:
        """The logged transitions to train on: OBS as the network sees it (normalised), ACTIONS
        and, for MARWIL, VALUE_TARGETS (the discounted return from that step), one row a step."""
        count = len(transitions[Columns.ACTIONS])
        buffer = PrioritizedTransitionBuffer(
            capacity=count, alpha=0.0, beta=0.0, seed=self.config.seed
        )  # alpha = 0: a uniform sampler with unit weights
        buffer.add_transitions(transitions)
        self.logged_transitions_ = buffer

    def training_step(self) -> None:
        buffer = getattr(self, "logged_transitions_", None)
        if buffer is None:
            raise RuntimeError(f"{type(self).__name__}: call load_transitions before train()")
        size = self.config.train_batch_size_per_learner
        updates = self.config.updates_per_iteration
        for i in range(updates):
            batch = buffer.sample(size)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                results = self.learner_group.update(
                    batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=size),
                    _no_metrics_reduce=i < updates - 1,  # reduce the learner's metrics once
                )
        self.metrics.aggregate([r for r in results if r is not None], key=LEARNER_RESULTS)


def _training_with_updates(config, updates_per_iteration, kwargs):
    if updates_per_iteration is not NotProvided:
        config.updates_per_iteration = updates_per_iteration
    return kwargs


class LoggedBC(LoggedBatchesMixin, BC):
    """RLlib's BC trained on in-memory logged transitions (`load_transitions`)."""

    @classmethod
    def get_default_config(cls) -> LoggedBCConfig:
        return LoggedBCConfig()


class LoggedMARWIL(LoggedBatchesMixin, MARWIL):
    """RLlib's MARWIL trained on in-memory logged transitions with Monte-Carlo value targets."""

    @classmethod
    def get_default_config(cls) -> LoggedMARWILConfig:
        return LoggedMARWILConfig()


class LoggedBCConfig(BCConfig):
    """`BCConfig` of `LoggedBC`, plus `updates_per_iteration` in `.training(...)`."""

    def __init__(self, algo_class=None) -> None:
        super().__init__(algo_class=algo_class or LoggedBC)
        self.updates_per_iteration = 100
        self.dataset_num_iters_per_learner = 1  # unused (no OfflineData), but validate() asks

    def training(self, *, updates_per_iteration=NotProvided, **kwargs) -> LoggedBCConfig:
        super().training(**_training_with_updates(self, updates_per_iteration, kwargs))
        return self


class LoggedMARWILConfig(MARWILConfig):
    """`MARWILConfig` of `LoggedMARWIL`, plus `updates_per_iteration` in `.training(...)`."""

    def __init__(self, algo_class=None) -> None:
        super().__init__(algo_class=algo_class or LoggedMARWIL)
        self.updates_per_iteration = 100
        self.dataset_num_iters_per_learner = 1  # unused (no OfflineData), but validate() asks

    def training(self, *, updates_per_iteration=NotProvided, **kwargs) -> LoggedMARWILConfig:
        super().training(**_training_with_updates(self, updates_per_iteration, kwargs))
        return self
