"""Phantoms are real, standard-conformant, deterministic DICOM radiographs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.pixels import display_pixels
from pipelines.common.phantoms import (
    DX_FOR_PRESENTATION_SOP_CLASS,
    LESION_RADIUS_RANGE,
    make_radiograph,
    write_radiograph_dataset,
    write_radiograph_study,
)

DCIODVFY = shutil.which("dciodvfy") or (
    "/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists() else None
)


def test_make_radiograph_is_deterministic_and_12_bit() -> None:
    a, info_a = make_radiograph(np.random.default_rng(5), lesion=True, size=128)
    b, info_b = make_radiograph(np.random.default_rng(5), lesion=True, size=128)
    assert a.dtype == np.uint16 and a.shape == (128, 128)
    assert a.max() <= 4095
    assert np.array_equal(a, b) and info_a == info_b
    c, _ = make_radiograph(np.random.default_rng(6), lesion=True, size=128)
    assert not np.array_equal(a, c)


def test_lesion_is_a_bright_disc_inside_the_image_and_in_range() -> None:
    lo, hi = LESION_RADIUS_RANGE
    for seed in range(20):
        img, info = make_radiograph(np.random.default_rng(seed), lesion=True, size=256)
        normal, none = make_radiograph(np.random.default_rng(seed), lesion=False, size=256)
        assert info is not None and none is None
        assert lo * 256 <= info.radius <= hi * 256
        assert info.radius <= info.row <= 255 - info.radius
        assert info.radius <= info.col <= 255 - info.radius
        # paired phantoms: the difference is the lesion, denser (brighter) than the lung
        diff = img.astype(np.int32) - normal.astype(np.int32)
        assert diff[info.mask(img.shape, margin=-0.5 * info.radius)].min() > 150
        assert np.abs(diff[~info.mask(img.shape, margin=0.5 * info.radius)]).max() <= 40


def test_written_study_has_the_dx_attributes(tmp_path: Path) -> None:
    f = write_radiograph_study(tmp_path, seed=3, index=7, lesion=True, patient_name="DOE^JANE")
    ds = pydicom.dcmread(f.path)
    assert ds.SOPClassUID == DX_FOR_PRESENTATION_SOP_CLASS
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert str(ds.PatientName) == "DOE^JANE"
    assert ds.SOPInstanceUID == f.sop_instance_uid
    assert ds.StudyInstanceUID == f.study_instance_uid
    assert ds.SeriesInstanceUID == f.series_instance_uid
    assert ds.Manufacturer == "dicom-node phantom"
    assert ds.pixel_array.shape == (256, 256)
    shown = display_pixels(ds)
    assert shown.shape == (256, 256) and 0.0 <= shown.min() and shown.max() <= 1.0


def test_rewriting_gives_identical_files_and_uids(tmp_path: Path) -> None:
    a = write_radiograph_study(tmp_path / "a", seed=9, index=1, lesion=False)
    b = write_radiograph_study(tmp_path / "b", seed=9, index=1, lesion=False)
    assert a.path.read_bytes() == b.path.read_bytes()
    c = write_radiograph_study(tmp_path / "c", seed=10, index=1, lesion=False)
    assert (
        len({a.sop_instance_uid, c.sop_instance_uid, a.study_instance_uid, a.series_instance_uid})
        == 4
    )


def test_dataset_has_the_requested_class_balance(tmp_path: Path) -> None:
    files = write_radiograph_dataset(tmp_path, n=10, seed=1, lesion_fraction=0.3, size=96)
    assert len(files) == 10
    assert sum(f.has_lesion for f in files) == 3
    assert all((f.lesion is not None) == f.has_lesion for f in files)
    assert len({f.sop_instance_uid for f in files}) == 10
    assert len({f.study_instance_uid for f in files}) == 10


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize(("lesion", "size"), [(True, 256), (False, 256), (True, 128)])
def test_dciodvfy_reports_no_errors(tmp_path: Path, lesion: bool, size: int) -> None:
    f = write_radiograph_study(tmp_path, seed=4, index=2, lesion=lesion, size=size)
    proc = subprocess.run(
        [DCIODVFY, str(f.path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = proc.stdout + proc.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    assert "DXImageForPresentation" in report
