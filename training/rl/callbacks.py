"""RLlib callbacks of every run."""

from __future__ import annotations

from training.rl.results import EPISODE_RETURNS_KEY


def log_episode_return(*, episode, metrics_logger=None, **kwargs) -> None:
    """`on_episode_end` callback: keep every episode's return, not only RLlib's mean."""
    if metrics_logger is not None:
        metrics_logger.log_value(
            EPISODE_RETURNS_KEY, float(episode.get_return()), reduce="item_series"
        )
