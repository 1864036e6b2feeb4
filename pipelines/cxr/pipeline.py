"""The node's ``cxr-findings`` pipeline: chest radiographs in, boxed findings out (seed 001).

What it does with a job
-----------------------
1. Every selected file is read and guarded (:mod:`pipelines.cxr.radiograph`):
   CR / DX frontal chest images only; lateral views, other body parts,
   multi-frame, colour or undecodable objects are skipped with a logged
   reason. The rest get the seed's log transform and simplest color balance.
2. The detector (:mod:`pipelines.cxr.model`) runs on batches of
   ``options.batch_size`` images; boxes map back to source pixels.
3. Findings, per image and per reported label:

   * one finding per box whose score reaches the label's threshold (at most
     ``options.max_boxes_per_label``, highest first), with the box, its
     score as the certainty and the label's finding site: the SR writes it
     as a TID 1410 planar ROI (a closed 5-point polyline on the image);
   * otherwise one *absent* finding for the label on that image, whose
     certainty is the best candidate box's score (0 when the detector
     proposed none), so the SR says that the model looked and found nothing.
4. Heatmaps (card ``explainer``): for the ``top_k`` images with the highest
   box score, a gradient-free CAM of the detector's backbone + FPN:
   ``eigencam`` (first principal component of the feature maps) or
   ``ablationcam`` (the drop in the matched box scores when feature channels
   are ablated; the seed's preferred one). The explained boxes are the
   reported ones, or the single best candidate on an image without any (an
   image without a single candidate box gets no heatmap), and the SC draws
   the reported boxes with their labels and scores.

Card ``options`` (all optional, validated when the model is loaded):
``max_size`` (1333), ``score_threshold`` (0.05, candidate floor),
``nms_threshold`` (0.5), ``detections_per_image`` (100),
``frozen_batchnorm`` (false; true for weights fine-tuned from COCO),
``log_gain`` (255), ``dark_clip_percent`` / ``bright_clip_percent`` (0.5),
``batch_size`` (4), ``max_boxes_per_label`` (10), ``ablation_ratio`` (0.1:
fraction of the 256 FPN channels AblationCAM ablates, the most active
first) and ``ablation_batch_size`` (8: ablated copies per forward pass).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from torchvision.models.detection import FasterRCNN

from pipelines import base
from pipelines.card import CardError, InputSpec, ModelCard
from pipelines.card import parse_options as parse_card_options
from pipelines.common.cam import FpnAblationLayer, compute_heatmaps, fpn_reshape_transform
from pipelines.common.detector import DetectorSettings
from pipelines.common.models import load_weights
from pipelines.cxr.model import as_model_image, build_detector, detect
from pipelines.cxr.radiograph import Preprocessing, Radiograph, read_radiograph
from pipelines.registry import register

logger = logging.getLogger(__name__)

#: CAM methods that explain a detector without a class score to differentiate
DETECTOR_CAM_METHODS = ("ablationcam", "eigencam")


class CxrOptions(DetectorSettings):
    """The ``options`` of a ``cxr-findings`` card (the detector's sizes: :class:`DetectorSettings`)."""

    max_size: int = Field(1333, ge=32)
    #: candidate boxes below this class score are dropped before NMS
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    log_gain: float = Field(255.0, gt=0.0)
    dark_clip_percent: float = Field(0.5, ge=0.0, lt=50.0)
    bright_clip_percent: float = Field(0.5, ge=0.0, lt=50.0)
    batch_size: int = Field(4, ge=1)
    max_boxes_per_label: int = Field(10, ge=1)
    ablation_ratio: float = Field(0.1, gt=0.0, le=1.0)
    ablation_batch_size: int = Field(8, ge=1)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.log_gain, self.dark_clip_percent, self.bright_clip_percent)


def parse_options(card: ModelCard) -> CxrOptions:
    """Validate a card's ``options`` for the ``cxr-findings`` pipeline (CardError naming the option)."""
    return parse_card_options(card, CxrOptions, "cxr-findings")


def detector_for(
    architecture: str,
    num_labels: int,
    spec: InputSpec,
    options: CxrOptions,
    *,
    trainable_layers: int | None = None,
) -> FasterRCNN:
    """The detector of an architecture, input spec and options (for the node and the trainer).

    Raises
    ------
    ValueError
        If the architecture is unknown or the input is not 3 channels.
    """
    if spec.channels != 3:
        raise ValueError("a cxr-findings detector takes input.channels 3")
    return build_detector(
        architecture,
        num_labels,
        min_size=spec.size,
        max_size=max(options.max_size, spec.size),
        image_mean=spec.mean,
        image_std=spec.std,
        score_threshold=options.score_threshold,
        trainable_layers=trainable_layers,
        **options.detector_sizes(),
    )


def build_model(card: ModelCard, options: CxrOptions | None = None) -> FasterRCNN:
    """The untrained detector a card describes."""
    options = options or parse_options(card)
    try:
        return detector_for(card.architecture, len(card.labels), card.input, options)
    except ValueError as exc:
        raise CardError(f"card {card.name!r}: {exc}") from exc


def source_box(uid: str, box: np.ndarray, image: Radiograph) -> base.Box | None:
    """A model-pixel box (x0, y0, x1, y1) in source pixels, clipped; None if it vanishes."""
    rows, cols = image.shape
    sy, sx = image.scale
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = np.clip([x0 / sx, x1 / sx], 0.0, cols)
    y0, y1 = np.clip([y0 / sy, y1 / sy], 0.0, rows)
    if not (x1 > x0 and y1 > y0):
        return None
    return base.Box(
        uid, round(float(x0), 2), round(float(y0), 2), round(float(x1), 2), round(float(y1), 2)
    )


@dataclass(frozen=True)
class _Image:
    path: Path
    image: Radiograph


@dataclass(frozen=True)
class _Detected:
    path: Path
    image: Radiograph
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @property
    def best(self) -> float:
        return float(self.scores.max()) if self.scores.size else 0.0


#: The detector's raw output for one image: ``boxes``, ``labels`` and ``scores`` arrays.
Detections = dict[str, np.ndarray]


@register("cxr-findings")
class ChestFindings(base.Pipeline[Path, _Image, np.ndarray, Detections]):
    """Seed 001: Faster R-CNN boxes per finding on frontal chest radiographs."""

    reports = "image"
    accepts = "a frontal chest radiograph that {card} can read"

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        super().__init__(card, device)
        self.options = parse_options(card)
        self.model = build_model(card, self.options)
        load_weights(self.model, card)
        self.model.to(device).eval()
        method = card.explainer.method.lower()
        if card.explainer.top_k > 0 and method not in DETECTOR_CAM_METHODS:
            raise CardError(
                f"card {card.name!r}: explainer.method {card.explainer.method!r} cannot explain "
                f"a detector; use one of {', '.join(DETECTOR_CAM_METHODS)}"
            )
        logger.info(
            "loaded %s (cxr-findings, %s, %d labels) on %s",
            card.name,
            card.architecture,
            len(card.labels),
            device,
        )

    # -- prepare, forward --------------------------------------------------------------

    def prepare_file(self, path: Path) -> Radiograph:
        """Read, guard and prepare one file as the detector sees it (raises RadiographError)."""
        return read_radiograph(
            path, self.card.input.size, self.options.max_size, self.options.preprocessing
        )

    def load(self, unit: Path) -> base.ModelInput[_Image, np.ndarray]:
        image = self.prepare_file(Path(unit))
        return base.ModelInput(_Image(Path(unit), image), image.image)

    def forward(self, batch: Sequence[np.ndarray]) -> list[Detections]:
        return detect(self.model, list(batch), self.device)

    # -- interpret ---------------------------------------------------------------------

    def interpret(self, scored: base.Scored[_Image, Detections]) -> base.PipelineResult:
        detected = [
            _Detected(ref.path, ref.image, out["boxes"], out["labels"], out["scores"])
            for ref, out in zip(scored.refs, scored.outputs, strict=True)
        ]
        findings = [finding for det in detected for finding in self._findings(det)]
        return base.PipelineResult(findings=findings, heatmaps=self._heatmaps(detected))

    def _reported(self, det: _Detected) -> list[tuple[int, float, base.Box]]:
        """(label index, score, source box) of the boxes at or above their label's threshold."""
        kept: list[tuple[int, float, base.Box]] = []
        per_label: dict[int, int] = {}
        for box, label, score in zip(det.boxes, det.labels, det.scores, strict=True):
            index = int(label) - 1
            if not 0 <= index < len(self.card.labels):
                continue
            spec = self.card.labels[index]
            if not spec.report or float(score) < spec.threshold:
                continue
            if per_label.get(index, 0) >= self.options.max_boxes_per_label:
                continue
            mapped = source_box(det.image.sop_instance_uid, box, det.image)
            if mapped is None:
                continue
            per_label[index] = per_label.get(index, 0) + 1
            kept.append((index, float(score), mapped))
        return kept

    def _findings(self, det: _Detected) -> list[base.Finding]:
        uid = (det.image.sop_instance_uid,)
        reported = self._reported(det)
        findings: list[base.Finding] = []
        for index, spec in enumerate(self.card.labels):
            if not spec.report:
                continue
            boxes = sorted(
                ((score, box) for i, score, box in reported if i == index), key=lambda t: -t[0]
            )
            findings.extend(
                self.finding(spec, score, uid, present=True, box=box, unit="box")
                for score, box in boxes
            )
            if not boxes:
                candidates = det.scores[det.labels == index + 1]
                best = float(candidates.max()) if candidates.size else 0.0
                findings.append(self.finding(spec, best, uid, present=False))
        return findings

    def _cam_options(self) -> dict[str, object]:
        if self.card.explainer.method.lower() != "ablationcam":
            return {}
        return {
            "ablation_layer": FpnAblationLayer(),
            "batch_size": self.options.ablation_batch_size,
            "ratio_channels_to_ablate": self.options.ablation_ratio,
        }

    def _heatmaps(self, detected: Sequence[_Detected]) -> list[base.Heatmap]:
        top_k = self.card.explainer.top_k
        if top_k <= 0 or not detected:
            return []
        # an image without a single candidate box has nothing to explain
        chosen = sorted(
            (i for i in range(len(detected)) if detected[i].scores.size),
            key=lambda i: -detected[i].best,
        )[:top_k]
        heatmaps = []
        for i in chosen:
            det = detected[i]
            reported = self._reported(det)
            # explain what is reported, or the detector's best guess on a normal-looking image
            keep = [
                j
                for j, (label, score) in enumerate(zip(det.labels, det.scores, strict=True))
                if 0 < label <= len(self.card.labels)
                and score >= self.card.labels[int(label) - 1].threshold
            ] or [int(np.argmax(det.scores))]
            target = FasterRCNNBoxScoreTarget(
                labels=[int(det.labels[j]) for j in keep],
                bounding_boxes=[torch.as_tensor(det.boxes[j]) for j in keep],
                iou_threshold=0.5,
            )
            (cam,) = compute_heatmaps(
                self.model,
                as_model_image(det.image.image, self.device)[None],
                target_layer=self.model.backbone,
                targets=[target],
                output_shapes=[det.image.shape],
                method=self.card.explainer.method,
                reshape_transform=fpn_reshape_transform,
                batch_size=1,
                method_options=self._cam_options(),
            )
            self.model.eval()
            annotations = tuple(
                base.Annotation(box, f"{self.card.labels[label].name} {score:.0%}")
                for label, score, box in reported
            )
            heatmaps.append(
                base.Heatmap(
                    source=det.path,
                    sop_instance_uid=det.image.sop_instance_uid,
                    array=cam,
                    label="detections",
                    annotations=annotations,
                )
            )
        return heatmaps
