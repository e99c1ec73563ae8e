"""The images of a dataset's splits as ``finetune inspect`` sees them: each image once per split it is in,
decoded exactly as training reads it (``Samples.image`` / ``read_image``), with its label and file.

A classification split is a ``Samples`` (files, an in-memory array or a pack); a segmentation split is a
list of image/mask ``Pair``s (no per-image label). A test split that is the val split (no test split
given) is seen once, as val.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.files import DICOM_EXTENSIONS
from finetune.data.images import read_image
from finetune.data.masks import Pair
from finetune.data.sources import Samples
from finetune.run.errors import FinetuneError

Split = Samples | Sequence[Pair]  # a classification split, or a segmentation split's image/mask pairs


@dataclass(frozen=True)
class Item:
    """One image of one split: ``index`` its position in the split (the order of the split's loaders),
    ``path`` its file (None: an array or a packed sample), ``target`` its class index, its classes
    (multi-label, a tuple) or None (a segmentation pair)."""

    split: str
    index: int
    name: str
    path: Path | None
    target: int | tuple[int, ...] | None


@dataclass(frozen=True)
class Facts:
    """What one decoded image is: width, height, channels as decoded, the file's mode (PIL's, or "array")."""

    width: int
    height: int
    channels: int
    mode: str


def inspectable(part: object) -> bool:
    """Whether ``finetune inspect`` reads a split of this form: the image kinds' samples or segmentation pairs."""
    return isinstance(part, Samples) or (isinstance(part, Sequence) and all(isinstance(p, Pair) for p in part))


def distinct_splits(splits: Mapping[str, Split]) -> dict[str, Split]:
    """``splits`` in order, each split object once: a test split that is the val split (no test split given)
    is left out."""
    distinct: dict[str, Split] = {}
    for split, part in splits.items():
        if not any(part is seen for seen in distinct.values()):
            distinct[split] = part
    return distinct


class DatasetView:
    """Every image of ``splits`` (train, val, test: a repeated split once) with random access to its pixels."""

    def __init__(self, splits: Mapping[str, Split], kind: str) -> None:
        self.items: list[Item] = []
        self._parts: dict[str, Split] = {}
        for split, part in distinct_splits(splits).items():
            if not inspectable(part):
                raise FinetuneError(
                    f"finetune inspect reads splits of image samples or image/mask pairs; dataset.kind={kind} "
                    f"gives its {split} split as {type(part).__name__}: inspect another kind"
                )
            self._parts[split] = part
            self.items += [_item(split, i, part) for i in range(len(part))]

    @property
    def splits(self) -> list[str]:
        """The splits seen, in order (test left out when it is val)."""
        return list(self._parts)

    def read(self, k: int) -> np.ndarray:
        """Item ``k``'s pixels as training decodes them (HWC uint8, its own channels: 1 or 3)."""
        item = self.items[k]
        part = self._parts[item.split]
        if isinstance(part, Samples):
            return part.image(item.index, 1)
        return read_image(part[item.index].image, 1)

    def facts(self, k: int, image: np.ndarray) -> Facts:
        """Size, channels and mode of item ``k`` whose pixels are ``image``."""
        path = self.items[k].path
        if path is None:
            mode = "array"
        elif path.suffix.lower() in DICOM_EXTENSIONS:
            mode = "DICOM"
        else:
            with Image.open(path) as picture:
                mode = picture.mode
        return Facts(int(image.shape[1]), int(image.shape[0]), int(image.shape[2]), mode)


def _item(split: str, i: int, part: Split) -> Item:
    if not isinstance(part, Samples):
        path = part[i].image
        return Item(split, i, str(path), path, None)
    source = part.images
    path = None if isinstance(source, np.ndarray) else Path(source[i])
    target = part.targets[i]
    label = tuple(int(c) for c in np.flatnonzero(target)) if target.ndim else int(target)
    return Item(split, i, str(path) if path else f"{split}#{i}", path, label)
