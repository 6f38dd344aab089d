"""The study's offline section: a policy learned from the clinicians' logged decisions, and what
off-policy evaluation (OPE) says of it, beside its value simulated in SepsisEnv.

    run_offline(folder, options, logs_kwargs, test_kwargs, test_seed, seed)

1. **Logs.** `OfflineOptions.stays` stays of the **clinicians** behaviour
   (`training.rl.offline.logs`: the clinician protocol, except that with probability
   `CLINICIAN_NOISE` a decision is a uniformly random action) on the training patients of the
   study's environment cohort, the patients the `rl` stage trains on. Why the clinicians and not
   the protocol: the protocol is deterministic, so mu(a|s) = 1 for every logged action and
   importance sampling can value no policy but the protocol itself. The clinicians give every
   action a known probability of at least `CLINICIAN_NOISE` / 8 = 1.25% in every state, above
   OPE's support threshold (`SUPPORT_MIN_PROB`, 1%): whatever the learned policy does, its
   actions are in the logs' support, and the importance ratios are exact.
2. **Policy.** `OfflineOptions.algo` (default discrete CQL) trained by
   `training.rl.offline.train.train_offline` on the logs' train stays; the validation stays
   choose its checkpoint (`checkpoints/best`); the test stays are never read in training. The
   stays are split by `split_stays(stays, seed)`, the split `train_offline` makes.
3. **OPE.** `training.rl.offline.ope.evaluate_offline` of the learned (greedy) policy on the
   logs' test stays: IS, PDIS, WIS, WPDIS, FQE, DR, WDR, each with a 95% bootstrap interval over
   stays, and the effective sample size. SepsisEnv's observations are continuous, so Q-hat is
   the MLP fitted Q evaluation (`FQEConfig`, `fqe_iterations` Bellman backups).
4. **Truth.** The learned policy, the clinician protocol and the clinicians (the behaviour)
   run in SepsisEnv, simulated as the logs are (`simulate_logs` with the policy as the
   behaviour, so episode i is the same patient and random stream for every policy), each scored
   by its mean *discounted* return at the logs' gamma, the quantity OPE estimates (the
   evaluation stage reports undiscounted returns), with its 95% normal interval over episodes:
   * on the logs' patients (training patients, new episodes): the value OPE estimates, which
     every interval is judged against (`coverage`);
   * on the study's test patients, on the evaluation stage's episodes (its
     `evaluation_env_kwargs(..., "test")` and its seed `TEST_SEED + seed`):
     how the policy does on patients nobody trained on. The two differ beyond their intervals
     when the cohort is small (`--quick`: a few dozen test patients), which is why the
     estimates are not judged against this one.

Writes into the stage folder: `logs/` (a logs folder, `sepsis-rl ope --logs` reads it),
`policy/` (the offline run, laid out as `training.rl.offline.train` lays out any),
`results.json` (`RESULTS_FILE`) and `ope.csv` (`OPE_TABLE`).
"""

from __future__ import annotations

import json
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from sepsis_rl.common.config_files import build_options, options_dataclass
from training.rl.evaluate import TEST_EPISODES

LOGS_DIR = "logs"
"""Inside `offline/`: the logged stays."""
POLICY_DIR = "policy"
"""Inside `offline/`: the offline training run."""
RESULTS_FILE = "results.json"
"""Inside `offline/`: logs, policy, every estimate, the truths (read by the report)."""
OPE_TABLE = "ope.csv"
"""Inside `offline/`: one row per estimator beside the truth."""

BEHAVIOUR = "clinicians"
"""The logged behaviour (see the module docstring for why not the protocol)."""
LEARNED, PROTOCOL = "learned", "protocol"
"""The learned policy and the clinician protocol, as the results name them."""
MIN_STAYS = 20
"""Fewest stays that split into non-empty train, validation and test parts (70/15/15)."""
MAX_STAYS = 1_000_000
"""Most stays: their seeds (seed .. seed + stays - 1) stay below `LOGS_TRUTH_SEED_OFFSET`."""
LOGS_TRUTH_SEED_OFFSET = MAX_STAYS
"""The truth on the logs' patients starts at seed + this: new episodes, none a logged one."""
LOGS_PATIENTS, TEST_PATIENTS = "logs_patients", "test_patients"
"""Where a truth was simulated: on the patients the logs come from (the value OPE estimates,
which each interval is judged against), or on the test patients (the evaluation stage's
episodes)."""


@options_dataclass
class OfflineOptions:
    """The study's offline section (`StudyOptions.offline`); the field list is the documentation."""

    enabled: bool = True
    """Run the offline section: clinician logs, an offline policy, OPE beside the truth."""
    stays: Annotated[int, Field(ge=MIN_STAYS, le=MAX_STAYS)] = 10_000
    """Clinician stays to log (split by stay 70/15/15 into train, validation and test)."""
    algo: Literal["bc", "marwil", "cql"] = "cql"
    """Offline algorithm: bc, marwil or cql (discrete CQL)."""
    iterations: PositiveInt = 50
    """Training iterations of the offline algorithm (`<algo>.updates_per_iteration` each)."""
    rl: dict[str, Any] = field(default_factory=dict)
    """Overrides of `training.rl.options.RLOptions` for the offline run (`cql: {cql_alpha: 0.5}`,
    `fcnet_hiddens`, ...); the algorithm, the seed and the iterations come from the fields here."""
    bootstrap: PositiveInt = 1000
    """Bootstrap resamples over test stays behind each estimate's 95% interval."""
    fqe_iterations: PositiveInt = 100
    """Bellman backups of the MLP fitted Q evaluation (FQE, DR, WDR); a stay lasts at most 30
    steps (`MAX_EPISODE_STEPS`), and fewer backups cannot carry its outcome back to its start."""
    truth_episodes: PositiveInt = TEST_EPISODES
    """Simulated episodes per policy behind each true value (on the test patients: the first of
    the evaluation stage's episodes)."""

    @model_validator(mode="after")
    def _rl_builds(self) -> OfflineOptions:
        """`rl` is checked as the offline run will use it, before any stage runs."""
        offline_rl_options(self, seed=0)
        return self


if TYPE_CHECKING:
    import numpy as np

    from training.rl.offline.ope import TargetProbs
    from training.rl.options import RLOptions


def offline_rl_options(options: OfflineOptions, seed: int) -> RLOptions:
    """The `RLOptions` of the offline run: `options.rl`, then the algorithm, the study's seed
    and `options.iterations` (no time budget: the iterations are the budget)."""
    from training.rl.options import RLOptions

    own = {**options.rl.get(options.algo, {}), "iterations": options.iterations}
    values = {**options.rl, "algo": options.algo, "seed": seed, "time_budget_s": None}
    return build_options(RLOptions, {**values, options.algo: own}, prefix="rl")


def run_offline(
    folder: Path,
    options: OfflineOptions,
    logs_kwargs: dict[str, Any],
    test_kwargs: dict[str, Any],
    test_seed: int,
    seed: int,
) -> dict[str, Any]:
    """The offline section in `folder` (see the module docstring): logs `options.stays` clinician
    stays in SepsisEnv made with `logs_kwargs`, trains the offline policy, estimates its value on
    the test stays and simulates its truth, `options.truth_episodes` episodes on the logs'
    patients and as many made with `test_kwargs` from `test_seed`. Writes `RESULTS_FILE` and
    `OPE_TABLE` last; returns the results. Raises KeyboardInterrupt when Ctrl-C stopped the
    training."""
    from sepsis_env.ids import SEPSIS_ENV_ID
    from sepsis_rl.common.files import write_json_atomic
    from training.rl.offline.data import split_stays, write_logs
    from training.rl.offline.logs import CLINICIAN_NOISE, simulate_logs
    from training.rl.offline.ope import FQEConfig, checkpoint_probabilities, evaluate_offline
    from training.rl.offline.train import train_offline
    from training.rl.policy import load_policy
    from training.rl.train import INTERRUPTED

    folder = Path(folder).resolve()
    rl_options = offline_rl_options(options, seed)
    steps, info = simulate_logs(SEPSIS_ENV_ID, BEHAVIOUR, options.stays, seed, 0.0, logs_kwargs)
    (folder / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    write_logs(steps, info, folder / LOGS_DIR)

    run = train_offline(folder / LOGS_DIR, rl_options, folder / POLICY_DIR)
    summary = json.loads((run / "summary.json").read_text())
    if summary["stop_reason"].startswith(INTERRUPTED):
        raise KeyboardInterrupt  # Ctrl-C reached the training loop, which stopped cleanly
    checkpoint = Path(summary["best_checkpoint"]).resolve()
    target = checkpoint_probabilities(load_policy(checkpoint, options.algo), info)

    split = split_stays(steps.n_stays, rl_options.seed)  # the split train_offline made
    report = evaluate_offline(
        steps.select_stays(split["test"]),
        info,
        target,
        bootstrap=options.bootstrap,
        seed=seed,
        fqe="mlp",
        fqe_config=FQEConfig(iterations=options.fqe_iterations),
    )
    truth_seeds = {LOGS_PATIENTS: seed + LOGS_TRUTH_SEED_OFFSET, TEST_PATIENTS: test_seed}
    truth_kwargs = {LOGS_PATIENTS: logs_kwargs, TEST_PATIENTS: test_kwargs}
    results = {
        "logs": {
            "folder": LOGS_DIR,
            "behaviour": BEHAVIOUR,
            "noise": CLINICIAN_NOISE,
            "stays": steps.n_stays,
            "steps": len(steps),
            "split": {name: int(len(stays)) for name, stays in split.items()},
            "seed": seed,
            "gamma": info.gamma,
            "patients": logs_kwargs.get("split", "all"),
        },
        "policy": {
            "folder": POLICY_DIR,
            "algo": options.algo,
            "checkpoint": checkpoint.relative_to(folder).as_posix(),
            **{key: summary[key] for key in _SUMMARY_KEYS},
        },
        "ope": report.to_dict(),
        "truth": {
            where: {
                "patients": truth_kwargs[where].get("split", "all"),
                "episodes": options.truth_episodes,
                "seed": truth_seeds[where],
                **simulated_truths(
                    target,
                    truth_kwargs[where],
                    options.truth_episodes,
                    truth_seeds[where],
                    info.gamma,
                ),
            }
            for where in (LOGS_PATIENTS, TEST_PATIENTS)
        },
    }
    results["covers"] = coverage(results)
    write_ope_table(results, folder / OPE_TABLE)
    write_json_atomic(folder / RESULTS_FILE, results)
    return results


_SUMMARY_KEYS = (
    "iterations",
    "updates",
    "elapsed_s",
    "stop_reason",
    "best_iteration",
    "best_val_loss",
    "best_val_agreement",
)
"""What the results keep of the offline run's `summary.json`."""


def simulated_truths(
    target: TargetProbs,
    env_kwargs: dict[str, Any],
    episodes: int,
    seed: int,
    gamma: float,
) -> dict[str, Any]:
    """`{"values": {policy: interval}, "learned_minus_protocol": interval}`: the mean
    discounted return (at `gamma`) with its 95% interval of the learned policy (`target`), the
    protocol and the clinicians over `episodes` SepsisEnv episodes made with `env_kwargs` from
    `seed` (episode i: the same patient and random stream for each policy), and the learned
    policy's paired difference to the protocol. Intervals as `{value, ci_low, ci_high}`."""
    from sepsis_env import ACTION_NAMES
    from sepsis_env.ids import SEPSIS_ENV_ID
    from sepsis_rl.common.intervals import mean_interval
    from training.rl.offline.logs import Behaviour, simulate_logs, stay_returns
    from training.rl.offline.ope import Estimate

    def interval(values: np.ndarray) -> dict[str, float | None]:
        return Estimate(*mean_interval(values)).to_dict()

    behaviours = {
        LEARNED: Behaviour(LEARNED, len(ACTION_NAMES), target),
        PROTOCOL: PROTOCOL,
        BEHAVIOUR: BEHAVIOUR,
    }
    returns = {}
    for name, behaviour in behaviours.items():
        steps, _ = simulate_logs(SEPSIS_ENV_ID, behaviour, episodes, seed, 0.0, env_kwargs)
        returns[name] = stay_returns(steps, gamma)
    return {
        "values": {name: interval(r) for name, r in returns.items()},
        "learned_minus_protocol": interval(returns[LEARNED] - returns[PROTOCOL]),
    }


def coverage(results: dict[str, Any]) -> dict[str, bool | None]:
    """Whether each estimator's 95% interval holds the learned policy's simulated value (None
    where the estimate has no interval), and whether the logged stays' own return holds the
    clinicians' (`LOGGED`)."""
    from training.rl.offline.ope import LOGGED

    truth = results["truth"][LOGS_PATIENTS]["values"]

    def holds(estimate: dict[str, float | None], value: float | None) -> bool | None:
        low, high = estimate["ci_low"], estimate["ci_high"]
        if low is None or high is None or value is None:
            return None
        return bool(low <= value <= high)

    ope = results["ope"]
    covers = {
        name: holds(estimate, truth[LEARNED]["value"])
        for name, estimate in ope["estimates"].items()
    }
    covers[LOGGED] = holds(ope["logged_return"], truth[BEHAVIOUR]["value"])
    return covers


def write_ope_table(results: dict[str, Any], path: Path) -> None:
    """`ope.csv`: estimator, estimate, interval, ESS, the truth it is judged against, covered."""
    import pandas as pd

    from training.rl.offline.ope import IMPORTANCE_WEIGHTED, LOGGED

    ope, truth = results["ope"], results["truth"][LOGS_PATIENTS]["values"]
    rows = []
    estimates = {**ope["estimates"], LOGGED: ope["logged_return"]}
    for name, estimate in estimates.items():
        of = BEHAVIOUR if name == LOGGED else LEARNED
        rows.append(
            {
                "estimator": name,
                "estimate": estimate["value"],
                "ci_low": estimate["ci_low"],
                "ci_high": estimate["ci_high"],
                "ess": ope["ess"] if name in IMPORTANCE_WEIGHTED else None,
                "truth_of": of,
                "truth": truth[of]["value"],
                "truth_low": truth[of]["ci_low"],
                "truth_high": truth[of]["ci_high"],
                "covers_truth": results["covers"][name],
            }
        )
    pd.DataFrame(rows).to_csv(path, index=False)
