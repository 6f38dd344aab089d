"""ICU data in the PhysioNet 2019 format: reading and validating it, cleaning without leakage,
splitting by patient, features, the environment cohort, synthetic cohorts and oversamplers.
A library: it knows files and tables, nothing of RL, and has no command line."""
