"""Every coded concept the result builders write, in one place, with its source.

All constants are taken from :mod:`pydicom.sr.codedict` (generated from
DICOM PS3.16), not typed by hand, so a typo fails at import time rather than
producing a silently wrong code in the PACS. The context group (CID) each
one is drawn from is noted; ``tests/test_results.py`` checks the values.

SR (TID 1500 Measurement Report)
--------------------------------
Document title
    ``(126000, DCM, "Imaging Measurement Report")`` — CID 7021 Measurement
    Report Document Title; TID 1500 row 1.
Procedure reported
    CID 100 Quantitative Diagnostic Imaging Procedure, chosen from the source
    Modality: ``(25045-6, LN, "CT unspecified body region")``,
    ``(25056-3, LN, "MRI unspecified body region")``,
    ``(43468-8, LN, "XR unspecified body region")`` (CR, DX, MG, RF, XA),
    ``(44136-0, LN, "PET unspecified body region")``,
    ``(49118-3, LN, "NM unspecified body region")``; otherwise
    ``(363679005, SCT, "Imaging procedure")``.
Observer type
    ``(121007, DCM, "Device")`` — CID 270 Observer Type; TID 1002.
Finding / Finding Site / Laterality
    The names are fixed by the templates (``(121071, DCM, "Finding")``,
    ``(363698007, SCT, "Finding Site")``, ``(272741003, SCT, "Laterality")``
    written by highdicom); the values come verbatim from the model card
    (:class:`pipelines.base.Code`). Laterality values should be from CID 244
    (``(24028007, SCT, "Right")``, ``(7771000, SCT, "Left")``,
    ``(51440002, SCT, "Bilateral")``, ``(66459002, SCT, "Unilateral")``).
Certainty
    ``(111012, DCM, "Certainty of Finding")`` NUM in UCUM ``(%, UCUM, "Percent")``
    — the concept DICOM's CAD templates (e.g. TID 4104/4106) use for an
    algorithm's confidence, here as a TID 300 measurement.
Presence
    A qualitative evaluation whose concept name is the finding code itself
    and whose value is from CID 240/241 Present-Absent:
    ``(52101004, SCT, "Present")`` or ``(272519000, SCT, "Absent")``.
    (SCT 2667000 is *not* the code DICOM uses for "Absent"; CID 240 has
    272519000.)

Recommendation
    ``(121075, DCM, "Recommendation")`` TEXT in a finding's group: the card
    label's advice for a present finding (seed 003: DEXA to confirm).
Model validation (the card's metrics and provenance)
    DICOM has no concept for an algorithm's measured performance, so these
    are local codes (scheme ``99DCMNODE``, identified in the SR's Coding
    Scheme Identification Sequence): ``(model-perf, 99DCMNODE, "Model
    performance")`` TEXT in each finding's group, one per split (held-out
    data first; the text names the split, the unit and n); and, in a root ``(C0034375, UMLS, "Qualitative Evaluations")``
    container (TID 1500 row 13), ``(model-data, 99DCMNODE, "Model training
    data")`` and ``(model-use, 99DCMNODE, "Intended use of the result")``.

Contributing Equipment (SOP Common, both SR and SC)
---------------------------------------------------
Purpose of reference
    ``(109102, DCM, "Processing Equipment")`` — CID 7005 Contributing
    Equipment Purpose of Reference, defined as "equipment that has processed
    composite instances to create new composite instances", which is what a
    model does. ``(109103, DCM, "Modifying Equipment")`` would be wrong: it
    means modifying existing instances *without* creating new ones.

SC (Secondary Capture heatmap)
------------------------------
Source image purpose of reference
    ``(121322, DCM, "Source image for image processing operation")`` — CID
    7202 Source Image Purpose of Reference.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "ABSENT",
    "INTENDED_USE",
    "LOCAL_SCHEME",
    "MODEL_PERFORMANCE",
    "QUALITATIVE_EVALUATIONS",
    "RECOMMENDATION",
    "TRAINING_DATA",
    "CERTAINTY_OF_FINDING",
    "COMMENT",
    "DEVICE_OBSERVER",
    "IMAGING_MEASUREMENT_REPORT",
    "IMAGING_PROCEDURE",
    "PERCENT",
    "PRESENT",
    "PROCESSING_EQUIPMENT",
    "SOURCE_IMAGE_FOR_PROCESSING",
    "procedure_reported",
]

IMAGING_MEASUREMENT_REPORT: Code = codes.cid7021.ImagingMeasurementReport
DEVICE_OBSERVER: Code = codes.cid270.Device
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
COMMENT: Code = codes.DCM.Comment
PERCENT: Code = codes.UCUM.Percent
PRESENT: Code = codes.cid241.Present
ABSENT: Code = codes.cid241.Absent
PROCESSING_EQUIPMENT: Code = codes.cid7005.ProcessingEquipment
SOURCE_IMAGE_FOR_PROCESSING: Code = codes.cid7202.SourceImageForImageProcessingOperation
IMAGING_PROCEDURE: Code = codes.SCT.ImagingProcedure
RECOMMENDATION: Code = codes.DCM.Recommendation

#: The project's documented local coding scheme (PS3.3 C.12.1.1.2: private schemes start with 99).
LOCAL_SCHEME = "99DCMNODE"
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
MODEL_PERFORMANCE = Code("model-perf", LOCAL_SCHEME, "Model performance")
TRAINING_DATA = Code("model-data", LOCAL_SCHEME, "Model training data")
INTENDED_USE = Code("model-use", LOCAL_SCHEME, "Intended use of the result")

_PROCEDURE_BY_MODALITY: dict[str, Code] = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "CR": codes.LN.XRUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "MG": codes.LN.XRUnspecifiedBodyRegion,
    "RF": codes.LN.XRUnspecifiedBodyRegion,
    "XA": codes.LN.XRUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}


def procedure_reported(modalities: set[str] | frozenset[str]) -> list[Code]:
    """Procedure Reported codes (CID 100) for the source modalities.

    One code per distinct known modality (sorted, for a stable order), or
    the generic SCT "Imaging procedure" when none is known, because TID 1500
    requires at least one.
    """
    found = {_PROCEDURE_BY_MODALITY[m] for m in modalities if m in _PROCEDURE_BY_MODALITY}
    if not found:
        return [IMAGING_PROCEDURE]
    return sorted(found, key=lambda c: c.value)
