"""`FastDQN`: RLlib's DQN (its RLModule, dueling and double-Q loss and learner, unchanged) trained
on ready numpy batches from `training.rl.replay.PrioritizedTransitionBuffer`.

Where RLlib 2.60's DQN spends a training step of 128 transitions (measured on 2 cores, README):
sampling its episode replay buffer (a Python loop per transition) 5-14 ms, turning 128 one-step
episodes back into a batch with the learner connectors about 3 ms, updating priorities one by one
about 1.5 ms, metrics reduced and weights synced after every update; the gradient step itself
about 3 ms. `FastDQN.training_step` keeps the gradient step and drops the rest:

1. sample one round of episodes from the env runners (with `sample_async`, the round they
   sampled during the last updates, and request the next one at once);
2. add them to the numpy buffer (n-step returns computed with arrays when added);
3. run the updates the sampled env steps pay for: `training_intensity` replayed transitions per
   sampled one (RLlib's DQN, counting the driver's idle env runner, replays about twice as many
   as it is asked for with one remote runner), each `learner_group.update(batch=...)` on a batch
   from `buffer.sample`, then `buffer.update_priorities` with that update's TD errors;
4. reduce the learner's metrics and sync the weights to the env runners once per step.

With several learners (`num_learners`), `LearnerGroup` gives learner k the contiguous rows
[k ceil(B/n), (k+1) ceil(B/n)) of a batch and returns results in learner order; the TD errors are
concatenated in that order, so each priority lands on its own transition (RLlib's own DQN deals
episodes round-robin and gets this wrong). Tested in tests/test_fast_dqn.py.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.dqn.dqn import DQN, DQNConfig
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_RESULTS,
    REPLAY_BUFFER_SAMPLE_TIMER,
    REPLAY_BUFFER_UPDATE_PRIOS_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)
from ray.rllib.utils.numpy import convert_to_numpy

from training.rl.replay import DEFAULT_PRIORITY_EPSILON, PrioritizedTransitionBuffer

REPLAY_BUFFER_TYPE = "training.rl.replay.PrioritizedTransitionBuffer"
"""`replay_buffer_config["type"]` of every run (a string, as RLlib's config wants)."""


def buffer_class_of(type_: Any) -> type:
    """The buffer class named by `replay_buffer_config["type"]` ("module.Class" or a class)."""
    if isinstance(type_, str):
        module, _, name = type_.rpartition(".")
        type_ = getattr(importlib.import_module(module), name)
    if not (isinstance(type_, type) and issubclass(type_, PrioritizedTransitionBuffer)):
        raise ValueError(
            f"FastDQN needs replay_buffer_config['type'] = {REPLAY_BUFFER_TYPE!r} (or a subclass), "
            f"got {type_!r}"
        )
    return type_


# The learner: RLlib's DQN loss, with TD errors returned apart and metrics reduced on request.
TD_ERRORS = "td_errors"
"""Key of the TD errors (numpy, this learner's rows of the batch) in `FastDQNTorchLearner.update`
results."""
RESULTS = "results"
"""Key of the reduced metrics (or None) in `FastDQNTorchLearner.update`'s return value."""


class FastDQNTorchLearner(DQNTorchLearner):
    """`DQNTorchLearner` whose `update` returns {TD_ERRORS: np.ndarray, RESULTS: dict | None}:
    the TD errors of this update (popped from the learner's metrics, so they are never
    reduced or shipped as metrics), and `self.metrics.reduce()` only when `reduce_metrics`.
    Between reductions the learner's MetricsLogger accumulates (sums and lifetime sums stay
    exact; window-1 stats such as qf_loss keep the last value)."""

    def update(self, *args, reduce_metrics: bool = True, **kwargs):
        kwargs.pop("_no_metrics_reduce", None)
        super().update(*args, _no_metrics_reduce=True, **kwargs)
        td_errors = []
        for module_id in list(self.module.keys()):
            key = (module_id, TD_ERROR_KEY)
            if key in self.metrics:
                td_errors += [np.atleast_1d(x) for x in convert_to_numpy(self.metrics.peek(key))]
                self.metrics.delete(*key)
        return {
            TD_ERRORS: np.concatenate(td_errors) if td_errors else np.zeros(0, np.float32),
            RESULTS: self.metrics.reduce() if reduce_metrics else None,
        }

    def apply_gradients(self, gradients_dict) -> None:
        """RLlib's step, with one finiteness check of all gradients instead of two per parameter
        (each a tensor reduction and a host sync: about a tenth of an update of this size).
        Anything unusual (non-finite gradients, gradient scalers, torch lr schedulers, skipping
        non-finite updates) goes to RLlib's own `apply_gradients`, which handles it."""
        import torch

        grads = list(gradients_dict.values())
        simple = (
            not self.config.torch_skip_nan_gradients
            and self._grad_scalers is None
            and self._lr_scheduler_classes is None
            and grads
        )
        if not simple or not bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all()):
            super().apply_gradients(gradients_dict)
            return
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = grad
        for module_id, optimizer_names in self._module_optimizers.items():
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()


# The config.
class FastDQNConfig(DQNConfig):
    """`DQNConfig` of `FastDQN`: the same options (`.training(...)` as DQN's), the numpy buffer
    and `FastDQNTorchLearner` by default. `replay_buffer_config` takes `capacity`, `alpha`,
    `beta`, `priority_epsilon`; `n_step` must be an int."""

    def __init__(self, algo_class=None) -> None:
        super().__init__(algo_class=algo_class or FastDQN)
        self.replay_buffer_config = {
            "type": REPLAY_BUFFER_TYPE,
            "capacity": 50_000,
            "alpha": 0.6,
            "beta": 0.4,
            "priority_epsilon": DEFAULT_PRIORITY_EPSILON,
        }
        self.sample_async = False

    def training(self, *, sample_async=NotProvided, **kwargs) -> FastDQNConfig:
        """DQN's `.training(...)`, plus `sample_async`: let the env runners sample the next
        round while the learner updates on the last one (their policy is then one training
        step older; with no remote env runners sampling stays synchronous)."""
        super().training(**kwargs)
        if sample_async is not NotProvided:
            self.sample_async = sample_async
        return self

    def get_default_learner_class(self):
        return FastDQNTorchLearner

    def validate(self) -> None:
        # RLlib's `update_from_dict` (Tune, `Algorithm(config=dict)`, `default_resource_request`)
        # turns a dotted "type" string into the class, and DQNConfig.validate then insists on an
        # EpisodeReplayBuffer subclass. Check the type here and keep it a string for RLlib.
        buffer_cls = buffer_class_of(self.replay_buffer_config["type"])
        self.replay_buffer_config["type"] = f"{buffer_cls.__module__}.{buffer_cls.__qualname__}"
        super().validate()
        if not isinstance(self.n_step, int):
            self._value_error(f"FastDQN needs an int n_step, got {self.n_step!r}")
        learner = self.learner_class
        if not (isinstance(learner, type) and issubclass(learner, FastDQNTorchLearner)):
            self._value_error(
                f"FastDQN needs FastDQNTorchLearner (or a subclass) as its learner, got {learner!r}"
            )


# The algorithm.
class FastDQN(DQN):
    """RLlib DQN (dueling, double Q: RLlib's module and loss, unchanged) trained on ready numpy
    batches from `PrioritizedTransitionBuffer`. See the module docstring."""

    @classmethod
    def get_default_config(cls) -> FastDQNConfig:
        return FastDQNConfig()

    def setup(self, config) -> None:
        super().setup(config)
        if getattr(self, "_module_is_stateful", False):
            raise NotImplementedError("FastDQN replays single transitions: no recurrent modules")
        if self.config.is_multi_agent:
            raise NotImplementedError("FastDQN is single-agent (one module)")
        self._update_credit = 0.0

    def _create_local_replay_buffer_if_necessary(self, config):
        rb = dict(config["replay_buffer_config"])
        cls = buffer_class_of(rb.pop("type"))
        return cls(n_step=config["n_step"], gamma=config["gamma"], seed=config["seed"], **rb)

    # -- one training step ----------------------------------------------------------------------
    def training_step(self) -> None:
        """Sample one round from the env runners, add it, run the updates the sampled env steps
        pay for (training_intensity), then sync weights once."""
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = self._sample()
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        if not env_runner_results:
            return  # async: the first requests were just sent
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            self.local_replay_buffer.add(episodes)

        env_steps = self.metrics.peek(
            (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
        )
        if (
            env_steps < self.config.num_steps_sampled_before_learning_starts
            or len(self.local_replay_buffer) < self.config.total_train_batch_size
        ):
            return
        self._update_credit += self._updates_paid_by(sum(len(e) for e in episodes))
        num_updates = int(self._update_credit)
        self._update_credit -= num_updates
        if num_updates == 0:
            return
        timesteps = {
            # DQNLearner.after_gradient_based_update reads this for the target-network update
            # (target_network_update_freq is in env steps) and for lr schedules: without it the
            # target network is never updated.
            NUM_ENV_STEPS_SAMPLED_LIFETIME: env_steps,
            NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}
            ),
        }
        for i in range(num_updates):
            self._update_once(timesteps, reduce_metrics=i == num_updates - 1)
        self.metrics.log_dict(
            self.local_replay_buffer.get_metrics(), key=REPLAY_BUFFER_RESULTS, window=1
        )
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=[DEFAULT_MODULE_ID],
                inference_only=True,
            )

    def _sample(self) -> tuple[list, list[dict]]:
        """One round of episodes from the env runners, and their metrics. Synchronous as in
        RLlib's DQN; with `sample_async` the round that ran during the last updates is fetched
        (waiting for it if needed) and the next one is requested at once (after the weights
        sync of the last step, which the runner therefore applies first)."""
        group = self.env_runner_group
        if not getattr(self.config, "sample_async", False) or group.num_remote_env_runners() == 0:
            return synchronous_parallel_sample(
                worker_set=group,
                concat=True,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
        results = group.foreach_env_runner_async_fetch_ready(
            func=_sample_with_metrics,
            tag=SAMPLE_TAG,
            timeout_seconds=self.config.sample_timeout_s,
        )
        return [e for episodes, _ in results for e in episodes], [m for _, m in results]

    def _updates_paid_by(self, sampled_env_steps: int) -> float:
        """Updates owed for `sampled_env_steps` new env steps: replayed/sampled = intensity."""
        intensity = self.config.training_intensity
        if not intensity:
            return 1.0  # RLlib's meaning of None: one update per sampling round
        return sampled_env_steps * intensity / self.config.total_train_batch_size

    def _update_once(self, timesteps: dict[str, Any], reduce_metrics: bool = True) -> None:
        """One learner update on a fresh prioritized batch, then its priorities; the learner's
        metrics are reduced and aggregated only when `reduce_metrics` (once per training step).
        With n learners `LearnerGroup` gives learner i the contiguous rows [i ceil(B/n),
        (i+1) ceil(B/n)) of the batch and returns results in learner order, so the concatenated
        TD errors are in the batch's order."""
        buffer = self.local_replay_buffer
        size = self.config.total_train_batch_size
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            batch = buffer.sample(size, beta=self.config.replay_buffer_config.get("beta"))
        ma_batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=size)
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            results = self.learner_group.update(
                batch=ma_batch, timesteps=timesteps, reduce_metrics=reduce_metrics
            )
        td_errors = np.concatenate([r[TD_ERRORS] for r in results])
        results = [r[RESULTS] for r in results if r[RESULTS] is not None]
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_UPDATE_PRIOS_TIMER)):
            buffer.update_priorities(td_errors)
        if results:
            self.metrics.aggregate(results, key=LEARNER_RESULTS)


SAMPLE_TAG = "fast_dqn_sample"
"""Tag of the asynchronous sample requests (RLlib limits in-flight requests per tag)."""


def _sample_with_metrics(env_runner):
    return env_runner.sample(), env_runner.get_metrics()
