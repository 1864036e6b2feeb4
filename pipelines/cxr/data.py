"""COCO-annotated chest radiographs as detector training data.

A dataset is a folder of DICOM images and a COCO file whose ``file_name``
entries are paths relative to that folder (:mod:`pipelines.cxr.coco` writes
and checks them). Each item is read and prepared exactly as the node does at
inference (:func:`pipelines.cxr.radiograph.read_radiograph`), so a model
never sees a different kind of input in the hospital than in training; its
boxes are scaled from source pixels to the prepared image.

Category ids map to the detector's classes by their order in ``categories``:
the first category is class 1 (0 is background), as the card's labels are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from pipelines.common.detector import collate, detect
from pipelines.cxr.radiograph import Preprocessing, RadiographError, read_radiograph

__all__ = ["DetectionDataError", "DetectionDataset", "collate", "predict_coco"]


class DetectionDataError(ValueError):
    """A training image cannot be used (the message names the file and why)."""


class DetectionDataset(TorchDataset):
    """``(image, target)`` items: a (3, H, W) [0, 1] tensor and ``{"boxes", "labels"}``.

    ``boxes`` are float32 (n, 4) x0 y0 x1 y1 in prepared-image pixels,
    ``labels`` int64 (n,) 1-based class indices.

    Parameters
    ----------
    coco : dict
        A validated COCO detection dataset (one split).
    images_dir : Path
        Folder the ``file_name`` entries are relative to.
    size, max_size : int
        The card's input size and ``options.max_size``.
    preprocessing : Preprocessing
        The seed's log transform / color balance settings.
    cache : bool
        Keep prepared images in memory as float16 (fast epochs on small data).
    """

    def __init__(
        self,
        coco: dict[str, Any],
        images_dir: Path,
        *,
        size: int,
        max_size: int,
        preprocessing: Preprocessing,
        cache: bool = False,
    ) -> None:
        self.coco = coco
        self.images_dir = Path(images_dir)
        self.size, self.max_size, self.preprocessing = size, max_size, preprocessing
        self.class_of = {cat["id"]: n + 1 for n, cat in enumerate(coco["categories"])}
        self.category_of = {v: k for k, v in self.class_of.items()}
        by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0):
                by_image[ann["image_id"]].append(ann)
        self.images = list(coco["images"])
        self.annotations = [by_image[img["id"]] for img in self.images]
        self._cache: dict[int, tuple[np.ndarray, tuple[float, float]]] | None = (
            {} if cache else None
        )

    def __len__(self) -> int:
        return len(self.images)

    def prepared(self, index: int) -> tuple[np.ndarray, tuple[float, float]]:
        """The prepared (H, W) image and its (row, column) scale from source pixels."""
        if self._cache is not None and index in self._cache:
            image, scale = self._cache[index]
            return image.astype(np.float32), scale
        path = self.images_dir / self.images[index]["file_name"]
        try:
            radiograph = read_radiograph(path, self.size, self.max_size, self.preprocessing)
        except RadiographError as exc:
            raise DetectionDataError(
                f"training image {path} cannot be used: {exc}; fix it or remove it from the "
                "COCO file"
            ) from None
        if self._cache is not None:
            self._cache[index] = (radiograph.image.astype(np.float16), radiograph.scale)
        return radiograph.image, radiograph.scale

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, (sy, sx) = self.prepared(index)
        anns = self.annotations[index]
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0] * sx,
                    a["bbox"][1] * sy,
                    (a["bbox"][0] + a["bbox"][2]) * sx,
                    (a["bbox"][1] + a["bbox"][3]) * sy,
                ]
                for a in anns
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([self.class_of[a["category_id"]] for a in anns], dtype=torch.int64)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return tensor[None].expand(3, -1, -1).contiguous(), {"boxes": boxes, "labels": labels}


def predict_coco(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    device: torch.device | str,
    *,
    batch_size: int = 4,
) -> list[dict[str, Any]]:
    """The detector's boxes on every image of ``dataset`` as COCO results in source pixels.

    Uses the same reading and the same :func:`pipelines.cxr.model.detect` as
    the node, so metrics describe what the node reports (above the card's
    candidate floor ``options.score_threshold``).
    """
    results: list[dict[str, Any]] = []
    model.to(device)
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        prepared = [dataset.prepared(i) for i in indices]
        outputs = detect(model, [image for image, _ in prepared], device)
        for i, (_, (sy, sx)), out in zip(indices, prepared, outputs, strict=True):
            image_id = dataset.images[i]["id"]
            for box, label, score in zip(out["boxes"], out["labels"], out["scores"], strict=True):
                category = dataset.category_of.get(int(label))
                if category is None:
                    continue
                x0, y0, x1, y1 = (float(v) for v in box)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [x0 / sx, y0 / sy, (x1 - x0) / sx, (y1 - y0) / sy],
                        "score": float(score),
                    }
                )
    return results
