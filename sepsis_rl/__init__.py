"""sepsis-rl: the command line (`sepsis_rl.cli`, the top layer) and the domain-free helpers every
layer uses (`sepsis_rl.common`, the bottom layer). See docs/ARCHITECTURE.md."""
