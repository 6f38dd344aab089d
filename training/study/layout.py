"""Where a study keeps its parts: the stage folders in the order they run, and its own files.

raw/         synthetic cohort (.psv), only when no --data is given
prepared/    data prepare: canonical table, split, cleaning, features, environment cohort
classify/    classifiers with and without oversampling, on real held-out patients
hourly/      hourly early warning scored by the PhysioNet/CinC 2019 utility, beside qSOFA and
             SIRS (`training.study.hourly`)
rl/          Dueling Double DQN on SepsisEnv (training patients of the environment cohort)
evaluation/  greedy policy against the clinical baselines on test patients
offline/     a policy learned offline from clinician logs; off-policy estimates beside its
             simulated truth (`training.study.offline`)
report.html, report.md, study_options.json
"""

from __future__ import annotations

RAW = "raw"
PREPARED = "prepared"
CLASSIFY = "classify"
HOURLY = "hourly"
RL = "rl"
EVALUATION = "evaluation"
OFFLINE = "offline"
STAGE_NAMES = (RAW, PREPARED, CLASSIFY, HOURLY, RL, EVALUATION, OFFLINE)
"""The stage folders, in the order the study runs them."""

RAW_PSV = "psv"
"""Folder of the synthetic .psv files inside `raw/`."""
RL_STARTED = "started.yaml"
"""Inside `rl/`: the key of the training run in progress (a rerun resumes it only if it matches)."""
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
REPORT_FILES = (REPORT_HTML, REPORT_MD)
OPTIONS_FILE = "study_options.json"
"""The effective options of the study, written with the report."""
