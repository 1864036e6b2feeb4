"""Chest radiograph phantoms with findings: real DX files, masks that match what is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from imaging.pixels import display_pixels
from pipelines.common.phantoms import DX_FOR_PRESENTATION_SOP_CLASS, FIELD_OF_VIEW_MM
from pipelines.cxr.coco import masks_to_coco
from pipelines.cxr.synth import (
    CALCIFICATION,
    CLASSES,
    HYPERTROPHY,
    HYPERTROPHY_CTR_RANGE,
    INFILTRATION,
    NORMAL_CTR_RANGE,
    image_plan,
    make_chest_radiograph,
    render_dataset_image,
    write_cxr_dataset,
)

from dicom_validation import dciodvfy_errors

#: Seed of the shared dataset: its ten images include normal ones and both photometrics.
SEED = 3


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _width(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    """Ten 128-px images of five patients, some of them MONOCHROME1, some without findings."""
    root = tmp_path_factory.mktemp("cxr")
    return write_cxr_dataset(root, n=10, seed=SEED, size=128, monochrome1_fraction=0.3)


def test_same_seed_gives_identical_bytes_and_another_seed_other_uids(
    tmp_path: Path, dataset
) -> None:
    again = write_cxr_dataset(
        tmp_path / "again", n=10, seed=SEED, size=128, monochrome1_fraction=0.3
    )
    assert _files(again.root) == _files(dataset.root)
    # rewriting into the same folder is allowed and changes nothing
    write_cxr_dataset(tmp_path / "again", n=10, seed=SEED, size=128, monochrome1_fraction=0.3)
    assert _files(again.root) == _files(dataset.root)
    other = write_cxr_dataset(tmp_path / "other", n=2, seed=SEED + 1, size=128)
    uids = {i.sop_instance_uid for i in dataset.images} | {i.sop_instance_uid for i in other.images}
    assert len(uids) == 12
    assert not np.array_equal(
        pydicom.dcmread(other.images[0].path).pixel_array,
        pydicom.dcmread(dataset.images[0].path).pixel_array,
    )


@pytest.mark.parametrize("finding", CLASSES)
def test_a_finding_changes_the_image_only_at_its_mask(finding: str) -> None:
    size = 160
    for seed in range(4):
        plain = make_chest_radiograph(np.random.default_rng(seed), size=size)
        drawn = make_chest_radiograph(np.random.default_rng(seed), size=size, findings=[finding])
        assert list(drawn.masks) == [finding] and plain.masks == {}
        mask = drawn.masks[finding]
        diff = drawn.pixels.astype(np.int32) - plain.pixels.astype(np.int32)
        away = ndimage.distance_transform_edt(~mask) > 0.05 * size
        # the finding is denser than what it covers, and nothing else changes
        assert diff[mask].mean() > 40 and diff[mask].max() > 400, (seed, finding)
        assert np.abs(diff[away]).max() <= 30, (seed, finding)
        assert diff.min() >= -5


def test_the_masks_are_where_the_findings_belong() -> None:
    size = 192
    for seed in range(5):
        ph = make_chest_radiograph(np.random.default_rng(seed), size=size, findings=CLASSES)
        rows, cols = np.nonzero(ph.masks[CALCIFICATION])
        # the aortic knob: upper chest, just right of the image's midline (the patient's left)
        assert rows.max() < 0.5 * size and 0.5 * size < cols.mean() < 0.7 * size
        assert 0.05 * size <= _width(ph.masks[CALCIFICATION]) <= 0.11 * size
        # infiltrates: 1-3 separate patches inside the lungs, each 8-18 % of the image across
        labels, count = ndimage.label(ph.masks[INFILTRATION], structure=np.ones((3, 3)))
        assert 1 <= count <= 3
        assert not (ph.masks[INFILTRATION] & ~ph.lungs).any()
        for found in ndimage.find_objects(labels):
            extent = max(found[0].stop - found[0].start, found[1].stop - found[1].start)
            assert 0.07 * size <= extent <= 0.19 * size
        assert np.array_equal(ph.masks[HYPERTROPHY], ph.heart)


def test_hypertrophy_enlarges_the_cardiothoracic_ratio() -> None:
    for seed in range(6):
        plain = make_chest_radiograph(np.random.default_rng(seed), size=256)
        big = make_chest_radiograph(np.random.default_rng(seed), size=256, findings=[HYPERTROPHY])
        # measured on the drawn silhouettes, as a radiologist would
        normal = _width(plain.heart) / _width(plain.lungs)
        enlarged = _width(big.heart) / _width(big.lungs)
        assert NORMAL_CTR_RANGE[0] - 0.02 <= normal <= NORMAL_CTR_RANGE[1] + 0.02
        assert HYPERTROPHY_CTR_RANGE[0] - 0.02 <= enlarged <= HYPERTROPHY_CTR_RANGE[1] + 0.02
        assert enlarged > normal + 0.05
        assert abs(enlarged - big.cardiothoracic_ratio) < 0.02


def test_images_of_one_patient_share_the_anatomy() -> None:
    first, second, other = (render_dataset_image(2, i, size=128) for i in (0, 1, 2))
    assert first.cardiothoracic_ratio == second.cardiothoracic_ratio
    assert first.cardiothoracic_ratio != other.cardiothoracic_ratio
    assert not np.array_equal(first.pixels, second.pixels)


def test_findings_and_photometric_follow_the_rates() -> None:
    plans = [image_plan(0, i, finding_rate=0.3, monochrome1_fraction=0.2) for i in range(600)]
    for name in CLASSES:
        assert 0.24 < np.mean([name in found for found, _ in plans]) < 0.36
    assert 0.15 < np.mean([m1 for _, m1 in plans]) < 0.25
    assert image_plan(0, 1, finding_rate=0.0, monochrome1_fraction=0.0) == ((), False)
    assert image_plan(0, 1, finding_rate=1.0, monochrome1_fraction=1.0) == (CLASSES, True)


def test_written_files_are_pa_chest_dx_and_pass_dciodvfy(dataset) -> None:
    assert {i.monochrome1 for i in dataset.images} == {True, False}
    assert len(dataset.patients) == 5
    studies = set()
    for n, image in enumerate(dataset.images):
        ds = pydicom.dcmread(image.path)
        assert ds.SOPClassUID == DX_FOR_PRESENTATION_SOP_CLASS
        assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("DX", "CHEST", "PA")
        assert list(ds.PatientOrientation) == ["L", "F"]
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(FIELD_OF_VIEW_MM / 128)
        assert float(ds.PixelSpacing[1]) == pytest.approx(FIELD_OF_VIEW_MM / 128)
        assert "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.PhotometricInterpretation == (
            "MONOCHROME1" if image.monochrome1 else "MONOCHROME2"
        )
        assert ds.PresentationLUTShape == ("INVERSE" if image.monochrome1 else "IDENTITY")
        assert ds.PatientID == image.patient_id == f"CXR-PHANTOM-{SEED}-{n // 2:04d}"
        assert "PHANTOM" in str(ds.PatientName) and ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID == image.sop_instance_uid
        studies.add(ds.StudyInstanceUID)
    assert len(studies) == len(dataset.images)
    checked = [i for i in dataset.images if i.monochrome1][:1] + [
        i for i in dataset.images if not i.monochrome1
    ][:2]
    for image in checked:
        assert dciodvfy_errors(image.path) == [], image.path


def test_monochrome1_files_display_like_the_monochrome2_rendering(tmp_path: Path) -> None:
    m1 = write_cxr_dataset(tmp_path / "m1", n=3, seed=6, size=128, monochrome1_fraction=1.0)
    m2 = write_cxr_dataset(tmp_path / "m2", n=3, seed=6, size=128, monochrome1_fraction=0.0)
    for a, b in zip(m1.images, m2.images, strict=True):
        assert a.findings == b.findings
        inverted, plain = pydicom.dcmread(a.path), pydicom.dcmread(b.path)
        assert inverted.PhotometricInterpretation == "MONOCHROME1"
        assert np.array_equal(inverted.pixel_array, 4095 - plain.pixel_array.astype(np.int32))
        np.testing.assert_allclose(display_pixels(inverted), display_pixels(plain), atol=1e-5)


def test_masks_and_annotations_are_those_of_the_rendering(dataset) -> None:
    coco = json.loads(dataset.annotations.read_text())
    assert coco == masks_to_coco(dataset.images_dir, dataset.masks_dir, CLASSES)
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    by_file = {img["file_name"]: img for img in coco["images"]}
    assert any(image.findings for image in dataset.images)
    assert any(not image.findings for image in dataset.images)
    for image in dataset.images:
        phantom = render_dataset_image(SEED, image.index, size=128, findings=image.findings)
        stored = pydicom.dcmread(image.path).pixel_array
        expected = 4095 - phantom.pixels.astype(np.int32) if image.monochrome1 else phantom.pixels
        assert np.array_equal(stored, expected)
        assert sorted(image.mask_paths) == sorted(image.findings)
        for name in CLASSES:
            path = dataset.masks_dir / name / f"{image.stem}.png"
            assert path.exists() == (name in image.findings)
            if path.exists():
                png = np.asarray(Image.open(path))
                assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
                assert np.array_equal(png == 255, phantom.masks[name])
        entry = by_file[f"{image.stem}.dcm"]
        assert (entry["patient_id"], entry["sop_instance_uid"]) == (
            image.patient_id,
            image.sop_instance_uid,
        )
        boxes = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        expected_boxes = sum(
            ndimage.label(phantom.masks[name], structure=np.ones((3, 3)))[1]
            for name in image.findings
        )
        assert len(boxes) == expected_boxes


def test_refuses_to_mix_with_files_it_does_not_write(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "hospital.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="hospital.dcm"):
        write_cxr_dataset(tmp_path, n=1, seed=0, size=128)


def test_rejects_unknown_findings_and_tiny_images() -> None:
    with pytest.raises(ValueError, match="pneumothorax"):
        make_chest_radiograph(np.random.default_rng(0), size=128, findings=["pneumothorax"])
    with pytest.raises(ValueError, match="at least 128"):
        make_chest_radiograph(np.random.default_rng(0), size=64)
