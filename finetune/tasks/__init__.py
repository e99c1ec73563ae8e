"""LightningModules: a fine-tune model plus loss, metrics and per-phase optimisation."""
