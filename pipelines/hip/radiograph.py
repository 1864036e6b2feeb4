"""Hip and pelvis radiographs as seed 003 reads them: guards, display pixels, header facts.

The pipeline serves frontal (AP) radiographs of the pelvis (both hips) or of
one hip, CR or DX, for presentation or for processing
(:mod:`pipelines.common.radiograph`). Refused, each with the reason the
pipeline logs:

* other SOP classes, multi-frame and colour objects;
* Body Part Examined other than ``HIP`` or ``PELVIS`` (an empty value is
  accepted, as many modalities leave it out; ``HIP`` and ``PELVIS`` are the
  DICOM defined terms of PS3.16 Annex L for these regions);
* lateral and frog-leg (Lauenstein) views, when the header says so: View
  Position ``LL``/``RL``/``LAT``/``LATERAL``, a lateral View Code, the
  Lauenstein view modifier (SCT 399169008), or a Series Description /
  Protocol Name mentioning frog, Lauenstein, lateral or cross-table. An
  image that says nothing is taken as frontal.

Pixels are what a radiologist sees (VOI applied, MONOCHROME1 inverted) scaled
by min-max to [0, 1]: the study normalised each radiograph the same way
before exporting it as PNG.

Two header facts decide which femur is which (:mod:`pipelines.hip.sides`):
Patient Orientation (its first value is the direction of the rows; ``L`` on
an AP view displayed as usual, ``R`` when the image is flipped) and Image
Laterality / Laterality (``R`` or ``L`` for a single-hip image).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipelines.common.radiograph import (
    not_a_frontal_view,
    read_displayed,
    resize,
    resized_shape,
)

#: Body Part Examined values served (empty is accepted too)
HIP_BODY_PARTS = frozenset({"HIP", "PELVIS"})
#: View modifier of the frog-leg lateral (SNOMED CT "Lauenstein projection", CID 4012)
LAUENSTEIN_CODE = "399169008"
#: Words of a description that name a lateral or frog-leg view
_NOT_FRONTAL = re.compile(r"\b(FROG|FROGLEG|LAUENSTEIN|LAT|LATERAL)\b|CROSS[\s_-]*TABLE")


@dataclass(frozen=True, eq=False)
class HipRadiograph:
    """One readable hip or pelvis radiograph at the source resolution."""

    sop_instance_uid: str
    #: float32 (Rows, Columns) in [0, 1], bright = dense
    display: np.ndarray
    #: Patient Orientation says the rows run towards the patient's right (a flipped AP image)
    flipped: bool
    #: "R" or "L" when the header says the image shows one hip, else None
    laterality: str | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.display.shape[0]), int(self.display.shape[1])


def not_a_hip_radiograph(ds: Dataset) -> str | None:
    """Why ``ds`` is not a frontal hip / pelvis radiograph, or None when it is one (or may be)."""
    reason = not_a_frontal_view(ds, HIP_BODY_PARTS, "the hip or pelvis")
    if reason is not None:
        return reason
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return f"colour image (Samples per Pixel {samples}); a greyscale radiograph is expected"
    for view in ds.get("ViewCodeSequence", []) or []:
        for modifier in view.get("ViewModifierCodeSequence", []) or []:
            if str(modifier.get("CodeValue", "")) == LAUENSTEIN_CODE:
                return "frog-leg view (Lauenstein view modifier)"
    for keyword in ("ViewPosition", "SeriesDescription", "ProtocolName"):
        text = str(ds.get(keyword, "") or "").upper()
        if _NOT_FRONTAL.search(text):
            return f"lateral or frog-leg view ({keyword} says so)"
    return None


def rows_run_to_patient_right(ds: Dataset) -> bool:
    """Whether Patient Orientation's row direction is the patient's right (the image is
    flipped left-right against the usual AP display); False when it is left or absent."""
    orientation = ds.get("PatientOrientation")
    if not orientation:
        return False
    first = orientation[0] if not isinstance(orientation, str) else orientation.split("\\")[0]
    return str(first).strip().upper()[:1] == "R"


def header_laterality(ds: Dataset) -> str | None:
    """``"R"`` or ``"L"`` from Image Laterality, else Laterality; None for B, U or absent."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    return None


def read_hip_radiograph(path: Path) -> HipRadiograph:
    """Read, guard and display one file.

    Raises
    ------
    pipelines.common.radiograph.RadiographError
        If the file is not DICOM, not a frontal hip / pelvis CR or DX image,
        or its pixels cannot be used; the message says which.
    """
    shown = read_displayed(path, not_a_hip_radiograph)
    return HipRadiograph(
        sop_instance_uid=shown.sop_instance_uid,
        display=shown.display,
        flipped=rows_run_to_patient_right(shown.dataset),
        laterality=header_laterality(shown.dataset),
    )


def localiser_image(
    display: np.ndarray, size: int, max_size: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """The localiser's input: the display image with its shorter side ``size`` (longer at
    most ``max_size``), and its (row, column) scale from source pixels."""
    shape = resized_shape((int(display.shape[0]), int(display.shape[1])), size, max_size)
    small = resize(display, shape)
    return small, (shape[0] / display.shape[0], shape[1] / display.shape[1])
