"""Training-time augmentations of normalised image batches (the seeds' recipes).

Seed 002 lists horizontal flip, rotation, brightness/contrast jitter,
Gaussian noise and Mixup (alpha 0.2). Datasets hand the training loop
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

import numpy as np
import torch
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
        if spec.rotation > 0:
            angles = _uniform(n, -spec.rotation, spec.rotation, generator).tolist()
            x = torch.stack([TF.rotate(img, a, fill=0.0) for img, a in zip(x, angles, strict=True)])
        if spec.brightness > 0 or spec.contrast > 0:
            gain = _uniform(n, 1 - spec.contrast, 1 + spec.contrast, generator).view(-1, 1, 1, 1)
            shift = _uniform(n, -spec.brightness, spec.brightness, generator).view(-1, 1, 1, 1)
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
