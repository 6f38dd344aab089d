"""Off-policy evaluation (OPE): the value of a target policy pi from stays logged under another,
the behaviour policy mu, without running pi.

Notation: stay i = 1..n has steps t = 0..H_i-1 with reward r_t, discount gamma (`LogsInfo.gamma`),
ratio_t = pi(a_t|s_t) / mu(a_t|s_t) and cumulative ratio rho_t = prod_{k<=t} ratio_k (rho_-1 = 1;
after the stay's end rho keeps its last value and r = 0). G_i = sum_t gamma^t r_t is the stay's
discounted return. Q-hat comes from fitted Q evaluation and V-hat(s) = sum_a pi(a|s) Q-hat(s, a).

| Estimator | Formula (Q = Q-hat(s_t, a_t), V = V-hat(s_t)) | Reference |
|-------|------------------------------------------------------|-------------------------|
| IS    | 1/n sum_i rho_{H_i-1} G_i                            | trajectory IS           |
| PDIS  | 1/n sum_i sum_t gamma^t rho_t r_t                    | Precup et al. 2000      |
| WIS   | sum_i rho_{H_i-1} G_i / sum_i rho_{H_i-1}            | weighted IS             |
| WPDIS | sum_t gamma^t sum_i w_t r_t, w_t = rho_t / sum_j rho_t^j | weighted PDIS       |
| FQE   | 1/n sum_i V-hat(s_0)                                 | Le et al. 2019          |
| DR    | 1/n sum_i sum_t gamma^t [rho_t (r_t - Q) + rho_{t-1} V] | Jiang & Li 2016      |
| WDR   | sum_i sum_t gamma^t [w_t (r_t - Q) + w_{t-1} V], w_-1 = 1/n | Thomas & Brunskill 2016 |

IS, PDIS and DR are unbiased when mu > 0 wherever pi > 0 (DR for any Q-hat); the weighted ones
trade a small bias for much less variance. A deterministic target (the greedy policy of a
Q-learner, `target_epsilon=0`) makes every ratio 0 or 1/mu: only stays whose logged actions all
agree with pi carry weight, so the effective sample size (Kish, of the trajectory weights
rho_{H_i-1}) is small; report it beside every estimate (`OPEReport.ess`).

FQE regresses Q(s, a) on r + gamma (1 - terminated) sum_a' pi(a'|s') Q(s', a'): rows that are
truncated but not terminated do bootstrap. On one-hot observations (ICU-Sepsis) it is exact policy
evaluation of the empirical MDP (`tabular_fqe`: counts, one linear solve; a pair never logged
gets Q-hat(s, a) = V-hat(s)); otherwise a small torch MLP (`FQEConfig`, `mlp_fqe`) on
observations normalised with the logs' bounds.

ICU-Sepsis is logged in its 25 package actions; `icu_sepsis_probabilities` turns a checkpoint
trained on the admissible action set into a policy over those.

Intervals: a percentile bootstrap over stays (stays resampled with replacement; the weighted
estimators renormalise inside each resample). By default Q-hat is fitted once and held fixed
across resamples, so the FQE and DR intervals leave out the error of fitting it (with every stay
starting in one state, the FQE interval has no width); tabular FQE can be refitted in every
resample instead (`refit_fqe`).

Support: IS and DR are biased when pi puts mass on actions mu (almost) never takes. The
unsupported mass is the mean over logged steps of pi's probability on such actions where pi
takes them more often than mu (`unsupported_mass`); above `UNSUPPORTED_WARN` the report warns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from sepsis_rl.common.intervals import LEVEL, format_interval
from training.rl.offline.data import ACTION_LOGP, IMPORTED_ENV, LoggedSteps, LogsInfo, mix_uniform

if TYPE_CHECKING:
    import scipy.sparse

    from training.rl.policy import GreedyPolicy

IS, PDIS, WIS, WPDIS, FQE, DR, WDR = "IS", "PDIS", "WIS", "WPDIS", "FQE", "DR", "WDR"
ESTIMATORS = (IS, PDIS, WIS, WPDIS, FQE, DR, WDR)
"""Every estimator of `evaluate_offline`, in the order of the report."""
IMPORTANCE_WEIGHTED = (IS, PDIS, WIS, WPDIS, DR, WDR)
"""The estimators that need the behaviour policy's probabilities (importance ratios)."""
LOGGED = "logged"
"""The logged stays' own mean discounted return (the behaviour policy's value)."""

SUPPORT_MIN_PROB = 0.01
"""An action the behaviour policy takes with probability below this is unsupported (its ratio
would exceed 100)."""
SUPPORT_MIN_COUNT = 5
"""Without `behaviour_probs`, on one-hot states: an action logged fewer times than this in a
state is unsupported there."""
UNSUPPORTED_WARN = 0.05
"""Warn when the target puts more than this share of its probability on unsupported actions."""
ESS_WARN_FRACTION = 0.05
"""Warn when the effective sample size is below this fraction of the stays."""
PROBABILITY_TOLERANCE = 1e-4
"""How far a row of target probabilities may sum from 1."""
BOOTSTRAP_CHUNK = 50
"""Resamples drawn and evaluated at once (memory: this many rows of stay counts)."""
POLICY_BATCH = 8192
"""Observations the policy network scores at once."""

TargetProbs = Callable[[np.ndarray], np.ndarray]
"""A target policy: raw float32 observations (N, d) -> action probabilities (N, n_actions)."""
FQEMethod = Literal["auto", "tabular", "mlp", "none"]
"""How to fit Q-hat: tabular (one-hot observations), mlp, none, or auto (tabular if it can)."""


class OPEError(ValueError):
    """Logs and a target policy that cannot be evaluated together: says what is wrong."""


# --- the target policy -------------------------------------------------------------------------


def policy_probabilities(policy: GreedyPolicy, target_epsilon: float = 0.0) -> TargetProbs:
    """The target policy of a trained checkpoint as `probs(obs)`.

    Policy-gradient and imitation modules (PPO, APPO, IMPALA, BC, MARWIL) give the softmax of
    their logits, the policy they were trained as. Q-learners (DQN, CQL: `has_q_values`) give
    the greedy one-hot argmax_a Q(s, a), which is what they would deploy; its importance ratios
    are 0 or 1/mu, so few stays carry weight. `target_epsilon` mixes either with the uniform
    policy (`mix_uniform`), which evaluates an epsilon-greedy version instead.
    """
    if not 0.0 <= target_epsilon <= 1.0:
        raise ValueError(f"target_epsilon must be in [0, 1], got {target_epsilon}")

    def probs(observations: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(observations), POLICY_BATCH):
            obs = observations[start : start + POLICY_BATCH]
            if policy.has_q_values:
                scores = policy.scores(obs)
                greedy = np.zeros_like(scores, dtype=np.float64)
                greedy[np.arange(len(scores)), scores.argmax(axis=-1)] = 1.0
                chunks.append(greedy)
            else:
                chunks.append(policy.probabilities(obs).astype(np.float64))
        n_actions = chunks[0].shape[-1] if chunks else 0
        out = np.concatenate(chunks) if chunks else np.zeros((0, n_actions))
        return mix_uniform(out, target_epsilon) if target_epsilon else out

    return probs


def checkpoint_probabilities(
    policy: GreedyPolicy, info: LogsInfo, target_epsilon: float = 0.0
) -> TargetProbs:
    """The target policy of a checkpoint on the observations and actions of `info`'s logs:
    `icu_sepsis_probabilities` for ICU-Sepsis, else `policy_probabilities`. Raises OPEError
    when the policy does not fit the logs (another env, observation size or action count)."""
    from sepsis_env.ids import is_icu_sepsis

    env = policy.options.env
    if info.env != IMPORTED_ENV and is_icu_sepsis(env) != is_icu_sepsis(info.env):
        raise OPEError(f"the policy was trained on {env}, the logs come from {info.env}")
    if is_icu_sepsis(env):
        from sepsis_env import icu_sepsis

        if info.n_actions != icu_sepsis.NUM_ACTIONS:
            raise OPEError(
                f"ICU-Sepsis logs hold the {icu_sepsis.NUM_ACTIONS} package actions; these "
                f"logs say {info.n_actions}"
            )
        observation = info.env_kwargs.get("observation", icu_sepsis.DEFAULT_OBSERVATION)
        return icu_sepsis_probabilities(policy, observation, target_epsilon)
    n_obs = int(np.prod(policy.observation_space.shape))
    if n_obs != len(info.obs_low):
        raise OPEError(
            f"the policy reads {n_obs} observation values ({env}), the logs hold "
            f"{len(info.obs_low)}"
        )
    n_actions = int(policy.scores(np.zeros((1, n_obs), dtype=np.float32)).shape[-1])
    if n_actions != info.n_actions:
        raise OPEError(
            f"the policy chooses among {n_actions} actions ({env}), the logs among {info.n_actions}"
        )
    return policy_probabilities(policy, target_epsilon)


def icu_sepsis_probabilities(
    policy: GreedyPolicy, logs_observation: str, target_epsilon: float = 0.0
) -> TargetProbs:
    """The target policy of an ICU-Sepsis checkpoint over the 25 package actions, as
    `probs(obs)` on observations encoded as the logs encode them (`logs_observation`).

    ICU-Sepsis is logged in package actions (`action_set="all"`), while a run may act through
    the `admissible` action set (agent action k in state s is package action
    `action_table[s, k]`). Each logged observation is mapped back to its state; the policy's
    probabilities (`policy_probabilities`, with `target_epsilon` mixed over its own actions)
    are computed on its own observation of that state and folded into package actions, repeated
    entries adding up (memo of issue 16, section 6)."""
    from sepsis_env import icu_sepsis
    from training.rl.icu_sepsis import env_settings

    settings = env_settings(policy.options)
    own = icu_sepsis.observation_table(settings.observation).copy()
    agent = policy_probabilities(policy, target_epsilon)(own)
    package = np.zeros((icu_sepsis.NUM_STATES, icu_sepsis.NUM_ACTIONS))
    if settings.action_set == "admissible":
        table = icu_sepsis.action_table(settings.max_actions)
        np.add.at(package, (np.arange(icu_sepsis.NUM_STATES)[:, None], table), agent)
    else:
        package[:] = agent
    logs_table = icu_sepsis.observation_table(logs_observation)

    def probs(observations: np.ndarray) -> np.ndarray:
        return package[state_of_observation(observations, logs_table)]

    return probs


def state_of_observation(observations: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The row of `table` (one observation per state) equal to each observation (OPEError for
    one that is no state's)."""
    observations = np.asarray(observations, dtype=table.dtype)
    if observations.ndim != 2 or observations.shape[1] != table.shape[1]:
        raise OPEError(
            f"observations of shape {observations.shape} are not the logs' encoding of states "
            f"({table.shape[1]} values each)"
        )
    row = np.dtype((np.void, table.dtype.itemsize * table.shape[1]))
    keys = np.ascontiguousarray(table).view(row).ravel()
    order = np.argsort(keys)
    wanted = np.ascontiguousarray(observations).view(row).ravel()
    found = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
    states = order[found]
    unknown = np.flatnonzero(keys[states] != wanted)
    if len(unknown):
        raise OPEError(
            f"{len(unknown)} logged observations are no ICU-Sepsis state's (first: row "
            f"{int(unknown[0])}); were the logs written with another observation encoding?"
        )
    return states


def _checked_probs(probs: np.ndarray, n_rows: int, n_actions: int, what: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n_rows, n_actions):
        raise OPEError(
            f"the target policy gave probabilities of shape {probs.shape} for {n_rows} {what}; "
            f"expected ({n_rows}, {n_actions}): one per action of the logs"
        )
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1)
    bad |= np.abs(probs.sum(axis=1) - 1.0) > PROBABILITY_TOLERANCE
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise OPEError(
            f"the target policy's probabilities for {what} are not a distribution in "
            f"{int(bad.sum())} rows (first: row {row}, {probs[row].round(4).tolist()})"
        )
    return probs


# --- stays as flat rows ------------------------------------------------------------------------


def stay_positions(stay: np.ndarray, n_stays: int) -> tuple[np.ndarray, np.ndarray]:
    """The position t of every row inside its stay and the length H_i of every stay, for rows
    sorted by (stay, step)."""
    if len(stay) and np.any(np.diff(stay) < 0):
        raise OPEError("logged rows are not sorted by stay; read them with read_logs")
    lengths = np.bincount(stay, minlength=n_stays)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.arange(len(stay)) - first[stay], lengths


def cumulative_ratios(ratio: np.ndarray, position: np.ndarray) -> np.ndarray:
    """rho_t = prod_{k<=t} ratio_k inside each stay, for rows sorted by (stay, step)."""
    rho = ratio.astype(np.float64).copy()
    order = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[order], np.arange(int(position.max(initial=0)) + 2))
    for t in range(1, len(bounds) - 1):
        rows = order[bounds[t] : bounds[t + 1]]
        rho[rows] *= rho[rows - 1]  # the row before a row at t > 0 is its stay's step t - 1
    return rho


# --- the estimators as sums over stays ---------------------------------------------------------

_RETURN, _IS, _PDIS, _DR, _FQE, _RHO_END = range(6)  # columns of StayTerms.per_stay
_N_STEP_BLOCKS = 5  # per_step blocks: rho r, rho, rho (r - q), rho_prev v, rho at the stay's end


@dataclass(frozen=True)
class StayTerms:
    """Every estimator as ratios of sums over stays: per-stay terms (dense, n x 6) and per-step
    terms (sparse, n x 5H), so that weighting the stays by any counts (a bootstrap resample) or
    probabilities (an exact expectation) is one matrix product."""

    per_stay: np.ndarray
    """(n, 6): G, rho_end G, sum_t gamma^t rho_t r_t, the DR sum, V-hat(s_0), rho_end."""
    per_step: scipy.sparse.csr_matrix
    """(n, 5H): blocks of H columns (one per step t): rho_t r_t, rho_t, rho_t (r_t - Q-hat),
    rho_{t-1} V-hat(s_t), and rho_end in column H_i of the last block (stays that ended at or
    before t keep their final weight in the per-step normalisers)."""
    discount: np.ndarray
    """(H,): gamma^t."""

    @classmethod
    def build(
        cls,
        stay: np.ndarray,
        rewards: np.ndarray,
        ratio: np.ndarray,
        q_logged: np.ndarray,
        v_state: np.ndarray,
        gamma: float,
        n_stays: int,
    ) -> StayTerms:
        """The terms of logged rows sorted by (stay, step): `ratio` pi/mu of the logged action,
        `q_logged` Q-hat(s_t, a_t) and `v_state` V-hat(s_t) (zeros without FQE)."""
        import scipy.sparse

        position, lengths = stay_positions(stay, n_stays)
        horizon = int(lengths.max(initial=0))
        discount = gamma ** np.arange(horizon, dtype=np.float64)
        rho = cumulative_ratios(ratio, position)
        rho_prev = np.where(position > 0, np.roll(rho, 1), 1.0)
        last = np.flatnonzero(lengths > 0)
        rho_end = np.ones(n_stays)
        rho_end[last] = rho[np.cumsum(lengths)[last] - 1]
        disc = discount[position]
        r = rewards.astype(np.float64)

        def per_stay_sum(x: np.ndarray) -> np.ndarray:
            return np.bincount(stay, weights=x, minlength=n_stays)

        returns = per_stay_sum(disc * r)
        first_v = np.zeros(n_stays)
        first_v[stay[position == 0]] = v_state[position == 0]
        per_stay = np.column_stack(
            [
                returns,
                rho_end * returns,
                per_stay_sum(disc * rho * r),
                per_stay_sum(disc * (rho * (r - q_logged) + rho_prev * v_state)),
                first_v,
                rho_end,
            ]
        )
        ended = lengths < horizon  # a stay of full length never carries into a later step
        rows = np.concatenate([np.tile(stay, 4), np.flatnonzero(ended)])
        columns = np.concatenate(
            [position + k * horizon for k in range(4)] + [4 * horizon + lengths[ended]]
        )
        values = np.concatenate(
            [rho * r, rho, rho * (r - q_logged), rho_prev * v_state, rho_end[ended]]
        )
        per_step = scipy.sparse.csr_matrix(
            (values, (rows, columns)), shape=(n_stays, _N_STEP_BLOCKS * horizon)
        )
        return cls(per_stay=per_stay, per_step=per_step, discount=discount)

    @property
    def n_stays(self) -> int:
        return self.per_stay.shape[0]

    def estimates(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every estimator under stay weights (b, n) (counts of a resample, or probabilities),
        each as a (b,) array; the weighted estimators are NaN when every weight is zero."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        total = weights.sum(axis=1)
        stay_sums = weights @ self.per_stay
        horizon = len(self.discount)
        step_sums = np.asarray((self.per_step.T @ weights.T).T).reshape(
            len(weights), _N_STEP_BLOCKS, horizon
        )
        rho_r, rho_active, rho_td, rho_prev_v, rho_ended = np.moveaxis(step_sums, 1, 0)
        normaliser = rho_active + np.cumsum(rho_ended, axis=1)  # sum_j rho_t^j, ended included
        normaliser_prev = np.concatenate([total[:, None], normaliser[:, :-1]], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {
                LOGGED: stay_sums[:, _RETURN] / total,
                IS: stay_sums[:, _IS] / total,
                PDIS: stay_sums[:, _PDIS] / total,
                WIS: stay_sums[:, _IS] / stay_sums[:, _RHO_END],
                WPDIS: _weighted_sum(rho_r, normaliser, self.discount),
                FQE: stay_sums[:, _FQE] / total,
                DR: stay_sums[:, _DR] / total,
                WDR: _weighted_sum(rho_td, normaliser, self.discount)
                + _weighted_sum(rho_prev_v, normaliser_prev, self.discount),
            }
        alive = normaliser[:, 0] > 0 if horizon else np.zeros(len(weights), dtype=bool)
        for name in (WPDIS, WDR):
            out[name] = np.where(alive, out[name], np.nan)
        return out


def _weighted_sum(numerator: np.ndarray, normaliser: np.ndarray, discount: np.ndarray):
    """sum_t gamma^t numerator_t / normaliser_t; a step where every weight is 0 adds nothing."""
    safe = np.where(normaliser > 0, normaliser, 1.0)
    return (np.where(normaliser > 0, numerator / safe, 0.0) * discount).sum(axis=1)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 (0 when every weight is 0)."""
    weights = np.asarray(weights, dtype=np.float64)
    squares = float(np.sum(weights**2))
    return float(np.sum(weights) ** 2 / squares) if squares > 0 else 0.0


def bootstrap_estimates(
    terms: StayTerms,
    resamples: int,
    rng: np.random.Generator,
    refit: Callable[[np.ndarray], StayTerms] | None = None,
) -> dict[str, np.ndarray]:
    """Every estimator on `resamples` bootstrap resamples of the stays, each (resamples,).

    `refit(counts)` (optional) gives the terms with Q-hat fitted again on one resample (its
    stay counts, (n,)): FQE, DR and WDR then come from those terms, so their intervals include
    the error of fitting Q-hat."""
    n = terms.n_stays
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        b = min(BOOTSTRAP_CHUNK, resamples - start)
        drawn = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        chunk = terms.estimates(counts)
        for i in range(b) if refit is not None else ():
            refitted = refit(counts[i]).estimates(counts[i])
            for name in (FQE, DR, WDR):
                chunk[name][i] = refitted[name][0]
        chunks.append(chunk)
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


# --- fitted Q evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class FQEConfig:
    """The MLP fitted Q evaluation (observations that are not one-hot states)."""

    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the Q network (ReLU)."""
    iterations: int = 100
    """Bellman backups: the frozen target network is refreshed this many times (more than the
    longest stay, so that value travels back from its end)."""
    steps_per_iteration: int = 100
    """Adam steps regressing onto each iteration's targets."""
    batch_size: int = 512
    """Logged rows per Adam step."""
    lr: float = 1e-3
    """Adam's learning rate."""


def one_hot_states(observations: np.ndarray) -> np.ndarray | None:
    """The index of the hot coordinate of every row if every row is exactly one-hot, else None."""
    if observations.ndim != 2 or observations.shape[1] < 2 or not len(observations):
        return None
    hot = observations.argmax(axis=1)
    rows = np.arange(len(observations))
    if not np.all(observations[rows, hot] == 1.0):
        return None
    if not np.all(np.count_nonzero(observations, axis=1) == 1):
        return None
    return hot


def tabular_fqe(
    states: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_states: np.ndarray,
    bootstraps: np.ndarray,
    target: np.ndarray,
    gamma: float,
    n_states: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Q-hat (n_states, n_actions) by exact evaluation of the target on the empirical MDP.

    P-hat(s'|s,a) and r-hat(s,a) are counts over the logged rows of (s, a); rows that terminated
    lead nowhere; `target` (n_rows, n_actions) is pi(.|s) on each row. V = (I - gamma P_pi)^-1
    r_pi is one linear solve over states. The empirical MDP knows nothing of a pair (s, a) never
    logged: such a pair gets Q-hat(s, a) = V-hat(s), as if pi fared there as it does with the
    logged actions (pi renormalised over the actions logged in s; if pi puts no mass on them,
    the logged actions' frequencies). States never logged get V = 0, and with gamma = 1 so do
    states from which the empirical MDP never ends (as a time limit would). `next_states` is
    read only where `bootstraps`; `weights` counts each row that many times (a resample)."""
    n_actions = target.shape[1]
    weights = np.ones(len(states)) if weights is None else np.asarray(weights, dtype=np.float64)
    pair = states * n_actions + actions
    count = np.bincount(pair, weights=weights, minlength=n_states * n_actions)
    count = count.reshape(n_states, n_actions)
    reward = np.bincount(pair, weights=weights * rewards, minlength=n_states * n_actions)
    reward = reward.reshape(n_states, n_actions) / np.where(count > 0, count, 1)
    pi = np.zeros((n_states, n_actions))
    pi[states] = target
    pi = _on_logged_actions(pi, count)
    # pi(a|s) / n(s, a) per row: the row's share of P_pi(.|s)
    step_prob = weights * pi[states, actions] / np.where(count > 0, count, 1)[states, actions]
    moves = np.flatnonzero(bootstraps & (weights > 0))
    transition = np.zeros((n_states, n_states))
    np.add.at(transition, (states[moves], next_states[moves]), step_prob[moves])
    from sepsis_env.icu_sepsis import states_reaching

    values = np.zeros(n_states)
    solve = (
        np.ones(n_states, dtype=bool)
        if gamma < 1
        else states_reaching(transition, transition.sum(axis=1) < 1 - 1e-9)
    )
    system = np.eye(int(solve.sum())) - gamma * transition[np.ix_(solve, solve)]
    values[solve] = np.linalg.solve(system, (pi * reward).sum(axis=1)[solve])
    backup = np.where(bootstraps, gamma * values[np.where(bootstraps, next_states, 0)], 0.0)
    backup = np.bincount(pair, weights=weights * backup, minlength=n_states * n_actions)
    q = reward + backup.reshape(n_states, n_actions) / np.where(count > 0, count, 1)
    return np.where(count > 0, q, values[:, None])


def _on_logged_actions(pi: np.ndarray, count: np.ndarray) -> np.ndarray:
    """pi(.|s) renormalised over the actions logged in s; where pi gives them no mass, the
    logged actions' frequencies; zero rows for states never logged."""
    logged = count > 0
    on_logged = pi * logged
    mass = on_logged.sum(axis=1, keepdims=True)
    total = count.sum(axis=1, keepdims=True)
    frequencies = count / np.where(total > 0, total, 1)
    return np.where(mass > 0, on_logged / np.where(mass > 0, mass, 1.0), frequencies)


def mlp_fqe(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_observations: np.ndarray,
    bootstraps: np.ndarray,
    next_target: np.ndarray,
    gamma: float,
    config: FQEConfig,
    seed: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """Q-hat as a function of (normalised) observations -> (N, n_actions), fitted by FQE with a
    torch MLP: each iteration freezes a copy of the network and takes `steps_per_iteration` Adam
    steps on minibatches towards r + gamma (1 - terminated) sum_a' pi(a'|s') Q_frozen(s', a').
    `next_target` is pi(.|s') on every row (read where `bootstraps`). Rewards are scaled by
    their largest magnitude while fitting. Uses torch's current thread count."""
    import copy

    import torch

    rng = np.random.default_rng(seed)
    n_actions = next_target.shape[1]
    scale = float(np.abs(rewards).max(initial=0.0)) or 1.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        width = observations.shape[1]
        for hidden in config.hidden:
            layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
            width = hidden
        net = torch.nn.Sequential(*layers, torch.nn.Linear(width, n_actions))
    obs = torch.as_tensor(observations, dtype=torch.float32)
    next_obs = torch.as_tensor(next_observations, dtype=torch.float32)
    act = torch.as_tensor(actions, dtype=torch.int64)
    rew = torch.as_tensor(rewards / scale, dtype=torch.float32)
    cont = torch.as_tensor(gamma * bootstraps, dtype=torch.float32)
    pi_next = torch.as_tensor(next_target, dtype=torch.float32)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    for _ in range(config.iterations):
        frozen = copy.deepcopy(net).requires_grad_(False)
        for _ in range(config.steps_per_iteration):
            idx = torch.from_numpy(rng.integers(0, len(obs), size=config.batch_size))
            with torch.no_grad():
                next_v = (pi_next[idx] * frozen(next_obs[idx])).sum(dim=1)
                y = rew[idx] + cont[idx] * next_v
            q = net(obs[idx]).gather(1, act[idx, None]).squeeze(1)
            loss = torch.nn.functional.mse_loss(q, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()

    def q_values(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [
                net(torch.as_tensor(x[i : i + POLICY_BATCH], dtype=torch.float32)).numpy()
                for i in range(0, len(x), POLICY_BATCH)
            ]
        return scale * np.concatenate(out).astype(np.float64) if out else np.zeros((0, n_actions))

    return q_values


def normalised(observations: np.ndarray, info: LogsInfo) -> np.ndarray:
    """Observations mapped as training maps them (`training.rl.envs.normalize`), from the logs'
    bounds."""
    import gymnasium as gym

    from training.rl.envs import normalization_constants, normalize

    space = gym.spaces.Box(
        low=np.asarray(info.obs_low, dtype=np.float32),
        high=np.asarray(info.obs_high, dtype=np.float32),
        dtype=np.float32,
    )
    return normalize(observations, *normalization_constants(space))


# --- support -----------------------------------------------------------------------------------


def unsupported_mass(
    steps: LoggedSteps, target: np.ndarray, states: np.ndarray | None = None
) -> tuple[float, str]:
    """The mean over logged steps of the target's probability on actions the behaviour policy
    (almost) never takes there and the target takes more often, and how "never" was judged:

    * with `behaviour_probs`: mu(a|s) < `SUPPORT_MIN_PROB`;
    * else on one-hot `states`: a logged fewer than `SUPPORT_MIN_COUNT` times in s;
    * else: a logged in fewer than `SUPPORT_MIN_PROB` of all steps (this misses gaps that
      depend on the state).

    "More often" compares pi(a|s) with mu(a|s) (or the logged frequency), so a target equal to
    the behaviour has no unsupported mass however rare some of its actions are."""
    n_actions = target.shape[1]
    if steps.behaviour_probs is not None:
        behaviour = steps.behaviour_probs.astype(np.float64)
        rare = behaviour < SUPPORT_MIN_PROB
        how = f"behaviour probability < {SUPPORT_MIN_PROB:g}"
    elif states is not None:
        count = np.zeros((int(states.max()) + 1, n_actions))
        np.add.at(count, (states, steps.actions), 1)
        behaviour = (count / count.sum(axis=1, keepdims=True).clip(min=1))[states]
        rare = count[states] < SUPPORT_MIN_COUNT
        how = f"action logged < {SUPPORT_MIN_COUNT} times in the state"
    else:
        share = np.bincount(steps.actions, minlength=n_actions) / max(len(steps), 1)
        behaviour = np.broadcast_to(share, target.shape)
        rare = behaviour < SUPPORT_MIN_PROB
        how = f"action in < {SUPPORT_MIN_PROB:.0%} of all logged steps"
    unsupported = rare & (target > behaviour)
    mass = float((target * unsupported).sum(axis=1).mean()) if len(target) else 0.0
    return mass, how


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap percentile interval (NaN when undefined)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        def clean(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": clean(self.value), "ci_low": clean(self.low), "ci_high": clean(self.high)}


@dataclass
class OPEReport:
    """What `evaluate_offline` found: every estimate with its interval, and the diagnostics."""

    estimates: dict[str, Estimate]
    """By estimator (`ESTIMATORS`)."""
    logged: Estimate
    """The logged stays' mean discounted return: the behaviour policy's value."""
    ess: float
    """Kish effective sample size of the trajectory weights rho_{H_i-1}."""
    n_stays: int
    n_steps: int
    gamma: float
    unsupported_mass: float
    """Mean target probability on actions the behaviour policy (almost) never takes."""
    support_rule: str
    """How `unsupported_mass` judged an action unsupported."""
    fqe: str
    """How Q-hat was fitted: tabular, mlp, or none."""
    bootstrap: int
    """Bootstrap resamples over stays behind the intervals."""
    refit_fqe: bool = False
    """Whether Q-hat was fitted again in every resample (else held fixed)."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimates": {name: e.to_dict() for name, e in self.estimates.items()},
            "logged_return": self.logged.to_dict(),
            "ess": self.ess if math.isfinite(self.ess) else None,
            "n_stays": self.n_stays,
            "n_steps": self.n_steps,
            "gamma": self.gamma,
            "unsupported_mass": self.unsupported_mass,
            "support_rule": self.support_rule,
            "fqe": self.fqe,
            "bootstrap": self.bootstrap,
            "refit_fqe": self.refit_fqe,
            "level": LEVEL,
            "warnings": list(self.warnings),
        }

    def format(self) -> str:
        """A plain-text table for the terminal."""
        level = f"{LEVEL:.0%}"
        lines = [
            f"off-policy evaluation: {self.n_stays:,} stays, {self.n_steps:,} steps, "
            f"gamma {self.gamma:g}, {level} bootstrap intervals over stays ({self.bootstrap:,} "
            f"resamples; FQE and DR with Q-hat {'refitted' if self.refit_fqe else 'fixed'})",
            f"{'estimator':<10} {'estimate [' + level + ' interval]':<34} {'ESS':>10}",
        ]
        for name, e in self.estimates.items():
            weighted = name in IMPORTANCE_WEIGHTED and math.isfinite(self.ess)
            ess = f"{self.ess:,.1f}" if weighted else "-"
            lines.append(f"{name:<10} {format_interval(_triple(e)):<34} {ess:>10}")
        lines.append(f"{LOGGED:<10} {format_interval(_triple(self.logged)):<34} {'-':>10}")
        lines.append(
            f"FQE: {self.fqe}; unsupported mass {self.unsupported_mass:.3f} ({self.support_rule})"
        )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _triple(e: Estimate) -> tuple[float, float, float]:
    return (e.value, e.low, e.high)


# --- the entry point ---------------------------------------------------------------------------


def evaluate_offline(
    steps: LoggedSteps,
    info: LogsInfo,
    target_probs: TargetProbs,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    fqe: FQEMethod = "auto",
    fqe_config: FQEConfig | None = None,
    refit_fqe: bool = False,
) -> OPEReport:
    """Every estimator of the target policy's value on the logged stays, with `bootstrap`
    percentile intervals over stays (seeded by `seed`, which also seeds the MLP FQE).

    `fqe`: "tabular" (one-hot observations), "mlp", "none" (FQE and DR/WDR with Q-hat = 0 are
    left out), or "auto" (tabular when every observation is one-hot, else mlp). By default Q-hat
    is fitted once and held fixed in the resamples, so the FQE, DR and WDR intervals leave out
    the error of fitting it; `refit_fqe` (tabular only, about 10-50 ms per resample) fits it
    again in every resample. Raises OPEError for logs and a target that do not fit together."""
    _check_logs(steps, info)
    gamma, warnings = float(info.gamma), []
    target = _checked_probs(target_probs(steps.obs), len(steps), info.n_actions, "logged states")
    mu = _behaviour_of_logged(steps)
    has_mu = bool(np.isfinite(mu).all())
    if not has_mu:
        warnings.append(
            f"the behaviour probability is unknown for {int((~np.isfinite(mu)).sum()):,} of "
            f"{len(steps):,} steps (no {ACTION_LOGP} column): only FQE can be computed"
        )

    if refit_fqe and fqe in ("mlp", "none"):
        raise OPEError(f"refitting FQE in every resample needs tabular FQE, not {fqe}")
    q_hat = fit_q(steps, info, target, target_probs, fqe, fqe_config, seed)
    method, states = q_hat.method, q_hat.states
    if refit_fqe and q_hat.refit is None:
        raise OPEError(f"refitting FQE in every resample needs tabular FQE, not {method}")
    ratio = target[np.arange(len(steps)), steps.actions] / np.where(has_mu, mu, 1.0)

    def terms_of(q_rows: np.ndarray | None = None) -> StayTerms:
        q_logged, v_state = q_hat.terms(target, steps.actions, q_rows)
        return StayTerms.build(
            steps.stay, steps.rewards, ratio, q_logged, v_state, gamma, steps.n_stays
        )

    def refit(counts: np.ndarray) -> StayTerms:
        return terms_of(q_hat.refit(counts[steps.stay]))

    terms = terms_of()
    # a 716-state solve per resample runs fastest on one BLAS thread (and threads oversubscribe
    # small machines)
    with np.errstate(over="ignore", invalid="ignore"), threadpool_limits(1, user_api="blas"):
        point = terms.estimates(np.ones(steps.n_stays))
        resampled = bootstrap_estimates(
            terms, bootstrap, np.random.default_rng(seed), refit if refit_fqe else None
        )
    rho_end = terms.per_stay[:, _RHO_END]
    ess = effective_sample_size(rho_end) if has_mu else math.nan

    def estimate(name: str) -> Estimate:
        undefined = (name in IMPORTANCE_WEIGHTED and not has_mu) or (
            name in (FQE, DR, WDR) and method == "none"
        )
        if undefined:
            return Estimate(math.nan, math.nan, math.nan)
        low, high = _percentiles(resampled.get(name))
        return Estimate(float(point[name][0]), low, high)

    for name in (WIS, WPDIS, WDR) if has_mu and bootstrap else ():
        undefined = int((~np.isfinite(resampled[name])).sum())
        if undefined and np.isfinite(point[name][0]):
            warnings.append(
                f"{name} is undefined in {undefined} of {bootstrap} resamples (no stay with "
                "weight > 0); its interval comes from the others"
            )
    mass, rule = unsupported_mass(steps, target, states)
    if mass > UNSUPPORTED_WARN:
        warnings.append(
            f"the target puts {mass:.1%} of its probability on actions the logs rarely contain "
            f"({rule}): IS and DR estimates are biased there; FQE extrapolates"
        )
    if has_mu and not np.isfinite(rho_end).all():
        warnings.append("importance weights overflow: the IS-based estimates are not usable")
    elif has_mu and ess < ESS_WARN_FRACTION * steps.n_stays:
        warnings.append(
            f"effective sample size {ess:,.1f} of {steps.n_stays:,} stays: the importance-"
            "weighted estimates rest on few stays"
        )
    return OPEReport(
        estimates={name: estimate(name) for name in ESTIMATORS},
        logged=Estimate(float(point[LOGGED][0]), *_percentiles(resampled.get(LOGGED))),
        ess=ess,
        n_stays=steps.n_stays,
        n_steps=len(steps),
        gamma=gamma,
        unsupported_mass=mass,
        support_rule=rule,
        fqe=method,
        bootstrap=bootstrap,
        refit_fqe=refit_fqe,
        warnings=warnings,
    )


@dataclass(frozen=True)
class QHat:
    """FQE's Q-hat on the logged rows."""

    method: str
    """tabular, mlp or none."""
    rows: np.ndarray | None
    """Q-hat(s_t, .) on every logged row, (N, n_actions); None for none."""
    states: np.ndarray | None = None
    """The one-hot state of every row (tabular)."""
    refit: Callable[[np.ndarray], np.ndarray] | None = None
    """Row weights (N,) -> `rows` fitted again on the rows so weighted (tabular only)."""

    def terms(self, target: np.ndarray, actions: np.ndarray, rows: np.ndarray | None = None):
        """(Q-hat(s_t, a_t), V-hat(s_t)) per row: zeros without Q-hat."""
        rows = self.rows if rows is None else rows
        if rows is None:
            return np.zeros(len(actions)), np.zeros(len(actions))
        return rows[np.arange(len(actions)), actions], (target * rows).sum(axis=1)


def fit_q(
    steps: LoggedSteps,
    info: LogsInfo,
    target: np.ndarray,
    target_probs: TargetProbs,
    fqe: FQEMethod = "auto",
    fqe_config: FQEConfig | None = None,
    seed: int = 0,
) -> QHat:
    """FQE's Q-hat on every logged row; `target` is pi(.|s_t) on every row."""
    bootstraps = ~steps.terminated
    states = next_states = None
    if fqe in ("auto", "tabular"):
        states = one_hot_states(steps.obs)
        if states is not None and bootstraps.any():
            next_states = one_hot_states(steps.next_obs[bootstraps])
            states = None if next_states is None else states
    method = {"auto": "tabular" if states is not None else "mlp"}.get(fqe, fqe)
    if method == "tabular" and states is None:
        raise OPEError("tabular FQE needs one-hot observations (ICU-Sepsis); use fqe='mlp'")
    if method == "tabular":
        every_next = np.zeros(len(steps), dtype=np.int64)
        if next_states is not None:
            every_next[bootstraps] = next_states
        rewards = steps.rewards.astype(np.float64)

        def rows(weights: np.ndarray | None = None) -> np.ndarray:
            q_table = tabular_fqe(
                states,
                steps.actions,
                rewards,
                every_next,
                bootstraps,
                target,
                float(info.gamma),
                n_states=steps.obs.shape[1],
                weights=weights,
            )
            return q_table[states]

        return QHat(method, rows(), states, rows)
    if method == "mlp":
        obs = normalised(steps.obs, info)
        q_fn = mlp_fqe(
            obs,
            steps.actions,
            steps.rewards.astype(np.float64),
            normalised(steps.next_obs, info),
            bootstraps,
            _next_target(steps, target, target_probs, bootstraps, info.n_actions),
            float(info.gamma),
            fqe_config or FQEConfig(),
            seed,
        )
        return QHat(method, q_fn(obs))
    return QHat(method, None)


def _check_logs(steps: LoggedSteps, info: LogsInfo) -> None:
    if not 0.0 <= info.gamma <= 1.0:
        raise OPEError(f"the logs' gamma is {info.gamma}; a discount must lie in [0, 1]")
    if not len(steps):
        raise OPEError("the logs hold no steps")
    if steps.actions.min() < 0 or steps.actions.max() >= info.n_actions:
        raise OPEError(
            f"logged actions run from {steps.actions.min()} to {steps.actions.max()}, but the "
            f"logs' info says there are {info.n_actions} actions"
        )


def _behaviour_of_logged(steps: LoggedSteps) -> np.ndarray:
    """mu(a_t|s_t) of every logged action (NaN where unknown): `behaviour_prob`, else read from
    `behaviour_probs`. Raises OPEError for a logged action the behaviour could not take."""
    mu = np.asarray(steps.behaviour_prob, dtype=np.float64).copy()
    if steps.behaviour_probs is not None:
        missing = ~np.isfinite(mu)
        mu[missing] = steps.behaviour_probs[np.flatnonzero(missing), steps.actions[missing]]
    impossible = np.flatnonzero(mu <= 0)
    if len(impossible):
        row = int(impossible[0])
        raise OPEError(
            f"stay {steps.stay_ids[steps.stay[row]]} step {steps.step[row]}: the behaviour "
            f"probability of the logged action is 0 ({len(impossible)} such steps); the logs' "
            f"{ACTION_LOGP} is wrong"
        )
    return mu


def _next_target(
    steps: LoggedSteps,
    target: np.ndarray,
    target_probs: TargetProbs,
    bootstraps: np.ndarray,
    n_actions: int,
) -> np.ndarray:
    """pi(.|s') on every row that bootstraps (zeros elsewhere); a next state that is the stay's
    next logged state reuses that row's probabilities instead of asking the policy again."""
    out = np.zeros((len(steps), n_actions))
    following = np.zeros(len(steps), dtype=bool)
    following[:-1] = (steps.stay[1:] == steps.stay[:-1]) & np.all(
        steps.next_obs[:-1] == steps.obs[1:], axis=1
    )
    reuse = bootstraps & following
    out[reuse] = target[np.flatnonzero(reuse) + 1]
    ask = np.flatnonzero(bootstraps & ~following)
    if len(ask):
        out[ask] = _checked_probs(
            target_probs(steps.next_obs[ask]), len(ask), n_actions, "logged next states"
        )
    return out


def _percentiles(samples: np.ndarray | None) -> tuple[float, float]:
    """The equal-tailed `LEVEL` percentile interval of the bootstrap samples where the estimator
    is defined (a weighted estimator is not where every resampled stay has weight 0)."""
    if samples is None or not np.isfinite(samples).any():
        return math.nan, math.nan
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(samples[np.isfinite(samples)], [tail, 100 - tail])
    return float(low), float(high)
