"""Seed 001 building blocks: the seed's preprocessing, the guards, box rotation, training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import RLELossless

from pipelines.base import Box
from pipelines.common.augment import (
    DetectionAugmentSpec,
    detection_augment,
    rotate_with_boxes,
)
from pipelines.cxr.model import build_detector, detect, supported_detectors
from pipelines.cxr.pipeline import source_box
from pipelines.cxr.radiograph import (
    Preprocessing,
    Radiograph,
    RadiographError,
    log_transform,
    prepare,
    read_radiograph,
    resized_shape,
    simplest_color_balance,
)
from pipelines.cxr.synth import write_cxr_dataset

SIZE = 128


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory):
    """Six 192-px chest phantoms (three patients), the first one MONOCHROME2."""
    root = tmp_path_factory.mktemp("cxr-unit")
    return write_cxr_dataset(root, n=6, seed=11, size=192, monochrome1_fraction=0.0)


def _read(path: Path) -> Radiograph:
    return read_radiograph(path, SIZE, SIZE, Preprocessing())


# -- preprocessing maths ------------------------------------------------------------------


def test_log_transform_keeps_the_ends_and_lifts_the_dark_range() -> None:
    r = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    s = log_transform(r, gain=255.0)
    assert s[0] == pytest.approx(0.0) and s[-1] == pytest.approx(1.0)
    assert np.all(np.diff(s) > 0)  # monotone: the order of densities is kept
    # c log(1 + g r): the value at r = 0.1 is log(26.5) / log(256)
    assert s[10] == pytest.approx(np.log1p(25.5) / np.log1p(255.0), rel=1e-5)
    # dark values gain contrast (slope > 1), bright values lose it (slope < 1)
    assert s[5] - s[0] > 5 * (r[5] - r[0])
    assert s[100] - s[95] < r[100] - r[95]
    with pytest.raises(ValueError, match="gain"):
        log_transform(r, gain=0)


def test_simplest_color_balance_clips_the_given_percentages_and_stretches() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.6, size=(200, 200)).astype(np.float32)
    out = simplest_color_balance(image, dark_percent=2.0, bright_percent=1.0)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out == 0.0) == pytest.approx(0.02, abs=0.002)
    assert np.mean(out == 1.0) == pytest.approx(0.01, abs=0.002)
    # linear in between: the order and the ratios of differences are kept
    inside = (out > 0) & (out < 1)
    lo, hi = np.percentile(image, [2.0, 99.0])
    assert np.allclose(out[inside], (image[inside] - lo) / (hi - lo), atol=1e-5)
    assert not simplest_color_balance(np.full((8, 8), 0.3)).any()
    with pytest.raises(ValueError, match="percentages"):
        simplest_color_balance(image, dark_percent=60)


def test_resize_keeps_the_aspect_and_caps_the_longer_side() -> None:
    assert resized_shape((2000, 1000), 800, 1333) == (1333, 666)
    assert resized_shape((1000, 1000), 800, 1333) == (800, 800)
    assert resized_shape((300, 400), 600, 1000) == (600, 800)
    display = np.random.default_rng(1).uniform(size=(300, 400)).astype(np.float32)
    image, scale = prepare(display, 150, 1000, Preprocessing())
    assert image.shape == (150, 200) and scale == (0.5, 0.5)
    assert image.min() == 0.0 and image.max() == 1.0


# -- reading: photometric, VOI, compression, guards ------------------------------------------


def test_monochrome1_reads_like_its_monochrome2_twin(phantoms, tmp_path: Path) -> None:
    path = phantoms.images[0].path
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    del ds.WindowCenter, ds.WindowWidth  # compare the photometric alone
    ds.save_as(tmp_path / "mono2.dcm")
    twin = ds.copy()
    twin.PhotometricInterpretation = "MONOCHROME1"
    twin.PixelData = (4095 - ds.pixel_array.astype(np.uint16)).astype("<u2").tobytes()
    twin.save_as(tmp_path / "mono1.dcm")
    a, b = _read(tmp_path / "mono2.dcm"), _read(tmp_path / "mono1.dcm")
    assert np.abs(a.image - b.image).max() < 1e-4


def test_the_voi_window_is_applied_before_the_transform(phantoms, tmp_path: Path) -> None:
    ds = pydicom.dcmread(phantoms.images[0].path)
    values = ds.pixel_array.astype(np.float32)
    lo, hi = np.percentile(values, [30, 70])
    ds.WindowCenter, ds.WindowWidth = float((lo + hi) / 2), float(hi - lo)
    ds.save_as(tmp_path / "windowed.dcm")
    narrow = _read(tmp_path / "windowed.dcm").image
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "plain.dcm")
    plain = _read(tmp_path / "plain.dcm").image
    # a narrow window saturates the extremes: many more pixels at 0 or 1
    assert np.mean((narrow == 0) | (narrow == 1)) > np.mean((plain == 0) | (plain == 1)) + 0.2


def test_compressed_and_16_bit_files_read_the_same(phantoms, tmp_path: Path) -> None:
    path = phantoms.images[1].path
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert np.array_equal(_read(path).image, _read(tmp_path / "rle.dcm").image)
    wide = pydicom.dcmread(path)
    wide.BitsStored, wide.HighBit = 16, 15
    wide.PixelData = (wide.pixel_array.astype(np.uint32) * 16).astype("<u2").tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        setattr(wide, keyword, float(getattr(wide, keyword)) * 16)
    wide.save_as(tmp_path / "wide.dcm")
    assert np.abs(_read(path).image - _read(tmp_path / "wide.dcm").image).max() < 1e-3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ViewPosition": "LL"}, "lateral view"),
        ({"BodyPartExamined": "HAND"}, "not the chest"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "not a CR or DX image"),
    ],
)
def test_non_chest_or_lateral_images_are_refused(
    phantoms, tmp_path: Path, change: dict, reason: str
) -> None:
    ds = pydicom.dcmread(phantoms.images[0].path)
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(RadiographError, match=reason):
        _read(tmp_path / "x.dcm")


def test_files_without_pixels_or_not_dicom_are_refused(phantoms, tmp_path: Path) -> None:
    ds = pydicom.dcmread(phantoms.images[0].path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(RadiographError, match="no Pixel Data"):
        _read(tmp_path / "nopixels.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(RadiographError, match="not readable as DICOM"):
        _read(tmp_path / "junk.dcm")


# -- boxes ------------------------------------------------------------------------------------


def test_boxes_map_back_to_source_pixels_and_are_clipped() -> None:
    image = Radiograph("1.2.3", np.zeros((100, 50), np.float32), (400, 200), (0.25, 0.25))
    box = source_box("1.2.3", np.array([10.0, 20.0, 30.0, 40.0]), image)
    assert box == Box("1.2.3", 40.0, 80.0, 120.0, 160.0)
    clipped = source_box("1.2.3", np.array([-5.0, 90.0, 60.0, 120.0]), image)
    assert clipped == Box("1.2.3", 0.0, 360.0, 200.0, 400.0)
    assert source_box("1.2.3", np.array([60.0, 10.0, 70.0, 20.0]), image) is None  # off the image


@pytest.mark.parametrize("angle", [-5.0, 3.0, 5.0, 30.0])
def test_rotation_moves_the_box_with_a_round_object(angle: float) -> None:
    rows, cols = np.mgrid[0:120, 0:160] + 0.5
    image = torch.zeros(3, 120, 160)
    # a bright ellipse inscribed in its box: centre (80, 45), 60 x 30 pixels
    image[:, torch.from_numpy(((cols - 80) / 30) ** 2 + ((rows - 45) / 15) ** 2 <= 1)] = 1.0
    boxes = torch.tensor([[50.0, 30.0, 110.0, 60.0]])
    rotated, moved, keep = rotate_with_boxes(image, boxes, angle)
    assert keep.tolist() == [True]
    r, c = np.nonzero(rotated[0].numpy() > 0.5)
    drawn = np.array([c.min(), r.min(), c.max() + 1, r.max() + 1], dtype=np.float64)
    # the box of the rotated object, within a pixel or two of interpolation
    assert np.abs(moved[0].numpy() - drawn).max() <= 2.0, (moved, drawn)


def test_a_round_findings_box_does_not_grow_when_rotated() -> None:
    boxes = torch.tensor([[40.0, 40.0, 70.0, 70.0]])
    _, moved, _ = rotate_with_boxes(torch.zeros(1, 128, 128), boxes, 5.0)
    w, h = float(moved[0, 2] - moved[0, 0]), float(moved[0, 3] - moved[0, 1])
    assert w == pytest.approx(30.0, abs=1e-4) and h == pytest.approx(30.0, abs=1e-4)


def test_augmentation_drops_boxes_rotated_out_and_jitters_within_range() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.full((3, 64, 64), 0.5)
    corner = {
        "boxes": torch.tensor([[0.0, 0.0, 1.5, 1.5], [20.0, 20.0, 40.0, 40.0]]),
        "labels": torch.tensor([1, 2]),
    }
    augment = detection_augment(DetectionAugmentSpec(rotation=5.0, brightness=0.1, contrast=0.1))
    kept_small = 0
    for _ in range(20):
        images, targets = augment([image], [corner], gen)
        (x,), (t,) = images, targets
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert len(t["boxes"]) == len(t["labels"]) and 2 in t["labels"].tolist()
        kept_small += int(1 in t["labels"].tolist())
        assert abs(float(x[:, 32, 32].mean()) - 0.5) <= 0.1 + 1e-6  # brightness within +-0.1
    assert kept_small < 20  # the tiny corner box is pushed out of the image by some rotations


# -- the detector -----------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", supported_detectors())
def test_every_architecture_builds_with_the_card_classes(architecture: str) -> None:
    model = build_detector(
        architecture, 3, min_size=64, max_size=64, image_mean=[0.5], image_std=[0.25]
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 labels + background
    (out,) = detect(model, [np.zeros((64, 80), np.float32)], "cpu")
    assert set(out) == {"boxes", "labels", "scores"}
    with pytest.raises(ValueError, match="unknown detector architecture"):
        build_detector("yolo", 3, min_size=64, max_size=64, image_mean=[0.5], image_std=[0.25])


def test_a_few_training_steps_reduce_the_loss(phantoms) -> None:
    from pipelines.cxr.coco import load_coco
    from pipelines.cxr.data import DetectionDataset, collate

    torch.manual_seed(0)
    coco = load_coco(phantoms.annotations, phantoms.images_dir)
    data = DetectionDataset(
        coco, phantoms.images_dir, size=SIZE, max_size=SIZE, preprocessing=Preprocessing()
    )
    images, targets = collate([data[i] for i in range(4)])
    assert sum(len(t["boxes"]) for t in targets) > 0
    model = build_detector(
        "fasterrcnn_mobilenet_v3_large_fpn",
        len(coco["categories"]),
        min_size=SIZE,
        max_size=SIZE,
        image_mean=[0.5],
        image_std=[0.25],
        rpn_post_nms_top_n_train=200,
        box_batch_size_per_image=64,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    losses = []
    for _ in range(8):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("method", ["ablationcam", "eigencam"])
def test_detector_cams_run_on_the_three_level_mobilenet_fpn(method: str) -> None:
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    from pipelines.common.cam import FpnAblationLayer, compute_heatmaps, fpn_reshape_transform

    torch.manual_seed(0)
    model = build_detector(
        "fasterrcnn_mobilenet_v3_large_fpn",
        2,
        min_size=128,
        max_size=128,
        image_mean=[0.5],
        image_std=[0.25],
        score_threshold=0.0,
    ).eval()
    image = torch.rand(1, 1, 128, 128).expand(1, 3, 128, 128)
    (out,) = detect(model, [image[0, 0].numpy()], "cpu")
    assert out["scores"].size  # explain the detector's own best box, as the pipeline does
    target = FasterRCNNBoxScoreTarget(
        labels=[int(out["labels"][0])], bounding_boxes=[torch.as_tensor(out["boxes"][0])]
    )
    options = (
        {"ablation_layer": FpnAblationLayer(), "batch_size": 16, "ratio_channels_to_ablate": 0.05}
        if method == "ablationcam"
        else {}
    )
    (cam,) = compute_heatmaps(
        model,
        image,
        target_layer=model.backbone,
        targets=[target],
        output_shapes=[(96, 80)],
        method=method,
        reshape_transform=fpn_reshape_transform,
        batch_size=1,
        method_options=options,
    )
    assert cam.shape == (96, 80) and np.isfinite(cam).all()
    assert 0.0 <= cam.min() <= cam.max() <= 1.0


def test_coco_weights_load_into_a_fine_tuning_detector_but_not_its_head(tmp_path: Path) -> None:
    from pipelines.cxr.model import COCO_CLASSES, load_coco_pretrained

    def make(labels: int, arch: str = "fasterrcnn_mobilenet_v3_large_fpn") -> torch.nn.Module:
        return build_detector(
            arch,
            labels,
            min_size=64,
            max_size=64,
            image_mean=[0.5],
            image_std=[0.25],
            frozen_batchnorm=True,
            trainable_layers=3,
        )

    torch.manual_seed(1)
    coco = make(COCO_CLASSES - 1)  # stands in for torchvision's file (no download here)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    torch.manual_seed(2)
    model = make(3)
    load_coco_pretrained(model, tmp_path / "coco.pth")
    ours, theirs = model.state_dict(), coco.state_dict()
    backbone = [k for k in ours if k.startswith("backbone.")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert ours["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # new head, 3 + 1
    frozen = [p.requires_grad for p in model.backbone.body.parameters()]
    assert any(frozen) and not all(frozen)  # the early stages stay frozen when fine-tuning
    with pytest.raises(ValueError, match="does not fit this detector"):
        load_coco_pretrained(make(3, "fasterrcnn_resnet18_fpn"), tmp_path / "coco.pth")
    with pytest.raises(ValueError, match="do not exist"):
        load_coco_pretrained(model, tmp_path / "missing.pth")
