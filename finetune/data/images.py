"""Decoding and checking image files (and DICOM files, through finetune.data.dicom).

Checks open files read-only and never write to the user's folders.
"""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.files import DICOM_EXTENSIONS
from finetune.data.reference import GRAY_MODES, load_image
from finetune.run.errors import DatasetError, listing

log = logging.getLogger(__name__)


def read_image(
    path: Path | str, channels: int, window: tuple[float, float] | None = None, data: bytes | None = None
) -> np.ndarray:
    """Decode `path` to HWC uint8 with `channels` (1 or 3) channels, EXIF orientation applied; `data`: the
    file's bytes, already read (a packed sample: `path` then names it and gives its suffix).

    Files are decoded by ``finetune.data.reference.load_image``: grayscale modes stay 1 channel
    (16/32-bit ones scaled from the 16-bit range: v / 257); all other modes (RGBA, P, CMYK, ...)
    become RGB. A gray image in a 3-channel dataset is replicated.
    DICOM files (.dcm) go through their modality LUT and VOI LUT / window (`window` overrides it).
    """
    source = path if data is None else io.BytesIO(data)
    try:
        if Path(path).suffix.lower() in DICOM_EXTENSIONS:
            from finetune.data.dicom import read_dicom

            array = read_dicom(source, window)
        else:
            array = load_image(source)  # the reference decode every export ships
    except Exception as e:  # any decoder failure: name the file
        raise DatasetError(f"cannot read image {path}: {e}") from e
    return np.repeat(array, 3, axis=2) if channels == 3 and array.shape[2] == 1 else array


def inspect_image(path: Path) -> int:
    """Check that `path` is a whole, decodable image; return its channels (1 or 3).

    PIL's `verify()` checks headers (and every PNG chunk's CRC); every other format is decoded in
    full. A JPEG cut short and then closed with an end-of-image marker decodes without an error
    (libjpeg fills the missing part with gray), so a JPEG is decoded a second time with filler
    bytes placed before that marker: a whole file ignores them, a cut one decodes them as image
    data and differs. DICOM files are decoded (pixel data and LUTs) by finetune.data.dicom.
    """
    if path.suffix.lower() in DICOM_EXTENSIONS:
        from finetune.data.dicom import inspect_dicom

        return inspect_dicom(path)
    with Image.open(path) as im:
        mode, image_format = im.mode, im.format
        im.verify()
    if image_format != "PNG":
        with Image.open(path) as im:
            im.load()
            if image_format in ("JPEG", "MPO") and _jpeg_cut_short(path, im):
                raise OSError(
                    "JPEG data ends early (the file was cut short, then closed with an "
                    "end-of-image marker): re-copy or re-export the image"
                )
    return 1 if mode in GRAY_MODES else 3


# Filler for the second decode: no 0xFF byte (it would start a marker), varied bits, fixed.
_JPEG_FILLER = bytes(random.Random(14).choice(range(1, 255)) for _ in range(1024))


def _jpeg_cut_short(path: Path, decoded: Image.Image) -> bool:
    """True when the entropy-coded data ends before the image does (see inspect_image).

    Known gap: a cut inside the last few bytes of the final scan can decode the filler exactly as
    libjpeg's own fill and pass."""
    data = path.read_bytes()
    if not data.endswith(b"\xff\xd9"):
        return False  # decoding already failed on a JPEG without its end marker
    if decoded.info.get("progressive") or decoded.info.get("progression"):
        if not _progressive_scans_complete(data):
            return True
    try:
        with Image.open(io.BytesIO(data[:-2] + _JPEG_FILLER + data[-2:])) as filled:
            filled.load()
            return filled.size != decoded.size or filled.tobytes() != decoded.tobytes()
    except Exception:  # a whole file decodes the same with the filler: any failure means cut data
        return True


def _progressive_scans_complete(data: bytes) -> bool:
    """Whether the scans of a progressive JPEG give every coefficient of every component its last
    bit (a file cut between scans decodes cleanly, only blurred)."""
    components: set[int] = set()
    done: dict[int, set[int]] = {}
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker in (0xFF, 0x00, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xC2 and len(segment) >= 6:
            components = {segment[6 + 3 * i] for i in range(segment[5]) if 6 + 3 * i < len(segment)}
        elif marker == 0xDA and segment:
            n = segment[0]
            ids = [segment[1 + 2 * i] for i in range(n)]
            ss, se, al = segment[1 + 2 * n], segment[2 + 2 * n], segment[3 + 2 * n] & 0x0F
            if al == 0:
                for cid in ids:
                    done.setdefault(cid, set()).update(range(ss, se + 1))
        pos += 2 + length
    return bool(components) and all(len(done.get(c, ())) == 64 for c in components)


def check_image(path: Path) -> int:
    """The image check every path that reads images runs (``inspect_image``); DatasetError naming the
    file and why it cannot be read. Returns the image's channels (1 or 3)."""
    try:
        return inspect_image(path)
    except Exception as e:  # corrupt, truncated, not an image, too large: all unreadable
        raise DatasetError(f"cannot read image {path}: {e}") from e


def _probe_images(paths: Sequence[Path]) -> dict[Path, int | Exception]:
    """``inspect_image`` of every path (in threads): its channels, or why it cannot be read."""

    def probe(path: Path) -> int | Exception:
        try:
            return inspect_image(path)
        except Exception as e:  # corrupt, truncated, not an image, too large: all unreadable
            return e

    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return dict(zip(paths, pool.map(probe, paths)))


def unreadable_images(paths: Sequence[Path]) -> dict[Path, str]:
    """Why each file of ``paths`` that fails the image check cannot be read, in the order given."""
    return {path: str(result) for path, result in _probe_images(paths).items() if isinstance(result, Exception)}


def require_readable(paths: Sequence[Path], fix: str = "repair or remove it") -> None:
    """Nothing when every file of ``paths`` passes the image check; else one DatasetError line naming
    the first that fails, why, how many more fail, and ``fix``."""
    bad = unreadable_images(paths)
    if bad:
        path, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
        raise DatasetError(f"cannot read image {path}: {why}{more}; {fix}")


def check_images(paths: Sequence[Path], on_error: str) -> dict[Path, int]:
    """Channels of every readable image; unreadable ones raise, or are left out with on_error=skip."""
    results = _probe_images(paths)
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
