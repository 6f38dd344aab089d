"""The ICU-Sepsis benchmark MDP: a Gymnasium env a network can learn from, and its exact evaluator.

ICU-Sepsis (PyPI `icu-sepsis`, MIT; Choudhary, Gupta and Thomas, RLC 2024) is a tabular MDP
estimated from MIMIC-III sepsis trajectories: 716 states (713 patient states, then death,
survival and an absorbing state), 25 actions (5 IV-fluid x 5 vasopressor levels), reward 1 on
entering the survival state and 0 otherwise, gamma 1. Its transition matrices ship inside the
package, so the value of any policy is a linear solve rather than a sampled estimate. That is what
makes it a yardstick for the learner: the best achievable return is known.

Two halves, no Ray in either:

* `ICUSepsisBenchmarkEnv`, registered as `ENV_ID` (`sepsis_env.icu_sepsis:ICUSepsis-v0` imports
  this module, and so registers the id, in whichever process builds the env: RLlib env runners
  included). `--env icu-sepsis` on the command line is an alias of it (`ENV_ALIASES`).
* `ICUSepsisMDP` and `evaluate_policy`: the exact expected return of a deterministic or stochastic
  policy over the 716 states, beside the random, clinician and optimal values, computed the same
  way from the same matrices.

The package is an optional extra (`pip install -e ".[icu-sepsis]"`); nothing else in the project
imports this module, and `require_icu_sepsis` says how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import register, registry

from sepsis_env.ids import (
    ICU_SEPSIS_ENV_ID,
    ICU_SEPSIS_GYM_ID,
)

INSTALL_HINT = 'pip install -e ".[icu-sepsis]"'
"""How to install the optional dependency (the `icu-sepsis` extra of this project)."""

ENV_ID = ICU_SEPSIS_ENV_ID
"""Gymnasium id of `ICUSepsisBenchmarkEnv` (registered when this module is imported)."""
GYM_ID = ICU_SEPSIS_GYM_ID
"""The id in Gymnasium's `module:EnvId` form (see `sepsis_env.ids`)."""

NUM_STATES = 716
NUM_ACTIONS = 25
STATE_DEATH = 713
STATE_SURVIVAL = 714
STATE_ABSORBING = 715
TERMINAL_STATES = (STATE_DEATH, STATE_SURVIVAL, STATE_ABSORBING)
GAMMA = 1.0
"""The benchmark's discount factor (the package's default)."""
MAX_EPISODE_STEPS = 500
"""The package's own time limit (`icu_sepsis.utils.constants.MAX_EPISODE_STEPS`)."""
NUM_STATE_FEATURES = 47
"""Length of the package's `info["state_vector"]`: the standardised centroid of the state's
cluster of MIMIC-III patient-hours (all zeros for the three terminal states)."""

OBSERVATIONS = ("onehot", "features", "onehot+features")
"""Observation encodings `ICUSepsisBenchmarkEnv` offers (see its docstring)."""
DEFAULT_OBSERVATION = "onehot"
ACTION_SETS = ("all", "admissible")
"""What the agent's actions mean (see `ICUSepsisBenchmarkEnv`)."""
DEFAULT_ACTION_SET = "all"
DEFAULT_MAX_ACTIONS = 6
"""Actions per state of the `admissible` action set: the state's admissible actions most used
by clinicians, at most this many (6 keeps the optimum at 0.8743 of 0.8751; all 13 keep 0.8751)."""
INADMISSIBLE_STRATEGIES = ("mean", "terminate", "raise_exception")
"""The package's options for inadmissible actions (`inadmissible_action_strategy`)."""
DEFAULT_INADMISSIBLE_STRATEGY = "mean"
"""The package's default, and the mode every published baseline number was computed in."""

TARGET_VALUE = 0.86
"""This project's target for the learned policy's exact value (84% of the random-to-optimal gap)."""


class ICUSepsisNotInstalledError(ImportError):
    """The optional `icu-sepsis` package is missing."""


def require_icu_sepsis() -> ModuleType:
    """The `icu_sepsis` package, or `ICUSepsisNotInstalledError` saying how to install it."""
    try:
        # icu_sepsis imports the legacy `gym` package, whose import prints a deprecation notice
        # to stderr on every process start (each env runner too); the notice is not ours to show.
        with contextlib.redirect_stderr(io.StringIO()):
            import icu_sepsis
    except ImportError as err:
        raise ICUSepsisNotInstalledError(
            "the ICU-Sepsis benchmark needs the optional `icu-sepsis` package, which is not "
            f"installed ({err}); install it with: {INSTALL_HINT}"
        ) from err
    return icu_sepsis


def icu_sepsis_available() -> bool:
    """Whether `icu_sepsis` can be imported."""
    try:
        require_icu_sepsis()
    except ICUSepsisNotInstalledError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


@functools.cache
def _shipped_parameters() -> Any:
    """The package's `MDPParameters`, read once per process (its matrices take about 200 MB, so
    every env copy and every evaluation in a process shares one)."""
    require_icu_sepsis()
    from icu_sepsis.envs import sepsis
    from icu_sepsis.utils.io import MDPParameters

    return MDPParameters(Path(sepsis.__file__).parent / "assets")


def _package_env(inadmissible_action_strategy: str) -> gym.Env:
    """The package's env with its 25 actions flattened to `Discrete(25)` (no time limit)."""
    icu_sepsis = require_icu_sepsis()
    inner = icu_sepsis.ICUSepsisEnv(
        params=_shipped_parameters(), inadmissible_action_strategy=inadmissible_action_strategy
    )
    return icu_sepsis.FlattenActionWrapper(inner)


def state_features() -> np.ndarray:
    """The package's 47-feature vector of every state, shape (716, 47)."""
    return np.asarray(_shipped_parameters().state_cluster_centers, dtype=np.float32)


@functools.cache
def observation_table(observation: str = DEFAULT_OBSERVATION) -> np.ndarray:
    """The observation of every state, shape (716, dim): row `s` is what the network sees in `s`.

    Cached and shared: treat it as read-only."""
    _check_choice("observation", observation, OBSERVATIONS)
    parts = []
    if observation in ("onehot", "onehot+features"):
        parts.append(np.eye(NUM_STATES, dtype=np.float32))
    if observation in ("features", "onehot+features"):
        parts.append(state_features())
    table = np.concatenate(parts, axis=1)
    table.flags.writeable = False
    return table


def action_table(max_actions: int = DEFAULT_MAX_ACTIONS) -> np.ndarray:
    """Package action taken by agent action k in state s, shape (716, max_actions).

    Row s lists s's admissible actions by how often clinicians chose them (the package's
    estimated expert policy), keeps the first `max_actions`, and repeats them cyclically to fill
    the row (k -> the (k mod n)-th of the n kept actions), so every agent action is admissible and
    a uniformly random agent action is close to a uniformly random kept action. Terminal rows
    are 0 (no action is taken there).
    """
    if max_actions < 1:
        raise ValueError(f"max_actions must be at least 1, got {max_actions}")
    shipped = _shipped_parameters()
    expert = np.asarray(shipped.expert_policy)
    table = np.zeros((NUM_STATES, max_actions), dtype=np.int64)
    for state, admissible in enumerate(shipped.admissible_actions):
        if state in TERMINAL_STATES:
            continue
        admissible = np.asarray(admissible, dtype=np.int64)
        kept = admissible[np.argsort(-expert[state, admissible], kind="stable")][:max_actions]
        table[state] = kept[np.arange(max_actions) % len(kept)]
    return table


def observation_space(observation: str = DEFAULT_OBSERVATION) -> gym.spaces.Box:
    """The env's observation space for an encoding: the box spanned by all states' observations."""
    table = observation_table(observation)
    return gym.spaces.Box(low=table.min(axis=0), high=table.max(axis=0), dtype=np.float32)


class ICUSepsisBenchmarkEnv(gym.Env):
    """## Description

    The ICU-Sepsis benchmark MDP of the `icu-sepsis` package, with an observation a Q-network can
    use. Each episode treats one sepsis patient: every step the agent picks doses of IV fluids and
    vasopressors, and the patient moves between 713 clinical states until death or survival.

    ## Action Space

    With `action_set="all"` (default): `Discrete(25)`, action `a` gives IV-fluid level `a // 5`
    and vasopressor level `a % 5` (0 none, 1-4 quartiles of the doses given in MIMIC-III), as the
    package flattens them.

    With `action_set="admissible"`: `Discrete(max_actions)` (default 6), agent action k in state
    s is the package action `action_table(max_actions)[s, k]`: s's admissible actions, most used
    by clinicians first, cycled to fill the row. `info["package_action"]` is the dose pair index
    actually given.

    **Inadmissible actions.** In most states clinicians used only a few actions often enough for
    their transitions to be estimated (3.1 of 25 on average). The package offers three ways to
    treat the others, chosen with `inadmissible_action_strategy`:

    | Strategy            | Inadmissible action in state s                                      |
    |---------------------|---------------------------------------------------------------------|
    | `mean` (default)    | moves as the mean of the transitions of s's admissible actions      |
    | `terminate`         | sends the patient to the death state (reward 0)                     |
    | `raise_exception`   | raises `InadmissibleActionError`                                    |

    We train and evaluate with `mean`: it is the package's default and the mode in which every
    published number (random 0.78, clinicians 0.78, optimal 0.88) was computed, every action is
    legal in every state (so epsilon-greedy exploration needs no action masking), and an
    inadmissible action can never beat the best admissible one (a mean is at most the maximum),
    so the optimum is unchanged. The exact evaluator models the same strategy as the env.

    Under `mean`, an inadmissible action moves the patient like a uniformly random admissible
    one, but the agent does not learn which: 22 of 25 actions in a typical state carry no
    information that tells admissible actions apart. The `admissible` action set spends every
    step on an admissible action instead (the optimum needs no other, the value-iteration optimum
    under `terminate` is the same 0.8751). Certainty-equivalence planning on 1M uniformly random
    steps reaches 0.80 with all 25 actions and 0.87 with admissible actions only, which is why
    the tuned config (`training/configs/icu_sepsis.yaml`) trains with it; every value is still
    computed in the original 25-action MDP.

    ## Observation Space

    The package observes the state index (`Discrete(716)`). A Q-network learns poorly from an
    integer label, so the observation is chosen with `observation`:

    | `observation`        | Shape  | Content                                                      |
    |----------------------|--------|--------------------------------------------------------------|
    | `onehot` (default)   | (716,) | one-hot of the state, 0/1                                    |
    | `features`           | (47,)  | the package's `info["state_vector"]`: standardised centroid  |
    |                      |        | of the state's cluster of patient-hours (0 when terminal)    |
    | `onehot+features`    | (763,) | both, concatenated                                           |

    One-hot is the default because the MDP is tabular: its dynamics are defined per state, and
    two states with nearby feature vectors can have different transitions (the features are
    cluster centroids, not a sufficient statistic of the dynamics). With one-hot input the first
    layer is a per-state embedding, so the network can represent any Q-table exactly, while the
    dueling value stream still pools what is common to all actions of a state. The feature
    vector lets states share what they learn; it is offered to test whether that helps.

    `info` carries the package's `admissible_actions`, `state_vector` and `sofa_score`, plus
    `state`: the state index.

    ## Rewards

    1 on entering the survival state, 0 otherwise; with gamma 1 the return is the survival
    indicator and a policy's value its probability of survival.

    ## Starting State

    Drawn from the package's initial-state distribution `d_0` (712 states, estimated from the
    first hour of each MIMIC-III ICU stay).

    ## Episode End

    * Termination: the patient reaches the death (713) or survival (714) state.
    * Truncation: 500 steps (`MAX_EPISODE_STEPS`, the package's limit, set at registration).
      Episodes last about 10 steps; the limit only stops a policy that cycles forever.

    ## Arguments

    `gymnasium.make("sepsis_env.icu_sepsis:ICUSepsis-v0", observation="onehot",
    inadmissible_action_strategy="mean", action_set="all", max_actions=6)`

    ## Version History

    * v0: icu-sepsis 2.x (`Sepsis/ICU-Sepsis-v2` dynamics), one-hot/feature observations.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        observation: str = DEFAULT_OBSERVATION,
        inadmissible_action_strategy: str = DEFAULT_INADMISSIBLE_STRATEGY,
        action_set: str = DEFAULT_ACTION_SET,
        max_actions: int = DEFAULT_MAX_ACTIONS,
    ) -> None:
        _check_choice("observation", observation, OBSERVATIONS)
        _check_choice(
            "inadmissible_action_strategy", inadmissible_action_strategy, INADMISSIBLE_STRATEGIES
        )
        _check_choice("action_set", action_set, ACTION_SETS)
        self.observation_kind = observation
        self.inadmissible_action_strategy = inadmissible_action_strategy
        self.action_set = action_set
        self._mdp_env = _package_env(inadmissible_action_strategy)
        self.table_ = observation_table(observation)
        self.actions_ = action_table(max_actions) if action_set == "admissible" else None
        self.action_space = gym.spaces.Discrete(
            NUM_ACTIONS if self.actions_ is None else max_actions
        )
        self._state: int | None = None
        self.observation_space = observation_space(observation)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The package's env draws its transitions from its own `np_random`; handing it ours
        # makes this env's seed the only one.
        self._mdp_env.unwrapped.np_random = self.np_random
        state, info = self._mdp_env.reset(options=options)
        return self._observe(state, info)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        given = int(action) if self.actions_ is None else int(self.actions_[self._state, action])
        state, reward, terminated, truncated, info = self._mdp_env.step(given)
        obs, info = self._observe(state, info)
        info["package_action"] = given
        return obs, float(reward), bool(terminated), bool(truncated), info

    def _observe(self, state: int, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        self._state = int(state)
        return self.table_[self._state].copy(), {**info, "state": self._state}


if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point=f"{__name__}:ICUSepsisBenchmarkEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )


# --------------------------------------------------------------------------------------------
# Exact evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ICUSepsisMDP:
    """The shipped dynamics under one inadmissible-action strategy.

    `transitions[s, a, s']` and `rewards[s, a, s']` are what the env samples from; under
    `terminate` an inadmissible (s, a) leads to death with reward 0, as the env does.
    """

    transitions: np.ndarray
    """P(s' | s, a), shape (716, 25, 716)."""
    rewards: np.ndarray
    """r(s, a, s'), shape (716, 25, 716): 1 on entering survival."""
    initial: np.ndarray
    """Initial-state distribution, shape (716,)."""
    expert_policy: np.ndarray
    """The clinicians' policy estimated from MIMIC-III, shape (716, 25) (zero rows if terminal)."""
    admissible: np.ndarray
    """admissible[s, a]: whether the data supports action a in state s, shape (716, 25)."""
    strategy: str
    """The inadmissible-action strategy these matrices model."""
    gamma: float = 1.0

    @classmethod
    def from_package(cls, strategy: str = DEFAULT_INADMISSIBLE_STRATEGY) -> ICUSepsisMDP:
        """The matrices shipped in `icu_sepsis`, as the env with `strategy` uses them."""
        _check_choice("inadmissible_action_strategy", strategy, INADMISSIBLE_STRATEGIES)
        shipped = _shipped_parameters()
        transitions = np.array(shipped.tx_mat, dtype=np.float64)
        rewards = np.array(shipped.r_mat, dtype=np.float64)
        admissible = np.zeros(transitions.shape[:2], dtype=bool)
        for state, actions in enumerate(shipped.admissible_actions):
            admissible[state, list(actions)] = True
        if strategy == "terminate":
            bad_s, bad_a = np.nonzero(~admissible)
            transitions[bad_s, bad_a, :] = 0.0
            transitions[bad_s, bad_a, STATE_DEATH] = 1.0
            rewards[bad_s, bad_a, :] = 0.0
        return cls(
            transitions=transitions,
            rewards=rewards,
            initial=np.array(shipped.d_0, dtype=np.float64),
            expert_policy=np.array(shipped.expert_policy, dtype=np.float64),
            admissible=admissible,
            strategy=strategy,
            gamma=GAMMA,
        )

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]

    @property
    def terminal(self) -> np.ndarray:
        """Boolean mask of the terminal states."""
        mask = np.zeros(self.num_states, dtype=bool)
        mask[list(TERMINAL_STATES)] = True
        return mask

    @functools.cached_property
    def mean_rewards(self) -> np.ndarray:
        """E[r | s, a], shape (716, 25)."""
        return np.einsum("sat,sat->sa", self.transitions, self.rewards)


def policy_matrix(policy: np.ndarray, mdp: ICUSepsisMDP) -> np.ndarray:
    """A policy as action probabilities per state, shape (716, 25).

    `policy` is either one action per state (716 integers: deterministic) or a (716, 25) array
    of probabilities (stochastic). Terminal states' rows are ignored. Under `raise_exception`, a
    policy that can pick an inadmissible action raises `ValueError`, as the env would.
    """
    policy = np.asarray(policy)
    n_s, n_a = mdp.num_states, mdp.num_actions
    if policy.ndim == 1:
        if policy.shape != (n_s,):
            raise ValueError(f"a deterministic policy needs {n_s} actions, got {policy.shape[0]}")
        if not np.issubdtype(policy.dtype, np.integer):
            if not np.all(np.mod(policy, 1) == 0):
                raise ValueError("a deterministic policy's actions must be integers")
            policy = policy.astype(np.int64)
        if policy.min() < 0 or policy.max() >= n_a:
            raise ValueError(
                f"actions must lie in [0, {n_a - 1}], got {policy.min()}..{policy.max()}"
            )
        probs = np.zeros((n_s, n_a))
        probs[np.arange(n_s), policy] = 1.0
    elif policy.shape == (n_s, n_a):
        probs = np.asarray(policy, dtype=np.float64)
        live = ~mdp.terminal
        if probs.min() < 0 or not np.allclose(probs[live].sum(axis=1), 1.0, atol=1e-8):
            raise ValueError("a stochastic policy's rows must be probabilities summing to 1")
    else:
        raise ValueError(f"a policy is shaped ({n_s},) or ({n_s}, {n_a}), got {policy.shape}")
    probs = probs.copy()
    probs[mdp.terminal] = 0.0
    if mdp.strategy == "raise_exception" and np.any(probs[~mdp.admissible] > 0):
        raise ValueError(
            "the policy can take inadmissible actions, which the raise_exception strategy forbids"
        )
    return probs


def state_values(mdp: ICUSepsisMDP, policy: np.ndarray) -> np.ndarray:
    """V^pi(s) for every state by one linear solve, shape (716,); terminal states are 0.

    With gamma 1 the return is the survival indicator, so V^pi(s) is the probability of
    eventually reaching survival from s. States from which pi never reaches a terminal state
    (a policy that cycles forever) earn nothing: their value is 0, which is also what the env's
    500-step truncation gives them, and leaving them out keeps the linear system non-singular.
    """
    probs = policy_matrix(policy, mdp)
    P = np.matmul(probs[:, None, :], mdp.transitions)[:, 0, :]
    r = np.einsum("sa,sa->s", probs, mdp.mean_rewards)
    reaches_end = states_reaching(P, mdp.terminal)
    stuck = ~reaches_end & ~mdp.terminal
    if np.any(np.abs(r[stuck]) > 0):
        raise ValueError(
            "the policy collects reward in a cycle it never leaves: its value diverges"
        )
    solve = reaches_end & ~mdp.terminal
    values = np.zeros(mdp.num_states)
    A = np.eye(int(solve.sum())) - mdp.gamma * P[np.ix_(solve, solve)]
    values[solve] = np.linalg.solve(A, r[solve])
    return values


def states_reaching(P: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """States from which `targets` are reached with positive probability under P."""
    reached = targets.copy()
    edges = P > 0
    while True:
        grown = reached | edges[:, reached].any(axis=1)
        if np.array_equal(grown, reached):
            return reached
        reached = grown


def policy_value(mdp: ICUSepsisMDP, policy: np.ndarray) -> float:
    """The exact expected return of `policy` from the initial-state distribution."""
    return float(mdp.initial @ state_values(mdp, policy))


def q_values(mdp: ICUSepsisMDP, values: np.ndarray) -> np.ndarray:
    """Q(s, a) = E[r + gamma V(s') | s, a], shape (716, 25)."""
    return mdp.mean_rewards + mdp.gamma * mdp.transitions @ values


def value_iteration(
    mdp: ICUSepsisMDP,
    tol: float = 1e-12,
    max_iterations: int = 100_000,
    actions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal state values and a greedy deterministic policy, shape (716,) each.

    Iterates the Bellman optimality operator from V = 0, which increases monotonically to the
    optimal survival probabilities; the greedy policy's value is then checked exactly by
    `policy_value`, not assumed. `actions` (an `action_table`) restricts each state to the
    package actions in its row.
    """
    flat = mdp.transitions.reshape(-1, mdp.num_states)
    expected = mdp.mean_rewards
    allowed = np.ones((mdp.num_states, mdp.num_actions), dtype=bool)
    if actions is not None:
        allowed[:] = False
        np.put_along_axis(allowed, np.asarray(actions), True, axis=1)
    values = np.zeros(mdp.num_states)
    for _ in range(max_iterations):
        q = expected + mdp.gamma * (flat @ values).reshape(mdp.num_states, mdp.num_actions)
        new = np.where(mdp.terminal, 0.0, np.where(allowed, q, -np.inf).max(axis=1))
        if np.max(np.abs(new - values)) < tol:
            values = new
            break
        values = new
    else:
        raise RuntimeError(f"value iteration did not converge to {tol} in {max_iterations} sweeps")
    policy = np.argmax(np.where(allowed, q_values(mdp, values), -np.inf), axis=1)
    return values, policy


def random_policy(mdp: ICUSepsisMDP) -> np.ndarray:
    """Uniform over all 25 actions in every state (the package's 'random' baseline)."""
    return np.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions)


def expert_policy(mdp: ICUSepsisMDP) -> np.ndarray:
    """The clinicians' policy shipped with the package (terminal rows filled, never used)."""
    probs = mdp.expert_policy.copy()
    empty = probs.sum(axis=1) == 0
    probs[empty] = 1.0 / mdp.num_actions
    return probs


@dataclass(frozen=True)
class Baselines:
    """Exact values of the reference policies."""

    random: float
    expert: float
    optimal: float
    optimal_policy: np.ndarray
    """A deterministic optimal policy (716 actions)."""
    optimal_q: np.ndarray
    """Q*(s, a), shape (716, 25)."""


def baselines(mdp: ICUSepsisMDP) -> Baselines:
    """Random, clinician and optimal values, all by exact policy evaluation."""
    _, optimal = value_iteration(mdp)
    return Baselines(
        random=policy_value(mdp, random_policy(mdp)),
        expert=policy_value(mdp, expert_policy(mdp)),
        optimal=policy_value(mdp, optimal),
        optimal_policy=optimal,
        optimal_q=q_values(mdp, state_values(mdp, optimal)),
    )


def gap_closed(value: float, reference: Baselines) -> float:
    """Fraction of the random-to-optimal gap a policy of this value closes (1 = optimal)."""
    return (value - reference.random) / (reference.optimal - reference.random)


@dataclass(frozen=True)
class PolicyReport:
    """The exact value of one policy beside the references."""

    value: float
    random: float
    expert: float
    optimal: float
    gap_closed: float
    strategy: str
    inadmissible_share: float
    """Fraction of non-terminal states in which the policy puts mass on inadmissible actions."""
    agreement_with_optimal: float
    """Fraction of non-terminal states in which a deterministic policy picks an optimal action."""

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def evaluate_policy(
    policy: np.ndarray,
    mdp: ICUSepsisMDP | None = None,
    reference: Baselines | None = None,
) -> PolicyReport:
    """The exact value of `policy` (716 actions or (716, 25) probabilities) and the baselines."""
    mdp = mdp or ICUSepsisMDP.from_package()
    reference = reference or baselines(mdp)
    probs = policy_matrix(policy, mdp)
    value = policy_value(mdp, probs)
    live = ~mdp.terminal
    inadmissible = (probs * ~mdp.admissible).sum(axis=1) > 0
    best = reference.optimal_q.max(axis=1, keepdims=True)
    optimal_mass = (probs * (reference.optimal_q >= best - 1e-9)).sum(axis=1)
    return PolicyReport(
        value=value,
        random=reference.random,
        expert=reference.expert,
        optimal=reference.optimal,
        gap_closed=gap_closed(value, reference),
        strategy=mdp.strategy,
        inadmissible_share=float(inadmissible[live].mean()),
        agreement_with_optimal=float(optimal_mass[live].mean()),
    )


def greedy_policy_table(
    act: Callable[[np.ndarray], np.ndarray],
    observation: str = DEFAULT_OBSERVATION,
    action_set: str = DEFAULT_ACTION_SET,
    max_actions: int = DEFAULT_MAX_ACTIONS,
) -> np.ndarray:
    """The package action (0-24) `act` gives in each of the 716 states, as 716 integers.

    `act` maps a batch of raw observations (as the env emits them) to agent actions, for example
    a trained checkpoint's greedy `GreedyPolicy.actions`; with the `admissible` action set those
    are translated to package actions through `action_table`.
    """
    actions = np.asarray(act(observation_table(observation).copy())).astype(np.int64).reshape(-1)
    if actions.shape != (NUM_STATES,):
        raise ValueError(f"expected one action per state ({NUM_STATES}), got {actions.shape}")
    _check_choice("action_set", action_set, ACTION_SETS)
    if action_set == "admissible":
        actions = action_table(max_actions)[np.arange(NUM_STATES), actions]
    return actions


class ExactEvaluator:
    """Exact values of policies for one strategy; matrices and baselines are computed once."""

    def __init__(self, strategy: str = DEFAULT_INADMISSIBLE_STRATEGY) -> None:
        self.strategy = strategy
        self.mdp_ = ICUSepsisMDP.from_package(strategy)
        self.baselines_ = baselines(self.mdp_)

    def value(self, policy: np.ndarray) -> float:
        """The exact expected return of `policy`."""
        return policy_value(self.mdp_, policy)

    def report(self, policy: np.ndarray) -> PolicyReport:
        """The exact value of `policy` beside the baselines."""
        return evaluate_policy(policy, self.mdp_, self.baselines_)
