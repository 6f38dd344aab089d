"""`sepsis-rl ope`: off-policy evaluation of a trained checkpoint on logged stays.

Only this module prints and chooses exit codes; the estimators live in
`training.rl.offline.ope`. Every input is checked before the work starts (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sepsis_rl.cli.console import check_out_file, console, err_console, fail

SPLITS = ("all", "train", "val", "test")
"""`--split` values: every stay, or one part of `training.rl.offline.data.split_stays`, seeded
with the logs' seed (`logs.json`; 0 for imported logs without one), as offline training splits."""
FQE_METHODS = ("auto", "tabular", "mlp", "none")
"""`--fqe` values (`training.rl.offline.ope.FQEMethod`)."""


def ope_cmd(
    policy: Annotated[
        Path, typer.Option(help="Checkpoint of the target policy (checkpoints/last or best).")
    ],
    logs: Annotated[Path, typer.Option(help="Logs folder written by `sepsis-rl logs`.")],
    algo: Annotated[
        str | None,
        typer.Option(help="Refuse a checkpoint trained by another algorithm (dqn, ppo, bc, ...)."),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="all | train | val | test: the stays to evaluate on, split by the logs' seed "
            "as offline training splits them."
        ),
    ] = "all",
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples over stays for the 95% intervals.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of the MLP FQE.")] = 0,
    target_epsilon: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Evaluate the policy mixed with uniform random actions with this probability "
            "(0: as trained; a Q-learner's greedy policy is deterministic).",
        ),
    ] = 0.0,
    fqe: Annotated[
        str,
        typer.Option(
            help="auto | tabular | mlp | none: how to fit Q-hat for FQE and DR (auto: tabular "
            "on one-hot observations such as ICU-Sepsis, else a small MLP)."
        ),
    ] = "auto",
    refit_fqe: Annotated[
        bool,
        typer.Option(
            help="Tabular FQE: fit Q-hat again in every bootstrap resample, so the FQE and DR "
            "intervals include its fitting error (slower: about 10-50 ms per resample)."
        ),
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
) -> None:
    """Estimate a checkpoint's value from logged stays without running it: importance sampling
    (IS, PDIS, WIS, WPDIS), fitted Q evaluation (FQE) and doubly robust (DR, WDR), each with a
    95% bootstrap interval over stays and the effective sample size."""
    from training.rl.offline.data import LogsError, read_logs, split_stays
    from training.rl.offline.ope import OPEError, checkpoint_probabilities, evaluate_offline
    from training.rl.policy import load_policy

    if split not in SPLITS:
        raise fail(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if fqe not in FQE_METHODS:
        raise fail(f"--fqe {fqe!r}: expected one of {', '.join(FQE_METHODS)}")
    if out is not None:
        check_out_file(out)
    try:
        steps, info = read_logs(logs)
    except (LogsError, OSError) as err:
        raise fail(f"--logs: {err}") from None
    split_seed = info.seed if info.seed is not None else 0  # imported logs have no seed
    if split != "all":
        steps = steps.select_stays(split_stays(steps.n_stays, split_seed)[split])
        if not len(steps):
            raise fail(f"--split {split}: no stays of {logs} fall in it")
    try:
        target = load_policy(policy, algo)
    except (FileNotFoundError, ValueError) as err:
        raise fail(f"--policy: {err}") from None
    try:
        target_probs = checkpoint_probabilities(target, info, target_epsilon)
    except OPEError as err:
        raise fail(f"--policy {policy} does not fit --logs {logs}: {err}") from None

    err_console.print(
        f"evaluating {target.options.algo} policy {policy} on {steps.n_stays:,} stays "
        f"({split}) of {logs} (behaviour: {info.behaviour}, gamma {info.gamma:g})",
        highlight=False,
    )
    try:
        report = evaluate_offline(
            steps,
            info,
            target_probs,
            bootstrap=bootstrap,
            seed=seed,
            fqe=fqe,
            refit_fqe=refit_fqe,
        )
    except OPEError as err:
        raise fail(str(err)) from None
    console.print(report.format(), highlight=False, markup=False, soft_wrap=True)
    if out is not None:
        from sepsis_rl.common.files import write_json_atomic

        payload = {
            "policy": str(policy),
            "algo": target.options.algo,
            "logs": str(logs),
            "split": split,
            "split_seed": split_seed,
            "target_epsilon": target_epsilon,
            "seed": seed,
            "split_rule": "training.rl.offline.data.split_stays(n_stays, split_seed)",
            "behaviour": info.behaviour,
            **report.to_dict(),
        }
        write_json_atomic(out, payload)
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `ope` to the root `sepsis-rl` app."""
    app.command("ope")(ope_cmd)
