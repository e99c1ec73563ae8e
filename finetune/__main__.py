"""``python -m finetune dataset=… backbone=… schedule=…``: the Hydra command line."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import FinetuneError
from .resources import conf_dir


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> dict | None:
    """Compose the config once, then train; user errors print one clear message and exit 2."""
    from .run import train

    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints its own lines once
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except FinetuneError as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
