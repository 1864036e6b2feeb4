"""Seed 003's training data: DICOM radiographs, LabelImg boxes and DEXA labels, joined.

A training item is a radiograph that has all three: a DICOM file that the
pipeline can read (:func:`pipelines.hip.radiograph.not_a_hip_radiograph`),
a VOC file with the same stem boxing at least one femoral neck
(:mod:`pipelines.hip.voc`) and a row in the labels CSV of
``dicom-node dataset pair-dexa`` with its SOP Instance UID
(:mod:`pipelines.hip.dexa`). Every file left out is counted with its
reason. The side of each box comes from the same rule the node uses
(:mod:`pipelines.hip.sides`); two boxes on one side are an error in the VOC
file.

Two datasets read the items exactly as the node reads images
(:func:`pipelines.hip.radiograph.read_hip_radiograph`):
:class:`LocaliserDataset` (the localiser's input and boxes) and
:class:`CropDataset` (one crop per boxed neck: the study's unit, an image
with two necks giving two training examples, right ones mirrored).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError
from torch.utils.data import Dataset as TorchDataset

from pipelines.card import InputSpec
from pipelines.common.preprocess import to_model_input
from pipelines.common.radiograph import RadiographError
from pipelines.hip.codes import NECK_CLASS
from pipelines.hip.dexa import LabelRow, image_date, parse_date
from pipelines.hip.radiograph import (
    HipRadiograph,
    header_laterality,
    localiser_image,
    not_a_hip_radiograph,
    read_hip_radiograph,
    rows_run_to_patient_right,
)
from pipelines.hip.sides import Side, crop_region, extract_crop, is_mirrored, side_of_box
from pipelines.hip.voc import VocAnnotation

logger = logging.getLogger(__name__)

Box4 = tuple[float, float, float, float]


class HipDataError(ValueError):
    """Training data cannot be used (the message names the file and what to fix)."""


@dataclass(frozen=True)
class HipItem:
    """One labelled, boxed radiograph."""

    path: Path
    sop_instance_uid: str
    #: for grouping folds and splits only: never logged or written
    patient_id: str
    #: year of the Study Date (the temporal split), None if unreadable
    year: int | None
    label: int
    t_score: float
    shape: tuple[int, int]
    flipped: bool
    laterality: str | None
    #: ground-truth neck boxes in source pixels (continuous), by side
    necks: dict[Side, Box4] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """Patient ID, or the SOP Instance UID when it has none (its own group)."""
        return self.patient_id or self.sop_instance_uid


@dataclass
class IndexReport:
    """What :func:`index_hip_data` used and left out."""

    items: list[HipItem] = field(default_factory=list)
    #: reason -> number of files left out
    left_out: Counter[str] = field(default_factory=Counter)
    #: VOC objects of other classes than the neck's
    other_objects: int = 0

    def summary(self) -> str:
        """One line for the operator (counts only)."""
        parts = [f"{len(self.items)} radiograph(s) with label and neck boxes"]
        parts += [f"{n} {reason}" for reason, n in sorted(self.left_out.items())]
        if self.other_objects:
            parts.append(f"{self.other_objects} VOC object(s) of other classes ignored")
        return "; ".join(parts)


def _scaled_boxes(
    annotation: VocAnnotation, voc_path: Path, shape: tuple[int, int], names: Collection[str]
) -> tuple[list[Box4], int]:
    """The neck boxes of an annotation in the DICOM's pixels, and how many objects were others."""
    rows, cols = shape
    sx, sy = cols / annotation.width, rows / annotation.height
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise HipDataError(
            f"{voc_path} annotates a {annotation.width} x {annotation.height} image but the DICOM "
            f"file is {cols} x {rows} (another aspect ratio); annotate the image exported from "
            "this DICOM file"
        )
    boxes, others = [], 0
    for obj in annotation.objects:
        if obj.name not in names:
            others += 1
            continue
        x0, y0, x1, y1 = obj.box
        boxes.append((x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    return boxes, others


def index_hip_data(
    dicom_dir: str | Path,
    voc: dict[str, tuple[Path, VocAnnotation]],
    labels: dict[str, LabelRow],
    *,
    neck_names: Collection[str] = (NECK_CLASS,),
) -> IndexReport:
    """Join DICOM files (headers only), VOC annotations by stem and labels by SOP Instance UID.

    Parameters
    ----------
    dicom_dir : path
        Searched recursively.
    voc : dict
        :func:`pipelines.hip.voc.read_voc_folder` output.
    labels : dict
        :func:`pipelines.hip.dexa.read_labels` output.
    neck_names : collection of str
        VOC object names that are femoral necks (others are ignored and counted).

    Raises
    ------
    HipDataError
        If the folder does not exist, a VOC file's size does not fit its
        DICOM image, or a VOC file boxes two necks on one side.
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise HipDataError(f"DICOM folder {root} does not exist")
    report = IndexReport()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            report.left_out["not DICOM"] += 1
            continue
        if not_a_hip_radiograph(ds) is not None:
            report.left_out["not a frontal hip radiograph"] += 1
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        row = labels.get(uid)
        if row is None:
            report.left_out["without a label (not paired with a DEXA)"] += 1
            continue
        if path.stem not in voc:
            report.left_out["without a VOC file"] += 1
            continue
        voc_path, annotation = voc[path.stem]
        shape = (int(ds.Rows), int(ds.Columns))
        boxes, others = _scaled_boxes(annotation, voc_path, shape, neck_names)
        report.other_objects += others
        if not boxes:
            report.left_out["VOC file without a femoral-neck box"] += 1
            continue
        flipped, laterality = rows_run_to_patient_right(ds), header_laterality(ds)
        necks: dict[Side, Box4] = {}
        for box in boxes:
            side = Side(laterality) if laterality else side_of_box(box, shape[1], flipped=flipped)
            if side in necks:
                raise HipDataError(
                    f"{voc_path} boxes two femoral necks on the patient's {side.name.lower()} "
                    "side; keep one box per neck"
                    + (
                        f" (Image Laterality says the image shows {laterality})"
                        if laterality
                        else ""
                    )
                )
            necks[side] = box
        study = parse_date(str(ds.get("StudyDate", "") or "")) or image_date(ds) or row.image_date
        report.items.append(
            HipItem(
                path=path,
                sop_instance_uid=uid,
                patient_id=str(ds.get("PatientID", "") or "").strip(),
                year=study.year if isinstance(study, dt.date) else None,
                label=row.label,
                t_score=row.t_score,
                shape=shape,
                flipped=flipped,
                laterality=laterality,
                necks=dict(sorted(necks.items(), key=lambda kv: kv[0] is not Side.RIGHT)),
            )
        )
    return report


def _read(item: HipItem) -> HipRadiograph:
    try:
        return read_hip_radiograph(item.path)
    except RadiographError as exc:
        raise HipDataError(
            f"training image {item.path} cannot be used: {exc}; fix it or remove it"
        ) from None


class LocaliserDataset(TorchDataset):
    """``(image, target)``: a (3, H, W) [0, 1] tensor and ``{"boxes", "labels"}`` in its pixels.

    Images are prepared as the node prepares them for the localiser
    (:func:`pipelines.hip.radiograph.localiser_image`); ``cache`` keeps them
    in memory as float16.
    """

    def __init__(
        self, items: Sequence[HipItem], *, size: int, max_size: int, cache: bool = False
    ) -> None:
        self.items = list(items)
        self.size, self.max_size = size, max_size
        self._cache: dict[int, tuple[np.ndarray, tuple[float, float]]] | None = (
            {} if cache else None
        )

    def __len__(self) -> int:
        return len(self.items)

    def prepared(self, index: int) -> tuple[np.ndarray, tuple[float, float]]:
        """The localiser's (H, W) image of item ``index`` and its (row, column) scale."""
        if self._cache is not None and index in self._cache:
            image, scale = self._cache[index]
            return image.astype(np.float32), scale
        image, scale = localiser_image(_read(self.items[index]).display, self.size, self.max_size)
        if self._cache is not None:
            self._cache[index] = (image.astype(np.float16), scale)
        return image, scale

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, (sy, sx) = self.prepared(index)
        boxes = torch.tensor(
            [
                [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
                for x0, y0, x1, y1 in self.items[index].necks.values()
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.ones(len(boxes), dtype=torch.int64)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return tensor[None].expand(3, -1, -1).contiguous(), {"boxes": boxes, "labels": labels}


class CropDataset(TorchDataset):
    """``(input, target)`` per ground-truth neck: the classifier's normalised input and
    ``[label]`` (float, for BCEWithLogits).

    The crop is cut, mirrored and resized as the node does
    (:mod:`pipelines.hip.sides`, :func:`pipelines.common.preprocess.to_model_input`).
    """

    def __init__(
        self, items: Sequence[HipItem], spec: InputSpec, *, margin: float, cache: bool = False
    ) -> None:
        self.items = list(items)
        self.spec, self.margin = spec, margin
        #: (item index, side) of every crop, in item order, right before left
        self.entries: list[tuple[int, Side]] = [
            (i, side) for i, item in enumerate(self.items) for side in item.necks
        ]
        self._entry_of = {entry: n for n, entry in enumerate(self.entries)}
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.entries)

    def crops(self, item_index: int) -> dict[Side, np.ndarray]:
        """The source-resolution crops of one item's necks (mirrored where the node mirrors)."""
        item = self.items[item_index]
        radiograph = _read(item)
        out = {}
        for side, box in item.necks.items():
            region = crop_region(
                box, self.margin, item.shape, mirrored=is_mirrored(side, flipped=item.flipped)
            )
            out[side] = extract_crop(radiograph.display, region)
        return out

    def targets(self) -> np.ndarray:
        """The 0/1 label of every entry, int64."""
        return np.array([self.items[i].label for i, _ in self.entries], dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item_index, side = self.entries[index]
        target = torch.tensor([float(self.items[item_index].label)], dtype=torch.float32)
        if self._cache is not None and index in self._cache:
            return self._cache[index], target
        crops = self.crops(item_index)
        if self._cache is None:
            return to_model_input([crops[side]], self.spec)[0], target
        for other, crop in crops.items():  # one read caches every neck of the image
            self._cache[self._entry_of[(item_index, other)]] = to_model_input([crop], self.spec)[0]
        return self._cache[index], target
