"""DICOM files → 8-bit images: modality LUT (rescale slope / intercept), then VOI LUT or window.

Stored values are 12/16-bit (or wider). ``apply_modality_lut`` turns them into modality units
(e.g. Hounsfield units for CT); ``apply_voi_lut`` applies the file's VOI LUT or window
center/width, whose output range pydicom defines from BitsStored / PixelRepresentation / the
rescale; that range is mapped linearly onto 0..255. A file without VOI data is scaled from its
own min..max (after the modality LUT). ``dataset.window=[center, width]`` replaces the file's
VOI (e.g. [40, 400] for a CT soft-tissue window). MONOCHROME1 (white = low values) is inverted so
that bright means high for every file. Colour files (RGB / YBR) become RGB uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.run.errors import DatasetError

COLOR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")


def require_pydicom() -> None:
    """dataset=dicom_folder needs pydicom; say how to get it."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise DatasetError(
            "dataset=dicom_folder reads DICOM with pydicom, which is not installed: pip install pydicom"
        ) from None


def inspect_dicom(path: Path) -> int:
    """Decode `path` (pixel data and LUTs) to be sure it is readable; return its channels (1 or 3)."""
    return read_dicom(path).shape[2]


def read_dicom(path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """HWC uint8 (1 channel for MONOCHROME1/2, 3 for colour) of a DICOM file; multi-frame: middle frame."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DatasetError(f"{path} holds no image (no pixel data; e.g. a report or structure set)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array
    if frames > 1:
        pixels = pixels[frames // 2]
    interpretation = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if interpretation in COLOR_INTERPRETATIONS or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)):
        return _color_to_uint8(ds, pixels)
    values = apply_modality_lut(pixels, ds)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
    if window is not None or "WindowCenter" in ds or "VOILUTSequence" in ds:
        low, high = voi_output_range(ds)
        values = apply_voi_lut(values, ds, index=0)
    else:
        low, high = float(np.min(values)), float(np.max(values))
    scaled = _to_uint8(values, low, high)
    if interpretation == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled[..., None]


def voi_output_range(ds) -> tuple[float, float]:
    """The value range ``apply_voi_lut`` maps onto (DICOM PS3.3 C.11.2; as pydicom computes it)."""
    if "VOILUTSequence" in ds:  # apply_voi_lut prefers the LUT when both a LUT and a window exist
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipped); a constant image becomes 0."""
    values = np.asarray(values, dtype=np.float64)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _color_to_uint8(ds, pixels: np.ndarray) -> np.ndarray:
    """RGB uint8: pydicom converts YBR to RGB; palettes go through their LUT; wider values are scaled
    from their bit depth (BitsStored for RGB, 16 bits for a palette's output)."""
    bits = int(ds.get("BitsStored", 8))
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels, bits = apply_color_lut(pixels, ds), 16
    pixels = pixels[..., :3]
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    return _to_uint8(pixels, 0, 2**bits - 1)
