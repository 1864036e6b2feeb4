"""Radiographs seed 003 excluded, found before the models run: metal implants and poor quality.

The study left out images with metal implants (a hip prosthesis, screws or a
plate in the proximal femur) and images of poor quality; its model never saw
them, so the node must not score them as if it had. Both checks run on the
localiser's input (the display image at the localiser's size, [0, 1], bright =
dense), which is small, so they cost a few milliseconds per image:

* **metal**: metal attenuates far more than bone, so on the min-max scaled
  display it is the bright end and bone falls well below it. A thick bright
  region is metal: the pixels at or above ``metal_level`` are opened with a
  disc of radius ``metal_radius`` x the shorter side, which removes cortical
  lines, trabeculae and lead letters, and the largest region left must stay
  under ``metal_area`` of the image. On 158 phantoms without an implant (four
  datasets, 320-448 px wide, localiser input at 160 and 512 px) nothing was
  left; on 139 with one, at least 0.73 % of the image (limit 0.4 %). A disc
  of 0.03 left up to 0.45 % on thick cortex: 0.04 is the default.
* **noise**: the noise standard deviation (Immerkaer's fast estimate, from
  the image's second differences) over the 1st-99th percentile range must
  stay under ``max_noise``. Phantoms measure 0.0034-0.0078 at a 160 px
  localiser input; their trabecular texture is lost in added noise from about
  0.03 (limit 0.04). The estimate is taken at the localiser's size, where the
  models look: a larger input averages less noise away.

A card sets the limits in ``options.exclusions`` (``enabled: false`` turns the
checks off, e.g. for a model trained on images with implants). The numbers
above are phantoms: a hospital checks the limits on its own images before it
relies on them (:func:`exclusion_reason` on each).
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

#: Immerkaer's noise kernel: the difference of two Laplacians, blind to planes and ramps.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


class ExclusionLimits(BaseModel):
    """``options.exclusions`` of a ``hip-osteoporosis`` card."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: display level (0-1) at or above which a pixel may be metal
    metal_level: float = Field(0.9, gt=0.0, le=1.0)
    #: opening radius as a share of the shorter side: thinner bright structures are not metal
    metal_radius: float = Field(0.04, gt=0.0, lt=0.5)
    #: largest thick bright region allowed, as a share of the image
    metal_area: float = Field(0.004, gt=0.0, lt=1.0)
    #: largest noise standard deviation allowed, as a share of the 1st-99th percentile range
    max_noise: float = Field(0.04, gt=0.0)


def metal_share(image: np.ndarray, limits: ExclusionLimits) -> float:
    """The share of ``image`` covered by its largest thick bright region (0 when none)."""
    height, width = image.shape
    radius = max(1, round(limits.metal_radius * min(height, width)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    bright = (image >= limits.metal_level).astype(np.uint8)
    thick = cv2.morphologyEx(bright, cv2.MORPH_OPEN, disc)
    labels, count = ndimage.label(thick)
    if count == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max()) / float(height * width)


def noise_ratio(image: np.ndarray) -> float:
    """Noise standard deviation over the 1st-99th percentile range (inf for a flat image).

    Immerkaer (1996), "Fast noise variance estimation": the mean absolute
    response to :data:`_NOISE_KERNEL`, times sqrt(pi / 2) / 6.
    """
    if min(image.shape) < 3:
        return float("inf")
    response = ndimage.convolve(image.astype(np.float32), _NOISE_KERNEL, mode="reflect")
    sigma = float(np.sqrt(np.pi / 2.0) * np.abs(response[1:-1, 1:-1]).mean() / 6.0)
    low, high = np.percentile(image, [1.0, 99.0])
    spread = float(high - low)
    return sigma / spread if spread > 0 else float("inf")


def exclusion_reason(image: np.ndarray, limits: ExclusionLimits) -> str | None:
    """Why seed 003 would have excluded this radiograph, or None when it would not.

    ``image`` is the localiser's input (float (H, W) in [0, 1], bright = dense).
    The reason is what the node logs and the SR's "not analysed" text says.
    """
    if not limits.enabled:
        return None
    share = metal_share(image, limits)
    if share >= limits.metal_area:
        return (
            f"metal implant suspected ({share:.1%} of the image is a thick region at metal "
            f"brightness, limit {limits.metal_area:.1%}); the study excluded images with metal "
            "implants"
        )
    noise = noise_ratio(image)
    if noise == float("inf"):
        return (
            "poor image quality (no contrast: the image is flat); the study excluded images of "
            "poor quality"
        )
    if noise >= limits.max_noise:
        return (
            f"poor image quality (noise {noise:.3f} of the grey range, limit "
            f"{limits.max_noise:.3f}); the study excluded images of poor quality"
        )
    return None
