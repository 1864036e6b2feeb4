"""Chest radiograph pixels to the detector's input, as seed 001 prepares them.

The seed normalises every radiograph in two steps before the detector sees it:

1. **Log transform** ``s = log(1 + g r) / log(1 + g)`` of the image scaled to
   r in [0, 1]: it compresses the bright end and lifts the dark one, so
   detail in the lung fields (dark on a radiograph) gains contrast. The gain
   ``g`` (card ``options.log_gain``, default 255) is the classic
   ``c log(1 + r)`` of an 8-bit image; the seed does not give its constant.
2. **Simplest color balance** (Limare et al., IPOL 2011): clip the darkest
   ``options.dark_clip_percent`` and brightest ``options.bright_clip_percent``
   of the pixels (default 0.5 % each, a documented choice: the seed says "a
   small percentage") and stretch the rest linearly to [0, 1], so that every
   image uses the full range whatever the exposure or the detector.

What comes in first is what a radiologist sees (:func:`pipelines.common.image.display_pixels`):
modality LUT, the object's VOI window or LUT when present, MONOCHROME1
inverted so that bone is bright; any bit depth and any transfer syntax
pydicom can decode. The image is resized (antialiased, aspect ratio kept)
so that its shorter side is the card's ``input.size`` (the longer at most
``options.max_size``) *before* the transform, which keeps memory bounded by
the model's input rather than the detector plate, and the scale factors are
returned so boxes map back to source pixels.

Guards: the pipeline serves frontal chest radiographs. CR and DX objects
(for presentation or processing) are read; lateral views (View Position LL
or RL, or a lateral View Code), body parts that are not the chest,
multi-frame and colour objects are refused with a reason the pipeline logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.common.image import PixelDataError, display_pixels

#: Computed Radiography, Digital X-Ray for presentation, for processing
RADIOGRAPH_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
}
#: View Position values of a lateral projection (PS3.3 C.8.11.5.1.1 defined terms)
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT"})
#: View Code Sequence codes of lateral projections (SNOMED CT, CID 4010)
LATERAL_VIEW_CODES = frozenset({"399067008", "399198007", "399173006", "R-10232", "R-10236"})
#: Body Part Examined values accepted as a chest radiograph (empty is accepted too)
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "HEART", "RIB", "CHESTABDOMEN"})


class RadiographError(ValueError):
    """A file is not a frontal chest radiograph the detector can read (the message says why)."""


@dataclass(frozen=True)
class Preprocessing:
    """The seed's normalisation settings (card ``options``)."""

    log_gain: float = 255.0
    dark_clip_percent: float = 0.5
    bright_clip_percent: float = 0.5


@dataclass(frozen=True)
class Radiograph:
    """One prepared image: the model input and how it maps back to the source."""

    sop_instance_uid: str
    #: float32 (H, W) in [0, 1], shorter side = the card's input size
    image: np.ndarray
    #: source (Rows, Columns)
    shape: tuple[int, int]
    #: model pixels per source pixel, (rows, columns)
    scale: tuple[float, float]


def log_transform(image: np.ndarray, gain: float = 255.0) -> np.ndarray:
    """``log(1 + gain * r) / log(1 + gain)`` of an image in [0, 1]; keeps 0 and 1 fixed."""
    if gain <= 0:
        raise ValueError(f"log gain must be positive, got {gain}")
    r = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return (np.log1p(gain * r) / np.log1p(gain)).astype(np.float32)


def simplest_color_balance(
    image: np.ndarray, dark_percent: float = 0.5, bright_percent: float = 0.5
) -> np.ndarray:
    """Clip the darkest / brightest percentages of pixels and stretch the rest to [0, 1].

    A constant image (nothing to stretch) comes back as zeros.
    """
    if not (0 <= dark_percent < 50 and 0 <= bright_percent < 50):
        raise ValueError(
            f"clip percentages must be in [0, 50), got {dark_percent} and {bright_percent}"
        )
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [dark_percent, 100.0 - bright_percent])
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resized_shape(shape: tuple[int, int], size: int, max_size: int) -> tuple[int, int]:
    """(rows, columns) with the shorter side ``size`` and the longer at most ``max_size``."""
    rows, cols = shape
    scale = min(size / min(rows, cols), max_size / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a float (H, W) image."""
    if tuple(image.shape) == tuple(shape):
        return np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def prepare(
    display: np.ndarray, size: int, max_size: int, preprocessing: Preprocessing
) -> tuple[np.ndarray, tuple[float, float]]:
    """Display image (bright = dense, [0, 1]) -> model image and its (row, column) scale."""
    shape = resized_shape(display.shape, size, max_size)
    small = resize(display, shape)
    balanced = simplest_color_balance(
        log_transform(small, preprocessing.log_gain),
        preprocessing.dark_clip_percent,
        preprocessing.bright_clip_percent,
    )
    scale = (shape[0] / display.shape[0], shape[1] / display.shape[1])
    return balanced, scale


def not_a_frontal_chest(ds: Dataset) -> str | None:
    """Why ``ds`` is not a frontal chest radiograph, or None when it is one (or may be)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        return f"SOP Class {sop_class or '(none)'} is not a CR or DX image"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEW_POSITIONS:
        return f"lateral view (View Position {view})"
    for item in ds.get("ViewCodeSequence", []) or []:
        if str(item.get("CodeValue", "")) in LATERAL_VIEW_CODES:
            return f"lateral view (View Code {item.CodeValue})"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST_BODY_PARTS:
        return f"Body Part Examined is {part}, not the chest"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame object (one radiograph per object expected)"
    return None


def read_radiograph(
    path: Path, size: int, max_size: int, preprocessing: Preprocessing
) -> Radiograph:
    """Read and prepare one file.

    Raises
    ------
    RadiographError
        If the file is not DICOM, not a frontal chest CR/DX image, or its
        pixels cannot be used; the message says which.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise RadiographError(f"not readable as DICOM: {type(exc).__name__}") from None
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid:
        raise RadiographError("no SOP Instance UID")
    reason = not_a_frontal_chest(ds)
    if reason is not None:
        raise RadiographError(reason)
    try:
        display = display_pixels(ds, stretch=(0.0, 100.0))
    except PixelDataError as exc:
        raise RadiographError(str(exc)) from None
    image, scale = prepare(display, size, max_size, preprocessing)
    return Radiograph(uid, image, (int(display.shape[0]), int(display.shape[1])), scale)
