"""The seed's detector: torchvision Faster R-CNN with an FPN backbone, classes from the card.

Seed 001 fine-tunes a COCO-pretrained Faster R-CNN ResNet-50-FPN. The card's
``architecture`` picks the backbone:

``fasterrcnn_resnet50_fpn``
    The seed's model (torchvision's v1 Faster R-CNN, 41 M parameters).
``fasterrcnn_mobilenet_v3_large_fpn``
    MobileNet-v3-Large with a two-level FPN (19 M parameters), several times
    faster on a CPU: for sites without a GPU.
``fasterrcnn_resnet18_fpn``
    ResNet-18 with the ResNet FPN (28 M parameters): trains from scratch on a
    CPU in minutes, which is what the synthetic demo model uses.

The network has ``len(labels) + 1`` outputs: index 0 is torchvision's
background, index ``k`` the card's ``k``-th label. It takes a list of
(3, H, W) images in [0, 1]; its own transform normalises them with the
card's ``input.mean`` / ``input.std`` and resizes so that the shorter side
is ``input.size`` (the longer at most ``options.max_size``).

Batch normalisation: a model fine-tuned from pretrained weights keeps the
backbone's statistics frozen (``FrozenBatchNorm2d``, as torchvision does,
since detection batches are too small to estimate them); a model trained
from scratch must learn them (``BatchNorm2d``). The card records which
(``options.frozen_batchnorm``), because the two have different state dicts.

The builder is shared with the other detecting pipelines and lives in
:mod:`pipelines.common.detector`; this module names it for seed 001.
"""

from __future__ import annotations

from pipelines.common.detector import (
    ARCHITECTURES,
    COCO_CLASSES,
    as_model_image,
    build_detector,
    detect,
    load_coco_pretrained,
    supported_detectors,
)

__all__ = [
    "ARCHITECTURES",
    "COCO_CLASSES",
    "as_model_image",
    "build_detector",
    "detect",
    "load_coco_pretrained",
    "supported_detectors",
]
