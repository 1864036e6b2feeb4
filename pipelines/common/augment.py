"""Training-time augmentations of normalised image batches (the seeds' recipes).

Seed 001 (a detector) rotates by up to 5 degrees, moving the boxes with
the image, and jitters brightness / contrast (:func:`detection_augment`).
Seed 002 lists horizontal flip, rotation, brightness/contrast jitter,
Gaussian noise and Mixup (alpha 0.2). Seed 003 rotates by up to 20 degrees
and changes the brightness of 30 % of the images
(``AugmentSpec.brightness_probability``); its node shifts and zooms the
crops a little too (``translate``, ``zoom``), because they are cut around
the localiser's boxes rather than hand-drawn ones. Datasets hand the training loop
normalised tensors, so the photometric steps undo the card's normalisation,
work in the [0, 1] display range the seed's ColorJitter saw, clip, and
normalise again. All randomness comes from the loop's per-epoch generator,
so a resumed run augments exactly like an uninterrupted one.

Each factory returns an :data:`pipelines.common.train.Augment`:
``augment(inputs, targets, generator) -> (inputs, targets)`` where inputs
is an image batch or a tuple whose first item is the image batch (the other
items, e.g. slice positions, are only touched by Mixup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from pipelines.common.train import Augment, Inputs


@dataclass(frozen=True)
class AugmentSpec:
    """Strengths of each augmentation; 0 switches one off. Written to model cards as is."""

    hflip: float = 0.5
    #: maximum rotation in degrees (uniform in [-r, r])
    rotation: float = 10.0
    #: maximum additive brightness change in the [0, 1] range
    brightness: float = 0.1
    #: maximum relative contrast change about each image's mean
    contrast: float = 0.1
    #: standard deviation of additive Gaussian noise in the [0, 1] range
    noise: float = 0.02
    #: Mixup Beta(alpha, alpha); 0 = no Mixup
    mixup_alpha: float = 0.2
    #: chance that an image gets the brightness change (seed 003: 0.3); 1 = every image,
    #: drawn exactly as before the option existed
    brightness_probability: float = 1.0
    #: maximum shift along each axis as a fraction of the image size (uniform in [-t, t]);
    #: a crop cut around a detector's box is never framed exactly like the training box
    translate: float = 0.0
    #: maximum relative zoom (uniform in [1 - s, 1 + s])
    zoom: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.brightness_probability <= 1.0:
            raise ValueError(
                f"brightness_probability must be in [0, 1], got {self.brightness_probability}"
            )
        if not (0.0 <= self.translate < 1.0 and 0.0 <= self.zoom < 1.0):
            raise ValueError(
                f"translate and zoom must be in [0, 1), got {self.translate} and {self.zoom}"
            )


def _split(inputs: Inputs) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if isinstance(inputs, tuple | list):
        return inputs[0], tuple(inputs[1:])
    return inputs, ()


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def image_augment(spec: AugmentSpec, mean: Sequence[float], std: Sequence[float]) -> Augment:
    """The geometric + photometric + Mixup augmentation of ``spec`` for one card's normalisation."""
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def augment(
        inputs: Inputs, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[Inputs, torch.Tensor]:
        images, rest = _split(inputs)
        n = images.shape[0]
        x = images.float() * s + m  # back to [0, 1]
        if spec.hflip > 0:
            flip = torch.rand(n, generator=generator) < spec.hflip
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        angles = [0.0] * n
        framing = spec.translate > 0 or spec.zoom > 0
        if spec.rotation > 0:
            angles = _uniform(n, -spec.rotation, spec.rotation, generator).tolist()
            if not framing:
                x = torch.stack(
                    [TF.rotate(img, a, fill=0.0) for img, a in zip(x, angles, strict=True)]
                )
        if framing:  # drawn only then: specs without it augment exactly as they always did
            height, width = int(x.shape[-2]), int(x.shape[-1])
            shift = _uniform(2 * n, -spec.translate, spec.translate, generator).view(n, 2)
            zooms = _uniform(n, 1 - spec.zoom, 1 + spec.zoom, generator).tolist()
            x = torch.stack(
                [
                    TF.affine(
                        img,
                        angle=a,
                        translate=[float(dx) * width, float(dy) * height],
                        scale=z,
                        shear=[0.0, 0.0],
                        fill=0.0,
                    )
                    for img, a, (dx, dy), z in zip(x, angles, shift.tolist(), zooms, strict=True)
                ]
            )
        if spec.brightness > 0 or spec.contrast > 0:
            gain = _uniform(n, 1 - spec.contrast, 1 + spec.contrast, generator).view(-1, 1, 1, 1)
            shift = _uniform(n, -spec.brightness, spec.brightness, generator).view(-1, 1, 1, 1)
            if spec.brightness_probability < 1.0:
                # drawn only then, so that specs without it augment exactly as they always did
                keep = torch.rand(n, generator=generator) < spec.brightness_probability
                shift = torch.where(keep.view(-1, 1, 1, 1), shift, torch.zeros_like(shift))
            centre = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - centre) * gain + centre + shift
        if spec.noise > 0:
            x = x + spec.noise * torch.randn(x.shape, generator=generator)
        x = (x.clamp(0.0, 1.0) - m) / s
        y = targets
        if spec.mixup_alpha > 0 and n > 1:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            lam = float(np.random.default_rng(seed).beta(spec.mixup_alpha, spec.mixup_alpha))
            perm = torch.randperm(n, generator=generator)
            x = lam * x + (1 - lam) * x[perm]
            rest = tuple(lam * r.float() + (1 - lam) * r.float()[perm] for r in rest)
            y = lam * targets.float() + (1 - lam) * targets.float()[perm]
        return ((x, *rest) if rest else x), y

    return augment


@dataclass(frozen=True)
class DetectionAugmentSpec:
    """Seed 001's augmentation of detection batches; 0 switches one off. Written to cards as is."""

    #: maximum rotation in degrees (uniform in [-r, r]); boxes are rotated with the image
    rotation: float = 5.0
    #: maximum additive brightness change in the [0, 1] range
    brightness: float = 0.1
    #: maximum relative contrast change about each image's mean
    contrast: float = 0.1


def rotate_with_boxes(
    image: torch.Tensor, boxes: torch.Tensor, angle: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate a (C, H, W) image and its x0 y0 x1 y1 boxes by ``angle`` degrees about the centre.

    A box is taken as the ellipse inscribed in it (the shape of a nodule, a
    knob, an opacity) and becomes the axis-aligned box of that ellipse
    rotated: centred on the rotated box centre, with half-sizes
    ``sqrt((w cos a)^2 + (h sin a)^2) / 2`` and ``sqrt((w sin a)^2 + (h cos a)^2) / 2``.
    The box enclosing the rotated *corners* (the usual choice) grows a round
    finding's box by up to 9 % per side at 5 degrees, every time, and a
    detector trained on it learns to draw boxes too large (Kalra et al.,
    "Towards Rotation Invariance in Object Detection", ICCV 2021, show the
    ellipse box is the better estimate). Boxes are clipped to the image.
    Returns the image, the boxes and a mask of the boxes kept (those still at
    least one pixel wide and high after clipping).
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    rotated = TF.rotate(image, angle, fill=0.0)
    wrapped = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    # torchvision rotates the corners like the image; the enclosing box keeps their centre
    corners = TF.rotate(wrapped, angle).as_subclass(torch.Tensor)
    centre = (corners[:, :2] + corners[:, 2:]) / 2.0
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    radians = torch.tensor(abs(angle) * torch.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    half = torch.stack([torch.hypot(w * cos, h * sin), torch.hypot(w * sin, h * cos)], dim=1) / 2.0
    moved = torch.cat([centre - half, centre + half], dim=1)
    moved[:, 0::2] = moved[:, 0::2].clamp(0, width)
    moved[:, 1::2] = moved[:, 1::2].clamp(0, height)
    keep = ((moved[:, 2] - moved[:, 0]) >= 1) & ((moved[:, 3] - moved[:, 1]) >= 1)
    return rotated, moved, keep


def detection_augment(spec: DetectionAugmentSpec) -> Augment:
    """Augmentation of a detection batch: lists of (3, H, W) [0, 1] images and target dicts.

    Rotation moves the boxes with the image (:func:`rotate_with_boxes`, the
    rotated inscribed ellipse's box); a box pushed out of the image is
    dropped with its label. Brightness and
    contrast change each image about its mean, then clip to [0, 1] (the
    detector normalises inside the model). Randomness comes from the
    training loop's per-epoch generator.
    """

    def augment(inputs: Any, targets: Any, generator: torch.Generator) -> tuple[Any, Any]:
        images, out_targets = [], []
        for image, target in zip(inputs, targets, strict=True):
            x, target = image.float(), dict(target)
            if spec.rotation > 0:
                angle = float(_uniform(1, -spec.rotation, spec.rotation, generator))
                x, boxes, keep = rotate_with_boxes(x, target["boxes"], angle)
                target["boxes"], target["labels"] = boxes[keep], target["labels"][keep]
            if spec.brightness > 0 or spec.contrast > 0:
                gain = float(_uniform(1, 1 - spec.contrast, 1 + spec.contrast, generator))
                shift = float(_uniform(1, -spec.brightness, spec.brightness, generator))
                centre = x.mean()
                x = ((x - centre) * gain + centre + shift).clamp(0.0, 1.0)
            images.append(x)
            out_targets.append(target)
        return images, out_targets

    return augment
