"""The prioritized replay buffer of our DQN runs: n-step transitions in numpy arrays.

RLlib 2.60's `PrioritizedEpisodeReplayBuffer` stores episodes and samples with a Python loop per
transition (sum-tree reductions, `scipy.signal.lfilter`, one `SingleAgentEpisode` built per
sampled transition): 5-14 ms per batch of 128, more than the gradient step itself. It also never
samples the last `n_step - 1` transitions of an episode, the ones that meet the outcome directly,
and it floors priorities only at 1e-12, so one transition with a TD error of ~0 shrinks every
importance weight (normalised by the largest) and stalls learning.

`PrioritizedTransitionBuffer` (Schaul et al. 2016, proportional variant) does every operation on
a whole batch with array arithmetic:

* episode chunks from RLlib's env runners become n-step transitions when they are added
  (`add`): R_i = sum_{k<n_i} gamma^k r_{i+k}, the bootstrap observation obs_{i+n_i}, and n_i = n
  except at an episode's end, where the last steps get k < n steps and `terminated` says whether
  to bootstrap. The last n-1 steps of a chunk whose episode goes on wait for its next chunk;
* priorities p_i = (|delta_i| + priority_epsilon)^alpha in a sum tree and a min tree stored as
  arrays; new transitions get the largest priority seen so far;
* `sample(B)`: stratified proportional sampling, P(i) = p_i / sum_k p_k, with importance weights
  w_j = (N P(j))^-beta / max_i (N P(i))^-beta (the max over the whole buffer), so w in (0, 1].

`training.rl.fast_dqn.FastDQN` feeds its batches straight to RLlib's learner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.core.columns import Columns

DEFAULT_PRIORITY_EPSILON = 0.01
"""Added to every |TD error| before it becomes a priority (in reward units)."""

MAX_PENDING_AGE = 50
"""Add calls after which a pending tail whose episode never continued (its env runner died, or
its sample timed out) is written as short k-step transitions instead of waiting for ever."""

# The batch keys RLlib's DQN loss reads (`algorithms/dqn/torch/dqn_torch_learner.py`).
OBS, NEXT_OBS, ACTIONS, REWARDS = Columns.OBS, Columns.NEXT_OBS, Columns.ACTIONS, Columns.REWARDS
TERMINATEDS, TRUNCATEDS = Columns.TERMINATEDS, Columns.TRUNCATEDS
WEIGHTS, N_STEP = "weights", "n_step"
STEP_REWARDS = "step_rewards"
"""Stored beside each n-step return (n > 1): the rewards it sums, for recomputing it."""


class _Trees:
    """A sum tree and a min tree over `capacity` leaves (leaf i at `size + i`, root at 1)."""

    def __init__(self, capacity: int) -> None:
        self.size = 1 << max(0, int(capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.sum = np.zeros(2 * self.size, dtype=np.float64)
        self.min = np.full(2 * self.size, np.inf, dtype=np.float64)

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Leaves `idx` := `values`; every ancestor recomputed from its two children (exact, so
        no rounding drift accumulates; duplicate indices write identical values)."""
        node = idx + self.size
        self.sum[node] = values
        self.min[node] = values
        for _ in range(self.depth):
            node >>= 1
            left, right = 2 * node, 2 * node + 1
            self.sum[node] = self.sum[left] + self.sum[right]
            self.min[node] = np.minimum(self.min[left], self.min[right])

    def total(self) -> float:
        return float(self.sum[1])

    def smallest(self) -> float:
        return float(self.min[1])

    def leaves(self, idx: np.ndarray) -> np.ndarray:
        return self.sum[idx + self.size]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """For each prefix mass, the leaf whose cumulative interval contains it."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = mass.copy()
        for _ in range(self.depth):
            left = 2 * node
            left_sum = self.sum[left]
            go_right = mass > left_sum
            mass -= left_sum * go_right
            node = left + go_right
        return node - self.size


class PrioritizedTransitionBuffer:
    """Prioritized replay of n-step transitions in numpy arrays (Schaul et al. 2016).

    Sampling is proportional to p_i = (|delta_i| + priority_epsilon)^alpha (new transitions get
    the largest priority seen so far); each sampled transition carries the importance weight
    w_j = (N P(j))^-beta / max_i (N P(i))^-beta, the max over the whole buffer (the smallest
    priority), so weights are in (0, 1].

    A stored transition i holds obs_i, a_i, R_i = sum_{k<n_i} gamma^k r_{i+k},
    next_obs_i = obs_{i+n_i}, terminated_i (the episode terminated at i+n_i), truncated_i, and
    n_i (<= n_step: shorter at an episode's end). The DQN loss then uses
    R_i + gamma^{n_i} (1 - terminated_i) Q_target(next_obs_i, argmax_a Q(next_obs_i, a)).
    """

    def __init__(
        self,
        capacity: int = 50_000,
        alpha: float = 0.6,
        beta: float = 0.4,
        priority_epsilon: float = DEFAULT_PRIORITY_EPSILON,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int | None = None,
        **unused: Any,  # other keys of RLlib's replay_buffer_config
    ) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        if priority_epsilon <= 0:
            raise ValueError(f"priority_epsilon must be > 0, got {priority_epsilon}")
        if not isinstance(n_step, int) or n_step < 1:
            raise ValueError(
                f"n_step must be an int >= 1 for this buffer, got {n_step!r} (RLlib's "
                "(min, max) ranges are not supported: returns are computed when data is added)"
            )
        self.capacity = int(capacity)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.priority_epsilon = float(priority_epsilon)
        self.n_step = n_step
        self.gamma = float(gamma)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._trees = _Trees(self.capacity)
        self._data: dict[str, np.ndarray] | None = None  # allocated at the first add
        self._next = 0  # slot the next transition goes to
        self._size = 0
        self._max_priority = 1.0  # largest |delta| + eps seen (before ** alpha)
        self._write_count = np.zeros(self.capacity, dtype=np.int64)  # detects overwritten slots
        self._last_idx: np.ndarray | None = None
        self._last_write_count: np.ndarray | None = None
        self._pending: dict[Any, dict[str, Any]] = {}  # episode id -> tail waiting for more
        self._add_calls = 0
        self._added_lifetime = 0
        self._sampled_lifetime = 0

    # -- size ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def get_num_timesteps(self) -> int:
        """Transitions stored (the name RLlib's buffers use; train.py reports it)."""
        return self._size

    # -- adding -------------------------------------------------------------------------------
    def add(self, episodes: list) -> int:
        """Add RLlib `SingleAgentEpisode` chunks (what env runners' `sample()` returns).
        Returns the number of transitions written."""
        self._add_calls += 1
        parts = [self._transitions_of_chunk(e) for e in episodes if len(e) > 0]
        parts += self._flush_stale_tails()
        parts = [p for p in parts if p is not None and len(p[ACTIONS])]
        if not parts:
            return 0
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.add_transitions(batch)
        return len(batch[ACTIONS])

    def _transitions_of_chunk(self, episode) -> dict[str, np.ndarray] | None:
        """n-step transitions of one episode chunk, its pending tail (if any) prepended."""
        obs = np.asarray(episode.get_observations(), dtype=np.float32)
        actions = np.asarray(episode.get_actions())
        rewards = np.asarray(episode.get_rewards(), dtype=np.float64)
        if obs.ndim != 2:
            raise NotImplementedError(
                f"PrioritizedTransitionBuffer stores flat Box observations, got shape {obs.shape}"
            )
        out = []
        tail = self._pending.pop(episode.id_, None)
        if tail is not None:
            if tail["t_end"] == episode.t_started:
                obs = np.concatenate([tail["obs"][:-1], obs])
                actions = np.concatenate([tail["actions"], actions])
                rewards = np.concatenate([tail["rewards"], rewards])
            else:  # a chunk went missing (sample timeout): close the tail on its own
                out.append(
                    self._nstep(tail["obs"], tail["actions"], tail["rewards"], True, False, False)
                )
        done = episode.is_done
        out.append(
            self._nstep(obs, actions, rewards, done, episode.is_terminated, episode.is_truncated)
        )
        if not done and self.n_step > 1:
            keep = min(self.n_step - 1, len(actions))
            self._pending[episode.id_] = {
                "obs": obs[-keep - 1 :],
                "actions": actions[-keep:],
                "rewards": rewards[-keep:],
                "t_end": episode.t_started + len(episode),
                "added_at": self._add_calls,
            }
        out = [o for o in out if o is not None]
        if not out:
            return None
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def _nstep(self, obs, actions, rewards, close, terminated, truncated):
        """Transitions of steps 0..L-1 of one contiguous piece (obs has L+1 rows). All of them
        if `close` (the episode ended, or the piece will not be continued: the last ones get
        k < n steps), else only those with n full steps inside the piece."""
        length = len(actions)
        n = self.n_step
        starts = np.arange(length if close else max(0, length - n + 1))
        if len(starts) == 0:
            return None
        ends = np.minimum(starts + n, length)  # index of the bootstrap observation
        padded = np.concatenate([rewards, np.zeros(n)])
        # step_rewards[j, k] = r_{i+k} for the k < n_i steps of transition j (0 after them).
        step_rewards = np.stack(
            [padded[starts + k] * (starts + k < ends) for k in range(n)], axis=1
        )
        at_end = ends == length
        transitions = {
            OBS: obs[starts],
            NEXT_OBS: obs[ends],
            ACTIONS: actions[starts],
            REWARDS: self._discounted(step_rewards).astype(np.float32),
            TERMINATEDS: at_end & bool(terminated),
            TRUNCATEDS: at_end & bool(truncated),
            N_STEP: (ends - starts).astype(np.float32),
        }
        if n > 1:  # kept so that a changed gamma (PBT) can recompute the returns
            transitions[STEP_REWARDS] = step_rewards.astype(np.float32)
        return transitions

    def _discounted(self, step_rewards: np.ndarray) -> np.ndarray:
        """n-step returns sum_k gamma^k r_{i+k} from the rewards of each step."""
        return step_rewards @ (self.gamma ** np.arange(step_rewards.shape[1]))

    def _flush_stale_tails(self) -> list[dict[str, np.ndarray]]:
        stale = [
            k for k, t in self._pending.items() if self._add_calls - t["added_at"] > MAX_PENDING_AGE
        ]
        out = []
        for key in stale:
            t = self._pending.pop(key)
            out.append(self._nstep(t["obs"], t["actions"], t["rewards"], True, False, False))
        return out

    def add_transitions(self, batch: dict[str, np.ndarray]) -> None:
        """Write ready transitions (keys OBS, NEXT_OBS, ACTIONS, REWARDS, TERMINATEDS,
        TRUNCATEDS, N_STEP) at the write pointer, with the largest priority so far."""
        count = len(batch[ACTIONS])
        if self._data is None:
            self._data = {
                k: np.zeros((self.capacity,) + v.shape[1:], dtype=v.dtype) for k, v in batch.items()
            }
        if count > self.capacity:  # keep the newest
            batch = {k: v[-self.capacity :] for k, v in batch.items()}
            count = self.capacity
        idx = (self._next + np.arange(count)) % self.capacity
        for key, values in batch.items():
            self._data[key][idx] = values
        self._write_count[idx] += 1
        self._trees.set(idx, np.full(count, self._max_priority**self.alpha))
        self._next = int((self._next + count) % self.capacity)
        self._size = min(self.capacity, self._size + count)
        self._added_lifetime += count

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, num_items: int, beta: float | None = None) -> dict[str, np.ndarray]:
        """A batch of `num_items` transitions drawn proportionally to priority (stratified),
        with importance weights under WEIGHTS. Remembers the indices for `update_priorities`."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        beta = self.beta if beta is None else beta
        total = self._trees.total()
        mass = (np.arange(num_items) + self._rng.random(num_items)) * (total / num_items)
        idx = np.minimum(self._trees.find(mass), self._size - 1)
        probs = self._trees.leaves(idx) / total
        p_min = self._trees.smallest() / total
        weights = (probs / p_min) ** (-beta)  # = (N P(j))^-beta / max_i (N P(i))^-beta
        self._last_idx = idx
        self._last_write_count = self._write_count[idx].copy()
        self._sampled_lifetime += num_items
        batch = {k: v[idx] for k, v in self._data.items() if k != STEP_REWARDS}
        batch[WEIGHTS] = weights.astype(np.float32)
        return batch

    def update_priorities(self, td_errors: np.ndarray, indices: np.ndarray | None = None) -> None:
        """Priorities of the last sampled transitions := (|td| + eps)^alpha. Slots written again
        since they were sampled keep their new transition's priority."""
        idx = self._last_idx if indices is None else indices
        td = np.abs(np.asarray(td_errors, dtype=np.float64)).reshape(-1)
        if idx is None or len(td) != len(idx):
            raise ValueError(
                f"{len(td)} TD errors for {0 if idx is None else len(idx)} sampled transitions"
            )
        if indices is None:
            fresh = self._write_count[idx] == self._last_write_count
            idx, td = idx[fresh], td[fresh]
        priority = td + self.priority_epsilon
        self._max_priority = max(self._max_priority, float(priority.max(initial=0.0)))
        self._trees.set(idx, priority**self.alpha)

    def get_metrics(self) -> dict[str, Any]:
        return {
            "num_transitions": self._size,
            "num_transitions_added_lifetime": self._added_lifetime,
            "num_transitions_sampled_lifetime": self._sampled_lifetime,
            "num_pending_tails": len(self._pending),
        }

    # -- state --------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue: the filled slots, priorities, pointers, tails, rng."""
        filled = np.arange(self._size)
        return {
            "config": {
                "capacity": self.capacity,
                "alpha": self.alpha,
                "beta": self.beta,
                "priority_epsilon": self.priority_epsilon,
                "n_step": self.n_step,
                "gamma": self.gamma,
            },
            "data": None
            if self._data is None
            else {k: v[: self._size].copy() for k, v in self._data.items()},
            "priorities": self._trees.leaves(filled).copy(),
            "write_count": self._write_count[: self._size].copy(),
            "next": self._next,
            "size": self._size,
            "max_priority": self._max_priority,
            "pending": dict(self._pending),
            "add_calls": self._add_calls,
            "added_lifetime": self._added_lifetime,
            "sampled_lifetime": self._sampled_lifetime,
            "rng": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        cfg = state["config"]
        if cfg["n_step"] != self.n_step:
            raise ValueError(
                f"replay buffer state holds {cfg['n_step']}-step returns; this run uses "
                f"n_step={self.n_step}"
            )
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(f"replay state holds {size} transitions, capacity is {self.capacity}")
        self._trees = _Trees(self.capacity)
        self._write_count = np.zeros(self.capacity, dtype=np.int64)
        self._data = None
        if state["data"] is not None:
            self._data = {
                k: np.zeros((self.capacity,) + v.shape[1:], dtype=v.dtype)
                for k, v in state["data"].items()
            }
            for k, v in state["data"].items():
                self._data[k][:size] = v
            filled = np.arange(size)
            # Leaves hold p^alpha; a run with another alpha (PBT perturbs it) re-raises them.
            priorities = np.asarray(state["priorities"], dtype=np.float64)
            self._trees.set(filled, priorities ** (self.alpha / cfg["alpha"]))
            self._write_count[:size] = state["write_count"]
            if cfg["gamma"] != self.gamma and STEP_REWARDS in self._data:
                # Another gamma (PBT perturbs it): the n-step returns are summed again.
                returns = self._discounted(self._data[STEP_REWARDS][:size].astype(np.float64))
                self._data[REWARDS][:size] = returns.astype(np.float32)
        self._size = size
        self._next = int(state["next"]) % self.capacity
        self._max_priority = float(state["max_priority"])
        self._pending = dict(state["pending"])
        self._add_calls = int(state["add_calls"])
        self._added_lifetime = int(state["added_lifetime"])
        self._sampled_lifetime = int(state["sampled_lifetime"])
        self._rng.bit_generator.state = state["rng"]
        self._last_idx = self._last_write_count = None
