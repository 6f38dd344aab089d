"""`sepsis-rl run`: the whole study end to end, stage reuse, and reruns of changed stages."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sepsis_rl.cli import app
from training.study.report import HOURLY_TITLE

# A study smaller than --quick, so the suite stays fast; every stage still runs for real.
TINY = {
    "patients": 1200,
    "classifier_settings": {"ctgan_epochs": 2, "rf_trees": 30, "xgb_rounds": 30,
                            "svm_components": 50},
    "classify": {"oversample": ["none", "smote", "ctgan"], "n_boot": 200},
    "rl": {"episodes": None, "time_budget_s": 15, "evaluation_interval": 0,
           "num_env_runners": 1, "num_cpus_per_env_runner": 0.5},
    "evaluation_episodes": 300,
    "offline": {"stays": 500, "iterations": 2, "bootstrap": 100, "fqe_iterations": 30},
    "hourly": {"classify": {"oversample": ["none"], "n_boot": 100, "max_train_hours": 5000},
               "classifier_settings": {"xgb_rounds": 30}},
}  # fmt: skip

SECTIONS = (
    "What this report is, and is not",
    "Cohort",
    "What cleaning did",
    "Sepsis classifiers, with and without GAN oversampling",
    "GAN fidelity",
    HOURLY_TITLE,
    "RL training",
    "The learned policy against clinical baselines",
    "By age group",
    "Vitals under each policy, and treatment use",
    "Offline RL and off-policy evaluation",
    "Exact settings and versions",
)


def _run(out: Path, config: dict | None, tmp_path: Path, name: str = "study.yaml", *extra):
    """`sepsis-rl run --quick --out OUT [--config FILE] ...`: the Quickstart's main job."""
    args = ["run", "--quick", "--out", str(out), *extra]
    if config is not None:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _stages(output: str) -> str:
    """What `stages run: ...; reused: ...` says, on one line (the console wraps long lines)."""
    found = re.search(r"stages run: (.*?)\s*report: ", output, re.DOTALL)
    assert found, output
    return " ".join(found.group(1).split())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "out"
    output = _run(out, None, tmp)
    return out, output, tmp


ALL_REUSED = "none; reused: raw, prepared, classify, hourly, rl, evaluation, offline"
NUMBER_CI = r"-?\d+\.\d+%? \[-?\d+\.\d+, -?\d+\.\d+\]"
"""A number with its 95% interval, as the report writes it."""
SIGNED_CI = r"[-+]\d+\.\d\d \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]"
"""A paired difference of returns with its 95% interval."""
POINTS_CI = r"[-+]\d+\.\d pp \[[-+]\d+\.\d, [-+]\d+\.\d\]"
"""A paired difference of rates, in percentage points, with its 95% interval."""
VERDICT_WORD = "(better|worse|no detectable difference)"
VERDICT = rf"the learned policy is \*\*{VERDICT_WORD}\*\*"
BASELINE_NAMES = ("Random", "No treatment", "All treatments always")
CLINICIAN_NAME, HAND_RULE_NAME = "Clinician protocol", "Age-adaptive protocol (hand rule)"


def _table(section: str, caption: str) -> list[str]:
    """The data rows of the Markdown table under `caption` in `section`."""
    _, found, after = section.partition(f"*{caption} (paired, 95% CIs)*")
    assert found, caption
    lines = after.strip().split("\n\n")[0].splitlines()
    return lines[2:]


@pytest.mark.slow
def test_quick_report_holds_every_section_with_real_numbers(study):
    out, output, _ = study
    assert (
        _stages(output) == "raw, prepared, classify, hourly, rl, evaluation, offline; reused: none"
    )
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    sections = {}
    for title in SECTIONS:
        assert f"## {title}" in markdown
        assert title in html
    for chunk in markdown.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title] = body
    assert html.count("data:image/png;base64,") >= 7  # self-contained figures
    assert "src='classify/" not in html
    # Real numbers in every section, not placeholders.
    assert "--quick` demonstration run" in sections["What this report is, and is not"]
    assert "2,500 ICU stays" in sections["Cohort"]
    assert re.search(r"The classifiers use \d+ of \d+ measurements", sections["What cleaning did"])
    classifiers = sections["Sepsis classifiers, with and without GAN oversampling"]
    assert re.search(
        rf"Logistic regression(?: \(selected\)\*\*)? \| none \| {NUMBER_CI}", classifiers
    )
    assert "Does oversampling help?" in classifiers
    fidelity = sections["GAN fidelity"]
    assert re.search(r"Detectability \d\.\d\d \[\d\.\d\d, \d\.\d\d\]", fidelity)
    assert re.search(r"training episodes, [\d,]+ environment steps", sections["RL training"])
    policies = sections["The learned policy against clinical baselines"]
    assert re.search(rf"Clinician protocol \| {NUMBER_CI}", policies)
    for baseline in (*BASELINE_NAMES, CLINICIAN_NAME, HAND_RULE_NAME):
        assert re.search(rf"\| {re.escape(baseline)} \| {SIGNED_CI}", policies), baseline
    assert (
        f"The **{HAND_RULE_NAME.lower()}**, the best we know, is the clinician protocol" in policies
    )
    # The verdict, better / worse / no detectable difference, against both protocols.
    for against in (CLINICIAN_NAME.lower(), f"{HAND_RULE_NAME.lower()}, the best we know,"):
        assert re.search(rf"Against the {re.escape(against)} {VERDICT} on mean return", policies)
    ages = sections["By age group"]
    assert re.search(rf"Learned policy \(greedy\) \| {NUMBER_CI} \| {NUMBER_CI}", ages)
    for baseline in (CLINICIAN_NAME, HAND_RULE_NAME):
        rows = _table(ages, f"Learned policy minus {baseline.lower()}, by age group")
        assert [row.split(" | ")[0] for row in rows] == ["| overall", "| 18-40", "| 41-65", "| 66+"]
        for row in rows:
            assert re.search(rf"\| {SIGNED_CI} \| {VERDICT_WORD} \| {POINTS_CI} \| ", row), row
    assert re.search(
        r"\d+ h \[\d+, \d+\] \(\d+% of ICU time\)",
        sections["Vitals under each policy, and treatment use"],
    )
    _check_offline_section(out, sections["Offline RL and off-policy evaluation"])
    _check_hourly_section(out, sections[HOURLY_TITLE])
    settings = sections["Exact settings and versions"]
    assert re.search(r"ray 2\.60\.\d+", settings) and "| `evaluation/` |" in settings
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert evaluation["episodes"] == 2000
    assert set(evaluation["policies"]) == {"learned", "random", "no_treatment", "all_treatments",
                                           "protocol", "age_adaptive"}  # fmt: skip
    assert set(evaluation["learned_minus_baseline"]["age_adaptive"]) == {
        "overall", "18-40", "41-65", "66+"}  # fmt: skip


ESTIMATORS = ("IS", "PDIS", "WIS", "WPDIS", "FQE", "DR", "WDR")
ESTIMATE_ROW = (
    r"\| {name} \| -?\d+\.\d\d \| \[-?\d+\.\d\d, -?\d+\.\d\d\] \| (yes|\*\*no\*\*) \| {ess} \|"
)
"""A row of the offline section's table: estimator | estimate | interval | covers? | ESS."""


def _check_offline_section(out: Path, section: str) -> None:
    """The offline section: what was logged, the policy, every estimator with a finite estimate,
    interval and ESS beside the simulated truth, and the reading; results.json agrees."""
    assert re.search(r"\*\*What was logged\.\*\* 2,000 stays \([\d,]+ decisions\)", section)
    assert "1,400 train / 300 validation / 300 test" in section
    assert "Discrete CQL (conservative double DQN) trained offline" in section
    for name in ESTIMATORS:
        ess = "-" if name == "FQE" else r"\d+ of 300"
        assert re.search(ESTIMATE_ROW.format(name=name, ess=ess), section), name
    assert re.search(r"\| Learned offline \(CQL, greedy\) \| " + NUMBER_CI + r" \| " + NUMBER_CI,
                     section)  # fmt: skip
    assert re.search(r"\*\*Reading\.\*\* \d of 7 estimators' intervals hold", section)
    verdict = r"(better than|worse than|not detectably different from) the clinician protocol"
    assert re.search(rf"the learned policy is {verdict} \(paired", section.replace("*", ""))

    results = json.loads((out / "offline" / "results.json").read_text())
    assert results["logs"]["behaviour"] == "clinicians"
    assert results["logs"]["split"] == {"train": 1400, "val": 300, "test": 300}
    assert results["ope"]["n_stays"] == 300 and 1 <= results["ope"]["ess"] <= 300
    for estimate in results["ope"]["estimates"].values():
        values = [estimate["value"], estimate["ci_low"], estimate["ci_high"]]
        assert all(v is not None and math.isfinite(v) for v in values), estimate
        assert estimate["ci_low"] <= estimate["ci_high"]
    for where in ("logs_patients", "test_patients"):
        truth = results["truth"][where]
        assert truth["episodes"] == 2000
        for value in truth["values"].values():
            assert value["ci_low"] < value["value"] < value["ci_high"]
    assert results["truth"]["test_patients"]["patients"] == "test"
    assert set(results["covers"]) == {*ESTIMATORS, "logged"}
    table = (out / "offline" / "ope.csv").read_text().splitlines()
    assert table[0].startswith("estimator,estimate,ci_low,ci_high,ess,") and len(table) == 9
    assert (out / "offline" / "policy" / "checkpoints" / "best").is_dir()


HOURLY_RULES = ("qSOFA >= 2", "SIRS >= 2", "never alarm", "always alarm")


def _check_hourly_section(out: Path, section: str) -> None:
    """The hourly section: utility with its interval for every model and rule, AUROC/AUPRC with
    intervals, the validation threshold, model minus the best rule, the oversampling answer, the
    Challenge caveat and the timeline of 2 septic and 2 non-septic test patients; the files
    agree with it."""
    from training.classification.hourly import load_hourly
    from training.study.hourly import timeline_patient_ids

    assert "normalised utility" in section
    caveat = "cannot be compared with the Challenge's published results (best official test"
    assert f"{caveat} utility 0.36" in section
    # --quick: XGBoost and logistic regression, without oversampling and with SMOTE.
    for model in ("XGBoost", "Logistic regression"):
        for mode in ("none", "smote"):
            row = rf"\| {model}(?: \*\*\(selected\)\*\*)? \| {mode} \| \d\.\d{{3}} \| "
            assert re.search(row + rf"-?\d\.\d{{3}} \| {NUMBER_CI} \| {NUMBER_CI} \| {NUMBER_CI}",
                             section), (model, mode)  # fmt: skip
    for rule in HOURLY_RULES:
        assert re.search(rf"\| {re.escape(rule)}[^|]* \| - \| [^|]+ \| [^|]+ \| {NUMBER_CI} \|",
                         section), rule  # fmt: skip
    assert re.search(r"It alarms when its probability reaches \*\*\d\.\d{3}\*\*", section)
    assert "the threshold that maximises its validation utility" in section
    assert re.search(r"The selected model is \*\*(better|worse|not detectably different)\*\* "
                     r"(than|from) the best clinical rule", section)  # fmt: skip
    assert re.search(r"\*\*Does oversampling help utility\?\*\* SMOTE", section)
    assert re.search(r"\| XGBoost \| smote \| [-+]\d\.\d{3} \[[-+]\d\.\d{3}, [-+]\d\.\d{3}\] \|",
                     section)  # fmt: skip
    assert "![Hour by hour, the selected model" in section and "(hourly/timeline.png)" in section

    folder = out / "hourly"
    for name in ("metrics.json", "comparison.csv", "comparison.md", "section.json",
                 "timeline.csv", "timeline.png", "model/hourly_model.joblib"):  # fmt: skip
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    extra = json.loads((folder / "section.json").read_text())
    assert metrics["config"]["max_train_hours"] == 10_000
    assert metrics["data"]["training_hours_fitted"] == 10_000
    # Every model's hourly AUROC/AUPRC has its interval, from the utility's resamples.
    for candidate in metrics["candidates"]:
        for name in ("auroc", "auprc"):
            estimate = candidate["test"][name]
            assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
    # The timeline: 2 septic and 2 non-septic patients, all from the test split, by the seed.
    patients = extra["timeline"]["patients"]
    assert [p["septic"] for p in patients] == [True, True, False, False]
    split = {row["patient_id"]: row["split"] for row in _csv_rows(out / "prepared" / "split.csv")}
    assert all(split[p["patient"]] == "test" for p in patients)
    table = load_hourly(out / "prepared")
    assert [p["patient"] for p in patients] == timeline_patient_ids(table, 2, seed=0)
    for p in patients:
        if p["septic"]:
            assert p["onset_hour"] is not None and p["utility"]["best"] > p["utility"]["inaction"]
    hours = (folder / "timeline.csv").read_text().splitlines()
    assert hours[0] == "patient_id,hour,ICULOS,SepsisLabel,probability,alarm"
    assert len(hours) - 1 == sum(p["hours"] for p in patients)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_rerun_skips_finished_stages(study):
    out, _, tmp = study
    before = (out / "classify" / "metrics.json").stat().st_mtime_ns
    hourly_before = (out / "hourly" / "metrics.json").stat().st_mtime_ns
    output = _run(out, None, tmp)
    assert _stages(output) == ALL_REUSED
    assert (out / "classify" / "metrics.json").stat().st_mtime_ns == before
    assert (out / "hourly" / "metrics.json").stat().st_mtime_ns == hourly_before

    # Shared storage (s3://, gs://, ...): file:// stands in for it here.
    shared = tmp / "shared"
    _run(out, None, tmp, "study.yaml", "--upload", shared.as_uri())
    assert (shared / "report.html").read_bytes() == (out / "report.html").read_bytes()
    assert (shared / "rl" / "checkpoints" / "last" / "rllib_checkpoint.json").exists()

    # A study copied elsewhere (e.g. back from shared storage) is still reused, trained policy
    # included: no stage is keyed on where the study folder is.
    moved = tmp / "moved"
    shutil.copytree(out, moved)
    output = _run(moved, None, tmp)
    assert _stages(output) == ALL_REUSED


@pytest.mark.slow
def test_changed_classifier_settings_rerun_only_the_classifiers(study):
    out, _, tmp = study
    rl_before = (out / "rl" / "stage.json").read_text()
    # The offline section turned off too: it neither runs nor shows, and keeps its folder.
    config = {"classify": {"n_boot": 200}, "offline": {"enabled": False}}
    output = _run(out, config, tmp, "classify.yaml")
    # The hourly section reads the prepared folder only: reused.
    assert _stages(output) == "classify; reused: raw, prepared, hourly, rl, evaluation"
    assert (out / "rl" / "stage.json").read_text() == rl_before
    assert "Offline RL" not in (out / "report.md").read_text()
    assert (out / "offline" / "results.json").is_file()
    metrics = json.loads((out / "classify" / "metrics.json").read_text())
    assert metrics["config"]["n_boot"] == 200


RL_CHANGED = {
    "classify": {"n_boot": 200},  # the classifier setting of the test above stays
    "rl": {"lr": 1e-3, "time_budget_s": 10},
    "evaluation_episodes": 500,  # evaluation reruns after any RL change; keep it short
}
"""The study's options from the RL test on: only the RL change differs from the test above."""


@pytest.mark.slow
def test_changed_rl_settings_rerun_only_rl_and_evaluation(study):
    out, _, tmp = study
    prepared_before = (out / "prepared" / "features.parquet").stat().st_mtime_ns
    output = _run(out, RL_CHANGED, tmp, "changed.yaml")
    # The offline section, on again, is reused: it reads the cohort, not the RL stage.
    assert _stages(output) == "rl, evaluation; reused: raw, prepared, classify, hourly, offline"
    assert "## Offline RL and off-policy evaluation" in (out / "report.md").read_text()
    assert (out / "prepared" / "features.parquet").stat().st_mtime_ns == prepared_before
    assert yaml.safe_load((out / "rl" / "config.yaml").read_text())["lr"] == 1e-3


@pytest.mark.slow
def test_changed_hourly_options_rerun_only_the_hourly_stage(study):
    out, _, tmp = study
    # After the RL test: its options stay, and only the hourly section changes.
    output = _run(out, {**RL_CHANGED, "hourly": {"timeline_patients": 1}}, tmp, "hourly.yaml")
    assert _stages(output) == "hourly; reused: raw, prepared, classify, rl, evaluation, offline"
    extra = json.loads((out / "hourly" / "section.json").read_text())
    assert [p["septic"] for p in extra["timeline"]["patients"]] == [True, False]
    assert f"## {HOURLY_TITLE}" in (out / "report.md").read_text()

    # Turned off, the section neither runs nor shows, and its folder is kept for later.
    config = {**RL_CHANGED, "hourly": {"timeline_patients": 1, "enabled": False}}
    output = _run(out, config, tmp, "hourly_off.yaml")
    assert _stages(output) == "none; reused: raw, prepared, classify, rl, evaluation, offline"
    assert "Hourly early warning" not in (out / "report.md").read_text()
    assert (out / "hourly" / "section.json").is_file()


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("patiens: 10\n")
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "o"), "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown option(s) ['patiens']" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("offline", "messages"),
    [
        (
            {"stays": 5, "algo": "dqn"},
            ["offline.stays = 5: expected an integer >= 20",
             "offline.algo = 'dqn': expected one of 'bc', 'marwil', 'cql'"],
        ),
        ({"rl": {"cql": {"cql_alpha": -1}}}, ["offline.rl.cql.cql_alpha = -1: expected a number"]),
    ],
)  # fmt: skip
def test_bad_offline_options_are_reported_before_any_stage(tmp_path, offline, messages):
    _refused_before_any_stage(tmp_path, {"offline": offline}, messages)


def _refused_before_any_stage(tmp_path: Path, config: dict, messages: list[str]) -> None:
    """`sepsis-rl run --config` with `config` exits 2 naming every message, before any stage
    wrote anything."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "o"), "--config", str(path)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # the console wraps long lines
    for message in messages:
        assert message in output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("hourly", "messages"),
    [
        (
            {"classify": {"models": ["svm"], "n_boot": 5}},
            ["hourly.classify.models[0] = 'svm': expected one of 'xgboost', 'logreg'",
             "hourly.classify.n_boot = 5: expected an integer >= 100"],
        ),
        ({"classifier_settings": {"xgb_rounds": 0}},
         ["hourly.classifier_settings.xgb_rounds = 0: expected an integer > 0"]),
        ({"classify": {"settings": {"xgb_rounds": 10}}},
         ["hourly.classify.settings = {'xgb_rounds': 10}: set model options in "
          "hourly.classifier_settings"]),
        ({"timeline_patients": 0, "enabeld": False},
         ["hourly: unknown option(s) ['enabeld']; valid: enabled, classify",
          "hourly.timeline_patients = 0: expected an integer >= 1"]),
    ],
)  # fmt: skip
def test_bad_hourly_options_are_reported_before_any_stage(tmp_path, hourly, messages):
    _refused_before_any_stage(tmp_path, {"hourly": hourly}, messages)


@pytest.mark.slow
def test_ctrl_c_stops_ray_cleanly_and_the_rerun_continues(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    out = tmp_path / "out"
    config = {**TINY, "rl": {**TINY["rl"], "time_budget_s": None, "env_steps": 30000,
                             "checkpoint_every": 1}}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = [sys.executable, "-m", "sepsis_rl.cli", "run", "--out", str(out), "--config",
               str(path)]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    checkpoint = out / "rl" / "checkpoints" / "last" / "rllib_checkpoint.json"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None and not checkpoint.exists():
        time.sleep(0.5)
    assert checkpoint.exists(), "the RL stage never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, output
    assert "interrupted" in output

    assert not [p for p in out.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")]
    assert not (out / "rl" / "stage.json").exists()
    assert (out / "classify" / "stage.json").exists()
    time.sleep(2)
    leftovers = _processes_mentioning(str(ray_tmp))
    assert not leftovers, f"Ray processes still running after Ctrl-C: {leftovers}"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming the interrupted run" in rerun.stdout + rerun.stderr
    assert "reused: raw, prepared, classify" in rerun.stdout + rerun.stderr
    assert (out / "rl" / "stage.json").exists() and (out / "report.html").exists()


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found
