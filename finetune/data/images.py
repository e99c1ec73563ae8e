"""Decoding and checking image files (and DICOM files, through finetune.data.dicom).

Checks open files read-only and never write to the user's folders.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from finetune.errors import DatasetError, listing

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
GRAY_MODES = WIDE_GRAY_MODES | {"1", "L", "LA", "La", "F"}


def read_image(path: Path, channels: int, window: tuple[float, float] | None = None) -> np.ndarray:
    """Decode `path` to HWC uint8 with `channels` (1 or 3) channels, EXIF orientation applied.

    Grayscale modes stay 1 channel (16/32-bit ones scaled from the 16-bit range: v / 257); all
    other modes (RGBA, P, CMYK, ...) become RGB. A gray image in a 3-channel dataset is replicated.
    DICOM files (.dcm) go through their modality LUT and VOI LUT / window (`window` overrides it).
    """
    try:
        if path.suffix.lower() in DICOM_EXTENSIONS:
            from finetune.data.dicom import read_dicom

            array = read_dicom(path, window)
        else:
            with Image.open(path) as im:
                array = _to_array(ImageOps.exif_transpose(im))
    except Exception as e:  # any decoder failure: name the file
        raise DatasetError(f"cannot read image {path}: {e}") from e
    return np.repeat(array, 3, axis=2) if channels == 3 and array.shape[2] == 1 else array


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode in WIDE_GRAY_MODES:
        wide = np.clip(np.asarray(im, dtype=np.float32), 0, 65535)
        return np.round(wide / 257).astype(np.uint8)[..., None]
    if im.mode in GRAY_MODES:
        return np.asarray(im.convert("L"))[..., None]
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def inspect_image(path: Path) -> int:
    """Check cheaply that `path` is a whole, decodable image; return its channels (1 or 3).

    PIL's `verify()` checks headers (and every PNG chunk's CRC). A JPEG is trusted when it ends
    with its end-of-image marker; other formats, and JPEGs cut short, are decoded to be sure.
    DICOM files are decoded (pixel data and LUTs) by finetune.data.dicom.
    """
    if path.suffix.lower() in DICOM_EXTENSIONS:
        from finetune.data.dicom import inspect_dicom

        return inspect_dicom(path)
    with Image.open(path) as im:
        mode, image_format = im.mode, im.format
        im.verify()
    if image_format != "PNG" and not (image_format == "JPEG" and _ends_with_jpeg_eoi(path)):
        with Image.open(path) as im:
            im.load()
    return 1 if mode in GRAY_MODES else 3


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def check_images(paths: Sequence[Path], on_error: str) -> dict[Path, int]:
    """Channels of every readable image; unreadable ones raise, or are left out with on_error=skip."""

    def probe(path: Path) -> int | Exception:
        try:
            return inspect_image(path)
        except Exception as e:  # corrupt, truncated, not an image, too large: all unreadable
            return e

    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        results = dict(zip(paths, pool.map(probe, paths)))
    bad = [f"{path}: {result}" for path, result in results.items() if isinstance(result, Exception)]
    if bad and on_error == "raise":
        raise DatasetError(
            f"{len(bad)} unreadable image(s) (corrupt, truncated or not an image):\n  "
            + listing(bad)
            + "\nRepair or remove them, or set dataset.on_error=skip to leave them out."
        )
    if bad:
        log.warning("skipped %d unreadable image(s) (dataset.on_error=skip):\n  %s", len(bad), listing(bad))
    return {path: result for path, result in results.items() if not isinstance(result, Exception)}
