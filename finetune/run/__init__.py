"""One train() for every task: config checks, phases, run directory, feature cache, distributed
launch, checkpoints.

This file holds only the names the config checks need (no torch import); the builders in the
submodules are keyed by the same names.
"""

OPTIMIZERS = ("adamw", "sgd")  # finetune.run.optim
SCHEDULERS = ("constant", "cosine", "warmup_cosine", "step", "onecycle", "plateau")
CACHE_CHOICES = ("auto", "true", "false")  # data.cache_features (finetune.training.features)
