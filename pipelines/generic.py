"""The generic image classifier: any torchvision classifier described by a card.

A new classification task needs no code: train a model whose outputs are the
card's labels (softmax over them, in card order), write a card naming the
``architecture``, labels with codes and thresholds, the input spec and the
explainer, and route series to ``pipeline: generic``.

Output contract
---------------
* One :class:`~pipelines.base.Finding` per *reported* label (``report: true``)
  per usable image, referencing that image's SOP Instance UID. Per-image
  findings keep the SR honest for multi-image series (a PA and a lateral
  view may disagree) and let the viewer jump to the image; a series-level
  summary is the reader's call, not the model's.
* Heatmaps (card ``explainer``) for the ``top_k`` images with the highest
  reported-label probability, explaining that image's most probable reported
  label, whether or not it crossed the threshold.
* Every file that cannot be used (not DICOM, no pixel data, colour,
  multi-frame, undecodable) is listed in ``PipelineResult.skipped`` with the
  reason; only UIDs or file names are logged, never patient data.

Card ``options`` understood: ``batch_size`` (images per forward pass,
default 16).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.base import (
    Finding,
    Heatmap,
    Pipeline,
    PipelineInputError,
    PipelineResult,
    SeriesInput,
)
from pipelines.card import CardError, ModelCard
from pipelines.common.cam import check_cam_method, compute_heatmaps
from pipelines.common.image import PixelDataError
from pipelines.common.models import build_classifier, load_weights, target_layer
from pipelines.common.preprocess import display_image, to_model_input
from pipelines.registry import register

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class _Scored:
    path: Path
    sop_instance_uid: str
    shape: tuple[int, int]
    probabilities: np.ndarray


@register("generic")
class GenericClassifier(Pipeline):
    """Softmax classifier over the card's labels, with Grad-CAM explanations.

    The model is built and its weights loaded once, in eval mode, on
    ``device``; instances are cached by the node between jobs.
    """

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        super().__init__(card, device)
        if len(card.labels) < 2:
            raise CardError(
                f"card {card.name!r} has {len(card.labels)} label(s); the generic classifier "
                "needs at least two (softmax), e.g. a 'normal' label with report: false"
            )
        try:
            self.model = build_classifier(
                card.architecture, len(card.labels), in_channels=card.input.channels
            )
        except ValueError as exc:
            raise CardError(f"card {card.name!r}: {exc}") from exc
        self._check_input_spec(card)
        load_weights(self.model, card)
        self.model.to(device).eval()
        batch_size = card.options.get("batch_size", DEFAULT_BATCH_SIZE)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise CardError(
                f"card {card.name!r}: options.batch_size must be a positive integer, "
                f"got {batch_size!r}"
            )
        self.batch_size = batch_size
        # Grad-CAM attaches hooks to the shared model: one job at a time per instance
        self._lock = threading.Lock()
        self.reported = [i for i, label in enumerate(card.labels) if label.report]
        self.explain_layer: torch.nn.Module | None = None
        if card.explainer.top_k > 0:
            try:
                check_cam_method(card.explainer.method)
                self.explain_layer = target_layer(self.model, card.explainer.target_layer)
            except ValueError as exc:
                raise CardError(f"card {card.name!r}: explainer is invalid: {exc}") from exc
        logger.info(
            "loaded %s (%s, %d labels) on %s",
            card.name,
            card.architecture,
            len(card.labels),
            device,
        )

    @staticmethod
    def _check_input_spec(card: ModelCard) -> None:
        """Fail at load time, not on the first study, when the card's input spec is unusable."""
        spec = card.input
        if (spec.window_center is None) != (spec.window_width is None):
            raise CardError(
                f"card {card.name!r}: input sets only one of window_center / window_width; "
                "set both or neither"
            )
        if spec.window_width is not None and spec.window_width <= 0:
            raise CardError(f"card {card.name!r}: input.window_width must be positive")
        try:
            to_model_input([np.zeros((2, 2), dtype=np.float32)], spec)
        except ValueError as exc:
            raise CardError(f"card {card.name!r}: {exc}") from exc

    # -- reading -----------------------------------------------------------------------

    def _read(self, path: Path, skipped: list[tuple[str, str]]) -> tuple[str, np.ndarray] | None:
        """Read one file and return (SOP Instance UID, display image), or record why not."""
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            self.skip(skipped, path.name, "not a readable DICOM file: no DICOM preamble/header")
            return None
        except Exception as exc:  # pydicom raises many types for truncated or corrupt files
            self.skip(skipped, path.name, f"not a readable DICOM file: {type(exc).__name__}")
            return None
        uid = str(ds.get("SOPInstanceUID", "")) or path.name
        reason = self._unusable(ds)
        if reason is not None:
            self.skip(skipped, uid, reason)
            return None
        try:
            image = display_image(ds, self.card.input)
        except PixelDataError as exc:
            self.skip(skipped, uid, str(exc))
            return None
        if not np.isfinite(image).all():
            self.skip(skipped, uid, "pixel values are not finite")
            return None
        return uid, image

    @staticmethod
    def _unusable(ds: Dataset) -> str | None:
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                return "float pixel data is not supported by the generic classifier"
            return "object has no Pixel Data (not an image)"
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            return (
                f"multi-frame object ({frames} frames) is not supported by the generic classifier"
            )
        return None

    # -- inference ---------------------------------------------------------------------

    def _forward(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = to_model_input(images, self.card.input).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _score(self, files: Sequence[Path], skipped: list[tuple[str, str]]) -> list[_Scored]:
        scored: list[_Scored] = []
        pending: list[tuple[Path, str, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            probs = self._forward([img for _, _, img in pending])
            for (path, uid, img), p in zip(pending, probs, strict=True):
                scored.append(_Scored(path, uid, (int(img.shape[-2]), int(img.shape[-1])), p))
            pending.clear()

        for path in files:
            read = self._read(Path(path), skipped)
            if read is not None:
                pending.append((Path(path), *read))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return scored

    def _findings(self, scored: Sequence[_Scored]) -> list[Finding]:
        findings = []
        for item in scored:
            for i in self.reported:
                label = self.card.labels[i]
                prob = float(np.clip(item.probabilities[i], 0.0, 1.0))
                findings.append(
                    Finding(
                        label=label.name,
                        code=label.code.to_code(),
                        probability=prob,
                        present=prob >= label.threshold,
                        finding_site=label.finding_site.to_code() if label.finding_site else None,
                        source_sop_instance_uids=(item.sop_instance_uid,),
                    )
                )
                logger.debug("%s %s p=%.4f", item.sop_instance_uid, label.name, prob)
        return findings

    def _heatmaps(self, scored: Sequence[_Scored], skipped: list[tuple[str, str]]) -> list[Heatmap]:
        if self.explain_layer is None or not self.reported or not scored:
            return []
        best = [max(self.reported, key=lambda i: s.probabilities[i]) for s in scored]
        score = np.array([s.probabilities[b] for s, b in zip(scored, best, strict=True)])
        chosen = np.argsort(-score, kind="stable")[: self.card.explainer.top_k]
        images, shapes, classes, items = [], [], [], []
        for j in chosen:
            read = self._read(scored[j].path, skipped)
            if read is None:  # changed on disk since it was scored
                continue
            images.append(read[1])
            shapes.append(scored[j].shape)
            classes.append(best[j])
            items.append(scored[j])
        if not images:
            return []
        maps = compute_heatmaps(
            self.model,
            to_model_input(images, self.card.input),
            target_layer=self.explain_layer,
            class_indices=classes,
            output_shapes=shapes,
            method=self.card.explainer.method,
            batch_size=self.batch_size,
        )
        self.model.eval()
        return [
            Heatmap(
                source=item.path,
                sop_instance_uid=item.sop_instance_uid,
                array=m,
                label=self.card.labels[c].name,
            )
            for item, m, c in zip(items, maps, classes, strict=True)
        ]

    def run(self, series: Sequence[SeriesInput]) -> PipelineResult:
        """Classify every usable image of the selected series.

        Raises
        ------
        PipelineInputError
            If no file of the series is an image this pipeline can use; the
            message lists why each was skipped.
        """
        with self._lock:
            return self._run(series)

    def _run(self, series: Sequence[SeriesInput]) -> PipelineResult:
        result = PipelineResult()
        files = [path for s in series for path in s.files]
        scored = self._score(files, result.skipped)
        if not scored:
            raise PipelineInputError(
                f"none of the {len(files)} file(s) in {len(series)} series is a greyscale "
                f"single-frame image that {self.card.name!r} can classify: "
                f"{result.skipped_summary()}; check the route's selection for this model"
            )
        result.findings = self._findings(scored)
        result.heatmaps = self._heatmaps(scored, result.skipped)
        logger.info(
            "%s: classified %d image(s) from %d series, skipped %d, %d heatmap(s)",
            self.card.name,
            len(scored),
            len(series),
            len(result.skipped),
            len(result.heatmaps),
        )
        return result
