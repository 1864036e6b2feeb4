"""Which femoral neck is which side, the crop around it, mirroring, and the way back.

Side of a neck
--------------
An AP radiograph is displayed as if facing the patient: the patient's right
is on the image's left. Patient Orientation says otherwise when the image is
flipped (its rows run towards the patient's right), and then the sides swap.
So on an AP pelvis a neck whose box centre lies left of the image's vertical
midline is the patient's right neck, unless the image is flipped. A
single-hip image whose header names the side (Image Laterality or
Laterality ``R``/``L``) shows that hip whatever the geometry. At most one
neck per side is kept: the localiser's highest-scoring box.

Crops and mirroring
-------------------
The classifier sees the neck box expanded by a margin (a fraction of the
box's width and height on every side), clipped to the image, resized to
its input size. The study mirrored right femurs to look like left ones, so
every crop shows a femur the same way round: the canonical view is a left
femur as displayed on an AP image (head towards the image's left). A crop
is mirrored when its femur looks like a right femur on the screen, i.e.
when it is the right side of an image in the usual display or the left
side of a flipped one.

The way back
------------
Grad-CAM maps are computed on the (mirrored) crop, resized to the crop
region, mirrored back and pasted into a full-image array, so the heatmap
lies on the neck of the source image the radiologist sees.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.card import CodeSpec
from pipelines.hip.codes import LEFT, RIGHT

Box4 = tuple[float, float, float, float]


class Side(enum.Enum):
    """The patient's side of a femur (DICOM laterality letters)."""

    RIGHT = "R"
    LEFT = "L"

    @property
    def code(self) -> CodeSpec:
        """SNOMED CT laterality: 24028007 Right, 7771000 Left."""
        return RIGHT if self is Side.RIGHT else LEFT


def side_of_box(box: Box4, width: int, *, flipped: bool) -> Side:
    """The side of a neck on an AP image of ``width`` columns, by its box centre."""
    centre = (float(box[0]) + float(box[2])) / 2.0
    on_image_left = centre < width / 2.0
    return Side.RIGHT if on_image_left != flipped else Side.LEFT


def assign_sides(
    boxes: Sequence[Box4],
    scores: Sequence[float],
    width: int,
    *,
    flipped: bool,
    laterality: str | None,
) -> dict[Side, int]:
    """The index of the best box of each side (see the module docstring).

    Parameters
    ----------
    boxes : sequence of (x0, y0, x1, y1)
        Neck boxes in source pixels.
    scores : sequence of float
        Their localiser scores (the highest wins a side).
    width : int
        Columns of the image.
    flipped : bool
        Patient Orientation says the rows run towards the patient's right.
    laterality : {"R", "L"} or None
        The side a single-hip image shows, from its header.

    Returns
    -------
    dict
        ``{Side: index into boxes}``, right first; empty when there are no boxes.
    """
    if len(boxes) != len(scores):
        raise ValueError(f"got {len(boxes)} boxes but {len(scores)} scores")
    best: dict[Side, int] = {}
    for i in sorted(range(len(boxes)), key=lambda j: -float(scores[j])):
        side = Side(laterality) if laterality else side_of_box(boxes[i], width, flipped=flipped)
        best.setdefault(side, i)
    return {side: best[side] for side in (Side.RIGHT, Side.LEFT) if side in best}


def is_mirrored(side: Side, *, flipped: bool) -> bool:
    """Whether the crop of ``side`` is mirrored to the canonical (left femur) view."""
    return (side is Side.RIGHT) != flipped


@dataclass(frozen=True)
class CropRegion:
    """Source pixels ``[x0, x1) x [y0, y1)`` that one crop covers, and whether it is mirrored."""

    x0: int
    y0: int
    x1: int
    y1: int
    mirrored: bool

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def crop_region(box: Box4, margin: float, shape: tuple[int, int], *, mirrored: bool) -> CropRegion:
    """The box grown by ``margin`` x its size on every side, to whole pixels, clipped.

    Raises
    ------
    ValueError
        If the margin is negative or the box does not overlap the image.
    """
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    rows, cols = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    left, top = max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy))
    right, bottom = min(cols, math.ceil(x1 + dx)), min(rows, math.ceil(y1 + dy))
    if right - left < 2 or bottom - top < 2:
        raise ValueError(f"box {box} does not overlap the {rows} x {cols} image")
    return CropRegion(left, top, right, bottom, mirrored)


def extract_crop(display: np.ndarray, region: CropRegion) -> np.ndarray:
    """The region's pixels, mirrored left-right when the region says so (float32 copy)."""
    crop = display[region.y0 : region.y1, region.x0 : region.x1]
    if region.mirrored:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


def crop_to_source(
    point: tuple[float, float], region: CropRegion, crop_shape: tuple[int, int]
) -> tuple[float, float]:
    """A point ``(x, y)`` of the crop image of ``crop_shape`` (rows, columns; e.g. the
    classifier's input size) in continuous source coordinates."""
    u, v = float(point[0]), float(point[1])
    rows, cols = crop_shape
    x = u * region.width / cols
    if region.mirrored:
        x = region.width - x
    return region.x0 + x, region.y0 + v * region.height / rows


def paste_heatmap(canvas: np.ndarray, region: CropRegion, cam: np.ndarray) -> None:
    """Put a map of the crop (already at the region's size) back on the full-image ``canvas``.

    The map is mirrored back when the crop was mirrored; where two regions
    overlap the larger value stays.

    Raises
    ------
    ValueError
        If ``cam`` is not the region's size.
    """
    if cam.shape != (region.height, region.width):
        raise ValueError(
            f"heatmap of shape {cam.shape} does not fit the {region.height} x {region.width} crop"
        )
    patch = cam[:, ::-1] if region.mirrored else cam
    window = canvas[region.y0 : region.y1, region.x0 : region.x1]
    np.maximum(window, patch, out=window)
