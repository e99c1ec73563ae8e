"""Lightning checkpoint I/O that never leaves half a file behind, nor a byte outside the run directory."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from finetune.run.artifacts import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file beside their place and renamed: a crash never leaves half a
    file, and what a SIGKILL leaves is a ``.<name>.<random>.tmp`` of the run directory, which the next
    command that locks it removes. (``TorchCheckpointIO`` stages a local file in the system temp folder
    through fsspec's transaction, where a kill leaves it for good.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
