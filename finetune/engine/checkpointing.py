"""Lightning checkpoint I/O that never leaves half a file behind."""
from __future__ import annotations

from lightning.pytorch.plugins.io import TorchCheckpointIO

from finetune.artifacts import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file and renamed: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
