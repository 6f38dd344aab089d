"""The prioritized replay buffer of our DQN runs: RLlib's, with a priority floor.

RLlib 2.60's `PrioritizedEpisodeReplayBuffer` sets a replayed transition's priority to its
absolute TD error, floored only at 1e-12 (the old API stack added `prioritized_replay_eps`, as
Schaul et al. 2016 do: p = |delta| + eps). It also divides every importance-sampling weight by
the largest possible weight, which comes from the smallest priority in the whole buffer. So one
transition whose TD error happens to be ~0 shrinks every weight, and with it every gradient step,
by orders of magnitude: training silently stalls (we saw the DQN loss fall from ~0.1 to ~0.003
in one iteration and the greedy policy stop improving). `PriorityFloorEpisodeReplayBuffer`
restores the epsilon: priorities are |delta| + `priority_epsilon`, so the weights stay bounded.

A second property of RLlib's buffer, not changed here: with `n_step` > 1 it never samples the
last `n_step - 1` transitions of an episode (it skips a start when fewer than n steps follow),
and those are the ones that receive the terminal reward (death, discharge, survival) directly.
That is why our runs use 1-step targets by default (`RLOptions.n_step`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import (
    PrioritizedEpisodeReplayBuffer,
)

DEFAULT_PRIORITY_EPSILON = 0.01
"""Added to every |TD error| before it becomes a priority (in reward units)."""


class PriorityFloorEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    """`PrioritizedEpisodeReplayBuffer` whose priorities are |TD error| + `priority_epsilon`."""

    def __init__(self, *args: Any, priority_epsilon: float = DEFAULT_PRIORITY_EPSILON, **kwargs):
        if priority_epsilon <= 0:
            raise ValueError(f"priority_epsilon must be > 0, got {priority_epsilon}")
        super().__init__(*args, **kwargs)
        self.priority_epsilon = priority_epsilon

    def update_priorities(self, priorities: np.ndarray, module_id: Any = None) -> None:
        """Set the priorities of the last sampled transitions to |TD error| + epsilon."""
        floored = np.abs(np.asarray(priorities, dtype=np.float64)) + self.priority_epsilon
        super().update_priorities(floored, module_id)
