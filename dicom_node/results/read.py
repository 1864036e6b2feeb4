"""Read the node's own results back for people: an SR's findings as rows, a heatmap as a PNG.

The console shows a result in the browser (the Studies page) without a DICOM
viewer. The SR is read as the node writes it (TID 1500: one measurement group
per finding, with its Finding, Finding Site, certainty NUM in percent and a
present/absent evaluation named by the finding's code); any other TEXT items
of the document (the model, its validation, a "not analysed" notice) come as
plain lines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

#: DCM 126010 "Imaging Measurements", DCM 121071 "Finding", SCT 363698007 "Finding Site",
#: DCM 121106 "Comment"
MEASUREMENTS, FINDING, SITE, COMMENT = "126010", "121071", "363698007", "121106"
CERTAINTY = "Certainty of Finding"


@dataclass(frozen=True)
class FindingRow:
    finding: str
    site: str | None
    present: bool | None
    certainty: float | None
    unit: str | None
    comment: str | None


@dataclass(frozen=True)
class ReadReport:
    title: str
    series_description: str
    findings: list[FindingRow]
    #: every TEXT item outside the measurement groups, in document order
    texts: list[tuple[str, str]]


def read_report(path: Path) -> ReadReport:
    """The findings and texts of an SR written by the node."""
    ds = pydicom.dcmread(path)
    findings: list[FindingRow] = []
    texts: list[tuple[str, str]] = []
    for item in ds.get("ContentSequence", []):
        if _code_value(item) == MEASUREMENTS:
            findings.extend(_group(g) for g in item.get("ContentSequence", []))
        else:
            _collect_texts(item, texts)
    title = (
        str(ds.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in ds else ""
    )
    return ReadReport(title, str(ds.get("SeriesDescription", "")), findings, texts)


def _group(group: Dataset) -> FindingRow:
    items = list(group.get("ContentSequence", []))
    finding = next((i for i in items if _code_value(i) == FINDING), None)
    finding_code = finding.ConceptCodeSequence[0] if finding is not None else None
    site = next((i for i in items if _code_value(i) == SITE), None)
    certainty = next((i for i in items if _meaning(i) == CERTAINTY and i.ValueType == "NUM"), None)
    present = None
    if finding_code is not None:
        for i in items:
            if (
                i.ValueType == "CODE"
                and _code_value(i) == finding_code.CodeValue
                and i is not finding
            ):
                present = str(i.ConceptCodeSequence[0].CodeMeaning).lower() == "present"
    value = unit = None
    if certainty is not None:
        measured = certainty.MeasuredValueSequence[0]
        value = float(measured.NumericValue)
        unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
    comment = next((str(i.TextValue) for i in items if _code_value(i) == COMMENT), None)
    return FindingRow(
        finding=str(finding_code.CodeMeaning) if finding_code is not None else "?",
        site=str(site.ConceptCodeSequence[0].CodeMeaning) if site is not None else None,
        present=present,
        certainty=value,
        unit=unit,
        comment=comment,
    )


def _collect_texts(item: Dataset, out: list[tuple[str, str]]) -> None:
    if item.get("ValueType") == "TEXT":
        out.append((_meaning(item), str(item.TextValue)))
    for child in item.get("ContentSequence", []):
        _collect_texts(child, out)


def _code_value(item: Dataset) -> str | None:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else None


def _meaning(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeMeaning) if names else ""


def image_png(path: Path, max_side: int = 1024) -> bytes:
    """A secondary capture (the heatmap) as a PNG at most ``max_side`` pixels wide or high."""
    return dataset_png(pydicom.dcmread(path), max_side)


def dataset_png(ds: Dataset, max_side: int = 1024) -> bytes:
    """An image data set's first frame as a PNG at most ``max_side`` pixels wide or high."""
    pixels = ds.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):  # frames: the first
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
