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

What comes in first is what a radiologist sees (:func:`imaging.pixels.display_pixels`):
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
multi-frame and colour objects are refused with a reason the pipeline logs
(the reading and guards shared with other radiograph pipelines are in
:mod:`pipelines.common.radiograph`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipelines.common.radiograph import (
    LATERAL_VIEW_CODES,
    LATERAL_VIEW_POSITIONS,
    RADIOGRAPH_SOP_CLASSES,
    RadiographError,
    not_a_frontal_view,
    read_displayed,
    resize,
    resized_shape,
)

__all__ = [
    "CHEST_BODY_PARTS",
    "LATERAL_VIEW_CODES",
    "LATERAL_VIEW_POSITIONS",
    "RADIOGRAPH_SOP_CLASSES",
    "Preprocessing",
    "Radiograph",
    "RadiographError",
    "log_transform",
    "not_a_frontal_chest",
    "prepare",
    "read_radiograph",
    "resize",
    "resized_shape",
    "simplest_color_balance",
]

#: Body Part Examined values accepted as a chest radiograph (empty is accepted too)
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "HEART", "RIB", "CHESTABDOMEN"})


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
    return not_a_frontal_view(ds, CHEST_BODY_PARTS, "the chest")


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
    shown = read_displayed(path, not_a_frontal_chest)
    display = shown.display
    image, scale = prepare(display, size, max_size, preprocessing)
    return Radiograph(
        shown.sop_instance_uid, image, (int(display.shape[0]), int(display.shape[1])), scale
    )
