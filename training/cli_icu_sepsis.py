"""`sepsis-rl evaluate --env icu-sepsis`: exact evaluation of a checkpoint on the ICU-Sepsis MDP.

Called by `evaluate` in `cli_rl` when the checkpoint was trained on ICU-Sepsis (or `--env
icu-sepsis` is given); the work is done in `training.rl_icu_sepsis`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def evaluate_icu_sepsis(
    checkpoint: Path, export_policy: Path | None = None, out: Path | None = None
) -> None:
    """Print the exact value of the checkpoint's greedy policy beside the references; write the
    report (JSON), the learning curve (PNG) and, if asked, the greedy action per state (.npy)."""
    from sepsis_env.icu_sepsis import ICUSepsisNotInstalledError
    from training.rl_icu_sepsis import (
        evaluate_checkpoint,
        exact_evaluator,
        format_report,
        plot_exact_learning_curve,
    )

    try:
        actions, report = evaluate_checkpoint(checkpoint)
    except (ICUSepsisNotInstalledError, FileNotFoundError, ValueError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print(format_report(report))

    run_dir = checkpoint.resolve().parent.parent
    out = out or run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "icu_sepsis_exact.json"]
    written[0].write_text(json.dumps({"checkpoint": str(checkpoint), **report.to_dict()}, indent=2))
    metrics_csv = run_dir / "metrics.csv"
    if metrics_csv.exists():
        reference = exact_evaluator(report.strategy).baselines_
        figure = out / "icu_sepsis_learning_curve.png"
        written.append(plot_exact_learning_curve(metrics_csv, figure, reference))
    if export_policy is not None:
        export_policy.parent.mkdir(parents=True, exist_ok=True)
        np.save(export_policy, actions)
        written.append(export_policy)
    for path in written:
        console.print(f"wrote {path}")
