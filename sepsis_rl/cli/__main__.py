"""`python -m sepsis_rl.cli ...` runs the `sepsis-rl` command."""

from sepsis_rl.cli import main

main()
