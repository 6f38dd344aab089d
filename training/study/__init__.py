"""`sepsis-rl run`: the study's options, its stages and their layout, the pipeline that runs or
reuses them, and the report built from their outputs."""
