"""One train() for every task: config checks, phases, run directory, feature cache, distributed launch, checkpoints."""
