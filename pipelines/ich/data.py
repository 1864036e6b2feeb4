"""RSNA Intracranial Hemorrhage data: a labels CSV plus a folder of DICOM slices.

The competition's format: one DICOM file per slice and a CSV with a header
``ID,Label`` and six rows per slice, ``ID_<image>_<subtype>,<0|1>`` for
epidural, intraparenchymal, intraventricular, subarachnoid, subdural and any.
``<image>`` is the file's name without ``ID_`` and ``.dcm`` and, in the
competition files, also its SOP Instance UID; both are matched here.

The folder is indexed once from the headers (patient, study, series,
geometry), slices are ordered per series along the slice normal to get the
normalised position z the model takes, and the data is split by patient
(by study when Patient ID is missing), so that no patient contributes to two
splits. Slices are read lazily by :class:`SliceDataset`; ``cache=True`` keeps
the preprocessed tensors (float16) in memory for small sets such as the demo.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset

from pipelines.card import InputSpec
from pipelines.common.preprocess import to_model_input
from pipelines.common.series import order_slices
from pipelines.common.slices import CachedSlices, SliceError, read_slice
from pipelines.common.split import grouped_split
from pipelines.ich.labels import LABELS
from pipelines.ich.slices import input_spec

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The labels CSV or the DICOM folder is not usable; the message says what to fix."""


@dataclass(frozen=True)
class LabelledSlice:
    """One slice with its labels and where it sits in its series."""

    path: Path
    image_id: str
    sop_instance_uid: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    z: float
    labels: tuple[int, ...]

    @property
    def group(self) -> str:
        """The unit of splitting: the patient, or the study when Patient ID is empty."""
        return self.patient_id or f"study:{self.study_instance_uid}"


def read_labels(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse an RSNA labels CSV into ``{image_id: labels in LABELS order}``.

    Identical duplicate rows (present in the competition's file) are
    accepted; conflicting ones are an error, as are unknown subtypes and
    images that lack some of the six labels.

    Raises
    ------
    DataError
        Naming the line and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    values: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(newline="", encoding="utf-8-sig") as fh:  # tolerate a BOM (Excel)
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise DataError(f"{path}: the first line must be the header 'ID,Label', got {header}")
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{line}: expected 'ID_<image>_<subtype>,<0|1>'")
            ident, raw = row[0].strip(), row[1].strip()
            image, _, subtype = ident.rpartition("_")
            if not image.startswith("ID_") or subtype not in LABELS:
                raise DataError(
                    f"{path}:{line}: {ident!r} is not ID_<image>_<subtype> with a subtype "
                    f"in {', '.join(LABELS)}"
                )
            if raw not in ("0", "1"):
                raise DataError(f"{path}:{line}: label must be 0 or 1, got {raw!r}")
            image_id = image[3:]
            previous = values[image_id].get(subtype)
            if previous is not None and previous != int(raw):
                raise DataError(f"{path}:{line}: conflicting labels for {ident}")
            values[image_id][subtype] = int(raw)
    incomplete = [i for i, v in values.items() if len(v) != len(LABELS)]
    if incomplete:
        raise DataError(
            f"{path}: {len(incomplete)} image(s) lack some of the six labels, e.g. "
            f"ID_{incomplete[0]} has only {', '.join(sorted(values[incomplete[0]]))}"
        )
    if not values:
        raise DataError(f"{path} holds no labels")
    return {i: tuple(v[label] for label in LABELS) for i, v in values.items()}


def _dicom_files(folder: Path) -> Iterable[Path]:
    """Every file below ``folder``: exports name files ``ID_x.dcm``, ``<SOP UID>`` or ``IM0001``;
    whether one is DICOM is decided by reading it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def _image_id(path: Path) -> str:
    stem = (
        path.name[: -len(path.suffix)] if path.suffix.lower() in (".dcm", ".dicom") else path.name
    )
    return stem[3:] if stem.startswith("ID_") else stem


def index_folder(
    folder: str | Path, labels: dict[str, tuple[int, ...]], *, require_all: bool = False
) -> list[LabelledSlice]:
    """Match the labelled images to files under ``folder`` and order each series.

    Only headers are read. Files without labels are ignored; labelled images
    without a file are counted and reported (an error with ``require_all``).

    Raises
    ------
    DataError
        If no labelled image is found, or some are missing and ``require_all``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"DICOM folder {folder} does not exist")
    headers: dict[Path, Dataset] = {}
    ds: Dataset
    ids: dict[Path, str] = {}
    for path in _dicom_files(folder):
        image_id = _image_id(path)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: not part of the data set
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        for candidate in (image_id, uid, uid[3:] if uid.startswith("ID_") else None):
            if candidate and candidate in labels:
                headers[path], ids[path] = ds, candidate
                break
    if not headers:
        raise DataError(
            f"none of the {len(labels)} labelled images was found under {folder}; files must be "
            "named ID_<image>.dcm or carry the image id as SOP Instance UID"
        )
    missing = len(labels) - len(set(ids.values()))
    if missing:
        message = f"{missing} labelled image(s) have no file under {folder}"
        if require_all:
            raise DataError(message)
        logger.warning("%s; training on the %d found", message, len(headers))
    by_series: dict[str, list[Path]] = defaultdict(list)
    for path, ds in headers.items():
        by_series[str(ds.get("SeriesInstanceUID", "")) or f"file:{path}"].append(path)
    out: list[LabelledSlice] = []
    for series_uid, paths in sorted(by_series.items()):
        try:
            ordered = order_slices(paths, datasets={p: headers[p] for p in paths})
        except ValueError as exc:
            logger.warning("series %s skipped: %s", series_uid, exc)
            continue
        for ident, why in ordered.skipped:
            logger.info("slice %s skipped: %s", ident, why)
        for info in ordered.slices:
            ds = headers[info.path]
            out.append(
                LabelledSlice(
                    path=info.path,
                    image_id=ids[info.path],
                    sop_instance_uid=info.sop_instance_uid,
                    patient_id=str(ds.get("PatientID", "")),
                    study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                    series_instance_uid=series_uid,
                    z=info.z_norm,
                    labels=labels[ids[info.path]],
                )
            )
    if not out:
        raise DataError(f"no usable axial slice among the labelled files under {folder}")
    return out


def split_by_group(
    slices: Sequence[LabelledSlice], fractions: Sequence[float], *, seed: int = 0
) -> list[list[LabelledSlice]]:
    """Split slices into ``len(fractions)`` parts by patient (or study), never across them.

    Groups are stratified by their rarest hemorrhage subtype (``any`` is not
    a subtype), see :func:`pipelines.common.split.grouped_split`.
    """
    subtypes = [label for label in LABELS if label != "any"]
    return grouped_split(
        slices,
        fractions,
        group=lambda s: s.group,
        classes=lambda s: [
            label for label, v in zip(LABELS, s.labels, strict=True) if v and label != "any"
        ],
        class_order=subtypes,
        seed=seed,
    )


class SliceDataset(CachedSlices):
    """``((image, z), labels)`` items for :func:`pipelines.common.train.fit`.

    ``image`` is the normalised (3, size, size) float32 input, ``z`` a 0-d
    float32 tensor and ``labels`` a float32 vector in LABELS order.
    Unreadable slices raise :class:`DataError` naming the file (a training
    set must be clean; fix or remove the file).
    """

    data_error = DataError

    def __init__(
        self, slices: Sequence[LabelledSlice], spec: InputSpec, *, cache: bool = False
    ) -> None:
        super().__init__(slices, spec, cache=cache)
        self.spec = spec

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        item = self.slices[index]
        return (
            (self.read_input(index), torch.tensor(item.z, dtype=torch.float32)),
            torch.tensor(item.labels, dtype=torch.float32),
        )

    def targets(self) -> np.ndarray:
        """(N, 6) 0/1 labels."""
        return np.array([s.labels for s in self.slices], dtype=np.int64).reshape(-1, len(LABELS))


def channel_statistics(
    slices: Sequence[LabelledSlice], size: int, *, max_slices: int = 2000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the windowed inputs (the seed's Normalize statistics).

    Computed at the model's input size on up to ``max_slices`` slices drawn
    with ``seed`` from the training split only.
    """
    spec = input_spec(size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(slices))[:max_slices]
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in chosen:
        try:
            _, stack = read_slice(slices[i].path, spec)
        except SliceError as exc:
            raise DataError(f"{slices[i].path}: {exc}") from exc
        x = to_model_input([stack], spec)[0].double().numpy()
        total += x.sum(axis=(1, 2))
        total_sq += (x**2).sum(axis=(1, 2))
        count += x.shape[1] * x.shape[2]
    if count == 0:
        raise DataError("no slices to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(max(v, 1e-3)), 6) for v in std]
