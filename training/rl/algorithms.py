"""One registry of the algorithms: `build_config(options)` is the RLlib config of
`options.algo`, used by `train`, `tune rl`, the study and the benchmarks alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from training.rl.config_parts import configure_learner_process
from training.rl.dqn import build_dqn_config
from training.rl.impala import build_appo_config, build_impala_config
from training.rl.options import RLOptions
from training.rl.ppo import build_ppo_config

__all__ = ["BUILDERS", "build_config", "configure_learner_process", "uses_replay_buffer"]

BUILDERS: dict[str, Callable[[RLOptions], Any]] = {
    "dqn": build_dqn_config,
    "ppo": build_ppo_config,
    "appo": build_appo_config,
    "impala": build_impala_config,
}
"""The config builder of each `RLOptions.algo`."""


def build_config(options: RLOptions) -> Any:
    """The RLlib `AlgorithmConfig` of `options.algo` (an online algorithm: the offline ones,
    which learn from logs, are built by `training.rl.offline.train.build_offline_config`)."""
    if options.algo not in BUILDERS:
        raise ValueError(
            f"algo {options.algo!r} learns from logged episodes, not from an env: train it with "
            f"`sepsis-rl train --offline LOGS_DIR --algo {options.algo}`"
        )
    return BUILDERS[options.algo](options)


def uses_replay_buffer(options: RLOptions) -> bool:
    """Whether the algorithm keeps a replay buffer that checkpoints must carry (DQN)."""
    return options.algo == "dqn"
