"""Put the slices of a cross-sectional series (CT, MR) in anatomical order.

The node hands a pipeline the files of a series in whatever order they
arrived, and neither file names nor InstanceNumber are a reliable order:
scanners number feet-first acquisitions head to foot, reconstructions are
renumbered, and a gantry tilt makes z alone ambiguous. The one geometric
truth is where each slice plane lies, so slices are ordered by their
ImagePositionPatient projected on the slice normal, falling back to
SliceLocation and then InstanceNumber only when the geometry is missing.

Only headers are read (``stop_before_pixels``), so ordering a 1000-slice
series costs little more than listing it. Files that cannot be part of a
single-frame stack (unreadable, not an image, localizers, multi-frame
objects, non-axial or differently oriented slices) are returned in
``skipped`` with the reason; only SOP Instance UIDs or file names are
logged, never patient data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from imaging.files import UnreadableDicom, read_dataset

logger = logging.getLogger(__name__)

OrderingMethod = Literal["image_position", "slice_location", "instance_number"]

#: Slices whose row or column direction differs from the series' majority
#: orientation by more than this are not part of the same stack.
ORIENTATION_TOLERANCE_DEG = 1.0
#: Positions closer than this (mm, or units of the fallback attribute) are duplicates.
_DUPLICATE_TOLERANCE = 1e-3
#: ImageType values and CT ScanOptions that mark a projection localizer.
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW")


@dataclass(frozen=True)
class SliceInfo:
    """One kept slice of an ordered series.

    Parameters
    ----------
    path : Path
        The file.
    sop_instance_uid : str
        Its SOP Instance UID ("" if the object has none).
    position : float
        Where the slice lies along the stack: with method ``"image_position"``
        mm along the slice normal (``ImagePositionPatient · n``, with ``n``
        signed so that its largest component is positive, i.e. towards the
        head for axial slices); otherwise the slice's SliceLocation or
        InstanceNumber.
    z_norm : float
        ``position`` scaled to [0, 1] within the kept slices (0 = lowest
        position); 0.5 when all kept slices share one position.
    index : int
        0-based rank after sorting.
    """

    path: Path
    sop_instance_uid: str
    position: float
    z_norm: float
    index: int


@dataclass(frozen=True)
class OrderedSeries:
    """The result of :func:`order_slices`.

    Parameters
    ----------
    slices : tuple of SliceInfo
        Kept slices, sorted by ascending position. Empty when every file was
        skipped (``method`` is then ``"image_position"``, vacuously).
    skipped : tuple of (str, str)
        (SOP Instance UID, or file name when there is none, reason) for every
        file left out, in input order.
    method : {"image_position", "slice_location", "instance_number"}
        Which attribute gave the positions.
    """

    slices: tuple[SliceInfo, ...]
    skipped: tuple[tuple[str, str], ...]
    method: OrderingMethod


@dataclass
class _Candidate:
    """Header facts of one file that passed the per-file checks."""

    path: Path
    uid: str
    ident: str
    instance_number: int | None
    slice_location: float | None
    ipp: np.ndarray | None
    iop: np.ndarray | None
    normal: np.ndarray | None


def slice_normal(iop: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the unit normal of an image plane: row cosines x column cosines.

    Parameters
    ----------
    iop : sequence of 6 float
        ImageOrientationPatient: the row direction cosines followed by the
        column direction cosines, in the patient (LPS) coordinate system.

    Returns
    -------
    numpy.ndarray
        Shape (3,), float64, unit length. For a standard axial image
        (``[1, 0, 0, 0, 1, 0]``) it is ``[0, 0, 1]``.

    Raises
    ------
    ValueError
        If ``iop`` does not hold 6 finite numbers, a direction has zero
        length, or the two directions are far from perpendicular (the plane
        is degenerate: the object's ImageOrientationPatient is corrupt).
    """
    try:
        values = np.asarray([float(v) for v in iop], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ImageOrientationPatient must hold 6 numbers, got {iop!r}") from exc
    if values.shape != (6,) or not np.isfinite(values).all():
        raise ValueError(f"ImageOrientationPatient must hold 6 finite numbers, got {iop!r}")
    row, col = values[:3], values[3:]
    row_len, col_len = np.linalg.norm(row), np.linalg.norm(col)
    if row_len < 1e-6 or col_len < 1e-6:
        raise ValueError(
            f"ImageOrientationPatient {values.tolist()} has a zero-length direction; "
            "the plane is undefined"
        )
    row, col = row / row_len, col / col_len
    if abs(float(row @ col)) > 0.1:
        raise ValueError(
            f"ImageOrientationPatient {values.tolist()}: row and column directions are not "
            "perpendicular; the plane is degenerate"
        )
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def is_localizer(ds: Dataset) -> bool:
    """Return True if the header marks the object as a localizer (scout, topogram, survey).

    Looks at ImageType (CT's defined term ``LOCALIZER``; ``SCOUT``,
    ``TOPOGRAM`` and ``SURVIEW`` as vendors write them) and CT ScanOptions.
    Free-text descriptions (SeriesDescription, ProtocolName) are not used:
    they are site conventions, and a wrong guess would drop diagnostic slices.
    """
    fields: list[str] = []
    for keyword in ("ImageType", "ScanOptions"):
        value = ds.get(keyword)
        if value is None:
            continue
        if isinstance(value, str | bytes):
            value = [value]
        fields.extend(str(v).upper() for v in value)
    return any(word in field for field in fields for word in _LOCALIZER_WORDS)


def order_slices(
    files: Sequence[Path],
    *,
    require_axial: bool = True,
    max_obliquity_deg: float = 30.0,
    datasets: Mapping[Path, Dataset] | None = None,
) -> OrderedSeries:
    """Sort the files of one cross-sectional series into a stack and position each slice.

    Parameters
    ----------
    files : sequence of Path
        The files of one series, in any order.
    require_axial : bool
        Skip slices whose normal is more than ``max_obliquity_deg`` from the
        patient's z axis (sagittal, coronal, strongly oblique). Gantry-tilted
        axial slices are kept. Slices without ImageOrientationPatient cannot
        be checked and are kept.
    max_obliquity_deg : float
        The largest accepted angle between slice normal and z axis, in [0, 90].
    datasets : mapping of Path to Dataset, optional
        Already parsed datasets; a file found here is not read again.

    Returns
    -------
    OrderedSeries
        Kept slices by ascending position (ties: InstanceNumber, then SOP
        Instance UID), the skipped files with reasons, and the method used.
        Positions come from ImagePositionPatient along the majority normal
        when every kept slice has ImagePositionPatient and
        ImageOrientationPatient; otherwise from SliceLocation when every kept
        slice has one; otherwise from InstanceNumber.

    Raises
    ------
    ValueError
        If ``max_obliquity_deg`` is out of range, or if some kept slices have
        neither geometry nor SliceLocation nor InstanceNumber (the message
        says how many and what the export must add).
    """
    if not 0.0 <= max_obliquity_deg <= 90.0:
        raise ValueError(f"max_obliquity_deg must be in [0, 90], got {max_obliquity_deg}")
    datasets = datasets or {}
    skipped: list[tuple[str, str]] = []
    candidates: list[_Candidate] = []
    for item in files:
        path = Path(item)
        candidate = _candidate(path, datasets.get(path), skipped, require_axial, max_obliquity_deg)
        if candidate is not None:
            candidates.append(candidate)

    candidates = _drop_orientation_outliers(candidates, skipped)
    method, positions = _positions(candidates)
    slices = _rank(candidates, positions)
    logger.debug("ordered %d slice(s) by %s, skipped %d file(s)", len(slices), method, len(skipped))
    return OrderedSeries(slices=slices, skipped=tuple(skipped), method=method)


# -- per-file checks -------------------------------------------------------------------


def _skip(skipped: list[tuple[str, str]], ident: str, reason: str) -> None:
    skipped.append((ident, reason))
    logger.info("skipping %s: %s", ident, reason)


def _candidate(
    path: Path,
    ds: Dataset | None,
    skipped: list[tuple[str, str]],
    require_axial: bool,
    max_obliquity_deg: float,
) -> _Candidate | None:
    """Read one header and return its facts, or record why the file is left out."""
    if ds is None:
        try:
            ds = read_dataset(path, stop_before_pixels=True)
        except UnreadableDicom as exc:
            _skip(skipped, path.name, str(exc))
            return None
    uid = str(ds.get("SOPInstanceUID", "") or "")
    ident = uid or path.name
    if "Rows" not in ds or "Columns" not in ds:
        _skip(skipped, ident, "no image attributes (Rows/Columns): not an image")
        return None
    if (_int(ds, "NumberOfFrames") or 1) > 1:
        _skip(skipped, ident, "multi-frame object: not a slice of a single-frame stack")
        return None
    if is_localizer(ds):
        _skip(skipped, ident, "localizer/scout image")
        return None

    iop = _floats(ds, "ImageOrientationPatient", 6)
    normal = None
    if iop is not None:
        try:
            normal = slice_normal(iop)
        except ValueError as exc:
            _skip(skipped, ident, f"invalid ImageOrientationPatient: {exc}")
            return None
        iop = np.concatenate([iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])])
    if require_axial and normal is not None:
        angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
        if angle > max_obliquity_deg:
            _skip(
                skipped,
                ident,
                f"not axial: normal is {angle:.0f}° from the patient's z axis "
                "(sagittal/coronal or strongly oblique)",
            )
            return None

    location = _floats(ds, "SliceLocation", 1)
    return _Candidate(
        path=path,
        uid=uid,
        ident=ident,
        instance_number=_int(ds, "InstanceNumber"),
        slice_location=float(location[0]) if location is not None else None,
        ipp=_floats(ds, "ImagePositionPatient", 3),
        iop=iop,
        normal=normal,
    )


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """The attribute as ``count`` finite floats, or None if absent or malformed."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        items = [value] if isinstance(value, str | int | float) else list(value)
        out = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if out.shape != (count,) or not np.isfinite(out).all():
        return None
    return out


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


# -- series-level ordering -------------------------------------------------------------


def _direction_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Largest angle between the row directions and between the column directions of two IOPs."""
    cosines = min(float(a[:3] @ b[:3]), float(a[3:] @ b[3:]))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosines))))


def _drop_orientation_outliers(
    candidates: list[_Candidate], skipped: list[tuple[str, str]]
) -> list[_Candidate]:
    """Skip slices whose orientation differs from the majority's by more than the tolerance.

    Orientations are grouped greedily (within the tolerance of a group's first
    member); the largest group is the reference, ties going to the group seen
    first. Slices without ImageOrientationPatient are kept.
    """
    oriented = [c for c in candidates if c.iop is not None]
    if len(oriented) < 2:
        return candidates
    groups: list[tuple[np.ndarray, int]] = []
    for c in oriented:
        assert c.iop is not None
        for i, (rep, size) in enumerate(groups):
            if _direction_angle_deg(c.iop, rep) <= ORIENTATION_TOLERANCE_DEG:
                groups[i] = (rep, size + 1)
                break
        else:
            groups.append((c.iop, 1))
    if len(groups) == 1:
        return candidates
    reference = max(groups, key=lambda g: g[1])[0]  # max() keeps the first of equal sizes
    kept = []
    for c in candidates:
        angle = 0.0 if c.iop is None else _direction_angle_deg(c.iop, reference)
        if angle > ORIENTATION_TOLERANCE_DEG:
            _skip(
                skipped,
                c.ident,
                "orientation differs from the rest of the series "
                f"({angle:.1f}° from the majority orientation)",
            )
        else:
            kept.append(c)
    return kept


def _reference_normal(candidates: list[_Candidate]) -> np.ndarray:
    """The stack normal, signed so that its largest component is positive (axial: +z, head)."""
    normals = [c.normal for c in candidates if c.normal is not None]
    normal = np.mean(normals, axis=0)  # all within the tolerance after the outlier check
    normal = normal / np.linalg.norm(normal)
    if normal[int(np.argmax(np.abs(normal)))] < 0:
        normal = -normal
    return normal


def _positions(candidates: list[_Candidate]) -> tuple[OrderingMethod, list[float]]:
    """The ordering method and each candidate's position, by the first attribute all carry."""
    ipps = [c.ipp for c in candidates if c.ipp is not None and c.normal is not None]
    if len(ipps) == len(candidates):
        if not candidates:
            return "image_position", []
        normal = _reference_normal(candidates)
        return "image_position", [float(ipp @ normal) for ipp in ipps]
    locations = [c.slice_location for c in candidates if c.slice_location is not None]
    if len(locations) == len(candidates):
        return "slice_location", locations
    numbers = [float(c.instance_number) for c in candidates if c.instance_number is not None]
    if len(numbers) == len(candidates):
        return "instance_number", numbers
    no_geometry = sum(c.ipp is None or c.normal is None for c in candidates)
    no_location = sum(c.slice_location is None for c in candidates)
    no_number = sum(c.instance_number is None for c in candidates)
    raise ValueError(
        f"cannot order the {len(candidates)} slice(s) of the series: {no_number} lack "
        f"InstanceNumber, {no_location} lack SliceLocation and {no_geometry} lack "
        "ImagePositionPatient/ImageOrientationPatient. Export the series with "
        "ImagePositionPatient and ImageOrientationPatient on every slice (or at least "
        "SliceLocation or InstanceNumber)"
    )


def _rank(candidates: list[_Candidate], positions: list[float]) -> tuple[SliceInfo, ...]:
    if not candidates:
        return ()

    def key(i: int) -> tuple[float, int, int, str, str]:
        c = candidates[i]
        number = c.instance_number
        return (
            round(positions[i], 6),
            number is None,
            number if number is not None else 0,
            c.uid,
            str(c.path),
        )

    order = sorted(range(len(candidates)), key=key)
    lo, hi = min(positions), max(positions)
    span = hi - lo
    out = []
    for rank, i in enumerate(order):
        if rank > 0 and abs(positions[i] - positions[order[rank - 1]]) < _DUPLICATE_TOLERANCE:
            logger.debug(
                "slices %s and %s share position %.3f",
                candidates[order[rank - 1]].ident,
                candidates[i].ident,
                positions[i],
            )
        z_norm = (positions[i] - lo) / span if span > 0 else 0.5
        out.append(
            SliceInfo(
                path=candidates[i].path,
                sop_instance_uid=candidates[i].uid,
                position=positions[i],
                z_norm=z_norm,
                index=rank,
            )
        )
    return tuple(out)
