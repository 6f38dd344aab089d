"""Logged episodes on disk and in memory: one row per decision, in RLlib's columnar offline format.

A logs folder holds

    <DIR>/data/part-00000.parquet   one row per step, the columns of `COLUMNS` (RLlib's names,
                                     so `config.offline_data(input_=[f"{DIR}/data"])` reads it)
    <DIR>/logs.json                 `LogsInfo`: where the logs came from and how to read them

Observations are stored raw (the env's units), never normalised: offline training applies the
same normalisation as online training (`training.rl.envs.normalize`), so one log serves any options.
`action_logp` is the log of the behaviour policy's probability of the logged action (absent when
unknown, e.g. an imported table without it); `behaviour_probs` (optional) holds the behaviour
policy's probability of every action, which support diagnostics need.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA_SUBDIR = "data"
INFO_FILE = "logs.json"
PART_FILE = "part-00000.parquet"

STAY, STEP, OBS, ACTIONS, REWARDS, NEXT_OBS = "eps_id", "t", "obs", "actions", "rewards", "new_obs"
TERMINATEDS, TRUNCATEDS, ACTION_LOGP, BEHAVIOUR_PROBS = (
    "terminateds",
    "truncateds",
    "action_logp",
    "behaviour_probs",
)
COLUMNS = (STAY, STEP, OBS, ACTIONS, REWARDS, NEXT_OBS, TERMINATEDS, TRUNCATEDS)
"""The required columns, by RLlib's default names (`ray.rllib.offline.offline_prelearner.SCHEMA`:
`new_obs`, not `next_obs`); `ACTION_LOGP` and `BEHAVIOUR_PROBS` are optional."""


IMPORTED_ENV = "imported"
"""`LogsInfo.env` of logs imported from a table (any env: only the sizes are checked)."""


def mix_uniform(probs: np.ndarray, epsilon: float) -> np.ndarray:
    """`(1 - epsilon) probs + epsilon / n_actions` row by row: the epsilon-mixture with uniform
    (of a behaviour policy in the logs, or of a target policy in off-policy evaluation)."""
    probs = np.asarray(probs, dtype=np.float64)
    return (1.0 - epsilon) * probs + epsilon / probs.shape[-1]


class LogsError(ValueError):
    """Logs that cannot be read or used: says which file and what is wrong."""


@dataclass(frozen=True)
class LogsInfo:
    """What `logs.json` records about a logs folder."""

    env: str
    """Gymnasium id of the env the logs come from (`SepsisEnv-v0`, `icu-sepsis`), or `imported`."""
    n_actions: int
    """Number of discrete actions (actions are 0..n_actions-1)."""
    obs_low: list[float]
    """Lower bound of each observation coordinate (offline training normalises with it)."""
    obs_high: list[float]
    """Upper bound of each observation coordinate."""
    gamma: float
    """Discount of the returns the logs are meant to be judged by."""
    behaviour: str
    """Who chose the actions: protocol, clinicians, random, a checkpoint path, or `unknown`."""
    epsilon: float = 0.0
    """Probability of a uniformly random action mixed into the behaviour policy."""
    seed: int | None = None
    """Seed of the simulated episodes (None for imported logs)."""
    episodes: int = 0
    """Number of stays (episodes) in the logs."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env the logs come from."""
    obs_names: list[str] = field(default_factory=list)
    """Name of each observation coordinate (the state columns of an imported table)."""
    source: str = "simulated"
    """`simulated` (sepsis-rl logs) or the imported table's path."""


@dataclass
class LoggedSteps:
    """Every logged step in memory, rows sorted by (stay, step).

    `stay` indexes `stay_ids`; `behaviour_prob` is exp(action_logp), NaN where unknown."""

    stay_ids: np.ndarray  # (n_stays,) str
    stay: np.ndarray  # (N,) int64 index into stay_ids
    step: np.ndarray  # (N,) int64
    obs: np.ndarray  # (N, d) float32, raw
    actions: np.ndarray  # (N,) int64
    rewards: np.ndarray  # (N,) float32
    next_obs: np.ndarray  # (N, d) float32, raw
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    behaviour_prob: np.ndarray  # (N,) float64, NaN where unknown
    behaviour_probs: np.ndarray | None = None  # (N, n_actions) float32 or None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def n_stays(self) -> int:
        return len(self.stay_ids)

    def select_stays(self, stays: np.ndarray) -> LoggedSteps:
        """The steps of the stays whose indices are in `stays` (re-indexed, order kept)."""
        keep = np.isin(self.stay, stays)
        kept = np.unique(self.stay[keep])
        remap = np.full(self.n_stays, -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        return LoggedSteps(
            stay_ids=self.stay_ids[kept],
            stay=remap[self.stay[keep]],
            step=self.step[keep],
            obs=self.obs[keep],
            actions=self.actions[keep],
            rewards=self.rewards[keep],
            next_obs=self.next_obs[keep],
            terminated=self.terminated[keep],
            truncated=self.truncated[keep],
            behaviour_prob=self.behaviour_prob[keep],
            behaviour_probs=None if self.behaviour_probs is None else self.behaviour_probs[keep],
        )


def _fixed(x: np.ndarray):
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def write_logs(steps: LoggedSteps, info: LogsInfo, out: Path) -> None:
    """Write `steps` and `info` into the folder `out` (which must exist and be empty or staged:
    callers write into `sepsis_rl.common.files.staged_directory`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        STAY: pa.array(steps.stay_ids[steps.stay].astype(str)),
        STEP: pa.array(steps.step, pa.int64()),
        OBS: _fixed(steps.obs),
        ACTIONS: pa.array(steps.actions, pa.int64()),
        REWARDS: pa.array(steps.rewards, pa.float32()),
        NEXT_OBS: _fixed(steps.next_obs),
        TERMINATEDS: pa.array(steps.terminated, pa.bool_()),
        TRUNCATEDS: pa.array(steps.truncated, pa.bool_()),
    }
    if np.isfinite(steps.behaviour_prob).all():
        columns[ACTION_LOGP] = pa.array(np.log(steps.behaviour_prob), pa.float32())
    if steps.behaviour_probs is not None:
        columns[BEHAVIOUR_PROBS] = _fixed(steps.behaviour_probs)
    (out / DATA_SUBDIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), out / DATA_SUBDIR / PART_FILE)
    (out / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")


def read_info(folder: Path) -> LogsInfo:
    """The `LogsInfo` of a logs folder, or `LogsError` saying what is missing or wrong."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise LogsError(
            f"{folder}: not a logs folder (no {INFO_FILE}); make one with `sepsis-rl logs`"
        )
    try:
        return LogsInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise LogsError(f"{path}: not a valid {INFO_FILE} ({err})") from err


def read_logs(folder: Path) -> tuple[LoggedSteps, LogsInfo]:
    """The steps and info of a logs folder written by `write_logs`, rows sorted by (stay, step)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    info = read_info(folder)
    path = folder / DATA_SUBDIR / PART_FILE
    if not path.is_file():
        raise LogsError(f"{folder}: no {DATA_SUBDIR}/{PART_FILE}; the logs folder is incomplete")
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise LogsError(f"{path}: missing column(s) {', '.join(missing)}")

    def matrix(name: str) -> np.ndarray:
        column = table.column(name).combine_chunks()
        if hasattr(column.type, "list_size"):  # fixed-size lists, as write_logs writes them
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return flat.astype(np.float32).reshape(len(column), column.type.list_size)
        return np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)

    stay_names = table.column(STAY).to_numpy(zero_copy_only=False).astype(str)
    stay_ids, stay = np.unique(stay_names, return_inverse=True)
    step = table.column(STEP).to_numpy().astype(np.int64)
    order = np.lexsort((step, stay))
    logp = (
        table.column(ACTION_LOGP).to_numpy().astype(np.float64)
        if ACTION_LOGP in table.column_names
        else np.full(len(step), np.nan)
    )
    probs = matrix(BEHAVIOUR_PROBS) if BEHAVIOUR_PROBS in table.column_names else None
    steps = LoggedSteps(
        stay_ids=stay_ids,
        stay=stay[order].astype(np.int64),
        step=step[order],
        obs=matrix(OBS)[order],
        actions=table.column(ACTIONS).to_numpy().astype(np.int64)[order],
        rewards=table.column(REWARDS).to_numpy().astype(np.float32)[order],
        next_obs=matrix(NEXT_OBS)[order],
        terminated=table.column(TERMINATEDS).to_numpy(zero_copy_only=False).astype(bool)[order],
        truncated=table.column(TRUNCATEDS).to_numpy(zero_copy_only=False).astype(bool)[order],
        behaviour_prob=np.exp(logp)[order],
        behaviour_probs=None if probs is None else probs[order],
    )
    return steps, info


SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
"""Train, validation and test fractions of the stays (the same as the patient split of the data)."""


def split_stays(n_stays: int, seed: int) -> dict[str, np.ndarray]:
    """Stay indices of the train, val and test splits: every stay in exactly one, by a seeded
    permutation (offline training fits on `train`, selects on `val`, and never sees `test`)."""
    order = np.random.default_rng(seed).permutation(n_stays)
    n_train = int(round(SPLIT_FRACTIONS[0] * n_stays))
    n_val = int(round(SPLIT_FRACTIONS[1] * n_stays))
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }
