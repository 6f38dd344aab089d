"""`sepsis-rl tune rl`: search the hyper-parameters of DQN, PPO, APPO or IMPALA, scored by the
greedy policy.

The algorithm is the base options' `algo`. Every trial builds its RLlib config with
`training.rl.algorithms.build_config`, the function `sepsis-rl train` uses, from the base options
(`--config`, the same file `train` reads) with the trial's sampled values on top
(`tuning.spaces.RL_SPACES[algo]`; a nested option by its dotted path, `ppo.lr`, validated like
any option). So the best trial's options, written as YAML, are a file `sepsis-rl train --config`
accepts as it is.

A trial trains for `iterations_per_trial` RLlib iterations. After each it evaluates the greedy
policy (RLlib's evaluation with `explore=False`, which the builder configures) and reports that
return as `eval_return`: trials are compared and early-stopped on it, never on the exploring
training return. Checkpoints hold the replay buffer as well (`training.rl.run_dir.save_checkpoint`;
RLlib's new-stack checkpoints leave it out), so a Tune retry, a resumed search, or a PBT exploit
continues with the data the weights were trained on; PPO, APPO and IMPALA have no buffer.

Schedulers (`--scheduler`):
- `asha` (default): Optuna's TPE proposes configurations; ASHA stops the worst after 1, 2, 4...
  iterations.
- `pbt`: population-based training. Random initial configurations; every `perturbation_interval`
  iterations the worst quarter copies the weights (and buffer) of the best quarter and perturbs
  `PBT_MUTABLES[algo]` (DQN: learning rate, gamma, replay alpha/beta, target update period;
  PPO, APPO, IMPALA: learning rate, entropy and value-loss weights, APPO's and PPO's clip).
- `fifo`: every trial runs all iterations (use with `--repeats` to see the spread over seeds).

Resources: each trial asks for exactly what its algorithm will create (one bundle for the
driver-and-learner, one per env runner; `num_cpus_per_env_runner` may be fractional), and as many
trials run at once as the cluster's CPUs hold.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from sepsis_rl.common.config_files import RuleError, build_options, options_dataclass
from sepsis_rl.common.intervals import mean_interval
from training.rl.algorithms import build_config, uses_replay_buffer
from training.rl.options import RLOptions, options_from_dict, save_options
from training.rl.results import evaluation_returns_of
from tuning.runner import (
    SearchOutcome,
    SearchStart,
    TunerSpec,
    concurrency_for,
    experiment_path,
    load_search,
    run_tuner,
)
from tuning.spaces import (
    LAYER_CHOICES,
    PBT_MUTABLES,
    RL_SPACES,
    Space,
    clip_to_space,
    describe,
    dimension_names,
    suggest,
    tune_space,
)

TRIAL_INDEX_KEY = "__trial_index__"
"""Set by Tune's Repeater on repeated configurations; offsets the seed."""
TRIAL_STATE_FILE = "trial_state.json"
ALGO_SUBDIR = "algo"
METRIC = "eval_return"
"""Mean return of the greedy policy's evaluation episodes after an iteration."""


@options_dataclass
class RLSearch:
    """Every option of an RL search; the field list is the documentation."""

    base: RLOptions = field(default_factory=RLOptions)
    """Options every trial starts from (the `--config` file `train` reads); its `algo` is the
    algorithm searched, and searched fields are replaced by each trial's values."""
    hold: Annotated[tuple[str, ...], Field(strict=False)] = ()
    """Searched options to keep at the base's value instead (e.g. `ppo.train_batch_size`)."""
    num_samples: PositiveInt = 6
    """Configurations to try (the base configuration counts as the first)."""
    iterations_per_trial: PositiveInt = 6
    """RLlib training iterations per trial (each samples `min_sample_timesteps_per_iteration`)."""
    time_budget_s: PositiveFloat | None = 900.0
    """Stop proposing and running trials after this many seconds (None: no limit)."""
    seed: NonNegativeInt = 0
    """Seeds the search and every trial (trial seed = seed + repeat index)."""
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """asha (Optuna + ASHA), pbt (population-based training), or fifo."""
    perturbation_interval: PositiveInt = 2
    """PBT: iterations between exploit/explore steps."""
    repeats: PositiveInt = 1
    """Seeds per configuration (> 1 needs --scheduler fifo)."""
    eval_episodes: PositiveInt | None = None
    """Greedy evaluation episodes after every iteration (None: `RLOptions.evaluation_episodes`'s
    default, 2,000 fixed validation episodes for SepsisEnv, 20 sampled ones otherwise)."""
    checkpoint_every: PositiveInt = 1
    """Iterations between trial checkpoints (the last iteration always checkpoints)."""
    cpus_for_main_process: PositiveFloat = 0.5
    """CPUs reserved for a trial's driver, which also runs its learner and its evaluation."""
    storage: Annotated[str, Field(min_length=1)] = "results/tune"
    """Local folder or URI (s3://, gs://) that holds the experiment."""
    name: Annotated[str, Field(min_length=1)] = "rl"
    """Experiment folder name under `storage`."""
    max_failures: Annotated[int, Field(ge=-1)] = 1
    """Retries of a failing trial (Tune's FailureConfig; -1: retry without end)."""
    max_concurrent: PositiveInt | None = None
    """Trials at once (None: as many as the cluster's CPUs hold when the search starts; set it
    higher on an autoscaling cluster so that waiting trials make the autoscaler add nodes)."""
    grace_period: PositiveInt = 2
    """ASHA: iterations every trial runs before it can be stopped. The first iteration mostly
    fills the replay buffer (learning starts after 1,000 steps), so comparing after it would
    rank untrained policies."""

    @field_validator("base", mode="before")
    @classmethod
    def _base_from_mapping(cls, value: Any) -> Any:
        """`base` may be given as a mapping of `RLOptions` fields."""
        return build_options(RLOptions, value) if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _rules(self) -> RLSearch:
        if self.grace_period > self.iterations_per_trial:
            raise RuleError(
                "grace_period",
                self.grace_period,
                f"must be at most iterations_per_trial ({self.iterations_per_trial})",
            )
        unknown = [name for name in self.hold if name not in RL_SPACES[self.base.algo]]
        if unknown:
            raise RuleError(
                "hold",
                list(self.hold),
                f"{unknown} not searched for {self.base.algo}; searched: "
                + ", ".join(RL_SPACES[self.base.algo]),
            )
        if self.repeats > 1 and self.scheduler != "fifo":
            raise RuleError(
                "repeats",
                self.repeats,
                "repeating configurations across seeds averages complete trials; early stopping "
                "or PBT would cut repeats short. Use --scheduler fifo with --repeats > 1",
            )
        return self

    def validate(self) -> None:
        """Nothing left to check: an `RLSearch` is validated when it is built."""

    @property
    def algo(self) -> str:
        """The algorithm searched (`base.algo`)."""
        return self.base.algo

    @property
    def space(self) -> Space:
        """What is searched: the algorithm's space without the held options."""
        return searched_space(self.algo, self.hold)

    def default_point(self) -> dict[str, Any] | None:
        """The base options' values of the searched fields, if each is a valid choice."""
        return encode(self.base, self.space)


def searched_space(algo: str, hold: tuple[str, ...] | list[str] = ()) -> Space:
    """`RL_SPACES[algo]` without the dimensions in `hold`."""
    return {name: dim for name, dim in RL_SPACES[algo].items() if name not in hold}


# -- sampled values <-> options -----------------------------------------------------------------


def option_value(options: RLOptions, name: str) -> Any:
    """The value of the option `name` (a dotted path for a nested one: `ppo.lr`)."""
    value: Any = options
    for part in name.split("."):
        value = getattr(value, part)
    return value


def with_values(options: RLOptions, values: Mapping[str, Any], where: str = "") -> RLOptions:
    """`options` with `values` applied and validated; a dotted name (`ppo.lr`) sets that field of
    the nested options and keeps its other fields (a mapping given for `ppo` would reset them)."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        head, dot, rest = str(name).partition(".")
        if not dot:
            flat[name] = value
            continue
        if head not in flat:
            current = getattr(options, head, None)
            nested = dataclasses.is_dataclass(current) and not isinstance(current, type)
            flat[head] = dataclasses.asdict(current) if nested else {}
        if not isinstance(flat[head], dict):
            flat[head] = {}  # `ppo: ...` and `ppo.lr` both given: the validation says what is
        flat[head][rest] = value
    return options_from_dict(flat, base=options, where=where)


def encode(options: RLOptions, space: Space | None = None) -> dict[str, Any] | None:
    """The searched fields of `options` as the search samples them (layer lists by name);
    `space` defaults to the space of `options.algo`."""
    point: dict[str, Any] = {}
    for name in RL_SPACES[options.algo] if space is None else space:
        value = option_value(options, name)
        if name in LAYER_CHOICES:
            names = [k for k, v in LAYER_CHOICES[name].items() if list(v) == list(value)]
            if not names:
                return None
            value = names[0]
        point[name] = value
    return point


def decode(sampled: dict[str, Any]) -> dict[str, Any]:
    """Sampled values as `RLOptions` fields (layer names -> lists of sizes)."""
    out = {}
    for name, value in sampled.items():
        if name in LAYER_CHOICES:
            value = list(LAYER_CHOICES[name][value])
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value
    return out


def best_options(config: dict[str, Any]) -> RLOptions:
    """The options a trial's configuration stands for, as `sepsis-rl train` would run them."""
    base = options_from_dict(dict(config["base"]))
    sampled = {k: v for k, v in config.items() if k in RL_SPACES[base.algo]}
    options = with_values(base, decode(sampled))
    options.seed = int(config["base"]["seed"]) + int(config.get(TRIAL_INDEX_KEY, 0) or 0)
    return options


def trial_options(config: dict[str, Any]) -> RLOptions:
    """`best_options` plus what a trial needs: a greedy evaluation after every iteration."""
    options = best_options(config)
    options.evaluation_interval = 1
    episodes = config["trial"]["eval_episodes"]
    options.evaluation_episodes = None if episodes is None else int(episodes)
    return options


def placed(config: Any, cpus_for_main_process: float) -> Any:
    """The algorithm config with its driver's (and local learner's) CPU reservation set.

    Only placement changes: what is trained is exactly what `build_config` built.
    """
    return config.resources(num_cpus_for_main_process=cpus_for_main_process).learners(
        num_cpus_per_learner=cpus_for_main_process
    )


def trial_resources(search: RLSearch) -> Any:
    """The placement group one trial needs, as RLlib computes it for the trial's config."""
    config = placed(build_config(search.base), search.cpus_for_main_process)
    return config.algo_class.default_resource_request(config)


# -- one trial -------------------------------------------------------------------------------------


ReportFn = Callable[[dict[str, Any], Path | None], None]
"""report(metrics, checkpoint folder or None): called after each iteration."""


def run_trial(config: dict[str, Any], report: ReportFn, checkpoint: Path | None = None) -> None:
    """Train the trial's algorithm for its iterations, reporting the greedy evaluation return
    after each.

    With `checkpoint` (a folder an earlier report got), training continues from it: weights,
    optimizer, counters and (DQN) the replay buffer.
    """
    from training.rl.results import metrics_of
    from training.rl.run_dir import restore_checkpoint, save_checkpoint

    options = trial_options(config)
    settings = config["trial"]
    algo = placed(build_config(options), settings["cpus_for_main_process"]).build_algo()
    try:
        start = 0
        if checkpoint is not None:
            restore_checkpoint(algo, Path(checkpoint) / ALGO_SUBDIR)
            start = json.loads((Path(checkpoint) / TRIAL_STATE_FILE).read_text())["iteration"]
            # The optimizer state carries the checkpoint's learning rate; PBT may have changed it.
            lr = learning_rate_of(options)
            if isinstance(lr, int | float):
                _set_learning_rate(algo, float(lr))
        last_eval = float("nan")
        total = int(settings["iterations"])
        for iteration in range(start + 1, total + 1):
            result = algo.train()
            metrics = metrics_of(result, options, last_eval)
            last_eval = metrics.eval_return_mean
            returns = evaluation_returns_of(result)
            mean, low, high = mean_interval(returns)
            row = {
                METRIC: metrics.eval_return_mean if not returns else mean,
                f"{METRIC}_ci_low": low,
                f"{METRIC}_ci_high": high,
                "eval_episodes": len(returns),
                "train_return": metrics.episode_return_mean,
                "env_steps": metrics.env_steps,
                "episodes": metrics.episodes,
                "loss": metrics.loss,
                "steps_per_s": metrics.steps_per_s,
                "iteration": iteration,
            }
            if not math.isnan(metrics.epsilon):  # only DQN explores by epsilon
                row["epsilon"] = metrics.epsilon
            if iteration % int(settings["checkpoint_every"]) and iteration != total:
                report(row, None)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(algo, Path(tmp) / ALGO_SUBDIR, options, uses_replay_buffer(options))
                (Path(tmp) / TRIAL_STATE_FILE).write_text(json.dumps({"iteration": iteration}))
                report(row, Path(tmp))
    finally:
        algo.stop()


def rl_trial(config: dict[str, Any]) -> None:
    """One Tune trial: `run_trial`, continuing from the trial's checkpoint (retry, PBT exploit)."""
    from ray import tune

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(config, report)
        return
    with checkpoint.as_directory() as folder:
        run_trial(config, report, Path(folder))


def learning_rate_of(options: RLOptions) -> float | list[list[float]]:
    """The learning rate of `options.algo` (DQN's is at the top level, may be a schedule)."""
    if options.algo == "dqn":
        return options.lr
    return getattr(options, options.algo).lr


def _set_learning_rate(algo: Any, lr: float) -> None:
    def apply(learner: Any) -> None:
        for optimizer in learner._named_optimizers.values():
            learner._set_optimizer_lr(optimizer, lr)

    algo.learner_group.foreach_learner(apply)


# -- the search ------------------------------------------------------------------------------------


def search_record(search: RLSearch) -> dict[str, Any]:
    """What `search.json` holds for an RL search."""
    space = search.space
    return {
        "kind": "rl",
        "algo": search.algo,
        "metric": METRIC,
        "mode": "max",
        "per_step_metric": METRIC,
        "step_name": "iteration",
        "max_steps": search.iterations_per_trial,
        "params": dimension_names(space),
        "space": describe(space),
        "hold": list(search.hold),
        "default": search.default_point(),
        "scheduler": search.scheduler,
        "repeats": search.repeats,
        "num_samples": search.num_samples,
        "time_budget_s": search.time_budget_s,
        "seed": search.seed,
        "base_options": search.base.to_dict(),
        "eval_episodes": search.eval_episodes,
    }


def _fixed_config(search: RLSearch) -> dict[str, Any]:
    base = search.base.to_dict()
    base["seed"] = search.seed
    return {
        "base": base,
        "trial": {
            "iterations": search.iterations_per_trial,
            "eval_episodes": search.eval_episodes,
            "checkpoint_every": search.checkpoint_every,
            "cpus_for_main_process": search.cpus_for_main_process,
        },
    }


def _search_start(search: RLSearch, concurrency: int) -> SearchStart:
    """Search algorithm, scheduler and the parameter space for `search.scheduler`."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    fixed = _fixed_config(search)
    default = search.default_point()
    space = search.space
    if search.scheduler == "pbt":
        mutable = [name for name in PBT_MUTABLES[search.algo] if name in space]
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=search.perturbation_interval,
            hyperparam_mutations=tune_space(space, only=mutable),
            custom_explore_fn=functools.partial(clip_to_space, space=space),
        )
        searcher = BasicVariantGenerator(
            points_to_evaluate=[default] if default else None,
            random_state=search.seed,
            max_concurrent=concurrency,
        )
        return SearchStart(searcher, scheduler, {**fixed, **tune_space(space)})
    searcher: Any = OptunaSearch(
        space=functools.partial(suggest, space),
        metric=METRIC,
        mode="max",
        points_to_evaluate=[default] if default else None,
        sampler=optuna.samplers.TPESampler(seed=search.seed),
    )
    if search.repeats > 1:
        searcher = Repeater(searcher, repeat=search.repeats)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    if search.scheduler == "asha":
        scheduler = ASHAScheduler(
            max_t=search.iterations_per_trial,
            grace_period=search.grace_period,
            reduction_factor=2,
        )
    else:
        scheduler = FIFOScheduler()
    return SearchStart(searcher, scheduler, fixed)


def _checkpoints_to_keep(search: RLSearch) -> int | None:
    """Each trial's best two checkpoints; under PBT all of them, because an exploit loads another
    trial's checkpoint of some iterations ago, which ranking might have deleted."""
    return None if search.scheduler == "pbt" else 2


def run_rl_search(search: RLSearch, resume: bool = False) -> SearchOutcome:
    """Run (or resume) the search; Ray must be initialised by the caller."""
    from ray import tune

    search.validate()
    if resume:
        # Trials must be rebuilt with the options the search started with, not today's flags.
        path = experiment_path(search.storage, search.name)
        record = load_search(path)
        search = dataclasses.replace(
            search,
            base=options_from_dict(record["base_options"]),
            hold=tuple(record.get("hold", ())),
        )
    resources = trial_resources(search)
    cpus = sum(bundle.get("CPU", 0.0) for bundle in resources.bundles)
    spec = TunerSpec(
        trainable=tune.with_resources(rl_trial, resources),
        storage=search.storage,
        name=search.name,
        metric=METRIC,
        mode="max",
        num_trials=search.num_samples * search.repeats,
        time_budget_s=search.time_budget_s,
        max_failures=search.max_failures,
        keep_checkpoints=_checkpoints_to_keep(search),
        record=search_record(search),
    )

    def start() -> SearchStart:
        return _search_start(search, search.max_concurrent or concurrency_for(cpus))

    return run_tuner(spec, start, resume)


def export_options(config: dict[str, Any], path: str | Path) -> RLOptions:
    """Write the options of a trial's configuration as YAML for `sepsis-rl train --config`."""
    options = best_options(config)
    save_options(options, path)
    return options
