"""Masks to COCO boxes, COCO validation and the split by patient."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipelines.common.phantoms import build_dx_dataset, phantom_uid
from pipelines.cxr.coco import (
    CocoError,
    load_coco,
    masks_to_coco,
    split_by_patient,
    validate_coco,
    write_coco,
)


def _dicom(path: Path, *, index: int, patient_id: str, shape: tuple[int, int] = (40, 60)) -> str:
    """A small real DX file; returns its SOP Instance UID."""
    pixels = (np.arange(shape[0] * shape[1]).reshape(shape) % 4000).astype(np.uint16)
    uids = {
        what: phantom_uid(99, index, f"coco-test-{what}") for what in ("study", "series", "sop")
    }
    ds = build_dx_dataset(
        pixels, seed=99, index=index, patient_name="TEST^COCO", patient_id=patient_id, uids=uids
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uids["sop"]


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two images (one in a subfolder), masks of two classes for the first."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    _dicom(images / "a.dcm", index=0, patient_id="P1")
    _dicom(images / "sub" / "b.dcm", index=1, patient_id="P2")
    m = np.zeros((40, 60), dtype=bool)
    m[2:5, 10:20] = True  # rows 2-4, columns 10-19: one box
    m[30:40, 50:60] = True  # touching the bottom-right corner
    m[20, 30] = m[21, 31] = m[22, 32] = m[22, 33] = True  # diagonal: 8-connected, one component
    m[10, 45] = m[10, 46] = m[11, 45] = True  # 3 pixels: dropped at min_pixels=4
    _mask(masks / "opacity" / "a.png", m)
    k = np.zeros((40, 60), dtype=bool)
    k[0, 0] = k[0, 1] = k[1, 0] = k[1, 1] = True  # exactly 4 pixels: kept
    _mask(masks / "calcification" / "a.png", k)
    return images, masks


def test_components_become_exact_boxes(folders: tuple[Path, Path]) -> None:
    images, masks = folders
    coco = masks_to_coco(images, masks, ["opacity", "calcification"])
    assert coco["categories"] == [
        {"id": 1, "name": "opacity", "supercategory": "finding"},
        {"id": 2, "name": "calcification", "supercategory": "finding"},
    ]
    a, b = coco["images"]
    assert (a["id"], a["file_name"], a["width"], a["height"], a["patient_id"]) == (
        1,
        "a.dcm",
        60,
        40,
        "P1",
    )
    assert (b["id"], b["file_name"], b["patient_id"]) == (2, "sub/b.dcm", "P2")
    assert a["sop_instance_uid"] == phantom_uid(99, 0, "coco-test-sop")
    boxes = [(x["image_id"], x["category_id"], x["bbox"], x["area"]) for x in coco["annotations"]]
    assert boxes == [
        (1, 1, [10, 2, 10, 3], 30),
        (1, 1, [30, 20, 4, 3], 4),
        (1, 1, [50, 30, 10, 10], 100),
        (1, 2, [0, 0, 2, 2], 4),
    ]
    assert [x["id"] for x in coco["annotations"]] == [1, 2, 3, 4]
    assert all(x["iscrowd"] == 0 and "segmentation" not in x for x in coco["annotations"])
    # the speck of 3 pixels is a box when the threshold allows it
    small = masks_to_coco(images, masks, ["opacity"], min_pixels=1)
    assert [45, 10, 2, 2] in [x["bbox"] for x in small["annotations"]]


def test_default_classes_are_the_sorted_mask_folders(folders: tuple[Path, Path]) -> None:
    images, masks = folders
    coco = masks_to_coco(images, masks)
    assert [c["name"] for c in coco["categories"]] == ["calcification", "opacity"]


def test_masks_in_other_encodings_read_as_binary(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    _dicom(images / "a.dcm", index=0, patient_id="P1")
    _dicom(images / "b.dcm", index=1, patient_id="P1")
    (masks / "x").mkdir(parents=True)
    zero_one = np.zeros((40, 60), dtype=np.uint8)
    zero_one[5:9, 5:8] = 1
    Image.fromarray(zero_one, mode="L").save(masks / "x" / "a.png")
    # anti-aliased 16-bit: the faint rim (below half the peak) is background
    soft = np.zeros((40, 60), dtype=np.uint16)
    soft[9:13, 19:25] = 3000
    soft[10:12, 20:24] = 60000
    Image.fromarray(soft).save(masks / "x" / "b.png")
    coco = masks_to_coco(images, masks)
    assert [x["bbox"] for x in coco["annotations"]] == [[5, 5, 3, 4], [20, 10, 4, 2]]


def test_problems_are_collected_and_reported_together(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    _dicom(images / "a.dcm", index=0, patient_id="P1")
    _dicom(images / "nopatient.dcm", index=1, patient_id="")
    (images / "broken.dcm").write_bytes(b"not dicom at all")
    (images / "notes.txt").write_text("ignored: not DICOM and not named .dcm")
    _mask(masks / "x" / "a.png", np.ones((41, 60), dtype=bool))
    _mask(masks / "x" / "ghost.png", np.ones((40, 60), dtype=bool))
    with pytest.raises(CocoError) as err:
        masks_to_coco(images, masks, ["x"])
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "broken.dcm is not a DICOM file" in message
    assert "nopatient.dcm has no Patient ID" in message
    assert "x/a.png is 60x41 (width x height) but its image is 60x40" in message
    assert "x/ghost.png has no image named ghost" in message


def test_an_image_without_masks_is_a_normal_image(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    _dicom(images / "a.dcm", index=0, patient_id="P1")
    (masks / "x").mkdir(parents=True)
    coco = masks_to_coco(images, masks)
    assert len(coco["images"]) == 1 and coco["annotations"] == []
    with pytest.raises(CocoError, match="does not exist"):
        masks_to_coco(images, tmp_path / "nowhere", ["x"])


def test_pycocotools_reads_it_and_a_perfect_detector_scores_ap_1(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    images, masks = folders
    path = tmp_path / "out" / "annotations.json"
    write_coco(masks_to_coco(images, masks, ["opacity", "calcification"]), path)
    assert [p.name for p in path.parent.iterdir()] == ["annotations.json"]  # no temporary left
    gt = COCO(str(path))
    assert sorted(gt.getCatIds()) == [1, 2] and len(gt.getAnnIds()) == 4
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.dataset["annotations"]
    ]
    evaluation = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    assert evaluation.stats[1] == pytest.approx(1.0)
    # one box shifted by its width: AP drops
    detections[0]["bbox"] = [20, 2, 10, 3]
    evaluation = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] < 1.0


def _valid() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.dcm", "width": 60, "height": 40, "patient_id": "P1"},
            {"id": 2, "file_name": "b.dcm", "width": 60, "height": 40, "patient_id": "P2"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 40], "area": 10},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5.5, 5, 3, 4], "area": 12.0},
        ],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }


def _broken(change: str) -> dict[str, Any]:
    coco = _valid()
    if change == "no annotations":
        del coco["annotations"]
    elif change == "duplicate image":
        coco["images"][1]["id"] = 1
    elif change == "unknown image":
        coco["annotations"][0]["image_id"] = 7
    elif change == "unknown category":
        coco["annotations"][0]["category_id"] = 9
    elif change == "background category":
        coco["categories"][0]["id"] = 0
    elif change == "past the edge":
        coco["annotations"][1]["bbox"] = [58, 0, 3, 4]
    elif change == "empty box":
        coco["annotations"][1]["bbox"] = [5, 5, 0, 4]
    elif change == "short bbox":
        coco["annotations"][1]["bbox"] = [5, 5, 3]
    elif change == "no area":
        del coco["annotations"][1]["area"]
    elif change == "duplicate annotation":
        coco["annotations"][1]["id"] = 1
    return coco


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no annotations", "needs lists annotations"),
        ("duplicate image", "image id 1 appears twice"),
        ("unknown image", "annotation id 1: image_id 7 is not among the images"),
        ("unknown category", "annotation id 1: category_id 9 is not among the categories"),
        ("background category", "category id 0 must be at least 1"),
        (
            "past the edge",
            "annotation id 2: bbox [58, 0, 3, 4] extends past image 2, which is 60x40",
        ),
        (
            "empty box",
            "annotation id 2: bbox [5, 5, 0, 4] has a width or height that is not positive",
        ),
        ("short bbox", "annotation id 2: bbox must be [x, y, w, h]"),
        ("no area", "annotation id 2: area must be a positive number"),
        ("duplicate annotation", "annotation id 1 appears twice"),
    ],
)
def test_load_coco_rejects_broken_files(tmp_path: Path, change: str, message: str) -> None:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(_broken(change)))
    with pytest.raises(CocoError) as err:
        load_coco(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_load_coco_checks_json_and_files(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    write_coco(_valid(), path)
    assert load_coco(path) == _valid()
    with pytest.raises(CocoError, match="image id 1: file a.dcm does not exist under"):
        load_coco(path, images_dir=tmp_path)
    (tmp_path / "a.dcm").touch()
    (tmp_path / "b.dcm").touch()
    assert load_coco(path, images_dir=tmp_path) == _valid()
    path.write_text('{"images": [')
    with pytest.raises(CocoError, match="not valid JSON"):
        load_coco(path)
    with pytest.raises(CocoError, match="does not exist"):
        load_coco(tmp_path / "missing.json")


def _patients_coco(n_patients: int = 30) -> dict[str, Any]:
    """Two images per patient; patient p has a finding of class p % 4 (3: none), class 3 rarest."""
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
    }
    for p in range(n_patients):
        for k in range(2):
            image_id = 2 * p + k + 1
            coco["images"].append(
                {"id": image_id, "file_name": f"{image_id}.dcm", "width": 64, "height": 64}
            )
            coco["images"][-1]["patient_id"] = f"P{p:03d}"
            category = 3 if p % 10 == 0 else 1 + p % 2 if p % 3 else None
            if category is not None and k == 0:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [1, 2, 3, 4],
                        "area": 12,
                    }
                )
    return coco


def test_split_by_patient_keeps_patients_whole_and_everything_once() -> None:
    coco = _patients_coco()
    original = copy.deepcopy(coco)
    parts = split_by_patient(coco, (0.8, 0.2), seed=1)
    assert coco == original  # the input is not modified
    assert len(parts) == 2
    patients = [{img["patient_id"] for img in part["images"]} for part in parts]
    assert not patients[0] & patients[1]
    ids = sorted(img["id"] for part in parts for img in part["images"])
    assert ids == [img["id"] for img in coco["images"]]
    assert sorted(a["id"] for part in parts for a in part["annotations"]) == [
        a["id"] for a in coco["annotations"]
    ]
    for part in parts:
        validate_coco(part)
        assert part["categories"] == coco["categories"]
        own = {img["id"] for img in part["images"]}
        assert all(a["image_id"] in own for a in part["annotations"])
        # stratified: each part has every class, even the rarest (3 patients of 30)
        assert {a["category_id"] for a in part["annotations"]} == {1, 2, 3}
    assert 23 <= len(patients[0]) <= 25 and len(patients[0]) + len(patients[1]) == 30
    assert split_by_patient(coco, (0.8, 0.2), seed=1) == parts
    assert split_by_patient(coco, (0.8, 0.2), seed=2) != parts


def test_split_reads_the_patient_from_the_dicom_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    coco = _patients_coco(6)
    for img in coco["images"]:
        _dicom(images / img["file_name"], index=img["id"], patient_id=img.pop("patient_id"))
    with pytest.raises(CocoError, match="image id 1 .* has no patient_id"):
        split_by_patient(coco)
    parts = split_by_patient(coco, (0.5, 0.5), seed=0, images_dir=images)
    patients = [{img["patient_id"] for img in part["images"]} for part in parts]
    assert len(patients[0]) == len(patients[1]) == 3 and not patients[0] & patients[1]
