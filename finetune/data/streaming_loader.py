"""The data module of ``dataset=streaming``: training streams through LitData's StreamingDataLoader, whose
position Lightning keeps in the checkpoint; validation and test read the pack by index, in order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import DataLoader, get_worker_info

from finetune.data.datamodule import ClassificationDataModule
from finetune.data.streaming import StreamSpec, allow_plain_http, decode
from finetune.data.transforms import seed_transform
from finetune.run.errors import DatasetError

# Debug: a folder where every process reading a training stream appends "<rank> <epoch> <sample index>" per sample
# (to see which samples each rank and worker read; tests/e2e/test_multinode.py does).
RECORD = "FINETUNE_STREAM_RECORD"


class AugmentedStream(StreamingDataset):
    """A packed split streamed in LitData's per-epoch order, each sample decoded by the preprocessing contract
    and augmented from (seed, epoch, index): the same in any worker or resumed run.

    Persistent loader workers keep the copy of the dataset they started with. LitData's copy in a worker
    counts the epochs it finishes (and clears a restored position at their end), but an epoch cut short
    (``trainer.limit_train_batches``, a stop) is not counted there, so the worker would replay it: the
    epoch the loader sets on the main process reaches the workers through shared memory instead, and a
    worker drops a restored position once the loader has moved past its epoch."""

    def __init__(
        self,
        stream: StreamSpec,
        channels: int,
        transform: Callable[..., dict],
        seed: int,
        window: tuple[float, float] | None = None,
    ) -> None:
        allow_plain_http()
        super().__init__(stream.uri, shuffle=True, seed=seed, drop_last=True, **stream.options())
        self.channels, self.augment, self.augment_seed, self.window = channels, transform, seed, window
        self.record = os.environ.get(RECORD)
        self.shared_epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, current_epoch: int) -> None:
        super().set_epoch(current_epoch)
        self.shared_epoch[0] = current_epoch

    def __iter__(self):
        if get_worker_info() is not None:  # a loader worker: the epoch is the main process's
            epoch = int(self.shared_epoch[0])
            if self._state_dict is not None and self._state_dict["current_epoch"] != epoch:
                self._state_dict = None  # a restored position, of an epoch already finished
            self.set_epoch(epoch)
        return super().__iter__()

    def __getitem__(self, index) -> Any:
        sample = super().__getitem__(index)
        i = int(getattr(index, "index", index))
        if self.record:
            with open(Path(self.record) / f"{os.getpid()}.txt", "a") as f:
                f.write(f"{self.distributed_env.global_rank} {self.current_epoch} {i}\n")
        draw = np.random.SeedSequence([self.augment_seed, self.current_epoch, i]).generate_state(1)[0]
        seed_transform(self.augment, int(draw))
        return self.transformed(sample)

    def transformed(self, sample: dict) -> Any:
        """The training sample of a packed one, through the augmentation (seeded for this sample)."""
        image = self.augment(image=decode(sample["image"], sample["suffix"], self.channels, self.window))["image"]
        return image, torch.as_tensor(sample["target"])


class EpochAwareLoader(StreamingDataLoader):
    """LitData's StreamingDataLoader whose epoch follows the trainer's.

    LitData counts epochs itself, from 1 in a new loader, and its position comes back only through
    ``load_state_dict``. Lightning keeps the loader's state in every checkpoint but restores it only when the
    checkpoint was written mid-epoch (``_FitLoop.restarting`` is false after a finished epoch), and ours are
    written at the end of an epoch: a resumed run's new loader would replay epoch 1's order. So each epoch
    starts at the trainer's epoch (``epoch()``, from 0), unless LitData is resuming a mid-epoch state.
    """

    def __init__(self, *args, epoch: Callable[[], int | None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = epoch

    def __iter__(self):
        epoch = self.epoch()  # at the first batch: Lightning creates the iterator before it restores a checkpoint
        if not self.restore and epoch is not None:
            self.current_epoch = epoch  # LitData's __iter__ adds one: its epochs count from 1
        yield from super().__iter__()

    @classmethod
    def for_training(cls, module: Any, dataset: Any, workers: int) -> EpochAwareLoader:
        """The training loader of ``module`` (a data module with ``batch_size``) over ``dataset``: full batches
        only (a last batch of one breaks BatchNorm), workers kept across epochs as the other kinds keep them, and
        the epoch of ``module``'s trainer (None outside one)."""
        return cls(
            dataset,
            batch_size=module.batch_size,
            num_workers=workers,
            drop_last=True,
            persistent_workers=workers > 0,
            epoch=lambda: module.trainer.current_epoch if module.trainer is not None else None,
        )


class StreamingDataModule(ClassificationDataModule):
    """ClassificationDataModule over a pack: the index gives classes and counts; training streams."""

    def __init__(self, dataset, augment, batch_size: int, num_workers: int, seed: int, imbalance: str = "none"):
        super().__init__(dataset, augment, batch_size, num_workers, seed, imbalance=imbalance)
        if self.imbalance == "sampler":
            raise DatasetError(
                "imbalance=sampler draws training images by index, which a stream (dataset=streaming) does not; "
                "use imbalance=weighted_loss (or auto)"
            )

    def _loader(self, split: str, shuffle: bool, transform: str | None = None, shard: bool = True) -> DataLoader:
        if not (split == "train" and shuffle):
            return super()._loader(split, shuffle, transform, shard)
        if not self._transforms:
            raise RuntimeError("call set_preprocessing(...) before asking for dataloaders")
        train = self.splits["train"]
        dataset = AugmentedStream(
            train.stream, self.info.image_channels, self._transforms["train"], self.seed, train.window
        )
        return EpochAwareLoader.for_training(self, dataset, self.num_workers)
