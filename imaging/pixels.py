"""DICOM pixels to arrays: the one place that knows about LUTs and photometric interpretation.

Pipelines and the result builders both need "what the radiologist sees":
modality LUT (RescaleSlope/Intercept, e.g. to HU), then the VOI window or
LUT when the object carries one, and MONOCHROME1 inverted so that bright
always means dense. Decoding of compressed transfer syntaxes is pydicom's,
with the pylibjpeg plugins installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut


class PixelDataError(ValueError):
    """The object has no usable pixel data (missing, undecodable, or not an image)."""


def modality_pixels(ds: Dataset, frame: int = 0) -> np.ndarray:
    """Return one frame in modality units (e.g. HU for CT) as float32, shape (Rows, Columns).

    PixelPaddingValue, when present, is replaced by the frame's minimum so
    that padding outside the scan field never looks like tissue.

    Raises
    ------
    PixelDataError
        If the dataset has no pixel data or it cannot be decoded.
    """
    if "PixelData" not in ds:
        raise PixelDataError("object has no Pixel Data")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise PixelDataError(f"expected a greyscale image, got SamplesPerPixel={samples}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/undecodable pixel data
        raise PixelDataError(f"cannot decode pixel data: {exc}") from exc
    if arr.ndim == 3:
        if frame >= arr.shape[0]:
            raise PixelDataError(f"frame {frame} requested but object has {arr.shape[0]} frames")
        arr = arr[frame]
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise PixelDataError(f"image of shape {arr.shape} is too small to analyse")
    padding = ds.get("PixelPaddingValue")
    pad_mask = arr == padding if padding is not None else None
    try:
        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    except Exception as exc:  # e.g. an empty or non-numeric RescaleSlope from an anonymiser
        raise PixelDataError(
            f"cannot apply the modality LUT (RescaleSlope/Intercept, LUT): {type(exc).__name__}"
        ) from exc
    if pad_mask is not None and pad_mask.any() and not pad_mask.all():
        out[pad_mask] = out[~pad_mask].min()
    return out


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window (DICOM C.11.2.1.2 without the -0.5 offsets): clip to
    [center - width/2, center + width/2] and scale to [0, 1]."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = center - width / 2.0
    windowed: np.ndarray = np.clip((values.astype(np.float32) - lo) / float(width), 0.0, 1.0)
    return windowed


def window_stack(values: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """Apply several windows to one image and stack them as channels.

    ``windows`` holds (center, width) pairs; the result is float32 of shape
    (len(windows), Rows, Columns) in [0, 1]. This is the "pseudo-RGB" input of
    head-CT models: e.g. brain (40/80), subdural (50/130) and bone (600/2800)
    HU windows, so that one image shows what a reader sees by switching windows.
    """
    if not windows:
        raise ValueError("window_stack needs at least one (center, width) window")
    return np.stack([window(values, c, w) for c, w in windows]).astype(np.float32, copy=False)


def display_pixels(
    ds: Dataset,
    frame: int = 0,
    values: np.ndarray | None = None,
    *,
    stretch: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Return one frame as shown on a viewer, float32 in [0, 1], bright = dense.

    Applies the object's VOI (WindowCenter/Width or VOI LUT) when present,
    then stretches between the ``stretch`` percentiles (default 0.5th and
    99.5th; ``(0, 100)`` is a plain min-max scaling); inverts MONOCHROME1.
    """
    if values is None:
        values = modality_pixels(ds, frame)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        try:
            shown = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
        except Exception:  # malformed VOI attributes: fall back to a percentile stretch
            shown = values
    else:
        shown = values
    if tuple(stretch) == (0.0, 100.0):  # min-max: no sort needed
        lo, hi = float(shown.min()), float(shown.max())
    else:
        lo, hi = np.percentile(shown, list(stretch))
    if hi <= lo:
        hi = lo + 1.0
    out: np.ndarray = np.clip((shown - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        out = 1.0 - out
    return out
