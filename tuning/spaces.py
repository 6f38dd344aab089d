"""The search spaces of both searches, as data: what is searched, over which range.

Each space is a plain dict of named `Dimension`s, read top to bottom. `suggest(space, trial)`
turns a space into an Optuna define-by-run search (so a model's hyper-parameters are only drawn
when that model is), `tune_space` into Ray Tune domains (for random search and PBT mutations).
Parameter names are the names of the option they set: `ClassifierSettings` fields for the
classifiers, `RLOptions` fields for the RL algorithms, a nested field by its dotted path
(`ppo.lr` is `RLOptions.ppo.lr`), so a sampled configuration is already the config file.

The `DEFAULT_*` points are the configurations a user gets without tuning. Each search evaluates
its default first, so the analysis can say what the search gained over it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- dimensions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly (or log-uniformly) from [low, high]."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def tune(self) -> Any:
        from ray import tune

        return (
            tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)
        )


@dataclass(frozen=True)
class Integer:
    """An integer drawn from [low, high] (both included), log-uniformly if `log`."""

    low: int
    high: int
    log: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def tune(self) -> Any:
        from ray import tune

        if self.log:
            return tune.lograndint(self.low, self.high + 1)
        return tune.randint(self.low, self.high + 1)


@dataclass(frozen=True)
class Choice:
    """One of a few values (str, int, float or bool: Optuna stores them as they are)."""

    values: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def tune(self) -> Any:
        from ray import tune

        return tune.choice(list(self.values))


Dimension = Uniform | Integer | Choice


@dataclass(frozen=True)
class Branch:
    """A categorical dimension whose value decides which further dimensions are drawn."""

    values: tuple[str, ...]
    then: Mapping[str, Mapping[str, Dimension]]
    """For each value, the dimensions drawn when it is chosen (names may repeat across values
    when they mean the same option with the same range)."""


Space = Mapping[str, Dimension | Branch]


# -- the classifier search -------------------------------------------------------------------------

CLASSIFIER_SPACE: Space = {
    "model": Branch(
        values=("logreg", "random_forest", "xgboost", "svm"),
        then={
            "logreg": {"logreg_c": Uniform(1e-3, 10.0, log=True)},
            "random_forest": {
                "rf_trees": Integer(50, 400, log=True),
                "rf_min_leaf": Integer(1, 30, log=True),
            },
            "xgboost": {
                "xgb_rounds": Integer(50, 500, log=True),
                "xgb_depth": Integer(2, 8),
                "xgb_learning_rate": Uniform(0.01, 0.3, log=True),
            },
            "svm": {
                "svm_c": Uniform(1e-3, 1.0, log=True),
                "svm_components": Integer(100, 500, log=True),
            },
        },
    ),
    "oversample": Branch(
        values=("none", "smote", "ctgan"),
        then={
            "none": {},
            # Minority/majority ratio after oversampling; the cohort's own ratio is about 0.1.
            "smote": {
                "sampling_strategy": Uniform(0.25, 1.0),
                "smote_neighbors": Integer(3, 10),
            },
            "ctgan": {
                "sampling_strategy": Uniform(0.25, 1.0),
                "ctgan_epochs": Integer(10, 150, log=True),
            },
        },
    ),
}
"""Model family x oversampling, and each one's main hyper-parameters."""

DEFAULT_CLASSIFIER: dict[str, Any] = {"model": "logreg", "oversample": "none", "logreg_c": 0.1}
"""The untuned reference: the clinical workhorse with `ClassifierSettings`' default strength."""

CLASSIFIER_METRICS: dict[str, str] = {"pr_auc": "max", "roc_auc": "max", "brier": "min"}
"""Metrics a classifier search can optimise, with their direction. Only threshold-free metrics:
a decision threshold chosen inside a cross-validation fold would need a further split."""


# -- the RL search ---------------------------------------------------------------------------------

NETWORKS: dict[str, list[int]] = {
    "64x64": [64, 64],
    "128x128": [128, 128],
    "256x256": [256, 256],
    "128x128x128": [128, 128, 128],
}
"""Hidden layers of the shared Q-network trunk, by name (Optuna choices must be scalars)."""

HEADS: dict[str, list[int]] = {"32": [32], "64": [64], "128": [128]}
"""Hidden layers of each dueling head, by name."""

LAYER_CHOICES: dict[str, dict[str, list[int]]] = {
    "fcnet_hiddens": NETWORKS,
    "head_fcnet_hiddens": HEADS,
}
"""Options whose sampled value is a name standing for a list of layer sizes."""

RL_SPACE: Space = {
    "lr": Uniform(1e-5, 3e-3, log=True),
    "gamma": Uniform(0.9, 0.999),
    "n_step": Integer(1, 5),
    "replay_alpha": Uniform(0.3, 0.9),
    "replay_beta": Uniform(0.2, 1.0),
    "fcnet_hiddens": Choice(tuple(NETWORKS)),
    "head_fcnet_hiddens": Choice(tuple(HEADS)),
    "target_network_update_freq": Integer(100, 2000, log=True),
    "epsilon_timesteps": Integer(1000, 20_000, log=True),
    "train_batch_size": Choice((32, 64, 128, 256)),
}
"""DQN options searched; everything else comes from the base options (`--config`)."""

PBT_MUTABLE: tuple[str, ...] = (
    "lr",
    "gamma",
    "replay_alpha",
    "replay_beta",
    "target_network_update_freq",
)
"""Options population-based training may change in a running trial. Network sizes, batch size
and n-step stay fixed per trial: a checkpoint's weights and buffer only fit the values they were
made with."""

# The policy-gradient algorithms. Ranges: rl-baselines3-zoo's Optuna samplers for PPO and A2C
# (`rl_zoo3/hyperparams_opt.py`: lr log-uniform 1e-5..2e-3, entropy coefficient log-uniform up to
# 0.1, clip 0.1..0.4, epochs 1..20, minibatch 32..512, GAE lambda 0.9..0.9999, gradient norm
# 0.3..2), narrowed to what a small discrete problem on a few cores can afford (epochs <= 10, the
# entropy bonus from 1e-4: below that it does nothing on a handful of actions), and Andrychowicz
# et al. 2021, "What matters in on-policy RL?" (GAE lambda about 0.9, clip 0.1-0.3, value loss
# weight and shared trunk worth searching). IMPALA and APPO keep RLlib's gradient clip of 40
# (Espeholt et al. 2018) at the top of their range.

PG_NETWORK: Space = {
    "gamma": Uniform(0.9, 0.999),
    "fcnet_hiddens": Choice(tuple(NETWORKS)),
    "head_fcnet_hiddens": Choice(tuple(HEADS)),
    "vf_share_layers": Choice((False, True)),
}
"""What every policy-gradient search shares: discount, network sizes, and whether the value
function shares the policy's hidden layers."""

PPO_SPACE: Space = {
    "ppo.lr": Uniform(1e-5, 2e-3, log=True),
    "ppo.entropy_coeff": Uniform(1e-4, 0.1, log=True),
    "ppo.clip_param": Uniform(0.1, 0.4),
    "ppo.num_epochs": Choice((1, 3, 5, 10)),
    # Every minibatch choice fits in every batch choice (RLlib refuses a minibatch > batch).
    "ppo.minibatch_size": Choice((32, 64, 128, 256)),
    "ppo.train_batch_size": Choice((512, 1024, 2048, 4096)),
    "ppo.gae_lambda": Uniform(0.9, 1.0),
    "ppo.vf_loss_coeff": Uniform(0.25, 1.0),
    "ppo.grad_clip": Uniform(0.3, 2.0),
    **PG_NETWORK,
}
"""PPO options searched (`RLOptions.ppo`, plus the shared discount and network)."""


def _actor_critic_space(algo: str, clip: bool) -> dict[str, Dimension]:
    """IMPALA's and APPO's searched options (`RLOptions.impala` / `.appo`): the same ranges, and
    APPO's clipping of the probability ratio (its RLlib default, 0.4, at the top)."""
    space: dict[str, Dimension] = {
        f"{algo}.lr": Uniform(1e-5, 2e-3, log=True),
        f"{algo}.entropy_coeff": Uniform(1e-4, 0.1, log=True),
        f"{algo}.vf_loss_coeff": Uniform(0.25, 1.0),
        # Multiples of rollout_fragment_length x num_envs_per_env_runner (32 x 4 = 128 by
        # default), so that whole sampling rounds tile each batch.
        f"{algo}.train_batch_size": Choice((256, 512, 1024, 2048)),
        f"{algo}.grad_clip": Uniform(0.5, 40.0, log=True),
    }
    if clip:
        space[f"{algo}.clip_param"] = Uniform(0.1, 0.4)
    return {**space, **PG_NETWORK}


APPO_SPACE: Space = _actor_critic_space("appo", clip=True)
"""APPO options searched (`RLOptions.appo`, plus the shared discount and network)."""

IMPALA_SPACE: Space = _actor_critic_space("impala", clip=False)
"""IMPALA options searched (`RLOptions.impala`, plus the shared discount and network)."""

RL_SPACES: dict[str, Space] = {
    "dqn": RL_SPACE,
    "ppo": PPO_SPACE,
    "appo": APPO_SPACE,
    "impala": IMPALA_SPACE,
}
"""The search space of each `RLOptions.algo`."""

PBT_MUTABLES: dict[str, tuple[str, ...]] = {
    "dqn": PBT_MUTABLE,
    "ppo": ("ppo.lr", "ppo.entropy_coeff", "ppo.clip_param", "ppo.vf_loss_coeff"),
    "appo": ("appo.lr", "appo.entropy_coeff", "appo.clip_param", "appo.vf_loss_coeff"),
    "impala": ("impala.lr", "impala.entropy_coeff", "impala.vf_loss_coeff"),
}
"""What PBT may change in a running trial, per algorithm: loss weights and the learning rate
only (batch sizes, epochs and networks stay: a checkpoint's weights fit only their network)."""


# -- turning a space into a search ---------------------------------------------------------------


def suggest(space: Space, trial: Any) -> None:
    """Optuna define-by-run: draw one configuration of `space` through `trial`.

    A `Branch` is drawn first; then only the dimensions of its chosen value. The drawn values are
    captured by Optuna (and Ray's OptunaSearch) from the `suggest_*` calls.
    """
    drawn: set[str] = set()
    for name, dimension in space.items():
        if isinstance(dimension, Branch):
            value = Choice(dimension.values).suggest(trial, name)
            for sub_name, sub in dimension.then[value].items():
                if sub_name not in drawn:
                    sub.suggest(trial, sub_name)
                    drawn.add(sub_name)
        else:
            dimension.suggest(trial, name)


def restrict(space: Space, **allowed: Sequence[str]) -> dict[str, Dimension | Branch]:
    """`space` with the values of some branches limited, e.g. `restrict(s, model=["logreg"])`.

    Raises ValueError for an unknown branch or value.
    """
    out: dict[str, Dimension | Branch] = dict(space)
    for name, values in allowed.items():
        branch = space.get(name)
        if not isinstance(branch, Branch):
            raise ValueError(f"{name!r} is not a branch of this search space")
        unknown = [v for v in values if v not in branch.values]
        if unknown or not values:
            raise ValueError(
                f"unknown {name} value(s) {unknown or '(none given)'}; choose from {branch.values}"
            )
        out[name] = Branch(tuple(values), {v: branch.then[v] for v in values})
    return out


def clip_to_space(config: dict[str, Any], space: Space = RL_SPACE) -> dict[str, Any]:
    """`config` with each value of a `Uniform`/`Integer` dimension clipped into its range.

    Population-based training perturbs by multiplying (x0.8, x1.2) with no bounds, which would
    give gamma > 1, replay beta > 1 or a PPO clip above the searched range; this (with the
    search's space bound) is its `custom_explore_fn`.
    """
    for name, dimension in space.items():
        if name in config and isinstance(dimension, Uniform | Integer):
            value = min(max(config[name], dimension.low), dimension.high)
            config[name] = int(round(value)) if isinstance(dimension, Integer) else float(value)
    return config


def tune_space(space: Space, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Ray Tune domains for the flat dimensions of `space` (branches are not supported)."""
    out: dict[str, Any] = {}
    for name, dimension in space.items():
        if only is not None and name not in only:
            continue
        if isinstance(dimension, Branch):
            raise ValueError(f"{name!r} is a branch; use the Optuna search for branched spaces")
        out[name] = dimension.tune()
    return out


def dimension_names(space: Space) -> list[str]:
    """Every parameter name `space` can draw, in order, without repeats."""
    names: list[str] = []
    for name, dimension in space.items():
        names.append(name)
        if isinstance(dimension, Branch):
            for subs in dimension.then.values():
                names.extend(n for n in subs if n not in names)
    return names


def describe(space: Space) -> dict[str, Any]:
    """The space as plain data (written beside the results, read by the analysis)."""

    def one(dimension: Dimension) -> dict[str, Any]:
        kind = type(dimension).__name__.lower()
        if isinstance(dimension, Choice):
            return {"kind": kind, "values": list(dimension.values)}
        return {"kind": kind, "low": dimension.low, "high": dimension.high, "log": dimension.log}

    out: dict[str, Any] = {}
    for name, dimension in space.items():
        if isinstance(dimension, Branch):
            out[name] = {
                "kind": "branch",
                "values": list(dimension.values),
                "then": {
                    v: {n: one(d) for n, d in subs.items()} for v, subs in dimension.then.items()
                },
            }
        else:
            out[name] = one(dimension)
    return out
