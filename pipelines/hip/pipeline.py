"""The node's ``hip-osteoporosis`` pipeline: hip radiographs in, osteoporosis per femoral neck out.

What it does with a job
-----------------------
1. Every selected file is read and guarded (:mod:`pipelines.hip.radiograph`):
   CR / DX frontal hip or pelvis images; other body parts, lateral and
   frog-leg views, multi-frame, colour and undecodable objects are skipped
   with a logged reason. So are the images the study excluded
   (:mod:`pipelines.hip.quality`): a suspected metal implant, or noise too
   high for the trabecular texture the classifier reads.
2. The localiser (:mod:`pipelines.hip.model`) finds the femoral necks on
   batches of ``options.batch_size`` images; boxes scoring at least
   ``options.localiser.score_threshold`` are necks, mapped back to source
   pixels, and each gets its side, at most one per side
   (:mod:`pipelines.hip.sides`). An image without a neck is skipped with
   the reason (its best score).
3. Each neck is cropped with ``options.crop_margin``, mirrored when it is a
   right femur as displayed, resized to the card's ``input.size`` and
   classified; the sigmoid of the one output is the probability of
   osteoporosis.
4. Findings: one per neck, ``osteoporosis`` (SCT 64859006) at the label's
   finding site (SCT 29627003, neck of femur) with the side's laterality
   (SCT 24028007 right / 7771000 left), the probability as the certainty,
   present when it reaches the label's threshold, and the neck box on the
   image (the SR's planar ROI).
5. Heatmaps (card ``explainer``, Grad-CAM by default): for the ``top_k``
   images with the highest probability, the map of each neck's crop is
   mirrored back and pasted into its region of a full-image array (zero
   elsewhere); the SC draws each neck box captioned ``osteoporosis L 73%``.

The card (one for both models) and its ``options`` are described in
:mod:`pipelines.hip.model`; the node logs SOP Instance UIDs and file names,
never patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from pipelines import base
from pipelines.card import CardError, InputSpec, ModelCard
from pipelines.common.cam import compute_heatmaps
from pipelines.common.detector import detect
from pipelines.common.models import load_weights
from pipelines.common.preprocess import to_model_input
from pipelines.hip.model import (
    PIPELINE,
    HipOptions,
    LocaliserOptions,
    build_osteoporosis_classifier,
    load_localiser,
    parse_options,
)
from pipelines.hip.quality import exclusion_reason
from pipelines.hip.radiograph import HipRadiograph, localiser_image, read_hip_radiograph
from pipelines.hip.sides import (
    CropRegion,
    Side,
    assign_sides,
    crop_region,
    extract_crop,
    is_mirrored,
    paste_heatmap,
)
from pipelines.registry import register

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Neck:
    """One femoral neck found on an image."""

    side: Side
    #: the localiser's box in continuous source pixels (x0, y0, x1, y1)
    box: tuple[float, float, float, float]
    score: float
    region: CropRegion
    #: the region's source pixels, mirrored when the region is (float32)
    crop: np.ndarray


def neck_boxes(
    detection: dict[str, np.ndarray],
    scale: tuple[float, float],
    shape: tuple[int, int],
    score_threshold: float,
    *,
    flipped: bool,
    laterality: str | None,
) -> tuple[dict[Side, tuple[tuple[float, float, float, float], float]], float]:
    """The localiser's necks on one image in source pixels, one per side at most.

    Parameters
    ----------
    detection : dict
        :func:`pipelines.common.detector.detect` output for the image
        (``boxes`` in localiser pixels, ``scores``).
    scale : (float, float)
        Localiser pixels per source pixel (rows, columns).
    shape : (int, int)
        The source image's (Rows, Columns).
    score_threshold : float
        Boxes below it are not necks.
    flipped, laterality
        The image's orientation and single-hip side (:func:`pipelines.hip.sides.assign_sides`).

    Returns
    -------
    (necks, best)
        ``{Side: (box, score)}`` and the best score of any candidate (0 if none).
    """
    sy, sx = scale
    rows, cols = shape
    scores = np.asarray(detection["scores"], dtype=np.float64)
    best = float(scores.max()) if scores.size else 0.0
    boxes = []
    kept_scores = []
    for box, score in zip(detection["boxes"], scores, strict=True):
        if score < score_threshold:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = float(np.clip(x0 / sx, 0, cols)), float(np.clip(x1 / sx, 0, cols))
        y0, y1 = float(np.clip(y0 / sy, 0, rows)), float(np.clip(y1 / sy, 0, rows))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        boxes.append((round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)))
        kept_scores.append(float(score))
    chosen = assign_sides(boxes, kept_scores, cols, flipped=flipped, laterality=laterality)
    return {side: (boxes[i], kept_scores[i]) for side, i in chosen.items()}, best


def make_neck(
    radiograph: HipRadiograph,
    side: Side,
    box: tuple[float, float, float, float],
    score: float,
    margin: float,
) -> Neck:
    """The crop of one neck of ``radiograph`` (mirrored to the canonical view when needed)."""
    region = crop_region(
        box, margin, radiograph.shape, mirrored=is_mirrored(side, flipped=radiograph.flipped)
    )
    return Neck(side, box, score, region, extract_crop(radiograph.display, region))


@torch.inference_mode()
def classify_crops(
    classifier: nn.Module,
    crops: Sequence[np.ndarray],
    spec: InputSpec,
    device: torch.device | str,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Osteoporosis probability (sigmoid of the one output) of each crop, float64."""
    classifier.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(crops), max(1, batch_size)):
        batch = to_model_input(crops[start : start + batch_size], spec).to(device)
        logits = classifier(batch).float().reshape(len(batch), -1)[:, 0]
        out.append(torch.sigmoid(logits).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A radiograph and the localiser's input made from it."""

    radiograph: HipRadiograph
    #: float32 (H, W) in [0, 1], shorter side ``options.localiser.size``
    image: np.ndarray
    #: localiser pixels per source pixel (rows, columns)
    scale: tuple[float, float]


def prepare_radiograph(path: Path, spec: LocaliserOptions) -> Prepared:
    """Read, guard and prepare one file for the localiser (raises RadiographError)."""
    radiograph = read_hip_radiograph(path)
    image, scale = localiser_image(radiograph.display, spec.size, spec.max_size)
    return Prepared(radiograph, image, scale)


@dataclass(frozen=True, eq=False)
class NeckSearch:
    """What the localiser found on one image."""

    #: the necks kept (at most one per side, right first), with their crops
    necks: list[Neck]
    #: best score of any candidate box (0 when there was none)
    best: float
    #: every candidate box in source pixels (n, 4) and its score (n,), best first
    boxes: np.ndarray
    scores: np.ndarray


def find_necks(
    localiser: FasterRCNN,
    prepared: Sequence[Prepared],
    device: torch.device | str,
    options: HipOptions,
) -> list[NeckSearch]:
    """The necks (with their crops) of prepared images, and what else the localiser proposed.

    What the node does between reading and classifying; the trainer and the
    evaluation call it too, so their numbers describe the node.
    """
    detections = detect(localiser, [p.image for p in prepared], device)
    out = []
    for item, detection in zip(prepared, detections, strict=True):
        found, best = neck_boxes(
            detection,
            item.scale,
            item.radiograph.shape,
            options.localiser.score_threshold,
            flipped=item.radiograph.flipped,
            laterality=item.radiograph.laterality,
        )
        necks = [
            make_neck(item.radiograph, side, box, score, options.crop_margin)
            for side, (box, score) in found.items()
        ]
        sy, sx = item.scale
        boxes = np.asarray(detection["boxes"], dtype=np.float64).reshape(-1, 4) / [sx, sy, sx, sy]
        out.append(NeckSearch(necks, best, boxes, np.asarray(detection["scores"], np.float64)))
    return out


@dataclass(frozen=True, eq=False)
class NeckScores:
    """The forward stage's output for one image: what the localiser found, each neck's probability."""

    search: NeckSearch
    #: osteoporosis probability of each of ``search.necks``
    probabilities: np.ndarray


@dataclass(eq=False)
class _Image:
    path: Path
    sop_instance_uid: str
    shape: tuple[int, int]
    necks: list[Neck]
    probabilities: np.ndarray

    @property
    def best(self) -> float:
        return float(self.probabilities.max())


@register("hip-osteoporosis")
class HipOsteoporosis(base.Pipeline[Path, base.SourceImage, Prepared, NeckScores]):
    """Seed 003: femoral-neck localiser + ResNet-18 osteoporosis classifier per side."""

    reports = "femoral neck"
    accepts = "a frontal hip or pelvis radiograph on which {card} finds a femoral neck"

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        super().__init__(card, device)
        self.options: HipOptions = parse_options(card)
        if len(card.labels) != 1:
            raise CardError(
                f"card {card.name!r} has {len(card.labels)} labels; a {PIPELINE} model has one "
                "output (the osteoporosis logit), so the card has one label"
            )
        self.label = card.labels[0]
        if self.label.finding_site is None:
            raise CardError(
                f"card {card.name!r}: label {self.label.name!r} needs a finding_site (SCT "
                "29627003 'Structure of neck of femur'): the SR's laterality qualifies it"
            )
        try:
            self.classifier = build_osteoporosis_classifier(
                card.architecture, in_channels=card.input.channels
            )
            to_model_input([np.zeros((2, 2), dtype=np.float32)], card.input)
        except ValueError as exc:
            raise CardError(f"card {card.name!r}: {exc}") from exc
        load_weights(self.classifier, card)
        self.classifier.to(device).eval()
        self.localiser: FasterRCNN = load_localiser(card, self.options.localiser).to(device)
        self.explain_layer = self.explainer_layer(self.classifier)
        logger.info(
            "loaded %s (%s: %s localiser + %s classifier) on %s",
            card.name,
            PIPELINE,
            self.options.localiser.architecture,
            card.architecture,
            device,
        )

    # -- prepare: read and guard, the localiser's input ------------------------------

    def prepare_file(self, path: Path) -> Prepared:
        """Read, guard and prepare one file for the localiser (raises RadiographError)."""
        return prepare_radiograph(path, self.options.localiser)

    def load(self, unit: Path) -> base.ModelInput[base.SourceImage, Prepared]:
        prepared = self.prepare_file(Path(unit))
        radiograph = prepared.radiograph
        excluded = exclusion_reason(prepared.image, self.options.exclusions)
        if excluded is not None:
            raise base.UnusableInput(excluded, ident=radiograph.sop_instance_uid)
        return base.ModelInput(
            base.SourceImage(Path(unit), radiograph.sop_instance_uid, radiograph.shape), prepared
        )

    # -- forward: localise the necks, classify their crops ----------------------------

    def forward(self, batch: Sequence[Prepared]) -> list[NeckScores]:
        found = find_necks(self.localiser, batch, self.device, self.options)
        probs = classify_crops(
            self.classifier,
            [neck.crop for search in found for neck in search.necks],
            self.card.input,
            self.device,
            batch_size=self.options.batch_size,
        )
        out, start = [], 0
        for search in found:
            out.append(NeckScores(search, probs[start : start + len(search.necks)]))
            start += len(search.necks)
        return out

    # -- interpret ---------------------------------------------------------------------

    def interpret(self, scored: base.Scored[base.SourceImage, NeckScores]) -> base.PipelineResult:
        threshold = self.options.localiser.score_threshold
        images: list[_Image] = []
        for source, output in zip(scored.refs, scored.outputs, strict=True):
            if not output.search.necks:
                self.skip(
                    scored.skipped,
                    source.sop_instance_uid,
                    f"no femoral neck found (best localiser score {output.search.best:.2f} < "
                    f"{threshold})",
                )
                continue
            images.append(
                _Image(
                    source.path,
                    source.sop_instance_uid,
                    source.shape,
                    output.search.necks,
                    output.probabilities,
                )
            )
        findings = [finding for image in images for finding in self._findings(image)]
        return base.PipelineResult(findings=findings, heatmaps=self._heatmaps(images))

    def _findings(self, image: _Image) -> list[base.Finding]:
        uid = (image.sop_instance_uid,)
        return [
            self.finding(
                self.label,
                float(p),
                uid,
                box=base.Box(image.sop_instance_uid, *neck.box),
                laterality=neck.side.code.to_code(),
            )
            for neck, p in zip(image.necks, image.probabilities, strict=True)
        ]

    def _heatmaps(self, images: Sequence[_Image]) -> list[base.Heatmap]:
        if self.explain_layer is None or not images:
            return []
        chosen = sorted(range(len(images)), key=lambda i: -images[i].best)
        heatmaps = []
        for i in chosen[: self.card.explainer.top_k]:
            image = images[i]
            maps = compute_heatmaps(
                self.classifier,
                to_model_input([neck.crop for neck in image.necks], self.card.input),
                target_layer=self.explain_layer,
                class_indices=[0] * len(image.necks),
                output_shapes=[(n.region.height, n.region.width) for n in image.necks],
                method=self.card.explainer.method,
                batch_size=self.options.batch_size,
            )
            self.classifier.eval()
            canvas = np.zeros(image.shape, dtype=np.float32)
            annotations = []
            for neck, cam, p in zip(image.necks, maps, image.probabilities, strict=True):
                paste_heatmap(canvas, neck.region, cam)
                annotations.append(
                    base.Annotation(
                        base.Box(image.sop_instance_uid, *neck.box),
                        f"{self.label.name} {neck.side.value} {float(p):.0%}",
                    )
                )
            heatmaps.append(
                base.Heatmap(
                    source=image.path,
                    sop_instance_uid=image.sop_instance_uid,
                    array=canvas,
                    label=self.label.name,
                    annotations=tuple(annotations),
                )
            )
        return heatmaps
