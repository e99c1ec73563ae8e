"""Reference preprocessing of a finetune model: numpy and Pillow only (no finetune, torch or OpenCV).

finetune copies this file next to every export as ``preprocess.py``, and uses these very functions
itself for decoding, resizing and normalizing in training, evaluation, ``predict`` and the export
parity gate: following them reproduces what the model saw, bit for bit.

The steps, with ``spec`` the ``preprocessing`` record of an export's metadata
(``size`` [H, W], ``interpolation``, ``mean``, ``std``, ``in_chans``):

1. Decode: EXIF orientation applied; 16- and 32-bit grayscale scaled to 8 bit (value / 257, rounded,
   clipped to 0..65535 first); other grayscale modes to 8-bit L; every other mode (palette, RGBA,
   CMYK, ...) to RGB (alpha dropped, not composited).
2. Channels: gray is replicated to RGB for a 3-channel model; RGB becomes Pillow's "L" (ITU-R 601-2
   luma) for a 1-channel model.
3. Resize straight to (H, W) with Pillow's ``Image.resize`` and the recorded filter: no crop, the
   aspect ratio is not kept. Pillow's filters antialias when downscaling (as timm's and
   torchvision's PIL transforms do; OpenCV's cv2.resize does not).
4. Scale to [0, 1] (divide by 255), subtract ``mean`` and divide by ``std``, per channel, in float32.
5. HWC to CHW; images are stacked into one float32 NCHW batch, channels in RGB order.

Usage (onnxruntime)::

    import json, onnxruntime, preprocess
    spec = json.load(open("model.onnx.json"))["preprocessing"]
    session = onnxruntime.InferenceSession("model.onnx")
    logits = session.run(None, {"input": preprocess.preprocess(["a.jpg", "b.png"], spec)})[0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
GRAY_MODES = WIDE_GRAY_MODES | {"1", "L", "LA", "La", "F"}


def load_image(path: str | Path) -> np.ndarray:
    """Step 1: an image file as HWC uint8 (1 channel for grayscale files, else 3)."""
    with Image.open(path) as image:
        return to_array(ImageOps.exif_transpose(image))


def to_array(image: Image.Image) -> np.ndarray:
    """Step 1 for a decoded Pillow image: HWC uint8, 1 or 3 channels."""
    if image.mode in WIDE_GRAY_MODES:
        wide = np.clip(np.asarray(image, dtype=np.float32), 0, 65535)
        return np.round(wide / 257).astype(np.uint8)[..., None]
    if image.mode in GRAY_MODES:
        return np.asarray(image.convert("L"))[..., None]
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def match_channels(array: np.ndarray, in_chans: int) -> np.ndarray:
    """Step 2: HWC uint8 with ``in_chans`` (1 or 3) channels."""
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[2] == in_chans:
        return array
    if in_chans == 3:
        return np.repeat(array, 3, axis=2)
    return np.asarray(Image.fromarray(array).convert("L"))[..., None]


def resize(array: np.ndarray, size: Sequence[int], interpolation: str) -> np.ndarray:
    """Step 3: HWC uint8 resized straight to ``size`` (H, W) with Pillow's ``interpolation`` filter."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    gray = array.shape[2] == 1
    image = Image.fromarray(array[..., 0] if gray else array)
    resized = np.asarray(image.resize((width, height), FILTERS[interpolation]))
    return resized[..., None] if gray else resized


def normalize(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Step 4: HWC uint8 to HWC float32, ``(value / 255 - mean) / std`` per channel."""
    scaled = array.astype(np.float32) / np.float32(255)
    return (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def preprocess(images: Sequence[str | Path | np.ndarray], spec: Mapping, full_size: bool = False) -> np.ndarray:
    """Steps 1-5: image files (or HWC uint8 arrays, already decoded) to the model's NCHW float32 batch.
    ``full_size`` skips step 3 (segmentation models take whole images; they must share one size)."""
    batch = []
    for image in images:
        array = match_channels(image if isinstance(image, np.ndarray) else load_image(image), spec["in_chans"])
        if not full_size:
            array = resize(array, spec["size"], spec["interpolation"])
        batch.append(normalize(array, spec["mean"], spec["std"]).transpose(2, 0, 1))
    return np.stack(batch)
