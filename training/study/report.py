"""The study report: what a clinician-researcher reads after `sepsis-rl run`.

Built only from the stage outputs on disk (never from in-memory state), so it can be rebuilt from
a copied results folder. Every number comes with its 95% interval where one exists, and the report
says plainly what is synthetic and what the figures do and do not show.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from data_prep.fidelity import fidelity_verdict
from sepsis_env import ACTION_NAMES, MAX_EPISODE_STEPS
from sepsis_env.env import (
    DEATH_REWARD,
    DEFAULT_STEP_HOURS,
    DISCHARGE_REWARD,
    OXYGEN_COST,
    SCORE_SHAPING,
    VASOPRESSOR_COST,
    VENTILATION_COST,
)
from sepsis_env.physiology import (
    DISCHARGE_STABLE_HOURS,
    MAP_TARGET_MMHG,
    VASOPRESSOR_MAP_GAIN_MMHG,
    age_response,
    perfusion_map,
)
from sepsis_env.policies import age_adaptive_protocol, clinician_protocol
from sepsis_rl.common.files import write_json_atomic, write_text_atomic
from sepsis_rl.common.intervals import format_interval
from training.classification.documents import (
    FIDELITY_HEADER,
    candidate_key,
    comparison_rows,
    effects_by_model,
    fidelity_rows,
    has_undefined_mark,
    model_label,
    selected_against_baseline_rows,
)
from training.classification.hourly import RULE_ALARM_CRITERIA, RULES
from training.classification.metrics import (
    METRIC_LABELS,
    THRESHOLD_RULE_LABELS,
    UNDEFINED_NOTE,
    format_estimate,
)
from training.classification.models import MODEL_LABELS
from training.classification.utility import (
    DT_EARLY_H,
    DT_LATE_H,
    DT_OPTIMAL_H,
    MAX_U_TP,
    MIN_U_FN,
    U_FP,
)
from training.rl.evaluate import VERDICT_BASELINES
from training.rl.options import ALGORITHM_NAMES
from training.rl.policy import HAND_RULE, POLICY_NAMES
from training.study import hourly as hourly_section
from training.study import offline as offline_section
from training.study.documents import (
    Bullets,
    Figure,
    Paragraph,
    Section,
    Table,
    render_html,
    render_markdown,
)
from training.study.layout import (
    CLASSIFY,
    EVALUATION,
    HOURLY,
    OFFLINE,
    OPTIONS_FILE,
    PREPARED,
    REPORT_HTML,
    REPORT_MD,
    RL,
    STAGE_NAMES,
)

TITLE = "Sepsis treatment study"
COMPARISON_METRICS = ("pr_auc", "roc_auc", "brier")
"""Test metrics of every candidate in the report's comparison table (then validation PR-AUC)."""
SELECTED_MODEL_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "recall",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
)
"""Test metrics of the selected model beside the trivial baseline, in table order."""
CLASSIFIER_FIGURES = (
    (
        "roc_pr_curves.png",
        "ROC and precision-recall curves on the test patients (the selected model thick; "
        "legend values are ROC-AUC and PR-AUC)",
    ),
    ("calibration.png", "Calibration on the test patients"),
)
"""(file in `classify/`, caption) of each classifier figure, in report order."""
EVALUATION_FIGURES = (
    (
        "vitals_typical_patients.png",
        "Vitals and treatments over an episode under each policy, for one typical test "
        "patient per age group (the patient whose starting MAP is the group's median)",
    ),
    (
        "actions_by_group_and_state.png",
        "How often the learned policy chooses each action, by age group and by state",
    ),
)
"""(file in `evaluation/`, caption) of the figures of the vitals section, in report order."""
EXAMPLE_AGES_YEARS = (30.0, 80.0)
"""Ages at which the report spells out the age-adaptive protocol's vasopressor thresholds."""
VERSIONED_PACKAGES = (
    "ray",
    "torch",
    "gymnasium",
    "scikit-learn",
    "xgboost-cpu",
    "ctgan",
    "imbalanced-learn",
    "pandas",
    "numpy",
)


def write_report(out: Path, options, data: Path | None) -> tuple[Path, Path]:
    """Write `report.html` (self-contained) and `report.md` into `out`; return their paths."""
    from training.study.options import options_document

    out = Path(out)
    sections = build_sections(out, options_document(options), data)
    md_path, html_path = out / REPORT_MD, out / REPORT_HTML
    write_text_atomic(md_path, render_markdown(TITLE, sections, out))
    write_text_atomic(html_path, render_html(TITLE, sections))
    write_json_atomic(out / OPTIONS_FILE, options_document(options))
    return html_path, md_path


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_sections(out: Path, options: dict, data: Path | None) -> list[Section]:
    """Every section of the report, from the stage folders under `out`."""
    prepared = _load_json(out / PREPARED / "report.json")
    metrics = _load_json(out / CLASSIFY / "metrics.json")
    evaluation = _load_json(out / EVALUATION / "evaluation.json")
    rl_summary = _load_json(out / RL / "summary.json")
    sections = [_about(data, prepared, evaluation, options)]
    if prepared:
        sections += [_cohort(out, prepared), _cleaning(prepared)]
    if metrics:
        sections += [_classifiers(out, metrics), _fidelity(out)]
    hourly = _load_json(out / HOURLY / "metrics.json")
    hourly_extra = _load_json(out / HOURLY / hourly_section.SECTION_FILE)
    if hourly and hourly_extra and options.get("hourly", {}).get("enabled", True):
        sections.append(_hourly(out, hourly, hourly_extra, data))
    if rl_summary or evaluation:
        sections.append(_training(out, rl_summary, options.get("rl", {}).get("algo", "dqn")))
    if evaluation:
        sections += [
            _policies(out, evaluation),
            _age_groups(evaluation),
            _vitals_and_actions(out, evaluation),
        ]
        if "differences_to_hand_rule" in evaluation:
            sections.append(_differences(out, evaluation["differences_to_hand_rule"]))
    offline = _load_json(out / OFFLINE / offline_section.RESULTS_FILE)
    if offline and options.get("offline", {}).get("enabled", True):
        sections.append(_offline(offline))
    sections.append(_settings(out, options, data))
    return sections


def _about(
    data: Path | None, prepared: dict | None, evaluation: dict | None, options: dict
) -> Section:
    source = (
        "a **synthetic** cohort generated by `sepsis-rl data synth` from published statistics "
        "of the PhysioNet/CinC 2019 sepsis data"
        if data is None
        else f"the data read from `{data}`"
    )
    blocks: list = []
    if options.get("quick"):
        blocks.append(
            Paragraph(
                "**This is a `--quick` demonstration run**: a small cohort, a GAN trained for a "
                "few epochs and a DQN trained for under a minute. It shows that every stage works "
                "and what the report holds; its numbers are not representative. Run "
                "`sepsis-rl run` without `--quick` for the full study."
            )
        )
    held_out = (
        "held-out test patients (never GAN-generated; in this run they are themselves "
        "synthetic patients from the generator above)"
        if data is None
        else "real held-out test patients (never GAN-generated)"
    )
    items = [
        f"Patients: {source}. The patient split (train / validation / test) was made once, "
        "before anything was fitted; every fitted step saw training patients only.",
        f"Classifier figures are on {held_out}, at their true prevalence; GAN-generated rows "
        "were used for training only.",
        "The treatment policy was learned and evaluated in **SepsisEnv**, a simulator whose "
        "dynamics are modelling assumptions documented in `sepsis_env/`: differences between "
        "policies are differences *in the simulator*, not evidence about real patients.",
        "All intervals are 95% intervals (bootstrap over patients for the classifiers; normal "
        "approximation over paired episodes for the policies). Differences between policies "
        "are in percentage points (pp) for rates.",
    ]
    if data is None:
        items.append(
            "Because the patients are synthetic, nothing here says how a model would do on real "
            "ICU data; the report shows that the pipeline works and how its parts compare."
        )
    blocks.append(Bullets(items))
    return Section("What this report is, and is not", blocks)


def _cohort(out: Path, prepared: dict) -> Section:
    raw = prepared["raw"]
    source = Path(prepared["input"]["path"])
    if source.is_relative_to(out.resolve()):
        source = source.relative_to(out.resolve())
    rows = []
    for name in ("train", "val", "test"):
        counts = [
            prepared["split"].get(str(k), prepared["split"].get(k, {})).get(name, 0) for k in (0, 1)
        ]
        total = sum(counts)
        rows.append(
            [name, f"{total:,}", f"{counts[1]:,}", f"{100 * counts[1] / max(total, 1):.1f}%"]
        )
    return Section(
        "Cohort",
        [
            Paragraph(
                f"{raw['patients']:,} ICU stays ({raw['septic_patients']:,} septic, "
                f"{100 * raw['septic_patients'] / raw['patients']:.1f}%), {raw['rows']:,} hourly "
                f"rows ({raw['rows_label_1']:,} labelled septic), read from "
                f"{prepared['input']['kind']} `{source}`."
            ),
            Table(["split", "patients", "septic", "prevalence"], rows, "Patient split"),
            Paragraph(_feature_prevalence(prepared)),
        ],
    )


def _feature_prevalence(prepared: dict) -> str:
    """Why the classifiers see a lower prevalence than the split table shows."""
    windows = prepared["windows"]
    counts = windows["patients_with_features"]
    septic = sum(counts.get("1", counts.get(1, {})).values())
    total = septic + sum(counts.get("0", counts.get(0, {})).values())
    return (
        f"The classifiers see {total:,} of these patients ({septic:,} septic, "
        f"{100 * septic / max(total, 1):.1f}%): "
        f"{windows['excluded_labelled_from_first_hour']:,} septic patients labelled from their "
        "first hour have no hours before the label to compute features from and are left out "
        "(the reference data has about 13% such stays)."
    )


def _cleaning(prepared: dict) -> Section:
    cleaning = prepared["cleaning"]
    out = cleaning["outliers"]
    skipped = prepared["skipped"]
    implausible = prepared["implausible_values"]
    kept, dropped = cleaning["kept_measurements"], cleaning["dropped_columns"]
    mode = {
        "clip": "values outside the fences were moved to the nearest fence (clipped)",
        "drop": "rows holding such values were dropped, which removes septic rows "
        "disproportionately",
        "none": "values outside the fences were kept as they are",
    }.get(cleaning["outlier_mode"], cleaning["outlier_mode"])
    items = [
        f"**The classifiers use {len(kept)} of {len(kept) + len(dropped)} measurements**: "
        f"{', '.join(kept)}. The other {len(dropped)} were missing in more than "
        f"{cleaning['missing_threshold']:.0%} of training rows and were dropped (as in the "
        f"original study): {', '.join(dropped) or 'none'}. Labs are measured rarely, so this "
        "threshold removes nearly all of them; `--missing-threshold` changes it.",
        f"Outliers by Tukey's rule (outside the quartiles +/- {cleaning['iqr_k']} x IQR, "
        "computed on training rows): "
        f"{out['values_outside_fences']['label_0']:,} values in unlabelled rows and "
        f"{out['values_outside_fences']['label_1']:,} in septic-labelled rows; {mode}.",
        f"Imputation: {sum(cleaning['imputed']['carried_forward'].values()):,} values carried "
        f"forward within a patient, {sum(cleaning['imputed']['training_median'].values()):,} "
        "filled with training medians.",
        "Values outside the physiologically plausible ranges of the data's reference "
        f"description (counted, kept): {sum(implausible.values()):,}.",
        f"Skipped malformed files: {len(skipped)}.",
        "Classifier features use only hours before the first septic label (at most "
        f"{prepared['options']['max_window_hours']} h), so no feature sees the label window.",
    ]
    return Section("What cleaning did", [Bullets(items)])


def _classifiers(out: Path, metrics: dict) -> Section:
    comparison = _comparison(metrics)
    against_baseline = _selected_against_baseline(metrics)
    blocks: list = [
        Paragraph(_prevalence_text(metrics)),
        comparison,
        Paragraph(_selection_text(metrics)),
        against_baseline,
    ]
    if has_undefined_mark(comparison.rows + against_baseline.rows):
        blocks.append(Paragraph(UNDEFINED_NOTE))
    blocks += _oversampling_effects(metrics["oversampling_effect"])
    blocks += _figures(out / CLASSIFY, CLASSIFIER_FIGURES)
    return Section("Sepsis classifiers, with and without GAN oversampling", blocks)


def _prevalence_text(metrics: dict) -> str:
    """Why accuracy alone says nothing at this prevalence, and which scores do."""
    accuracy = metrics["trivial_baseline"]["test"]["accuracy"]["value"]
    return (
        f"Test prevalence {format_interval(metrics['test_prevalence'], percent=True)}: a model "
        f"that says 'no sepsis' for everyone is {100 * accuracy:.1f}% accurate, so accuracy "
        "alone cannot show skill; PR-AUC (chance level = prevalence) and ROC-AUC (chance = 0.5) "
        "can. Brier score: mean squared error of the predicted probability (lower is better)."
    )


def _comparison(metrics: dict) -> Table:
    header = ["model", "oversampling"]
    header += [f"{METRIC_LABELS[m]} (test)" for m in COMPARISON_METRICS]
    header.append(f"{METRIC_LABELS['pr_auc']} (validation)")
    return Table(
        header,
        comparison_rows(metrics, COMPARISON_METRICS, validation=("pr_auc",)),
        "Every model x oversampling on the test patients (95% bootstrap CIs)",
    )


def _selection_text(metrics: dict) -> str:
    """How the model was chosen, and a warning when another one scores higher on test."""
    best, config = metrics["best"], metrics["config"]
    select = METRIC_LABELS.get(config["select_metric"], "score")
    text = (
        f"Chosen on the validation patients by {select}: **{model_label(best['model'])}** with "
        f"**{best['oversample']}** oversampling (validation {select} "
        f"{best['validation_value']:.3f}); its decision threshold {best['threshold']:.3f} "
        f"maximises validation {THRESHOLD_RULE_LABELS[config['threshold_rule']]}."
    )
    top = _highest_test_pr_auc(metrics["candidates"])
    if candidate_key(top) != candidate_key(best):
        text += (
            f" On the test patients {model_label(top['model'])} + {top['oversample']} scores a "
            f"higher PR-AUC ({top['test']['pr_auc']['value']:.3f}); picking by the test score "
            "would overstate it, so the choice stays with validation. Where intervals overlap, "
            "the models are not distinguishable on this data."
        )
    return text


def _highest_test_pr_auc(candidates: list[dict]) -> dict:
    """The first candidate with the highest test PR-AUC (undefined ones last)."""
    values = [c["test"]["pr_auc"]["value"] for c in candidates]
    scores = [-math.inf if value is None else value for value in values]
    return candidates[scores.index(max(scores))]


def _selected_against_baseline(metrics: dict) -> Table:
    return Table(
        ["metric (test)", "selected model", "trivial baseline"],
        selected_against_baseline_rows(metrics, SELECTED_MODEL_METRICS),
        "The selected model against predicting 'no sepsis' for everyone",
    )


def _oversampling_effects(effects: list[dict]) -> list:
    header, rows = effects_by_model(effects)
    if not rows:
        return []
    return [
        Table(
            header,
            rows,
            "Does oversampling help? Test score with oversampling minus without, same model "
            "(paired bootstrap on the same test patients; an interval containing 0 means no "
            "detectable difference)",
        ),
        Paragraph(
            "Oversampling trains a model as if septic patients were far more common than "
            "they are, so its predicted probabilities run high: that is why the Brier score "
            "of the oversampled models is worse, and their probabilities should not be read "
            "as risks without recalibration."
        ),
    ]


def _figures(folder: Path, figures: Sequence[tuple[str, str]]) -> list[Figure]:
    """The figures of `figures` that exist in `folder`, with their captions."""
    return [
        Figure(folder / name, caption) for name, caption in figures if (folder / name).is_file()
    ]


def _fidelity(out: Path) -> Section:
    fidelity = _load_json(out / CLASSIFY / "fidelity.json")
    if fidelity is None:
        return Section("GAN fidelity", [Paragraph("CTGAN was not part of this run.")])
    if "skipped" in fidelity:
        return Section("GAN fidelity", [Paragraph(fidelity_verdict(fidelity))])
    synthetic = fidelity["synthetic"]
    return Section(
        "GAN fidelity",
        [
            Paragraph(
                f"{synthetic['n_rows']:,} CTGAN-generated septic patients (the generator trained "
                f"on training patients only) against {fidelity['n_held_out_real']:,} held-out "
                "real septic patients. The right-hand column compares two real samples (training "
                "vs held-out): the floor that sampling noise alone sets. Features the GAN matches "
                f"worst: {', '.join(synthetic['worst_features'][:5])}."
            ),
            Paragraph(fidelity_verdict(fidelity)),
            Table(FIDELITY_HEADER, fidelity_rows(fidelity)),
        ],
    )


def _training(out: Path, summary: dict | None, algo: str = "dqn") -> Section:
    blocks: list = []
    if summary:
        blocks.append(
            Paragraph(
                f"{ALGORITHM_NAMES.get(algo, algo)} on Ray RLlib: "
                f"{summary['episodes']:,} training episodes, {summary['env_steps']:,} environment "
                f"steps in {summary['elapsed_s'] / 60:.1f} min (stopped by: "
                f"{summary['stop_reason']})."
                + (
                    f" Best greedy return on the fixed validation episodes during training: "
                    f"{summary['best_eval_return']:.2f}; that checkpoint is the one evaluated "
                    "on the test patients below."
                    if math.isfinite(summary["best_eval_return"])
                    else " No greedy evaluation ran during training, so the last checkpoint was "
                    "used: a policy from a run this short has not converged and shows only that "
                    "training works."
                )
            )
        )
    blocks.append(Paragraph(_reward_text()))
    figure = out / EVALUATION / "training_returns.png"
    if figure.is_file():
        validated = bool(summary) and math.isfinite(summary["best_eval_return"])
        blocks.append(
            Figure(
                figure,
                "Return during training: each exploring training episode and their rolling mean"
                + (
                    ", and the greedy policy on the fixed validation episodes (used to pick the "
                    "checkpoint)"
                    if validated
                    else ""
                ),
            )
        )
    return Section("RL training", blocks)


def _reward_text() -> str:
    """The outcome reward of `SepsisEnv`, in words, from its constants."""
    return (
        f"The return of an episode is what the agent is trained to maximise: {DISCHARGE_REWARD:+g} "
        f"if the patient leaves the ICU alive, {DEATH_REWARD:+g} if the patient dies, "
        f"{SCORE_SHAPING:+g} for every point the organ dysfunction score improves in a step "
        f"(minus {SCORE_SHAPING:g} per point it worsens), and a small cost per step of treatment "
        f"(oxygen {OXYGEN_COST:g}, vasopressors {VASOPRESSOR_COST:g}, ventilation "
        f"{VENTILATION_COST:g})."
    )


def _step_hours(out: Path) -> float:
    config = out / RL / "config.yaml"
    if config.is_file():
        kwargs = (yaml.safe_load(config.read_text()) or {}).get("env_kwargs") or {}
        return float(kwargs.get("step_hours", DEFAULT_STEP_HOURS))
    return DEFAULT_STEP_HOURS


def _direction(est: list | tuple) -> str:
    return "better" if est[1] > 0 else ("worse" if est[2] < 0 else "no detectable difference")


def _policies(out: Path, evaluation: dict) -> Section:
    hours = _step_hours(out)
    policies = evaluation["policies"]
    rows = []
    for name, groups in policies.items():
        m = groups["overall"]
        rows.append(
            [
                POLICY_NAMES.get(name, name),
                format_interval(m["return"], 2),
                format_interval(m["survival"], percent=True),
                format_interval(m["discharge"], percent=True),
                format_interval(tuple(hours * x for x in m["length"]), 0),
            ]
        )
    versus = evaluation.get("learned_minus_baseline", {})
    diffs = [
        [
            POLICY_NAMES.get(name, name),
            format_interval(groups["overall"]["return"], 2, signed=True),
            format_interval(groups["overall"]["survival"], points=True),
            format_interval(groups["overall"]["discharge"], points=True),
        ]
        for name, groups in versus.items()
    ]
    blocks: list = [
        Paragraph(
            f"{evaluation['episodes']:,} episodes per policy on **test** patients the policy "
            "never trained on; episode i is the same patient and the same random stream for "
            "every policy, so differences are paired. A step is "
            f"{hours:g} h of care; an episode ends at discharge, death or after "
            f"{MAX_EPISODE_STEPS} steps ({MAX_EPISODE_STEPS * hours:g} h). **Survival** counts "
            "patients alive at the end (discharged, or still in the ICU at the time limit); "
            "**discharge** only those who left the ICU alive."
        ),
        Paragraph(_baselines_text()),
        Table(
            ["policy", "mean return", "survival", "discharge", "ICU time (h)"],
            rows,
            "Outcomes per policy (95% CIs)",
        ),
    ]
    histogram = out / EVALUATION / "evaluation_returns.png"
    if histogram.is_file():
        blocks.append(Figure(histogram, "Distribution of the test returns of each policy"))
    if diffs:
        blocks.append(
            Table(
                ["learned policy minus", "return", "survival", "discharge"],
                diffs,
                "The learned policy against each baseline (paired differences, 95% CIs)",
            )
        )
        blocks += [
            Paragraph(_verdict_text(baseline, versus[baseline]["overall"]))
            for baseline in VERDICT_BASELINES
            if baseline in versus
        ]
    return Section("The learned policy against clinical baselines", blocks)


def _baseline_label(baseline: str) -> str:
    """How a sentence names a baseline: 'the clinician protocol', 'the age-adaptive ...'."""
    label = f"the {POLICY_NAMES.get(baseline, baseline).lower()}"
    return f"{label}, the best we know," if baseline == HAND_RULE else label


def _verdict_text(baseline: str, difference: dict) -> str:
    """Better, worse or no detectable difference against `baseline`, on return and survival."""
    return (
        f"Against {_baseline_label(baseline)} the learned policy is "
        f"**{_direction(difference['return'])}** on mean return "
        f"({format_interval(difference['return'], 2, signed=True)}) and "
        f"**{_direction(difference['survival'])}** on survival "
        f"({format_interval(difference['survival'], points=True)})."
    )


def _baselines_text() -> str:
    """The baseline policies in words, the protocol's thresholds read from the protocol itself."""
    p = clinician_protocol
    return (
        f"The policies: the **clinician protocol** gives oxygen when SpO2 < {p.oxygen_below:g}% "
        f"(until {p.oxygen_wean_at:g}%), ventilation when SpO2 < {p.ventilate_below:g}% or "
        f"breathing rate > {p.ventilate_resp_above:g}/min (for at least "
        f"{p.ventilation_min_hours:g} h, until SpO2 >= {p.ventilation_wean_at:g}%), and "
        f"vasopressors when MAP < {p.vasopressors_below:g} mmHg (until MAP >= "
        f"{p.vasopressors_wean_at:g}). **No treatment** gives nothing; **all treatments always** "
        "gives all three every step (its patients are never discharged: discharge needs "
        f"{DISCHARGE_STABLE_HOURS:g} h off ventilation and vasopressors); **random** picks one "
        f"of the {len(ACTION_NAMES)} actions uniformly. " + _age_adaptive_text()
    )


def _age_adaptive_text() -> str:
    """The age-adaptive protocol in words, its thresholds computed as the protocol computes them."""
    p, fixed = age_adaptive_protocol, clinician_protocol

    def start_below(age: float) -> float:
        return perfusion_map(age, max) if p.age_map_target else MAP_TARGET_MMHG

    def expected_gain(age: float) -> float:
        return VASOPRESSOR_MAP_GAIN_MMHG * age_response(age, max)

    young, old = EXAMPLE_AGES_YEARS
    start = (
        "below the MAP the organs need at the patient's age "
        f"({round(start_below(young), 1):g} mmHg at {young:g} years, "
        f"{round(start_below(old), 1):g} at {old:g})"
        if p.age_map_target
        else f"when MAP < {MAP_TARGET_MMHG:g} mmHg"
    )
    margin = f" plus {p.wean_margin:g} mmHg" if p.wean_margin else ""
    wean = [start_below(a) + expected_gain(a) + p.wean_margin for a in EXAMPLE_AGES_YEARS]
    return (
        f"The **{POLICY_NAMES[HAND_RULE].lower()}**, the best we know, is the "
        f"clinician protocol except for vasopressors: it starts them {start}, and weans them "
        "only once the MAP on them exceeds that by the rise the drug is expected to give at "
        f"that age{margin} ({expected_gain(young):.0f} mmHg at {young:g}, "
        f"{expected_gain(old):.0f} at {old:g}: weaned at MAP >= {wean[0]:.0f} and "
        f">= {wean[1]:.0f}), where the clinician protocol weans at {fixed.vasopressors_wean_at:g} "
        "whatever the age and so cycles a young patient's vasopressors on and off. It reads only "
        "the observation (age and MAP) and a pharmacological prior, so a learned policy could "
        "find it."
    )


def _age_groups(evaluation: dict) -> Section:
    policies = evaluation["policies"]
    groups = [g for g in next(iter(policies.values())) if g != "overall"]
    reference = next(iter(policies.values()))
    header = ["policy"] + [
        f"{group} (n={int(reference[group]['episodes'][0]):,})" for group in groups
    ]
    survival = [
        [POLICY_NAMES.get(name, name)]
        + [format_interval(by_group[g]["survival"], percent=True) for g in groups]
        for name, by_group in policies.items()
    ]
    returns = [
        [POLICY_NAMES.get(name, name)] + [format_interval(by_group[g]["return"], 2) for g in groups]
        for name, by_group in policies.items()
    ]
    blocks: list = [
        Table(header, survival, "Survival by age group (years)"),
        Table(header, returns, "Mean return by age group"),
    ]
    versus = evaluation.get("learned_minus_baseline", {})
    tables = [
        _difference_by_age_group(baseline, versus[baseline], groups)
        for baseline in VERDICT_BASELINES
        if all(group in versus.get(baseline, {}) for group in ["overall", *groups])
    ]
    if tables:
        blocks += tables
        blocks.append(
            Paragraph(
                "**Better** or **worse**: the 95% interval of the paired difference lies above or "
                "below zero; otherwise no detectable difference. A gain overall can come from one "
                "age group alone."
            )
        )
    return Section("By age group", blocks)


def _difference_by_age_group(baseline: str, versus: dict, groups: list[str]) -> Table:
    """The learned policy minus `baseline`, overall and per age group, with the verdicts."""
    name = POLICY_NAMES.get(baseline, baseline)
    rows = [
        [
            group,
            format_interval(versus[group]["return"], 2, signed=True),
            _direction(versus[group]["return"]),
            format_interval(versus[group]["survival"], points=True),
            _direction(versus[group]["survival"]),
        ]
        for group in ["overall", *groups]
    ]
    return Table(
        ["age group", "return difference", "on return", "survival difference", "on survival"],
        rows,
        f"Learned policy minus {name.lower()}, by age group (paired, 95% CIs)",
    )


def _vitals_and_actions(out: Path, evaluation: dict) -> Section:
    folder = out / EVALUATION
    hours = _step_hours(out)
    blocks: list = _figures(folder, EVALUATION_FIGURES)
    rows = []
    for name, groups in evaluation["policies"].items():
        m = groups["overall"]
        stay = m["length"][0]

        def treated(key: str, m=m, stay=stay) -> str:
            value, low, high = (hours * x for x in m[key])
            share = m[key][0] / stay if stay else 0.0
            return f"{value:.0f} h [{low:.0f}, {high:.0f}] ({share:.0%} of ICU time)"

        rows.append(
            [
                POLICY_NAMES.get(name, name),
                treated("oxygen_steps"),
                treated("ventilation_steps"),
                treated("vasopressor_steps"),
            ]
        )
    blocks.append(
        Table(
            ["policy", "oxygen", "ventilation", "vasopressors"],
            rows,
            "Mean hours per patient on each treatment (95% CIs)",
        )
    )
    return Section("Vitals under each policy, and treatment use", blocks)


def _differences(out: Path, differences: dict) -> Section:
    """Where the learned policy and the age-adaptive protocol part, and what each part is worth."""
    rule = POLICY_NAMES[HAND_RULE].lower()
    disagreement = [
        [
            row["treatment"],
            format_interval(row["rule_gives_learned_not"], percent=True),
            format_interval(row["learned_gives_rule_not"], percent=True),
            format_interval(row["score_gap_mean"], 2),
        ]
        for row in differences["disagreement"]
        if row["group"] == "overall"
    ]
    swaps = [
        [
            row["policy"],
            row["group"],
            format_interval(row["return"], 2, signed=True),
            format_interval(row["survival"], points=True),
        ]
        for row in differences["swaps"]
    ]
    blocks: list = [
        Paragraph(
            f"The headline tables say whether the learned policy beats the {rule}; this section "
            "says where the two part. First, in the test states the learned policy met, how often "
            "the rule would decide a treatment differently, and the gap the learned network itself "
            "puts between its action and the rule's (DQN: in Q-values, units of return; a policy "
            "gradient algorithm: in logits; a small gap means it barely prefers its own choice). "
            "Then the learned policy is re-run on the same paired episodes with one treatment "
            "decision taken from the rule: a survival change above zero marks a decision the "
            "learned policy gets wrong."
        ),
        Table(
            ["treatment", "rule gives, learned not", "learned gives, rule not", "score gap"],
            disagreement,
            f"Share of the learned policy's test states where the {rule} decides differently "
            "(95% CIs)",
        ),
    ]
    blocks += _figures(
        out / EVALUATION,
        (
            (
                "differences_to_hand_rule.png",
                f"Vasopressor decisions of the learned policy and the {rule} in the test states "
                "(left, centre), and the survival change when one decision is taken from the rule "
                "(right)",
            ),
        ),
    )
    blocks.append(
        Table(
            ["policy", "age group", "return change", "survival change"],
            swaps,
            "Minus the learned policy, paired on the same test episodes (95% CIs): `rule` is the "
            f"{rule} itself, `rule's T` the learned policy with the rule's decision on T",
        )
    )
    return Section(f"Where the learned policy and the {rule} differ", blocks)


HOURLY_TITLE = "Hourly early warning, scored as the PhysioNet/CinC 2019 Challenge scored it"
HOURLY_VERDICTS = {"better": "**helps**", "worse": "**hurts**"}
"""How the oversampling table answers "does oversampling help utility?" from `verdict`."""


def _hourly(out: Path, metrics: dict, extra: dict, data: Path | None) -> Section:
    """The hourly section: the task and its score, every model beside the clinical and trivial
    rules on the test patients, how the model was chosen, the model against the best rule, the
    oversampling answer, and the timeline of a few test patients."""
    test, train = metrics["data"]["splits"]["test"], metrics["data"]["splits"]["train"]
    rows = _hourly_rows(metrics)
    blocks: list = [
        Paragraph(
            "**The task.** Every hour of every stay the model says sepsis or not, from that hour "
            f"and the hours before it only ({metrics['data']['n_features']} features: last values, "
            "time since the last measurement, missingness, changes and 6- and 24-hour "
            "statistics), as the PhysioNet/CinC 2019 Challenge asked; the classifiers above answer "
            "another question (one prediction per stay). The models were fitted on "
            f"{metrics['data']['training_hours_fitted']:,} of the {train['hours']:,} training "
            "hours (every septic hour, then a seeded subset of the others); each model's alarm "
            "threshold and the choice of model were made on the validation patients; the figures "
            f"below are on {test['patients']:,} test patients ({test['septic_patients']:,} "
            f"septic, {test['hours']:,} hours, {test['septic_hours']:,} of them labelled septic) "
            "that nothing was fitted or chosen on."
        ),
        Paragraph(_utility_text(test)),
        Paragraph(_challenge_caveat(data)),
        Table(
            [
                "model or rule",
                "oversampling",
                "alarm threshold (validation)",
                "utility (validation)",
                "utility (test)",
                "AUROC (test)",
                "AUPRC (test)",
                "hours with an alarm",
            ],
            rows,
            "Normalised utility and hourly AUROC/AUPRC on the test patients (95% bootstrap CIs "
            f"over patients, the same {metrics['config']['n_boot']:,} resamples for every row); "
            "qSOFA and SIRS are ranked by their number of criteria met",
        ),
    ]
    if has_undefined_mark(rows):
        blocks.append(Paragraph(UNDEFINED_NOTE))
    blocks.append(Paragraph(_hourly_selection_text(metrics)))
    blocks += _model_vs_rule(metrics)
    blocks += _hourly_oversampling(metrics["oversampling_effect"])
    blocks += _timeline(out, extra["timeline"])
    return Section(HOURLY_TITLE, blocks)


def _utility_text(test: dict) -> str:
    """The Challenge's utility in words, from the constants `training.classification.utility`
    scores with."""
    return (
        "**The score.** The Challenge's normalised utility (Reyna et al., Crit Care Med 2020) "
        "counts each hour relative to clinical onset, the first hour labelled septic plus "
        f"{-DT_OPTIMAL_H} h: an alarm earns from 0 at {DT_EARLY_H:+d} h, rising to "
        f"{MAX_U_TP:g} at {DT_OPTIMAL_H:+d} h, then falling to 0 at {DT_LATE_H:+d} h; an earlier "
        f"alarm, and any alarm for a patient without sepsis, costs {-U_FP:g}; a missing alarm "
        f"costs from 0 at {DT_OPTIMAL_H:+d} h down to {MIN_U_FN:g} at {DT_LATE_H:+d} h; later "
        "hours count nothing. The sum over patients is scaled so that the best possible alarms "
        "score 1 and never alarming 0; it can be negative. AUROC and AUPRC rank all hours as "
        "the Challenge did (AUPRC's chance level is the share of septic-labelled test hours, "
        f"{test['septic_hours'] / max(test['hours'], 1):.1%})."
    )


def _challenge_caveat(data: Path | None) -> str:
    best = hourly_section.CHALLENGE_BEST_OFFICIAL_UTILITY
    if data is None:
        return (
            "**Not comparable with the Challenge.** These patients are synthetic, so these "
            "numbers cannot be compared with the Challenge's published results (best official "
            f"test utility {best:.2f}, on real patients hidden from the entrants): how much "
            "easier or harder the synthetic cohort is than real ICU data is not known."
        )
    return (
        f"**Comparing with the Challenge.** Its best official test utility was {best:.2f}, on "
        "test patients hidden from the entrants; on the public training data many entries "
        f"scored higher in cross-validation. These figures come from one split of `{data}`, so "
        "they compare with the latter, not with the official test results."
    )


def _hourly_rows(metrics: dict) -> list[list[str]]:
    """model or rule | oversampling | threshold | validation utility | test utility | AUROC |
    AUPRC | alarm share; the selected model marked."""

    def scores(test: dict) -> list[str]:
        return [
            format_estimate(test["utility"]),
            format_estimate(test["auroc"]) if test.get("auroc") else "n/a (no ranking)",
            format_estimate(test["auprc"]) if test.get("auprc") else "n/a (no ranking)",
            f"{test['alarm_share']:.1%}",
        ]

    best = metrics["best"]
    rows = []
    for c in metrics["candidates"]:
        selected = (c["model"], c["oversample"]) == (best["model"], best["oversample"])
        name = MODEL_LABELS[c["model"]] + (" **(selected)**" if selected else "")
        rows.append(
            [name, c["oversample"], f"{c['threshold']:.3f}", f"{c['validation_utility']:.3f}"]
            + scores(c["test"])
        )
    for name, rule in metrics["rules"].items():
        tuned = rule["validation_utility"]
        criteria = f">= {RULE_ALARM_CRITERIA} criteria" if name in RULES else "-"
        rows.append(
            [rule["label"], "-", criteria, "-" if tuned is None else f"{tuned:.3f}"]
            + scores(rule["test"])
        )
    return rows


def _hourly_label(model: str, oversample: str) -> str:
    return f"{MODEL_LABELS[model]} " + (
        "without oversampling" if oversample == "none" else f"with {oversample.upper()}"
    )


def _hourly_selection_text(metrics: dict) -> str:
    """How the model and its threshold were chosen; a warning when another scores higher on
    test."""
    best, rules = metrics["best"], metrics["rules"]
    chosen = _hourly_label(best["model"], best["oversample"])
    text = (
        f"Chosen on the validation patients by utility: **{chosen}** (validation utility "
        f"{best['validation_utility']:.3f}). It "
        f"alarms when its probability reaches **{best['threshold']:.3f}**, the threshold that "
        "maximises its validation utility (every model's threshold was chosen the same way). "
        f"qSOFA and SIRS alarm when at least {RULE_ALARM_CRITERIA} of their criteria are met, "
        "nothing tuned; the "
        f"better of them on validation, **{rules[metrics['best_rule']]['label']}**, is the rule "
        "each model is compared with below."
    )
    top = max(metrics["candidates"], key=lambda c: c["test"]["utility"]["value"])
    if (top["model"], top["oversample"]) != (best["model"], best["oversample"]):
        text += (
            f" On the test patients {_hourly_label(top['model'], top['oversample'])} scores a "
            f"higher utility ({top['test']['utility']['value']:.3f}); picking by the test score "
            "would overstate it, so the choice stays with validation."
        )
    return text


def _model_vs_rule(metrics: dict) -> list:
    """Each model minus the best rule, paired, and the verdict for the selected model."""
    rule = metrics["rules"][metrics["best_rule"]]["label"]
    rows = [
        [
            MODEL_LABELS[e["model"]],
            e["oversample"],
            format_interval(e["difference"], 3, signed=True),
            e["verdict"],
        ]
        for e in metrics["model_vs_best_rule"]
    ]
    best = metrics["best"]
    selected = next(
        e
        for e in metrics["model_vs_best_rule"]
        if (e["model"], e["oversample"]) == (best["model"], best["oversample"])
    )
    words = {"better": "**better** than", "worse": "**worse** than"}
    verdict = words.get(selected["verdict"], "**not detectably different** from")
    return [
        Table(
            ["model", "oversampling", "utility difference", "verdict"],
            rows,
            f"Model minus {rule} (test utility, paired on the same resampled patients, 95% CIs)",
        ),
        Paragraph(
            f"The selected model is {verdict} the best clinical rule on the test patients "
            f"(utility {format_interval(selected['difference'], 3, signed=True)})."
        ),
    ]


def _hourly_oversampling(effects: list[dict]) -> list:
    """ "Does oversampling help utility?": each model with minus without, paired."""
    if not effects:
        return [
            Paragraph(
                "**Does oversampling help utility?** Not asked in this run: only models without "
                "oversampling were fitted (`hourly: {classify: {oversample: [none, smote]}}` "
                "compares SMOTE)."
            )
        ]
    rows = [
        [
            MODEL_LABELS[e["model"]],
            e["oversample"],
            format_interval(e["difference_vs_none"], 3, signed=True),
            HOURLY_VERDICTS.get(e["verdict"], e["verdict"]),
        ]
        for e in effects
    ]
    answers = "; ".join(_oversampling_answer(e) for e in effects)
    return [
        Paragraph(
            f"**Does oversampling help utility?** {_capitalised(answers)} (the septic training "
            "hours oversampled inside each fit only; validation and test hours never are)."
        ),
        Table(
            ["model", "oversampling", "utility with minus without", "does it help?"],
            rows,
            "Does oversampling help utility? Test utility with oversampling minus without, same "
            "model (paired on the same resampled patients, 95% CIs; an interval containing 0 "
            "means no detectable difference)",
        ),
    ]


def _oversampling_answer(effect: dict) -> str:
    """`SMOTE **helps** XGBoost`, `... **hurts** ...` or `... makes no detectable difference to
    ...`, from the verdict of its paired interval."""
    mode, model = effect["oversample"].upper(), MODEL_LABELS[effect["model"]]
    if effect["verdict"] in HOURLY_VERDICTS:
        return f"{mode} {HOURLY_VERDICTS[effect['verdict']]} {model}"
    if effect["verdict"] == "undetermined":
        return f"for {model}, {mode}'s effect is undetermined"
    return f"{mode} makes no detectable difference to {model}"


def _timeline(out: Path, timeline: dict) -> list:
    """The timeline figure and a row per patient: onset, first alarm, the utility earned."""
    figure = out / HOURLY / timeline["figure"]
    patients = timeline["patients"]
    septic = sum(p["septic"] for p in patients)
    model = _hourly_label(timeline["model"], timeline["oversample"])
    blocks: list = []
    if figure.is_file():
        blocks.append(
            Figure(
                figure,
                f"Hour by hour, the selected model ({model}) on {septic} septic and "
                f"{len(patients) - septic} non-septic test patients drawn with the study's "
                "seed: its predicted "
                f"probability, the threshold chosen on validation ({timeline['threshold']:.3f}, "
                "dashed) and its alarms (red). For a septic patient: clinical onset (first "
                f"SepsisLabel = 1 hour {-DT_OPTIMAL_H:+d} h, black), the best alarm hour "
                f"({DT_OPTIMAL_H:+d} h, dotted) and the hours in which an alarm earns utility "
                f"({DT_EARLY_H:+d} h to {DT_LATE_H:+d} h, shaded)",
            )
        )
    rows = []
    for p in patients:
        onset, first = p["onset_hour"], p["first_alarm_hour"]
        if first is None:
            alarm = "none"
        elif onset is None:
            alarm = f"hour {first}"
        else:
            alarm = f"hour {first} ({first - onset:+d} h from onset)"
        u = p["utility"]
        rows.append(
            [
                f"`{p['patient']}`",
                "yes" if p["septic"] else "no",
                f"{p['hours']}",
                "-" if onset is None else f"hour {onset}",
                alarm,
                f"{p['alarm_hours']}",
                f"{u['observed']:+.2f} (best {u['best']:+.2f}, never alarming "
                f"{u['inaction']:+.2f})",
            ]
        )
    blocks.append(
        Table(
            [
                "patient",
                "septic",
                "hours",
                "clinical onset",
                "first alarm",
                "alarm hours",
                "utility of its alarms",
            ],
            rows,
            f"The timeline's patients (`{HOURLY}/{timeline['table']}` holds every hour)",
        )  # fmt: skip
    )
    return blocks


OPE_NAMES = (
    "IS and PDIS: importance sampling of whole stays and per decision; WIS and WPDIS: their "
    "weighted (self-normalised) versions; FQE: fitted Q evaluation; DR and WDR: doubly robust "
    "(importance sampling corrected by FQE's Q-hat), plain and weighted."
)


def _offline(results: dict) -> Section:
    """The offline section: what was logged, the policy learned from it, every off-policy
    estimate of its value beside the simulated truth, and what that says."""
    logs, policy, ope, truth = results["logs"], results["policy"], results["ope"], results["truth"]
    covers, split = results["covers"], logs["split"]
    episodes = truth[offline_section.LOGS_PATIENTS]["episodes"]
    algo = policy["algo"]
    blocks: list = [
        Paragraph(
            f"**What was logged.** {logs['stays']:,} stays ({logs['steps']:,} decisions) of the "
            "**clinicians** on the training patients of the environment cohort, simulated in "
            f"SepsisEnv: the clinician protocol, except that {logs['noise']:.0%} of decisions are "
            "a uniformly random action, so every action has a known probability of at least "
            f"{logs['noise'] / len(ACTION_NAMES):.2%} in every state (the protocol alone is "
            "deterministic, and importance sampling could value no other policy from its logs). "
            f"The stays were split {split['train']:,} train / {split['val']:,} validation / "
            f"{split['test']:,} test (folder `offline/{logs['folder']}/`)."
        ),
        Paragraph(
            f"**The learned policy.** {_capitalised(ALGORITHM_NAMES.get(algo, algo))} trained "
            "offline on the "
            f"train stays only: {policy['iterations']} iterations, {policy['updates']:,} updates "
            f"in {policy['elapsed_s']:.0f} s, nothing acting in the simulator. The validation "
            f"stays chose the checkpoint (iteration {policy['best_iteration']}; its greedy "
            f"action is the logged one in {policy['best_val_agreement']:.0%} of validation "
            f"decisions): `offline/{policy['checkpoint']}`. Off-policy evaluation sees only the "
            f"{ope['n_stays']:,} test stays, which training never read."
        ),
        Table(
            ["estimator", "estimate", "95% interval", "covers truth?", "ESS"],
            _ope_rows(ope, covers),
            f"Off-policy estimates of the learned policy's value (mean discounted return, gamma "
            f"{ope['gamma']:g}) from the test stays alone ({ope['bootstrap']:,} bootstrap "
            f"resamples over stays; FQE's Q-hat: an {ope['fqe'].upper()}, held fixed across "
            "resamples); the last row is the logged stays' own return, judged against the "
            "clinicians' truth",
        ),
        Paragraph(
            OPE_NAMES + " **Covers truth?**: the interval holds the simulated value below. "
            "**ESS**: the effective sample size of the importance weights, in stays."
        ),
        Table(
            ["policy", "on the logs' patients", "on the test patients"],
            [
                [_offline_policy_name(name, algo)]
                + [
                    format_interval(_triple(truth[where]["values"][name]), 2)
                    for where in (offline_section.LOGS_PATIENTS, offline_section.TEST_PATIENTS)
                ]
                for name in truth[offline_section.LOGS_PATIENTS]["values"]
            ],
            f"Simulated truth: mean discounted return of {episodes:,} episodes per policy (95% "
            "CIs; the same episodes for every policy), on the patients the logs come from (new "
            "episodes: the value OPE estimates, which the intervals above are judged against) and "
            "on the test patients (the evaluation stage's episodes)",
        ),
        Paragraph(_offline_reading(results)),
    ]
    if ope["warnings"]:
        blocks.append(Bullets([f"OPE warning: {warning}" for warning in ope["warnings"]]))
    return Section("Offline RL and off-policy evaluation", blocks)


def _count(n: int, noun: str) -> str:
    """`1 interval`, `2 intervals`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _triple(value: dict) -> tuple[float, float, float]:
    """(value, low, high) of a `{value, ci_low, ci_high}` mapping, NaN where missing."""
    return tuple(
        math.nan if value[key] is None else value[key] for key in ("value", "ci_low", "ci_high")
    )


def _offline_policy_name(name: str, algo: str) -> str:
    if name == offline_section.LEARNED:
        return f"Learned offline ({algo.upper()}, greedy)"
    if name == offline_section.BEHAVIOUR:
        return "Clinicians (the logged behaviour)"
    return POLICY_NAMES.get(name, name)


def _ope_rows(ope: dict, covers: dict) -> list[list[str]]:
    """estimator | estimate | interval | covers the truth? | ESS, and the logged return last."""
    from training.rl.offline.ope import IMPORTANCE_WEIGHTED, LOGGED

    def row(name: str, label: str, estimate: dict) -> list[str]:
        value, low, high = _triple(estimate)
        interval = f"[{low:.2f}, {high:.2f}]" if math.isfinite(low) else "n/a"
        covered = {True: "yes", False: "**no**", None: "n/a"}[covers.get(name)]
        weighted = name in IMPORTANCE_WEIGHTED and ope["ess"] is not None
        ess = f"{ope['ess']:.0f} of {ope['n_stays']:,}" if weighted else "-"
        shown = f"{value:.2f}" if math.isfinite(value) else "n/a"
        return [label, shown, interval, covered, ess]

    rows = [row(name, name, estimate) for name, estimate in ope["estimates"].items()]
    return rows + [row(LOGGED, "logged return (clinicians)", ope["logged_return"])]


def _offline_reading(results: dict) -> str:
    """Which intervals hold the truth, what that says of OPE at this size, and the learned
    policy against the protocol in simulation on the test patients."""
    ope, covers = results["ope"], results["covers"]
    on_logs = results["truth"][offline_section.LOGS_PATIENTS]
    on_test = results["truth"][offline_section.TEST_PATIENTS]
    learned = on_logs["values"][offline_section.LEARNED]["value"]
    estimators = list(ope["estimates"])
    held = [name for name in estimators if covers.get(name)]
    text = (
        f"**Reading.** {len(held)} of {len(estimators)} estimators' intervals hold the simulated "
        f"value {learned:.2f}" + (f" ({', '.join(held)})" if held else "") + ". "
    )
    ess = ope["ess"]
    size = f"{ope['n_stays']:,} test stays" + (
        f" and an effective sample size of {ess:.0f}" if ess is not None else ""
    )
    values = [e["value"] for e in ope["estimates"].values() if e["value"] is not None]
    if len(held) < len(estimators):
        text += (
            f"With {size}, off-policy evaluation on SepsisEnv is not reliable at this size: "
            f"the estimates run from {min(values):.2f} to {max(values):.2f}, the truth lies "
            f"outside {_count(len(estimators) - len(held), 'interval')}, and without a "
            "simulator nobody could tell which estimate to believe. "
        )
    else:
        text += (
            f"With {size} one log can cover by luck; `benchmarks/bench_ope.py` measures how "
            "often each interval covers over many logs and policies. "
        )
    difference = _triple(on_test["learned_minus_protocol"])
    verdict = {
        "better": "**better** than",
        "worse": "**worse** than",
        "no detectable difference": "**not detectably different** from",
    }[_direction(difference)]
    return text + (
        f"On the test patients the learned policy is {verdict} the clinician protocol "
        f"(paired difference in discounted return {format_interval(difference, 2, signed=True)})."
    )


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested options as (dotted key, value) rows."""
    if isinstance(value, dict) and value:
        rows = []
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list | tuple):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, "(empty)" if value == {} else str(value))]


def _settings(out: Path, options: dict, data: Path | None) -> Section:
    import os
    from datetime import UTC, datetime

    versions = []
    for package in ("sepsis-rl", *VERSIONED_PACKAGES):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    from sepsis_rl.common.provenance import short_commit, source_commit

    commit = short_commit(source_commit())
    stages = []
    for name in STAGE_NAMES:
        record = _load_json(out / name / "stage.json")
        if record:
            seconds = record.get("seconds")
            stages.append(
                [
                    f"`{name}/`",
                    "n/a"
                    if seconds is None
                    else (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"),
                    record.get("finished_utc", "n/a"),
                    record["key"],
                ]
            )
    blocks: list = [
        Bullets(
            [
                f"Input: {data or 'synthetic default'}; seed {options['seed']}.",
                f"sepsis-rl commit {commit or 'unknown (not a git checkout)'}; report written "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs.",
                f"Python {platform.python_version()}; " + ", ".join(versions) + ".",
            ]
        ),
    ]
    if stages:
        blocks.append(
            Table(
                ["stage (folder beside this report)", "wall time", "finished (UTC)", "input key"],
                stages,
                "Stages (a rerun reuses a stage whose input key is unchanged)",
            )
        )
    blocks.append(
        Table(
            [f"study option (`{OPTIONS_FILE}`)", "value"],
            [[f"`{k}`", v] for k, v in _flatten(options)],
            "Study options (anything not listed takes the default of its stage)",
        )
    )
    metrics = _load_json(out / CLASSIFY / "metrics.json")
    if metrics and "config" in metrics:
        blocks.append(
            Table(
                ["classifier setting (`classify/metrics.json`)", "value"],
                [[f"`{k}`", v] for k, v in _flatten(metrics["config"])],
                "Effective classifier settings",
            )
        )
    hourly = _load_json(out / HOURLY / "metrics.json")
    if hourly and "config" in hourly:
        blocks.append(
            Table(
                [f"hourly setting (`{HOURLY}/metrics.json`)", "value"],
                [[f"`{k}`", v] for k, v in _flatten(hourly["config"])],
                "Effective settings of the hourly task",
            )
        )
    config = out / RL / "config.yaml"
    if config.is_file():
        rl = yaml.safe_load(config.read_text()) or {}
        blocks.append(
            Table(
                ["RL setting (`rl/config.yaml`)", "value"],
                [[f"`{k}`", v] for k, v in _flatten(rl)],
                "Effective RL configuration",
            )
        )
    return Section("Exact settings and versions", blocks)
