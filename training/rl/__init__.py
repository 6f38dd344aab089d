"""The RLlib agent: options, environment factory, result keys, callbacks, the run folder and its
checkpoints, the greedy policy, evaluation during training (validation, ICU-Sepsis), the
algorithm config (`dqn`), replay, the training loop, evaluation on test patients, figures and
`recommend`."""
