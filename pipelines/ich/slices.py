"""A CT slice as the ICH model sees it, shared by training and inference.

HU = stored value x RescaleSlope + RescaleIntercept (PixelPaddingValue
respected, :func:`imaging.pixels.modality_pixels`), then the card's
three windows (brain / subdural / bone), each clipped and scaled to [0, 1],
stacked as channels; :func:`pipelines.common.preprocess.to_model_input`
resizes to the card's size and normalises with the card's per-channel
statistics. Unlike the seed's PIL path the windows stay float32 (no 8-bit
quantisation before ToTensor); everything else is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from imaging.files import UnreadableDicom, read_dataset
from imaging.pixels import PixelDataError
from pipelines.base import UnusableInput
from pipelines.card import InputSpec
from pipelines.common.preprocess import display_image
from pipelines.ich.labels import WINDOWS


class SliceError(UnusableInput):
    """A file is not a CT slice the ICH model can read; the message says why (no PHI)."""


def slice_problem(ds: Dataset) -> str | None:
    """Why ``ds`` cannot be an ICH input slice, or None when it can."""
    if "PixelData" not in ds:
        return "object has no Pixel Data (not an image)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image: ICH needs greyscale CT slices"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame object: ICH reads single-frame CT slices"
    if "RescaleIntercept" not in ds and ds.get("Modality") != "CT":
        return "no RescaleSlope/RescaleIntercept and not CT: Hounsfield units unknown"
    return None


def slice_image(ds: Dataset, spec: InputSpec) -> np.ndarray:
    """Return the (3, Rows, Columns) windowed stack of one slice, float32 in [0, 1].

    Raises
    ------
    SliceError
        If the object is not a usable slice or its pixels cannot be decoded.
    """
    problem = slice_problem(ds)
    if problem is not None:
        raise SliceError(problem)
    try:
        image = display_image(ds, spec)
    except PixelDataError as exc:
        raise SliceError(str(exc)) from exc
    if not np.isfinite(image).all():
        raise SliceError("pixel values are not finite")
    return image


def read_slice(path: Path, spec: InputSpec) -> tuple[str, np.ndarray]:
    """Read a file and return (SOP Instance UID, windowed stack).

    Raises
    ------
    SliceError
        If the file is not readable DICOM or not a usable slice.
    """
    try:
        ds = read_dataset(path)
    except UnreadableDicom as exc:
        raise SliceError(str(exc)) from None
    return str(ds.get("SOPInstanceUID", "")) or path.name, slice_image(ds, spec)


def input_spec(size: int, mean: Sequence[float], std: Sequence[float]) -> InputSpec:
    """The card input of an ICH model: the seed's three windows at ``size`` pixels."""
    return InputSpec(size=size, channels=3, mean=list(mean), std=list(std), windows=list(WINDOWS))
