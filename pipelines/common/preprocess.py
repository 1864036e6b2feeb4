"""DICOM pixels to the normalised tensor a card's model expects.

Training (:mod:`pipelines.generic.demo`) and inference (:mod:`pipelines.generic.pipeline`) both
go through these functions, so a model sees exactly the same kind of input in
the hospital as when it was trained: what the radiologist sees (VOI window,
MONOCHROME1 inverted) or a fixed window from the card, scaled to [0, 1],
resized to ``size`` x ``size``, replicated to ``channels`` and normalised with
the card's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from imaging.pixels import display_pixels, modality_pixels, window, window_stack
from pipelines.card import InputSpec


def display_image(ds: Dataset, spec: InputSpec, frame: int = 0) -> np.ndarray:
    """One frame as float32 in [0, 1] (bright = dense), at the source resolution.

    With ``spec.windows`` set, each window is applied to the modality values
    (HU for CT) and the result is (channels, Rows, Columns): physical units
    do not depend on the photometric interpretation, so nothing is inverted.
    With ``spec.window_center``/``window_width`` set (e.g. a lung window for
    CT) that fixed window is applied to the modality values, so that every
    image is seen on the same scale; otherwise the object's own VOI / a
    percentile stretch is used (:func:`imaging.pixels.display_pixels`).
    Both of these return (Rows, Columns).

    Raises
    ------
    imaging.pixels.PixelDataError
        If the object has no usable pixel data.
    """
    if (spec.window_center is None) != (spec.window_width is None):
        raise ValueError(
            "the card's input sets only one of window_center / window_width; set both or neither"
        )
    if spec.windows is not None:
        return window_stack(modality_pixels(ds, frame), [(w.center, w.width) for w in spec.windows])
    if spec.window_center is None or spec.window_width is None:
        return display_pixels(ds, frame)
    shown = window(modality_pixels(ds, frame), spec.window_center, spec.window_width)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        shown = 1.0 - shown
    return shown.astype(np.float32)


def _per_channel(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    if len(values) == channels:
        out = list(values)
    elif len(values) == 1:
        out = list(values) * channels
    elif channels == 1 and len(set(values)) == 1:  # e.g. [0.5, 0.5, 0.5] for greyscale input
        out = [values[0]]
    else:
        raise ValueError(
            f"the card's input.{what} has {len(values)} values but input.channels is {channels}; "
            f"give one value or one per channel"
        )
    return torch.tensor(out, dtype=torch.float32).view(1, channels, 1, 1)


def to_model_input(images: Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Stack [0, 1] images into a normalised (N, channels, size, size) batch.

    Each image is (H, W) greyscale, replicated to ``channels``, or already
    (channels, H, W) (e.g. from ``spec.windows``).

    Resizing is bilinear with antialiasing (a 2048-pixel radiograph shrunk to
    224 must not alias its noise into the model's input). Aspect ratio is not
    preserved: the heatmaps are resized back to each source's Rows x Columns,
    which undoes the distortion.
    """
    if len(images) == 0:
        return torch.empty((0, spec.channels, spec.size, spec.size), dtype=torch.float32)
    mean = _per_channel(spec.mean, spec.channels, "mean")
    std = _per_channel(spec.std, spec.channels, "std")
    if torch.any(std <= 0):
        raise ValueError("the card's input.std values must be positive")
    resized = []
    for image in images:
        if image.ndim == 2:
            t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        elif image.ndim == 3 and image.shape[0] == spec.channels:
            t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        else:
            raise ValueError(
                f"expected an (H, W) image or a ({spec.channels}, H, W) stack, got shape {image.shape}"
            )
        t = F.interpolate(
            t, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=True
        )
        resized.append(t.expand(1, spec.channels, spec.size, spec.size))
    batch = torch.cat(resized)
    return (batch - mean) / std


def datasets_to_batch(
    datasets: Sequence[Dataset], spec: InputSpec
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Preprocess DICOM datasets into one batch.

    Returns
    -------
    batch : torch.Tensor
        (N, channels, size, size), float32, normalised.
    shapes : list of (int, int)
        Each source image's (Rows, Columns), to map heatmaps back.
    """
    images = [display_image(ds, spec) for ds in datasets]
    return to_model_input(images, spec), [tuple(img.shape[-2:]) for img in images]
