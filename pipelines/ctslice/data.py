"""Labelled CT slices for ``train`` / ``evaluate ct-slice-classifier``: a slice CSV or class folders.

Seed 000 labelled single CT images. Two layouts are accepted:

* a **slice CSV** with a header and one row per slice: ``path`` (absolute,
  or relative to the CSV's folder) and ``label`` (the class name) are
  required; ``patient_id``, ``study_instance_uid``, ``series_instance_uid``
  and ``sop_instance_uid`` are optional and read from the file's header
  when missing or empty (other columns are ignored).
  ``dicom-node synth ct-abdomen`` writes one;
* **class folders**: ``DIR/<label>/...`` with the DICOM files of each class
  anywhere below its folder (how many exports and the study's own data
  are organised); identifiers come from the headers.

Slices are split by patient (by study when Patient ID is empty), never
across patients (:func:`pipelines.common.split.grouped_split`), and read
through the same windowing and resizing as inference
(:func:`pipelines.common.slices.read_slice`,
:func:`pipelines.common.preprocess.to_model_input`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from pipelines.card import InputSpec
from pipelines.common.slices import CachedSlices
from pipelines.common.split import grouped_split

logger = logging.getLogger(__name__)

#: Columns a slice CSV must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label")
#: Optional identifier columns, read from the header when absent or empty.
ID_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
)
_KEYWORDS = {
    "patient_id": "PatientID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}


class DataError(ValueError):
    """The slice CSV or class folders are not usable; the message says what to fix."""


@dataclass(frozen=True)
class LabelledSlice:
    """One CT slice with its class name and identifiers."""

    path: Path
    label: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    @property
    def group(self) -> str:
        """The unit of splitting: the patient, or the study when Patient ID is empty."""
        return self.patient_id or f"study:{self.study_instance_uid or self.path}"

    @property
    def series(self) -> str:
        """The series the slice belongs to (the unit of the series-level decision)."""
        return self.series_instance_uid or f"file:{self.path}"


def _header_ids(path: Path) -> dict[str, str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Exception as exc:  # pydicom raises many types for non-DICOM files
        raise DataError(f"{path} is not a readable DICOM file ({type(exc).__name__})") from exc
    return {column: str(ds.get(keyword, "") or "") for column, keyword in _KEYWORDS.items()}


def read_slice_csv(path: str | Path) -> list[LabelledSlice]:
    """Read a slice CSV (see the module docstring).

    Raises
    ------
    DataError
        If the file or a column is missing, a row has no path or label, or a
        listed file cannot be read; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"slice CSV {path} does not exist")
    out: list[LabelledSlice] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:  # tolerate a BOM (Excel)
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(
                f"{path}: the header must name the columns {', '.join(REQUIRED_COLUMNS)} "
                f"(missing {', '.join(missing)}); got {', '.join(columns) or 'nothing'}"
            )
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not any(row.values()):
                continue
            if not row["path"] or not row["label"]:
                raise DataError(f"{path}:{line}: every row needs a path and a label")
            file = Path(row["path"])
            file = file if file.is_absolute() else path.parent / file
            ids = {c: row.get(c, "") for c in ID_COLUMNS}
            if not all(ids.values()):
                try:
                    header = _header_ids(file)
                except DataError as exc:
                    raise DataError(f"{path}:{line}: {exc}") from None
                ids = {c: ids[c] or header[c] for c in ID_COLUMNS}
            out.append(LabelledSlice(path=file, label=row["label"], **ids))
    if not out:
        raise DataError(f"{path} lists no slices")
    return out


def read_class_dir(folder: str | Path) -> list[LabelledSlice]:
    """Read ``folder/<label>/**`` (every DICOM file below each class folder).

    Files that are not DICOM are skipped with one warning per class.

    Raises
    ------
    DataError
        If the folder has no class subfolder or no DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"class folder {folder} does not exist")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{folder} has no class subfolders; put each class's DICOM files in {folder}/<label>/"
        )
    out: list[LabelledSlice] = []
    for class_dir in classes:
        not_dicom = 0
        for file in _files(class_dir):
            try:
                ids = _header_ids(file)
            except DataError:
                not_dicom += 1
                continue
            out.append(LabelledSlice(path=file, label=class_dir.name, **ids))
        if not_dicom:
            logger.warning("%d file(s) under %s are not DICOM; ignored", not_dicom, class_dir)
    if not out:
        raise DataError(f"no DICOM file under the class folders of {folder}")
    return out


def _files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            yield path


def label_order(
    slices: Sequence[LabelledSlice], labels: Sequence[str] | None = None, normal: str = "normal"
) -> tuple[str, ...]:
    """The model's output order: ``labels`` as given, else the normal label then the others sorted.

    Raises
    ------
    DataError
        If ``labels`` misses a class present in the data, or there are fewer
        than two classes.
    """
    present = sorted({s.label for s in slices})
    if labels:
        order = tuple(labels)
        unknown = [label for label in present if label not in order]
        if unknown:
            raise DataError(
                f"the data have label(s) {', '.join(unknown)} that --labels does not list "
                f"({', '.join(order)})"
            )
    else:
        order = tuple(([normal] if normal in present else []) + [x for x in present if x != normal])
    if len(order) < 2:
        raise DataError(f"need at least two classes to train a classifier, found {present}")
    return order


def split_slices(
    slices: Sequence[LabelledSlice],
    fractions: Sequence[float],
    labels: Sequence[str],
    *,
    normal: str = "normal",
    seed: int = 0,
) -> list[list[LabelledSlice]]:
    """Split by patient into ``len(fractions)`` parts, stratified by the patients' findings."""
    findings = [label for label in labels if label != normal]
    return grouped_split(
        slices,
        fractions,
        group=lambda s: s.group,
        classes=lambda s: [s.label] if s.label != normal else [],
        class_order=findings,
        seed=seed,
    )


def raw_spec(spec: InputSpec) -> InputSpec:
    """``spec`` without normalisation (mean 0, std 1), one channel when the window is replicated."""
    channels = spec.channels if spec.windows is not None else 1
    return spec.model_copy(
        update={"channels": channels, "mean": [0.0] * channels, "std": [1.0] * channels}
    )


class SliceDataset(CachedSlices):
    """``(image, class index)`` items for :func:`pipelines.common.train.fit`.

    ``image`` is the normalised (channels, size, size) float32 input, exactly
    as inference builds it. With ``cache`` the windowed, resized slice is
    kept in memory as float16 (one channel when the window is replicated),
    so training epochs and grid runs do not decode DICOM again.
    Unreadable slices raise :class:`DataError` naming the file (a training
    set must be clean; fix or remove the file).
    """

    data_error = DataError

    def __init__(
        self,
        slices: Sequence[LabelledSlice],
        labels: Sequence[str],
        spec: InputSpec,
        *,
        cache: bool = True,
    ) -> None:
        super().__init__(slices, raw_spec(spec), cache=cache)
        self.labels = tuple(labels)
        self.spec = spec
        index = {label: i for i, label in enumerate(self.labels)}
        try:
            self._targets = np.array([index[s.label] for s in self.slices], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"label {exc.args[0]!r} is not one of {self.labels}") from None
        c = spec.channels
        self._mean = torch.tensor(_per_channel(spec.mean, c)).view(c, 1, 1)
        self._std = torch.tensor(_per_channel(spec.std, c)).view(c, 1, 1)

    def windowed(self, index: int) -> torch.Tensor:
        """The slice windowed to [0, 1] at the input size, before normalisation."""
        return self.read_input(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.windowed(index).expand(self.spec.channels, -1, -1)
        return (x - self._mean) / self._std, torch.tensor(self._targets[index])

    def with_spec(self, spec: InputSpec) -> SliceDataset:
        """The same slices with another normalisation (the cache is shared when the size is)."""
        other = SliceDataset(self.slices, self.labels, spec, cache=self._cache is not None)
        if (
            other._cache is not None
            and self._cache is not None
            and raw_spec(spec) == self._read_spec
        ):
            other._cache = self._cache
        return other

    def targets(self) -> np.ndarray:
        """(N,) class indices."""
        return self._targets.copy()

    def series(self) -> list[str]:
        """The series of each slice (for series-level decisions)."""
        return [s.series for s in self.slices]


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)[:channels]


def channel_statistics(
    dataset: SliceDataset, *, max_items: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Mean and std of the windowed [0, 1] inputs (the normalisation of the card).

    Computed on up to ``max_items`` slices of ``dataset`` (the training split)
    drawn with ``seed``, over all pixels and channels; rounded to 4 digits.
    """
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:max_items]
    total = total_sq = 0.0
    count = 0
    for i in chosen:
        x = dataset.windowed(int(i)).double()
        total += float(x.sum())
        total_sq += float((x**2).sum())
        count += x.numel()
    if count == 0:
        raise DataError("no slices to compute normalisation statistics from")
    mean = total / count
    std = max(float(np.sqrt(max(total_sq / count - mean**2, 0.0))), 1e-3)
    return round(mean, 4), round(std, 4)
