"""The Hydra config directory (``finetune.resources.conf_dir()`` imports this package to find it).

Importing it registers the config's schema (``finetune.run.schema``) in Hydra's ConfigStore, so whatever
composes this directory composes it against the schema."""

import finetune.run.schema  # noqa: F401  (registers the schema nodes the YAML files name)
