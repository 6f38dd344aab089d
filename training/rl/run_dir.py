"""The folder of one training run and the layout of its checkpoints.

    config.yaml                   the effective `RLOptions`
    metrics.csv, metrics.jsonl    one row per training iteration
    episodes.csv                  the return of every training episode
    tensorboard/                  the same metrics for TensorBoard
    checkpoints/last/             RLlib checkpoint + replay_buffer.pkl + options.yaml
                                  + MANIFEST.json (sha256 of every file)
    checkpoints/best/             the same for the best greedy evaluation return (no buffer)
    summary.json                  why and where the run stopped

RLlib's new-stack checkpoints leave the replay buffer out, so a resumed run would restart
learning from an empty buffer while its step counter says learning started long ago. `last/`
therefore also holds the pickled state of `algo.local_replay_buffer`, restored on `--resume`.

A checkpoint is mostly pickles (RLlib's `algorithm_state.pkl`, `module_state.pkl`, the
`class_and_ctor_args.pkl` of every component, our replay buffer), and unpickling runs code. So
every checkpoint is written with a manifest of its files (`sepsis_rl.common.manifest`), and
`verify_checkpoint` checks it before RLlib or `pickle` reads anything in the folder.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

from sepsis_rl.common.manifest import verify_manifest, write_manifest
from training.rl.options import RLOptions, load_options, save_options

OPTIONS_FILE = "options.yaml"
"""Options of the run, copied into every checkpoint so a checkpoint alone can be served."""


BUFFER_FILE = "replay_buffer.pkl"
"""The pickled replay-buffer state inside `checkpoints/last/`."""


MODULE_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")
"""Where the RLModule lives inside an RLlib algorithm checkpoint."""


CHECKPOINT_MARKER = "rllib_checkpoint.json"
"""The file RLlib writes into every algorithm checkpoint folder."""


CHECKPOINT_KIND = "sepsis-rl/rllib-checkpoint"
"""The kind recorded in a checkpoint's manifest (a classifier folder's manifest says another)."""


UNVERIFIED_HINT = (
    "it was written by a sepsis-rl older than checkpoint manifests, or not by `sepsis-rl train`. "
    "Train again to get a checked checkpoint; or, only if you wrote this folder yourself and "
    "it never left your control, record its files as they are now with "
    "python -c \"from training.rl.run_dir import trust_checkpoint; trust_checkpoint('{path}')\""
)


class CheckpointError(ValueError):
    """A folder that is not a checkpoint written by `sepsis-rl train`, or a damaged one; the
    message names the file and what was expected."""


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds an RLlib algorithm checkpoint."""
    return (Path(path) / CHECKPOINT_MARKER).exists()


def verify_checkpoint(path: str | Path) -> None:
    """Refuse `path` unless it is a checkpoint `sepsis-rl train` wrote, unchanged since.

    Checks the layout (RLlib's marker, the RLModule, our options file), then every file against
    the manifest (and its signature, when a manifest key is configured). Nothing is unpickled.
    Raises FileNotFoundError for a missing folder, CheckpointError or ManifestError (both
    ValueError) otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run's checkpoints/last or checkpoints/best"
        )
    missing = [
        str(name)
        for name in (CHECKPOINT_MARKER, OPTIONS_FILE, MODULE_SUBDIR)
        if not (path / name).exists()
    ]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint written by `sepsis-rl train`: it lacks "
            f"{', '.join(missing)} (expected {CHECKPOINT_MARKER}, {MODULE_SUBDIR}/ and "
            f"{OPTIONS_FILE}); pass a run's checkpoints/last or checkpoints/best"
        )
    verify_manifest(
        path,
        CHECKPOINT_KIND,
        missing_hint=UNVERIFIED_HINT.format(path=path),
        remedy="copy the checkpoint again from where it was written, or train again",
    )


def trust_checkpoint(path: str | Path) -> Path:
    """Write the manifest of a checkpoint folder as it is now (signed if a key is configured).

    The explicit opt-in for a checkpoint written before manifests existed: it vouches for every
    file in the folder, so use it only on a folder you wrote yourself and kept under your control.
    """
    path = Path(path)
    if not is_checkpoint(path) or not (path / OPTIONS_FILE).exists():
        raise CheckpointError(
            f"{path} is not a checkpoint written by `sepsis-rl train` "
            f"(no {CHECKPOINT_MARKER} or {OPTIONS_FILE})"
        )
    return write_manifest(path, CHECKPOINT_KIND)


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
    """Write an RLlib checkpoint (plus options, plus the replay buffer, plus the manifest of
    every file) atomically to `path`."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    save_options(options, tmp / OPTIONS_FILE)
    if with_buffer:
        with (tmp / BUFFER_FILE).open("wb") as f:
            pickle.dump(algo.local_replay_buffer.get_state(), f, protocol=pickle.HIGHEST_PROTOCOL)
    write_manifest(tmp, CHECKPOINT_KIND)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def restore_checkpoint(algo, path: Path) -> int:
    """Restore algorithm state and, if saved, the replay buffer; returns the buffer's size.

    The checkpoint is verified first (`verify_checkpoint`); a file RLlib or pickle then cannot
    read raises CheckpointError naming it.
    """
    path = Path(path)
    verify_checkpoint(path)
    try:
        algo.restore_from_path(str(path.resolve()))
    except Exception as err:  # unpickling and state loading fail in many ways; all mean unusable
        raise CheckpointError(
            f"cannot restore the algorithm from {path} ({type(err).__name__}: {err}); "
            "is it a checkpoint of this algorithm and these options?"
        ) from err
    buffer_file = path / BUFFER_FILE
    buffer = getattr(algo, "local_replay_buffer", None)
    if buffer is None:  # PPO, APPO, IMPALA: nothing to restore beyond the algorithm's state
        return 0
    if buffer_file.exists():
        try:
            with buffer_file.open("rb") as f:
                state = pickle.load(f)
            buffer.set_state(state)
        except Exception as err:  # as above: a buffer that cannot be read or does not fit
            raise CheckpointError(
                f"cannot restore the replay buffer from {buffer_file} "
                f"({type(err).__name__}: {err}); expected the state of this run's buffer"
            ) from err
    return buffer.get_num_timesteps()


def load_run_options(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> RLOptions:
    """The options a run was started with (its config.yaml), with `overrides` on top.

    A run to resume is checked here already: its `checkpoints/last` must match its manifest, so
    a damaged or altered checkpoint is refused before Ray starts or anything is written.
    """
    run = RunDir(out_dir)
    if not run.config.exists():
        raise FileNotFoundError(
            f"{run.config} not found: {out_dir} is not a run directory to resume"
        )
    options = load_options(run.config, overrides)
    if is_checkpoint(run.last):
        verify_checkpoint(run.last)
    return options
