"""The folder of one training run and the layout of its checkpoints.

    config.yaml                   the effective `RLOptions`
    metrics.csv, metrics.jsonl    one row per training iteration
    episodes.csv                  the return of every training episode
    tensorboard/                  the same metrics for TensorBoard
    checkpoints/last/             RLlib checkpoint + replay_buffer.pkl + options.yaml
    checkpoints/best/             RLlib checkpoint of the best greedy evaluation return
    summary.json                  why and where the run stopped

RLlib's new-stack checkpoints leave the replay buffer out, so a resumed run would restart
learning from an empty buffer while its step counter says learning started long ago. `last/`
therefore also holds the pickled state of `algo.local_replay_buffer`, restored on `--resume`.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

from training.rl.options import RLOptions, load_options, save_options

OPTIONS_FILE = "options.yaml"
"""Options of the run, copied into every checkpoint so a checkpoint alone can be served."""


BUFFER_FILE = "replay_buffer.pkl"
"""The pickled replay-buffer state inside `checkpoints/last/`."""


MODULE_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")
"""Where the RLModule lives inside an RLlib algorithm checkpoint."""


CHECKPOINT_MARKER = "rllib_checkpoint.json"
"""The file RLlib writes into every algorithm checkpoint folder."""


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds an RLlib algorithm checkpoint."""
    return (Path(path) / CHECKPOINT_MARKER).exists()


class RunDir:
    """Paths of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics_csv = self.root / "metrics.csv"
        self.metrics_jsonl = self.root / "metrics.jsonl"
        self.episodes_csv = self.root / "episodes.csv"
        self.tensorboard = self.root / "tensorboard"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last"
        self.best = self.checkpoints / "best"
        self.summary = self.root / "summary.json"


def save_checkpoint(algo, path: Path, options: RLOptions, with_buffer: bool) -> Path:
    """Write an RLlib checkpoint (plus options, plus the replay buffer) atomically to `path`."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    save_options(options, tmp / OPTIONS_FILE)
    if with_buffer:
        with (tmp / BUFFER_FILE).open("wb") as f:
            pickle.dump(algo.local_replay_buffer.get_state(), f, protocol=pickle.HIGHEST_PROTOCOL)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def restore_checkpoint(algo, path: Path) -> int:
    """Restore algorithm state and, if saved, the replay buffer; returns the buffer's size."""
    algo.restore_from_path(str(path.resolve()))
    buffer_file = path / BUFFER_FILE
    if buffer_file.exists():
        with buffer_file.open("rb") as f:
            algo.local_replay_buffer.set_state(pickle.load(f))
    return algo.local_replay_buffer.get_num_timesteps()


def load_run_options(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> RLOptions:
    """The options a run was started with (its config.yaml), with `overrides` on top."""
    run = RunDir(out_dir)
    if not run.config.exists():
        raise FileNotFoundError(
            f"{run.config} not found: {out_dir} is not a run directory to resume"
        )
    return load_options(run.config, overrides)
