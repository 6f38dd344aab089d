"""Logged episodes as a clinician's record would hold them: simulated, or imported from a table.

Offline RL and off-policy evaluation learn from decisions somebody else took. This module makes
those decisions in the formats of `training.rl.offline.data` (`LoggedSteps` in memory, a logs
folder on disk), two ways:

* `simulate_logs` rolls out a *behaviour policy* whose probabilities are known exactly in
  SepsisEnv or ICU-Sepsis and logs, with every step, the probability `mu'(a|s)` of the action it
  took and the whole row `mu'(.|s)` (importance sampling needs the first, support diagnostics
  the second);
* `import_table` reads a user's own table (CSV or Parquet) of stays, checking it row by row.

## Behaviour policies

`behaviour_policy(env, name)` returns a `Behaviour`: `probabilities(x)` is the (N, n_actions)
matrix `mu(.|s)` of a batch, each row summing to 1.

| name         | SepsisEnv (8 actions)                       | ICU-Sepsis (25 package actions)  |
|--------------|---------------------------------------------|----------------------------------|
| `protocol`   | `sepsis_env.policies.clinician_protocol`    | not defined                      |
| `clinicians` | the protocol, but with probability          | the package's expert policy,     |
|              | `CLINICIAN_NOISE` a uniformly random action | estimated from MIMIC-III         |
| `random`     | uniform                                     | uniform                          |
| checkpoint   | greedy action of `training.rl.policy.load_policy` (one-hot)                    |

A checkpoint must have been trained on the env being logged (`--algo` refuses one of another
algorithm); an ICU-Sepsis checkpoint trained with the `admissible` action set is translated to
package actions state by state (`sepsis_env.icu_sepsis.greedy_policy_table`).

SepsisEnv behaviours take a batch of raw observations; ICU-Sepsis behaviours are tables over the
716 states and take a batch of state indices (the expert policy is defined per state, whatever
the observation encoding). ICU-Sepsis is always logged with `action_set="all"`, so the logged
action is the package action and `mu` is exact; the expert policy puts no mass on some actions
the optimal policy takes (memo: 50 live states), so log with `epsilon > 0` for importance
sampling of near-optimal targets.

`epsilon` mixes any behaviour with the uniform policy: `mu'(.|s) = (1 - epsilon) mu(.|s) +
epsilon / n_actions`. A deterministic behaviour logged with `epsilon = 0` has `mu'(a|s) = 1`
for every logged action, and no other policy can be evaluated from it by importance sampling.

## Imported tables

`import_table` reads one row per decision with the columns

| column           | content                                                                 |
|------------------|-------------------------------------------------------------------------|
| `stay_id`        | the stay (episode) the row belongs to, any text or number               |
| `step`           | the decision's index in its stay: consecutive integers, no repeats      |
| state columns    | numbers, no gaps (`state_columns`, or every column not listed here)     |
| `action`         | integer 0 .. n_actions - 1                                              |
| `reward`         | number, the reward that followed the decision                           |
| `terminal`       | 0/1 or true/false: the stay ended (death, discharge) after this step;   |
|                  | only on a stay's last row, at most once                                 |
| `behaviour_prob` | optional: probability in (0, 1] the logging policy gave the action      |

The next state of a row is the state of the next row of its stay; a stay's last row has no
next state, so `next_obs` repeats its state and the row is marked terminated if `terminal`, else
truncated (the record stops, the patient's course did not). Every problem is a `TableError`
naming the file, the line (CSV: 1-based line of the file, header = line 1; Parquet: 0-based
row index) and the column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sepsis_env.ids import SEPSIS_ENV_ID, is_icu_sepsis, is_sepsis_env
from training.rl.offline.data import IMPORTED_ENV, LoggedSteps, LogsError, LogsInfo, mix_uniform

CLINICIAN_NOISE = 0.1
"""SepsisEnv's `clinicians` behaviour: probability that a decision is a uniformly random action
instead of the protocol's. Clinicians are not deterministic: the same vitals do not always get the
same support (different doctors, shifts, information the chart does not hold). 0.1 is a stated
modelling choice, not a measured rate; it gives every action positive probability, so any target
policy can be evaluated by importance sampling."""

BEHAVIOURS = ("protocol", "clinicians", "random")
"""Named behaviour policies; anything else given as a behaviour is a checkpoint path."""

ICU_SEPSIS_LOG_ID = "icu-sepsis"
"""How `LogsInfo.env` names ICU-Sepsis logs: the command line's alias (`make_raw_env` resolves
it)."""

SEPSIS_LOG_KWARGS: dict[str, Any] = {"split": "train"}
"""SepsisEnv logs default to the training split's patients, as training does
(`training.rl.options.SEPSIS_TRAIN_KWARGS`): the test patients stay unseen."""

SEPSIS_CHUNK = 10_000
"""SepsisEnv episodes simulated together in one vector env (bounds its memory)."""


# --------------------------------------------------------------------------------------------
# Behaviour policies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """A behaviour policy whose action probabilities are known exactly."""

    name: str
    """`protocol`, `clinicians`, `random` or the checkpoint's path (as `LogsInfo.behaviour`)."""
    n_actions: int
    """Number of actions of the env it acts in."""
    probabilities: Callable[[np.ndarray], np.ndarray]
    """Batch -> (N, n_actions) `mu(.|s)`, rows summing to 1: raw observations (SepsisEnv) or state
    indices (ICU-Sepsis)."""


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """(N, n_actions) rows with probability 1 on each given action."""
    out = np.zeros((len(actions), n_actions))
    out[np.arange(len(actions)), np.asarray(actions, dtype=np.int64)] = 1.0
    return out


def _protocol_actions(observations: np.ndarray) -> np.ndarray:
    from sepsis_env.policies import clinician_protocol

    rng = np.random.default_rng(0)  # the protocol is deterministic and ignores it
    return np.array([clinician_protocol(o, rng) for o in observations], dtype=np.int64)


def _sepsis_behaviour(name: str, algo: str | None) -> Behaviour:
    from sepsis_env import ACTION_NAMES

    n = len(ACTION_NAMES)
    if name == "protocol":
        return Behaviour(name, n, lambda obs: one_hot(_protocol_actions(obs), n))
    if name == "clinicians":
        return Behaviour(
            name, n, lambda obs: mix_uniform(one_hot(_protocol_actions(obs), n), CLINICIAN_NOISE)
        )
    if name == "random":
        return Behaviour(name, n, lambda obs: np.full((len(obs), n), 1.0 / n))
    policy = _checkpoint_policy(name, algo, is_sepsis_env, SEPSIS_ENV_ID)
    return Behaviour(name, n, lambda obs: one_hot(policy.actions(obs), n))


def _icu_sepsis_table(name: str, algo: str | None, strategy: str) -> np.ndarray:
    """The (716, 25) behaviour table over package actions."""
    from sepsis_env import icu_sepsis

    if name == "protocol":
        raise LogsError(
            "behaviour 'protocol' is SepsisEnv's clinician protocol; ICU-Sepsis has none: use "
            "'clinicians' (the package's expert policy), 'random' or a checkpoint"
        )
    if name == "clinicians":
        return icu_sepsis.expert_policy(icu_sepsis.ICUSepsisMDP.from_package(strategy))
    if name == "random":
        return np.full(
            (icu_sepsis.NUM_STATES, icu_sepsis.NUM_ACTIONS), 1.0 / icu_sepsis.NUM_ACTIONS
        )
    from training.rl.icu_sepsis import env_settings

    policy = _checkpoint_policy(name, algo, is_icu_sepsis, ICU_SEPSIS_LOG_ID)
    settings = env_settings(policy.options)
    actions = icu_sepsis.greedy_policy_table(
        policy.actions, settings.observation, settings.action_set, settings.max_actions
    )
    return one_hot(actions, icu_sepsis.NUM_ACTIONS)


def _checkpoint_policy(path: str, algo: str | None, same_env: Callable[[str], bool], env: str):
    """The greedy policy of a checkpoint trained on the logs' env (`LogsError` otherwise)."""
    from training.rl.policy import load_policy

    if not Path(path).exists():
        raise LogsError(
            f"behaviour {path!r} is neither {', '.join(BEHAVIOURS)} nor an existing checkpoint "
            "folder"
        )
    try:
        policy = load_policy(path, algo)
    except (FileNotFoundError, ValueError) as err:
        raise LogsError(f"behaviour checkpoint {path}: {err}") from err
    if not same_env(policy.options.env):
        raise LogsError(
            f"behaviour checkpoint {path} was trained on {policy.options.env}, not {env}; log "
            f"{policy.options.env} with it, or give a checkpoint trained on {env}"
        )
    return policy


def behaviour_policy(
    env_id: str, name: str, algo: str | None = None, env_kwargs: dict[str, Any] | None = None
) -> Behaviour:
    """The behaviour `name` (protocol, clinicians, random, or a checkpoint path) in `env_id`
    (SepsisEnv or ICU-Sepsis); `LogsError` if it is not defined there or cannot be loaded."""
    if is_sepsis_env(env_id):
        return _sepsis_behaviour(name, algo)
    if is_icu_sepsis(env_id):
        from sepsis_env import icu_sepsis

        strategy = (env_kwargs or {}).get(
            "inadmissible_action_strategy", icu_sepsis.DEFAULT_INADMISSIBLE_STRATEGY
        )
        table = _icu_sepsis_table(name, algo, strategy)
        return Behaviour(name, table.shape[1], lambda states: table[np.asarray(states)])
    raise LogsError(
        f"logs are simulated in {SEPSIS_ENV_ID} or {ICU_SEPSIS_LOG_ID}, not {env_id!r}; "
        "import other data with `sepsis-rl logs import`"
    )


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row of `probs`, drawn by inverse CDF with one uniform per row; an action of
    probability 0 is never drawn."""
    cumulative = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cumulative[:, -1:]
    return (cumulative <= u).sum(axis=1).astype(np.int64)


def stay_names(n: int) -> np.ndarray:
    """`s000001`, `s000002`, ...: zero-padded so that text order is stay order."""
    width = max(6, len(str(n)))
    return np.array([f"s{i + 1:0{width}d}" for i in range(n)])


@dataclass
class _Columns:
    """Per-step arrays being filled, one list entry per block of steps."""

    stay: list[np.ndarray]
    obs: list[np.ndarray]
    actions: list[np.ndarray]
    rewards: list[np.ndarray]
    next_obs: list[np.ndarray]
    terminated: list[np.ndarray]
    truncated: list[np.ndarray]
    probs: list[np.ndarray]

    @classmethod
    def empty(cls) -> _Columns:
        return cls([], [], [], [], [], [], [], [])

    def steps(self, n_stays: int) -> LoggedSteps:
        """The steps sorted by (stay, step); `step` counts from 0 within each stay."""
        stay = np.concatenate(self.stay).astype(np.int64)
        order = np.argsort(stay, kind="stable")  # blocks hold steps in time order

        def column(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype, copy=False)[order]

        stay = stay[order]
        starts = np.searchsorted(stay, np.arange(n_stays))
        actions = column(self.actions, np.int64)
        probs = column(self.probs, np.float64)
        terminated = column(self.terminated, bool)
        return LoggedSteps(
            stay_ids=stay_names(n_stays),
            stay=stay,
            step=np.arange(len(stay), dtype=np.int64) - starts[stay],
            obs=column(self.obs, np.float32),
            actions=actions,
            rewards=column(self.rewards, np.float32),
            next_obs=column(self.next_obs, np.float32),
            terminated=terminated,
            # A stay that ends by death or discharge at the time limit is terminated, not
            # truncated: its value after the end is known (0), so it must not bootstrap.
            truncated=column(self.truncated, bool) & ~terminated,
            behaviour_prob=probs[np.arange(len(actions)), actions],
            behaviour_probs=probs.astype(np.float32),
        )


def _simulate_sepsis(
    behaviour: Behaviour,
    episodes: int,
    seed: int,
    epsilon: float,
    env_kwargs: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[LoggedSteps, np.ndarray, np.ndarray]:
    """SepsisEnv episodes `seed .. seed + episodes - 1` in the native vector env, as
    `sepsis_env.policies.evaluate_vector` runs them (episode i reset with `seed + i`)."""
    import gymnasium as gym

    import sepsis_env  # noqa: F401  registers SepsisEnv-v0

    columns = _Columns.empty()
    low = high = None
    for first in range(0, episodes, SEPSIS_CHUNK):
        n = min(SEPSIS_CHUNK, episodes - first)
        envs = gym.make_vec(
            SEPSIS_ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **env_kwargs
        )
        try:
            space = envs.single_observation_space
            low, high = space.low, space.high
            obs, _ = envs.reset(seed=seed + first)
            running = np.ones(n, dtype=bool)
            actions = np.zeros(
                n, dtype=np.int64
            )  # ended copies autoreset; their actions are ignored
            while running.any():
                rows = np.flatnonzero(running)
                probs = mix_uniform(behaviour.probabilities(obs[rows]), epsilon)
                actions[rows] = sample_actions(probs, rng)
                next_obs, reward, terminated, truncated, _ = envs.step(actions)
                columns.stay.append(first + rows)
                columns.obs.append(obs[rows])
                columns.actions.append(actions[rows].copy())
                columns.rewards.append(reward[rows])
                columns.next_obs.append(next_obs[rows])
                columns.terminated.append(terminated[rows])
                columns.truncated.append(truncated[rows])
                columns.probs.append(probs)
                running[rows[(terminated | truncated)[rows]]] = False
                obs = next_obs
        finally:
            envs.close()
    return columns.steps(episodes), low, high


def _simulate_icu_sepsis(
    behaviour: Behaviour,
    episodes: int,
    seed: int,
    epsilon: float,
    env_kwargs: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[LoggedSteps, np.ndarray, np.ndarray]:
    """ICU-Sepsis episodes, episode i reset with `seed + i`, actions drawn per state."""
    import gymnasium as gym

    from sepsis_env import icu_sepsis

    env = gym.make(icu_sepsis.GYM_ID, **env_kwargs)
    table = icu_sepsis.observation_table(env.unwrapped.observation_kind)
    probs_of_state = mix_uniform(behaviour.probabilities(np.arange(icu_sepsis.NUM_STATES)), epsilon)
    cumulative = np.cumsum(probs_of_state, axis=1)
    cumulative /= cumulative[:, -1:]
    stay, state, action, reward, next_state, terminated, truncated = ([] for _ in range(7))
    try:
        for i in range(episodes):
            _, info = env.reset(seed=seed + i)
            done = False
            while not done:
                s = info["state"]
                a = int(np.searchsorted(cumulative[s], rng.random(), side="right"))
                _, r, term, trunc, info = env.step(a)
                stay.append(i)
                state.append(s)
                action.append(a)
                reward.append(r)
                next_state.append(info["state"])
                terminated.append(term)
                truncated.append(trunc)
                done = term or trunc
        space = env.observation_space
    finally:
        env.close()
    state, next_state = np.array(state, dtype=np.int64), np.array(next_state, dtype=np.int64)
    # The steps are logged with state indices in place of observations (a one-hot row is 716
    # floats); the env observes `table[state]` in each state (observation_table's contract).
    columns = _Columns(
        stay=[np.array(stay)],
        obs=[state[:, None]],
        actions=[np.array(action)],
        rewards=[np.array(reward)],
        next_obs=[next_state[:, None]],
        terminated=[np.array(terminated)],
        truncated=[np.array(truncated)],
        probs=[probs_of_state[state]],
    )
    steps = columns.steps(episodes)
    steps.obs = table[steps.obs[:, 0].astype(np.int64)]
    steps.next_obs = table[steps.next_obs[:, 0].astype(np.int64)]
    return steps, space.low, space.high


def log_env_kwargs(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `gymnasium.make` arguments logs of `env_id` are simulated with: SepsisEnv's training
    split unless `env_kwargs` says otherwise; ICU-Sepsis always with all 25 package actions
    (`LogsError` for another action set)."""
    kwargs = dict(env_kwargs or {})
    if is_sepsis_env(env_id):
        return SEPSIS_LOG_KWARGS | kwargs
    if is_icu_sepsis(env_id):
        if kwargs.get("action_set", "all") != "all":
            raise LogsError(
                f"ICU-Sepsis is logged with action_set 'all' (the 25 package actions, so the "
                f"behaviour probabilities are exact), not {kwargs['action_set']!r}"
            )
        return kwargs | {"action_set": "all"}
    return kwargs


def simulate_logs(
    env_id: str,
    behaviour: str | Behaviour,
    episodes: int,
    seed: int = 0,
    epsilon: float = 0.0,
    env_kwargs: dict[str, Any] | None = None,
    algo: str | None = None,
) -> tuple[LoggedSteps, LogsInfo]:
    """`episodes` stays of `behaviour` mixed with `epsilon` uniform in `env_id` (SepsisEnv or
    ICU-Sepsis), and their `LogsInfo`.

    Stay i (`s000001` is stay 0) is the env reset with `seed + i`; actions are drawn from
    `mu'(.|s)` with a generator seeded by `seed`, so the same arguments give the same logs. Every
    step logs `behaviour_prob = mu'(a|s)` and `behaviour_probs = mu'(.|s)`. Raises `LogsError`
    for an env or behaviour that cannot be logged, ValueError for bad numbers.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    kwargs = log_env_kwargs(env_id, env_kwargs)
    if not isinstance(behaviour, Behaviour):
        behaviour = behaviour_policy(env_id, behaviour, algo, kwargs)
    rng = np.random.default_rng(seed)
    if is_sepsis_env(env_id):
        from training.rl.options import RLOptions

        steps, low, high = _simulate_sepsis(behaviour, episodes, seed, epsilon, kwargs, rng)
        name, gamma = SEPSIS_ENV_ID, RLOptions().gamma
    else:
        from sepsis_env import icu_sepsis

        steps, low, high = _simulate_icu_sepsis(behaviour, episodes, seed, epsilon, kwargs, rng)
        name, gamma = ICU_SEPSIS_LOG_ID, icu_sepsis.GAMMA
    obs_names: list[str] = []
    if is_sepsis_env(env_id):
        from sepsis_env import OBS_NAMES

        obs_names = list(OBS_NAMES)
    info = LogsInfo(
        env=name,
        n_actions=behaviour.n_actions,
        obs_low=[float(x) for x in low],
        obs_high=[float(x) for x in high],
        gamma=float(gamma),
        behaviour=behaviour.name,
        epsilon=float(epsilon),
        seed=seed,
        episodes=episodes,
        env_kwargs=kwargs,
        obs_names=obs_names,
    )
    return steps, info


# --------------------------------------------------------------------------------------------
# Imported tables
# --------------------------------------------------------------------------------------------

STAY_ID = "stay_id"
STEP_COL = "step"
ACTION_COL = "action"
REWARD_COL = "reward"
TERMINAL_COL = "terminal"
PROB_COL = "behaviour_prob"
REQUIRED_COLUMNS = (STAY_ID, STEP_COL, ACTION_COL, REWARD_COL, TERMINAL_COL)
"""Columns every imported table must have (besides its state columns)."""
RESERVED_COLUMNS = (*REQUIRED_COLUMNS, PROB_COL)
"""Columns that are never state columns."""
TABLE_SUFFIXES = (".csv", ".parquet")

_TRUE, _FALSE = ("1", "true", "1.0"), ("0", "false", "0.0")


class TableError(LogsError):
    """An imported table that is not valid: which file, where, and what is wrong.

    `line` is the CSV file's 1-based line (header = 1) or the Parquet row index (0-based);
    `column` the column's name; either is None when the problem is not about one."""

    def __init__(
        self,
        path: str,
        message: str,
        line: int | None = None,
        column: str | None = None,
        parquet: bool = False,
    ) -> None:
        self.path, self.line, self.column, self.message = path, line, column, message
        where = path
        if line is not None:
            where += f", row index {line}" if parquet else f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")


@dataclass
class _Table:
    """A table being read: its frame and how to point at one of its cells."""

    path: Path
    frame: Any  # pandas.DataFrame, rows in file order
    parquet: bool

    def line(self, row: int) -> int:
        """Where row `row` (0-based position in the frame) is in the file."""
        return row if self.parquet else row + 2

    def error(self, message: str, row: int | None = None, column: str | None = None) -> TableError:
        """The error at row `row` (0-based position in the frame) and `column`."""
        line = None if row is None else self.line(row)
        return TableError(str(self.path), message, line, column, self.parquet)

    def header_error(self, message: str) -> TableError:
        """An error about the columns: on the CSV's header line."""
        return TableError(str(self.path), message, None if self.parquet else 1, None, self.parquet)


def _read_frame(path: Path) -> _Table:
    import pandas as pd

    if not path.is_file():
        raise TableError(str(path), "no such file; give a .csv or .parquet table of stays")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TableError(str(path), f"expected a .csv or .parquet file, got {suffix or 'none'}")
    try:
        if suffix == ".csv":
            # Text as written, so a bad cell is reported as the user wrote it.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # pandas and pyarrow raise many types for unreadable files
        raise TableError(str(path), f"not a readable {suffix[1:]} table ({err})") from None
    table = _Table(path, frame.reset_index(drop=True), suffix == ".parquet")
    if len(frame) == 0:
        raise TableError(str(path), "empty table: no data rows", None if table.parquet else 2)
    return table


def _numbers(table: _Table, column: str, what: str) -> np.ndarray:
    """The column as float64; `TableError` at the first cell that is not a finite number."""
    import pandas as pd

    raw = table.frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        row = int(bad[0])
        raise table.error(f"{raw.iloc[row]!r} is not {what}", row, column)
    return values


def _integers(table: _Table, column: str, what: str) -> np.ndarray:
    values = _numbers(table, column, what)
    bad = np.flatnonzero(values != np.round(values))
    if len(bad):
        row = int(bad[0])
        raise table.error(f"{table.frame[column].iloc[row]!r} is not {what}", row, column)
    return values.astype(np.int64)


def _flags(table: _Table, column: str) -> np.ndarray:
    text = table.frame[column].astype(str).str.strip().str.lower()
    true, false = text.isin(_TRUE).to_numpy(), text.isin(_FALSE).to_numpy()
    bad = np.flatnonzero(~(true | false))
    if len(bad):
        row = int(bad[0])
        raise table.error(
            f"{table.frame[column].iloc[row]!r} is not 0/1 or true/false", row, column
        )
    return true


def _state_columns(table: _Table, state_columns: list[str] | None) -> list[str]:
    columns = [str(c) for c in table.frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise table.header_error(
            f"missing column(s) {', '.join(missing)}; an imported table needs "
            f"{', '.join(REQUIRED_COLUMNS)} and state columns"
        )
    if state_columns is None:
        chosen = [c for c in columns if c not in RESERVED_COLUMNS]
    else:
        chosen = list(state_columns)
        absent = [c for c in chosen if c not in columns]
        if absent:
            raise table.header_error(
                f"state column(s) {', '.join(absent)} not in the table (it has "
                f"{', '.join(columns)})"
            )
        reserved = [c for c in chosen if c in RESERVED_COLUMNS]
        if reserved:
            raise table.header_error(
                f"{', '.join(reserved)} cannot be a state column (reserved: "
                f"{', '.join(RESERVED_COLUMNS)})"
            )
    if not chosen:
        raise table.header_error(
            "no state columns: add columns for the state besides the reserved ones"
        )
    return chosen


def _check_stays(table: _Table, stay: np.ndarray, step: np.ndarray, terminal: np.ndarray):
    """The row order by (stay, step), after checking steps and terminal flags stay by stay."""
    order = np.lexsort((step, stay))
    s, t = stay[order], step[order]
    same = s[1:] == s[:-1]
    repeated = np.flatnonzero(same & (t[1:] == t[:-1]))
    if len(repeated):
        row = int(max(order[repeated[0]], order[repeated[0] + 1]))
        raise table.error(
            f"step {step[row]} appears twice in stay {table.frame[STAY_ID].iloc[row]!r}",
            row,
            STEP_COL,
        )
    gap = np.flatnonzero(same & (t[1:] != t[:-1] + 1))
    if len(gap):
        row = int(order[gap[0] + 1])
        raise table.error(
            f"step {step[row]} follows step {t[gap[0]]} in stay "
            f"{table.frame[STAY_ID].iloc[row]!r}: steps must be consecutive",
            row,
            STEP_COL,
        )
    last = np.append(~same, True)  # sorted position ends its stay
    early = np.flatnonzero(terminal[order] & ~last)
    if len(early):
        row = int(order[early[0]])
        raise table.error(
            f"terminal on step {step[row]} of stay {table.frame[STAY_ID].iloc[row]!r}, which "
            "has later steps: a stay ends at its terminal row (one terminal at most, on its last "
            "row)",
            row,
            TERMINAL_COL,
        )
    return order


def import_table(
    path: str | Path,
    state_columns: list[str] | None = None,
    n_actions: int | None = None,
    gamma: float | None = None,
) -> tuple[LoggedSteps, LogsInfo]:
    """Read a table of logged decisions (CSV or Parquet, the module docstring's columns) as
    `LoggedSteps` sorted by (stay, step), and its `LogsInfo`.

    `state_columns`: the state's columns in order (default: every non-reserved column);
    `n_actions`: the number of actions (default: the largest action + 1); `gamma`: the discount
    the logs are to be judged by (default `RLOptions().gamma`). Observation bounds are the
    columns' minimum and maximum. Raises `TableError` (a `LogsError`) naming file, line and
    column of the first problem.
    """
    path = Path(path)
    table = _read_frame(path)
    names = _state_columns(table, state_columns)
    stay_text = table.frame[STAY_ID].astype(str).str.strip()
    empty = np.flatnonzero((stay_text == "").to_numpy() | table.frame[STAY_ID].isna().to_numpy())
    if len(empty):
        raise table.error("empty stay_id", int(empty[0]), STAY_ID)
    step = _integers(table, STEP_COL, "an integer step")
    obs = np.stack(
        [_numbers(table, c, "a number (state values must not be missing)") for c in names], axis=1
    )
    actions = _integers(table, ACTION_COL, "an integer action")
    negative = np.flatnonzero(actions < 0)
    if len(negative):
        row = int(negative[0])
        raise table.error(
            f"action {actions[row]} is negative; actions are 0, 1, ...", row, ACTION_COL
        )
    if n_actions is None:
        n_actions = int(actions.max()) + 1
    too_big = np.flatnonzero(actions >= n_actions)
    if len(too_big):
        row = int(too_big[0])
        raise table.error(
            f"action {actions[row]} is not in 0..{n_actions - 1} (--n-actions {n_actions})",
            row,
            ACTION_COL,
        )
    rewards = _numbers(table, REWARD_COL, "a number")
    terminal = _flags(table, TERMINAL_COL)
    prob = np.full(len(actions), np.nan)
    if PROB_COL in table.frame.columns:
        prob = _numbers(table, PROB_COL, "a probability")
        outside = np.flatnonzero((prob <= 0) | (prob > 1))
        if len(outside):
            row = int(outside[0])
            raise table.error(
                f"behaviour_prob {prob[row]} is not in (0, 1]: the logged action must have had "
                "a positive probability",
                row,
                PROB_COL,
            )
    stay_ids, stay = np.unique(stay_text.to_numpy(dtype=str), return_inverse=True)
    order = _check_stays(table, stay, step, terminal)
    stay, step, obs = stay[order], step[order], obs[order].astype(np.float32)
    actions, rewards, terminal, prob = actions[order], rewards[order], terminal[order], prob[order]
    last = np.append(stay[1:] != stay[:-1], True)
    next_obs = obs.copy()
    next_obs[:-1][~last[:-1]] = obs[1:][~last[:-1]]
    steps = LoggedSteps(
        stay_ids=stay_ids,
        stay=stay.astype(np.int64),
        step=step,
        obs=obs,
        actions=actions,
        rewards=rewards.astype(np.float32),
        next_obs=next_obs,
        terminated=terminal,
        truncated=last & ~terminal,
        behaviour_prob=prob,
    )
    if gamma is None:
        from training.rl.options import RLOptions

        gamma = RLOptions().gamma
    info = LogsInfo(
        env=IMPORTED_ENV,
        n_actions=int(n_actions),
        obs_low=[float(x) for x in obs.min(axis=0)],
        obs_high=[float(x) for x in obs.max(axis=0)],
        gamma=float(gamma),
        behaviour="unknown",
        episodes=len(stay_ids),
        obs_names=names,
        source=str(path),
    )
    return steps, info


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def stay_returns(steps: LoggedSteps, gamma: float = 1.0) -> np.ndarray:
    """Each stay's return, rewards discounted by `gamma` from its first step."""
    starts = np.searchsorted(steps.stay, np.arange(steps.n_stays))
    within = steps.step - steps.step[starts[steps.stay]]
    discounted = steps.rewards.astype(np.float64) * np.power(gamma, within)
    return np.bincount(steps.stay, weights=discounted, minlength=steps.n_stays)


def action_frequencies(steps: LoggedSteps, n_actions: int) -> np.ndarray:
    """Share of the logged steps that took each action."""
    counts = np.bincount(steps.actions, minlength=n_actions)
    return counts / max(1, counts.sum())
