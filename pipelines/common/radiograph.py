"""Projection radiographs (CR and DX) as the pipelines read them: guards, display pixels, resizing.

Seed 001 reads frontal chest radiographs and seed 003 frontal (AP) hip and
pelvis radiographs. Both accept the same objects and refuse the same kinds
of input, each with a reason the pipeline logs:

* the SOP class must be *Computed Radiography* or *Digital X-Ray* (for
  presentation or for processing);
* lateral projections are refused (View Position ``LL``, ``RL``,
  ``LATERAL``, ``LAT``, or a lateral View Code): the models are trained on
  frontal views;
* Body Part Examined, when present, must be one the pipeline serves (an
  empty value is accepted: many modalities leave it out);
* multi-frame objects are refused (one radiograph per object is expected),
  and colour objects when their pixels are read.

What the models see first is what a radiologist sees
(:func:`imaging.pixels.display_pixels`): modality LUT, the object's
VOI window or LUT when present, MONOCHROME1 inverted so that bone is bright,
scaled to [0, 1]; any bit depth and any transfer syntax pydicom can decode.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from imaging.pixels import PixelDataError, display_pixels
from imaging.storage import RADIOGRAPH_SOP_CLASSES
from pipelines.base import UnusableInput

#: View Position values of a lateral projection (PS3.3 C.8.11.5.1.1 defined terms)
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT"})
#: View Code Sequence codes of lateral projections (SNOMED CT, CID 4010)
LATERAL_VIEW_CODES = frozenset({"399067008", "399198007", "399173006", "R-10232", "R-10236"})

#: ``guard(ds) -> reason or None``: why a data set is not an image the pipeline serves
Guard = Callable[[Dataset], "str | None"]


class RadiographError(UnusableInput):
    """A file is not a radiograph the pipeline can read (the message says why)."""


@dataclass(frozen=True, eq=False)
class DisplayedRadiograph:
    """A radiograph that passed its guard, as displayed, at the source resolution."""

    dataset: Dataset
    sop_instance_uid: str
    #: float32 (Rows, Columns) in [0, 1], bright = dense
    display: np.ndarray


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


def not_a_frontal_view(ds: Dataset, body_parts: Collection[str], region: str) -> str | None:
    """Why ``ds`` is not a frontal CR/DX radiograph of ``region``, or None when it is one
    (or may be).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The object's header.
    body_parts : collection of str
        Body Part Examined values (upper case) accepted; an empty value is accepted too.
    region : str
        How the refusal names what is served, e.g. ``"the chest"``.
    """
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
    if part and part not in body_parts:
        return f"Body Part Examined is {part}, not {region}"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame object (one radiograph per object expected)"
    return None


def read_displayed(
    path: Path, guard: Guard, *, stretch: tuple[float, float] = (0.0, 100.0)
) -> DisplayedRadiograph:
    """Read one file, check it with ``guard`` and return its display pixels.

    ``stretch`` is passed to :func:`imaging.pixels.display_pixels`
    (default a min-max scaling after the VOI).

    Raises
    ------
    RadiographError
        If the file is not DICOM, has no SOP Instance UID, ``guard`` refuses
        it, or its pixels cannot be used; the message says which.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise RadiographError(f"not readable as DICOM: {type(exc).__name__}") from None
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid:
        raise RadiographError("no SOP Instance UID")
    reason = guard(ds)
    if reason is not None:
        raise RadiographError(reason)
    try:
        display = display_pixels(ds, stretch=stretch)
    except PixelDataError as exc:
        raise RadiographError(str(exc)) from None
    return DisplayedRadiograph(ds, uid, display)
