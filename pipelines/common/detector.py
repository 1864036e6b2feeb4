"""torchvision Faster R-CNN detectors, shared by the pipelines that localise things.

Seed 001 detects chest findings and seed 003 localises the femoral neck
before classifying it; both build the same torchvision Faster R-CNN with an
FPN backbone, classes from their card, trained from scratch or fine-tuned
from torchvision's COCO weights in a local file. The card's ``architecture``
picks the backbone:

``fasterrcnn_resnet50_fpn``
    torchvision's v1 Faster R-CNN (41 M parameters), seed 001's model.
``fasterrcnn_mobilenet_v3_large_fpn``
    MobileNet-v3-Large with a two-level FPN (19 M parameters), several times
    faster on a CPU: for sites without a GPU, and the demo models.
``fasterrcnn_resnet18_fpn``
    ResNet-18 with the ResNet FPN (28 M parameters).

The network has ``num_labels + 1`` outputs: index 0 is torchvision's
background, index ``k`` the card's ``k``-th label. It takes a list of
(3, H, W) images in [0, 1]; its own transform normalises them with the
given mean / std and resizes so that the shorter side is ``min_size`` (the
longer at most ``max_size``).

Batch normalisation: a model fine-tuned from pretrained weights keeps the
backbone's statistics frozen (``FrozenBatchNorm2d``, as torchvision does,
since detection batches are too small to estimate them); a model trained
from scratch must learn them (``BatchNorm2d``). Cards record which, because
the two have different state dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.misc import FrozenBatchNorm2d

#: architecture name -> number of backbone stages (the most that can be trainable)
ARCHITECTURES: dict[str, int] = {
    "fasterrcnn_resnet50_fpn": 5,
    "fasterrcnn_resnet18_fpn": 5,
    "fasterrcnn_mobilenet_v3_large_fpn": 6,
}

#: torchvision's COCO head has 91 outputs (background + 90 category ids)
COCO_CLASSES = 91


def supported_detectors() -> list[str]:
    """Architecture names :func:`build_detector` accepts."""
    return sorted(ARCHITECTURES)


class DetectorSettings(BaseModel):
    """The detector sizes a card's ``options`` set, shared by every study that detects.

    Defaults are torchvision's; smaller proposal and sample counts are faster on a
    CPU. A study's options subclass this and add (or re-default) their own;
    :meth:`detector_sizes` passes these to :func:`build_detector`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: IoU above which a lower-scoring box of the same class is suppressed
    nms_threshold: float = Field(0.5, gt=0.0, le=1.0)
    detections_per_image: int = Field(100, ge=1)
    #: FrozenBatchNorm2d in the backbone (fine-tuned from COCO weights)
    frozen_batchnorm: bool = False
    rpn_pre_nms_top_n_train: int = Field(2000, ge=1)
    rpn_post_nms_top_n_train: int = Field(2000, ge=1)
    rpn_pre_nms_top_n_test: int = Field(1000, ge=1)
    rpn_post_nms_top_n_test: int = Field(1000, ge=1)
    box_batch_size_per_image: int = Field(512, ge=1)
    #: width of the box head's fully connected layers (None: torchvision's 1024)
    representation_size: int | None = Field(None, ge=1)
    #: anchor sizes in input pixels (None: torchvision's 32-512)
    anchor_sizes: list[int] | None = None

    def detector_sizes(self) -> dict[str, Any]:
        """The keyword arguments of :func:`build_detector` these settings hold."""
        return {name: getattr(self, name) for name in DetectorSettings.model_fields}


def build_detector(
    architecture: str,
    num_labels: int,
    *,
    min_size: int,
    max_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    detections_per_image: int = 100,
    frozen_batchnorm: bool = False,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **faster_rcnn: int,
) -> FasterRCNN:
    """An untrained detector with ``num_labels`` classes plus background.

    Parameters
    ----------
    architecture : str
        One of :func:`supported_detectors`.
    num_labels : int
        The card's labels (background is added).
    min_size, max_size : int
        Resize of the detector's transform (shorter side, cap on the longer).
    image_mean, image_std : sequence of float
        Per-channel normalisation of the [0, 1] input (3 values, or 1 repeated).
    score_threshold : float
        Candidate boxes below this class score are dropped before NMS; the
        card's per-label thresholds decide what is reported.
    nms_threshold : float
        IoU above which a lower-scoring box of the same class is suppressed.
    detections_per_image : int
        At most this many boxes per image, all classes together.
    frozen_batchnorm : bool
        ``FrozenBatchNorm2d`` in the backbone (fine-tuning) instead of ``BatchNorm2d``.
    trainable_layers : int or None
        Backbone stages left trainable (from the last); None = all. With
        frozen batch norm torchvision's default is 3.
    representation_size : int or None
        Width of the box head's two fully connected layers; None =
        torchvision's 1024. The first takes the 7 x 7 x 256 pooled features
        of every sampled box, so on a CPU it dominates training; a task with
        one simple class (the femoral neck) needs far less. Weights of
        torchvision's COCO models only fit the default.
    anchor_sizes : sequence of int or None
        Anchor box sizes in input pixels; None = torchvision's (32, 64,
        128, 256, 512): all of them at every level of the MobileNet FPN, one
        per level (five) of the ResNet FPN. Objects much smaller than 32
        pixels at the input size (a femoral neck on a small input) train
        faster from anchors of their size.
    **faster_rcnn : int
        Further ``FasterRCNN`` sizes, e.g. ``rpn_post_nms_top_n_test`` or
        ``box_batch_size_per_image``.

    Raises
    ------
    ValueError
        For an unknown architecture or a bad size.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown detector architecture {architecture!r}; use one of "
            f"{', '.join(supported_detectors())}"
        )
    if num_labels < 1:
        raise ValueError("a detector needs at least one label")
    if min_size < 32 or max_size < min_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    most = ARCHITECTURES[architecture]
    layers = most if trainable_layers is None else trainable_layers
    if not 0 <= layers <= most:
        raise ValueError(
            f"trainable_layers for {architecture} must be in [0, {most}], got {layers}"
        )
    norm: type[nn.Module] = FrozenBatchNorm2d if frozen_batchnorm else nn.BatchNorm2d
    mean = [float(v) for v in image_mean] * (3 if len(image_mean) == 1 else 1)
    std = [float(v) for v in image_std] * (3 if len(image_std) == 1 else 1)
    kwargs = {
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": mean,
        "image_std": std,
        "box_score_thresh": score_threshold,
        "box_nms_thresh": nms_threshold,
        "box_detections_per_img": detections_per_image,
        **faster_rcnn,
    }
    if representation_size is not None:
        if representation_size < 1:
            raise ValueError(f"representation_size must be >= 1, got {representation_size}")
        # what FasterRCNN builds by default, narrower; out_channels 256 is every FPN's here
        resolution = 7
        kwargs["box_head"] = TwoMLPHead(256 * resolution**2, representation_size)
        kwargs["box_predictor"] = FastRCNNPredictor(representation_size, num_labels + 1)
    classes = None if representation_size is not None else num_labels + 1
    sizes = tuple(int(v) for v in anchor_sizes) if anchor_sizes is not None else None
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise ValueError(f"anchor_sizes must be positive, got {anchor_sizes}")
    if architecture == "fasterrcnn_mobilenet_v3_large_fpn":
        backbone = _mobilenet_extractor(mobilenet_v3_large(norm_layer=norm), True, layers)
        anchors = AnchorGenerator((sizes or (32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        # torchvision's defaults for this backbone
        return FasterRCNN(
            backbone,
            classes,
            rpn_anchor_generator=anchors,
            rpn_score_thresh=0.05,
            **kwargs,
        )
    make = resnet50 if architecture == "fasterrcnn_resnet50_fpn" else resnet18
    backbone = _resnet_fpn_extractor(make(norm_layer=norm), layers)
    if sizes is not None:
        if len(sizes) != 5:
            raise ValueError(
                f"a ResNet FPN has five levels: give five anchor_sizes, one per level, "
                f"got {anchor_sizes}"
            )
        kwargs["rpn_anchor_generator"] = AnchorGenerator(
            tuple((v,) for v in sizes), ((0.5, 1.0, 2.0),) * 5
        )
    return FasterRCNN(backbone, classes, **kwargs)


def load_coco_pretrained(model: FasterRCNN, path: Path) -> None:
    """Start from torchvision's COCO weights in a local file (the seed's transfer learning).

    ``path`` is e.g. ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` copied from
    a machine with internet access. Everything but the box predictor (whose
    classes differ) is loaded; the model must have been built with
    ``frozen_batchnorm=True``, as torchvision's pretrained detectors are.

    Raises
    ------
    ValueError
        If the file is missing or does not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: another architecture's weights
        lines = str(exc).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else str(exc)
        raise ValueError(
            f"{path} does not fit this detector ({detail}); use the COCO weights of the same "
            "torchvision architecture"
        ) from None
    missing = [k for k in missing if not k.startswith("roi_heads.box_predictor.")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this detector: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "use the COCO weights of the same torchvision architecture, and a model built "
            "with frozen batch norm"
        )


def as_model_image(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A prepared (H, W) [0, 1] radiograph as the detector's (3, H, W) input on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    return t[None].expand(3, -1, -1)


def detect(
    model: FasterRCNN, images: Sequence[np.ndarray], device: torch.device | str
) -> list[dict[str, np.ndarray]]:
    """Run the detector in eval mode: per image ``boxes`` (n, 4) x0 y0 x1 y1 in model
    pixels, ``labels`` (n,) 1-based card label indices and ``scores`` (n,)."""
    if not images:
        return []
    model.eval()
    with torch.inference_mode():
        outputs = model([as_model_image(image, device) for image in images])
    return [{k: v.detach().cpu().numpy() for k, v in out.items()} for out in outputs]


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Keep detection images and targets as lists (sizes and box counts differ)."""
    return [image for image, _ in batch], [target for _, target in batch]
