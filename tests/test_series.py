"""Slice ordering of cross-sectional series: geometry first, fallbacks, and what is skipped.

Every test writes a handful of tiny (8x8) single-frame CT objects to a
temporary folder and hands them to :func:`order_slices` shuffled, so that
the input order never happens to be the answer.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipelines.common.series import OrderedSeries, is_localizer, order_slices, slice_normal

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
UNSET = object()


def tilted_about_x(degrees: float) -> tuple[float, ...]:
    """An axial orientation rotated about the patient's x axis (a gantry tilt)."""
    t = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))


def ct_slice(
    folder: Path,
    name: str,
    *,
    ipp: Sequence[float] | None | object = UNSET,
    iop: Sequence[float] | None = AXIAL,
    slice_location: float | None = None,
    instance_number: int | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    frames: int | None = None,
) -> Path:
    """Write one 8x8 CT slice and return its path (SOP Instance UID = file stem)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(name)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.100"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.101"
    ds.Modality = "CT"
    ds.PatientName = "Secret^Patient"
    ds.PatientID = "P-SECRET"
    ds.ImageType = list(image_type)
    if ipp is UNSET:
        ipp = (0.0, 0.0, float(instance_number or 0))
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]  # type: ignore[union-attr]
    if iop is not None:
        ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
    if slice_location is not None:
        ds.SliceLocation = slice_location
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    rows = 8 * (frames or 1)
    ds.PixelData = np.zeros((rows, 8), dtype=np.int16).tobytes()
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def shuffled(paths: Sequence[Path], seed: int = 0) -> list[Path]:
    out = list(paths)
    random.Random(seed).shuffle(out)
    return out


def uid(name: str) -> str:
    """A valid UID derived from a slice's short name (its digits never start with 0)."""
    return f"1.2.826.0.1.3680043.8.498.{int.from_bytes(name.encode(), 'big')}"


def names(series: OrderedSeries) -> list[str]:
    return [s.path.stem for s in series.slices]


# -- geometry ----------------------------------------------------------------------------


def test_slice_normal_of_standard_planes_and_degenerate_input() -> None:
    np.testing.assert_allclose(slice_normal(AXIAL), [0, 0, 1])
    np.testing.assert_allclose(slice_normal(SAGITTAL), [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(slice_normal([2, 0, 0, 0, 3, 0]), [0, 0, 1])  # unnormalised
    for bad in ([1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 0, 0], [1, 0, 0, 0, 1, math.nan]):
        with pytest.raises(ValueError, match="ImageOrientationPatient"):
            slice_normal(bad)


def test_shuffled_axial_series_comes_back_sorted_by_z_with_even_z_norm(tmp_path: Path) -> None:
    paths = [
        ct_slice(tmp_path, f"{i}", ipp=(-100.0, -120.0, -50.0 + 2.5 * i), instance_number=i + 1)
        for i in range(9)
    ]
    result = order_slices(shuffled(paths))
    assert result.method == "image_position"
    assert result.skipped == ()
    assert names(result) == [str(i) for i in range(9)]
    assert [s.sop_instance_uid for s in result.slices] == [uid(str(i)) for i in range(9)]
    assert [s.index for s in result.slices] == list(range(9))
    np.testing.assert_allclose([s.position for s in result.slices], -50.0 + 2.5 * np.arange(9))
    np.testing.assert_allclose([s.z_norm for s in result.slices], np.linspace(0, 1, 9))


def test_oblique_stack_is_ordered_along_the_normal_not_by_z(tmp_path: Path) -> None:
    # IOP rotated 20° about x: normal n = (0, -sin 20°, cos 20°). The slices step
    # 3 mm along n, and each origin is also shifted in-plane along the column
    # direction (0, cos 20°, sin 20°), which moves z but not the projection on n.
    iop = tilted_about_x(20.0)
    normal = slice_normal(iop)
    column = np.asarray(iop[3:])
    np.testing.assert_allclose(normal, [0, -math.sin(math.radians(20)), math.cos(math.radians(20))])
    shifts = [0.0, -20.0, 10.0, -30.0, 15.0]
    ipps = [3.0 * k * normal + shift * column for k, shift in enumerate(shifts)]
    by_z = sorted(range(len(ipps)), key=lambda k: ipps[k][2])
    assert by_z != list(range(len(ipps)))  # the test only proves something if z disagrees
    paths = [ct_slice(tmp_path, f"{k}", ipp=ipp, iop=iop) for k, ipp in enumerate(ipps)]

    result = order_slices(shuffled(paths, seed=3))  # 20° tilt is well within 30°: kept
    assert result.method == "image_position"
    assert result.skipped == ()
    assert names(result) == ["0", "1", "2", "3", "4"]
    np.testing.assert_allclose([s.position for s in result.slices], [0, 3, 6, 9, 12], atol=1e-6)
    np.testing.assert_allclose([s.z_norm for s in result.slices], [0, 0.25, 0.5, 0.75, 1])


def test_gantry_tilted_axial_stepping_along_z_is_kept_and_ordered(tmp_path: Path) -> None:
    # A tilted CT acquisition: planes tilted 25°, origins stepping along the table (z).
    iop = tilted_about_x(-25.0)
    paths = [ct_slice(tmp_path, f"{k}", ipp=(0, 0, 5.0 * k), iop=iop) for k in range(4)]
    result = order_slices(shuffled(paths))
    assert result.skipped == ()
    assert names(result) == ["0", "1", "2", "3"]
    step = 5.0 * math.cos(math.radians(25))
    np.testing.assert_allclose([s.position for s in result.slices], step * np.arange(4))


def test_feet_first_stack_is_still_ordered_from_feet_to_head(tmp_path: Path) -> None:
    # Feet-first supine: rows run to the patient's right, so row x col = -z, and the
    # scanner numbers the slices from the head down.
    feet_first = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    np.testing.assert_allclose(slice_normal(feet_first), [0, 0, -1])
    paths = [
        ct_slice(tmp_path, f"z{z}", ipp=(0, 0, float(z)), iop=feet_first, instance_number=6 - z)
        for z in range(6)
    ]
    result = order_slices(shuffled(paths))
    assert result.method == "image_position"
    assert names(result) == [f"z{z}" for z in range(6)]  # lowest (most inferior) first
    np.testing.assert_allclose([s.position for s in result.slices], np.arange(6))

    # The same with the usual head-first orientation but reversed numbering.
    folder = tmp_path / "hfs"
    folder.mkdir()
    paths = [
        ct_slice(folder, f"z{z}", ipp=(0, 0, float(z)), instance_number=6 - z) for z in range(6)
    ]
    assert names(order_slices(shuffled(paths))) == [f"z{z}" for z in range(6)]


# -- fallbacks ---------------------------------------------------------------------------


def test_falls_back_to_slice_location_when_position_is_missing(tmp_path: Path) -> None:
    locations = [12.5, -7.5, 0.0, 30.0]
    paths = [
        ct_slice(tmp_path, f"{i}", ipp=None, slice_location=loc, instance_number=i + 1)
        for i, loc in enumerate(locations)
    ]
    # One slice with geometry is not enough: every kept slice needs it.
    paths.append(ct_slice(tmp_path, "4", ipp=(0, 0, 5.0), slice_location=5.0, instance_number=5))
    result = order_slices(shuffled(paths))
    assert result.method == "slice_location"
    assert names(result) == ["1", "2", "4", "0", "3"]
    assert [s.position for s in result.slices] == [-7.5, 0.0, 5.0, 12.5, 30.0]
    np.testing.assert_allclose([s.z_norm for s in result.slices], [0, 0.2, 1 / 3, 0.5333333, 1])


def test_falls_back_to_instance_number_when_position_and_location_are_missing(
    tmp_path: Path,
) -> None:
    paths = [ct_slice(tmp_path, f"n{n}", ipp=None, instance_number=n) for n in (3, 1, 4, 2)]
    paths.append(ct_slice(tmp_path, "n5", ipp=None, slice_location=1.0, instance_number=5))
    result = order_slices(shuffled(paths))
    assert result.method == "instance_number"
    assert names(result) == ["n1", "n2", "n3", "n4", "n5"]
    np.testing.assert_allclose([s.z_norm for s in result.slices], [0, 0.25, 0.5, 0.75, 1])


def test_value_error_when_nothing_orders_the_slices(tmp_path: Path) -> None:
    paths = [ct_slice(tmp_path, f"{i}", ipp=None, instance_number=i + 1) for i in range(3)]
    paths += [ct_slice(tmp_path, f"x{i}", ipp=None) for i in range(2)]
    with pytest.raises(ValueError, match=r"5 slice\(s\).*2 lack InstanceNumber") as info:
        order_slices(paths)
    assert "ImagePositionPatient" in str(info.value)


def test_duplicate_positions_are_kept_and_tied_by_instance_number_then_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [
        ct_slice(tmp_path, "a", ipp=(0, 0, 1.0), instance_number=2),
        ct_slice(tmp_path, "b", ipp=(0, 0, 1.0), instance_number=1),
        ct_slice(tmp_path, "c", ipp=(0, 0, 0.0), instance_number=9),
        ct_slice(tmp_path, "e", ipp=(0, 0, 2.0), instance_number=3),
        ct_slice(tmp_path, "d", ipp=(0, 0, 2.0), instance_number=3),
    ]
    with caplog.at_level(logging.DEBUG, logger="pipelines.common.series"):
        result = order_slices(shuffled(paths))
    assert names(result) == ["c", "b", "a", "d", "e"]
    assert "share position" in caplog.text


# -- what is skipped ---------------------------------------------------------------------


def test_localizer_is_skipped(tmp_path: Path) -> None:
    paths = [ct_slice(tmp_path, f"{i}", ipp=(0, 0, float(i))) for i in range(3)]
    scout = ct_slice(
        tmp_path, "scout", ipp=(0, 0, 1.5), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    result = order_slices(shuffled([*paths, scout]))
    assert names(result) == ["0", "1", "2"]
    assert result.skipped == ((uid("scout"), "localizer/scout image"),)

    ds = Dataset()
    assert not is_localizer(ds)
    ds.ImageType = "ORIGINAL\\PRIMARY\\TOPOGRAM"
    assert is_localizer(ds)
    ds = Dataset()
    ds.ScanOptions = "SCOUT MODE"
    assert is_localizer(ds)


def test_sagittal_slice_is_skipped_while_axial_is_required(tmp_path: Path) -> None:
    paths = [ct_slice(tmp_path, f"{i}", ipp=(0, 0, float(i))) for i in range(3)]
    sagittal = ct_slice(tmp_path, "sag", ipp=(5.0, -100.0, 100.0), iop=SAGITTAL)
    result = order_slices(shuffled([*paths, sagittal]))
    assert names(result) == ["0", "1", "2"]
    [(ident, reason)] = result.skipped
    assert ident == uid("sag")
    assert reason.startswith("not axial: normal is 90° from the patient's z axis")
    assert "sagittal/coronal or strongly oblique" in reason

    # Not requiring axial: a sagittal stack orders along its normal (-x, signed to +x).
    folder = tmp_path / "sag"
    folder.mkdir()
    stack = [ct_slice(folder, f"x{x}", ipp=(float(x), 0, 0), iop=SAGITTAL) for x in (2, -1, 0)]
    result = order_slices(stack, require_axial=False)
    assert names(result) == ["x-1", "x0", "x2"]
    assert [s.position for s in result.slices] == [-1.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="max_obliquity_deg"):
        order_slices(stack, max_obliquity_deg=120)


def test_strongly_oblique_slice_respects_max_obliquity(tmp_path: Path) -> None:
    path = ct_slice(tmp_path, "t", ipp=(0, 0, 0), iop=tilted_about_x(25.0))
    assert len(order_slices([path]).slices) == 1
    result = order_slices([path], max_obliquity_deg=20.0)
    assert result.slices == ()
    assert result.skipped[0][1].startswith("not axial: normal is 25°")


@pytest.mark.parametrize(
    "outlier_iop",
    [
        tilted_about_x(10.0),  # a different plane (still "axial" within 30°)
        (math.cos(0.1), math.sin(0.1), 0.0, -math.sin(0.1), math.cos(0.1), 0.0),  # in-plane turn
    ],
    ids=["tilted-plane", "in-plane-rotation"],
)
def test_orientation_outlier_is_skipped(tmp_path: Path, outlier_iop: tuple[float, ...]) -> None:
    paths = [ct_slice(tmp_path, f"{i}", ipp=(0, 0, float(i))) for i in range(4)]
    # within the ~1° tolerance: same stack
    paths.append(ct_slice(tmp_path, "close", ipp=(0, 0, 4.0), iop=tilted_about_x(0.5)))
    odd = ct_slice(tmp_path, "odd", ipp=(0, 0, 2.5), iop=outlier_iop)
    result = order_slices(shuffled([odd, *paths]))
    assert names(result) == ["0", "1", "2", "3", "close"]
    [(ident, reason)] = result.skipped
    assert ident == uid("odd")
    assert reason.startswith("orientation differs from the rest of the series")


def test_single_slice_gets_z_norm_one_half(tmp_path: Path) -> None:
    result = order_slices([ct_slice(tmp_path, "only", ipp=(0, 0, 42.0))])
    [only] = result.slices
    assert (only.index, only.z_norm, only.position) == (0, 0.5, 42.0)


def test_unreadable_multiframe_and_non_image_files_are_skipped_with_reasons(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [ct_slice(tmp_path, f"{i}", ipp=(0, 0, float(i))) for i in range(2)]
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    missing = tmp_path / "vanished.dcm"
    # pydicom reads a truncated header leniently: what survives has no image attributes
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[0].read_bytes()[:200])
    multi = ct_slice(tmp_path, "multi", ipp=(0, 0, 0.5), frames=3)
    no_image = ct_slice(tmp_path, "sr", ipp=None)
    ds = pydicom.dcmread(no_image)
    del ds.Rows, ds.Columns, ds.PixelData
    ds.save_as(no_image, enforce_file_format=True)

    with caplog.at_level(logging.INFO, logger="pipelines.common.series"):
        result = order_slices([text, *good, missing, truncated, multi, no_image])
    assert names(result) == ["0", "1"]
    reasons = dict(result.skipped)
    assert reasons["notes.txt"] == "not a readable DICOM file: no DICOM preamble/header"
    assert reasons["vanished.dcm"] == "not a readable DICOM file: FileNotFoundError"
    assert reasons["truncated.dcm"].startswith("no image attributes")
    assert reasons[uid("multi")] == "multi-frame object: not a slice of a single-frame stack"
    assert reasons[uid("sr")].startswith("no image attributes")
    assert len(result.skipped) == 5
    for ident in reasons:
        assert ident in caplog.text
    assert "Secret" not in caplog.text and "P-SECRET" not in caplog.text


def test_every_file_skipped_gives_an_empty_series(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    result = order_slices([text])
    assert result.slices == ()
    assert [ident for ident, _ in result.skipped] == ["notes.txt"]


def test_parsed_datasets_are_used_instead_of_reading(tmp_path: Path) -> None:
    paths = [ct_slice(tmp_path, f"{i}", ipp=(0, 0, float(i))) for i in range(3)]
    datasets = {p: pydicom.dcmread(p) for p in paths}
    datasets[paths[0]].ImagePositionPatient = [0.0, 0.0, 10.0]  # differs from the file
    for p in paths:
        p.write_bytes(b"gone")  # reading a file now would fail
    result = order_slices(shuffled(paths), datasets=datasets)
    assert result.skipped == ()
    assert names(result) == ["1", "2", "0"]
