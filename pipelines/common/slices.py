"""A CT slice as a slice model sees it (ICH, ct-slice), shared by training and inference.

HU = stored value x RescaleSlope + RescaleIntercept (PixelPaddingValue
respected, :func:`imaging.pixels.modality_pixels`), then the card's HU
windows, each clipped and scaled to [0, 1], stacked as channels
(:func:`pipelines.common.preprocess.display_image`);
:func:`~pipelines.common.preprocess.to_model_input` resizes to the card's size
and normalises with the card's per-channel statistics. The windows stay
float32 (no 8-bit quantisation before ToTensor, unlike the seeds' PIL paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset
from torch.utils.data import Dataset as TorchDataset

from imaging.files import UnreadableDicom, read_dataset
from imaging.pixels import PixelDataError
from pipelines.base import UnusableInput
from pipelines.card import InputSpec
from pipelines.common.preprocess import display_image, to_model_input


class SliceError(UnusableInput):
    """A file is not a CT slice a slice model can read; the message says why (no PHI)."""


def slice_problem(ds: Dataset) -> str | None:
    """Why ``ds`` cannot be a slice model's input, or None when it can."""
    if "PixelData" not in ds:
        return "object has no Pixel Data (not an image)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image: the model needs greyscale CT slices"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame object: the model reads single-frame CT slices"
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


class CachedSlices(TorchDataset):
    """A training set's slices read as :func:`read_slice` and
    :func:`~pipelines.common.preprocess.to_model_input` make them, decoded once.

    With ``cache`` each read input is kept in memory as float16, so epochs (and
    grid runs) do not decode DICOM again. An unreadable slice raises
    :attr:`data_error` naming the file: a training set must be clean.
    Subclasses add ``__getitem__`` (what the input and target are).
    """

    #: the exception of an unreadable slice (each study's data module sets its own)
    data_error: type[Exception] = ValueError

    def __init__(self, slices: Sequence[Any], read_spec: InputSpec, *, cache: bool) -> None:
        self.slices = list(slices)
        self._read_spec = read_spec
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.slices)

    def read_input(self, index: int) -> torch.Tensor:
        """Slice ``index`` as a float32 tensor at ``read_spec`` (from the cache when kept)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index].float()
        path = self.slices[index].path
        try:
            _, image = read_slice(path, self._read_spec)
        except SliceError as exc:
            raise self.data_error(f"{path}: {exc}") from exc
        x = to_model_input([image], self._read_spec)[0]
        if self._cache is not None:
            self._cache[index] = x.half()
        return x
