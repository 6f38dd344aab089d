"""Learning from the prepared data: sepsis classifiers (`training.classification`), the RLlib
agent (`training.rl`), and the study that runs every stage and writes the report
(`training.study`). See docs/ARCHITECTURE.md for what each may import."""
