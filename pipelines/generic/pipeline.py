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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from imaging.files import UnreadableDicom, read_dataset
from imaging.pixels import PixelDataError
from pipelines import base
from pipelines.card import CardError, ModelCard
from pipelines.common.cam import compute_heatmaps
from pipelines.common.models import build_classifier, load_weights
from pipelines.common.preprocess import display_image, to_model_input
from pipelines.registry import register

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


@register("generic")
class GenericClassifier(base.Pipeline[Path, base.SourceImage, torch.Tensor, np.ndarray]):
    """Softmax classifier over the card's labels, with Grad-CAM explanations.

    The model is built and its weights loaded once, in eval mode, on
    ``device``; instances are cached by the node between jobs.
    """

    reports = "image"
    accepts = "a greyscale single-frame image that {card} can classify"

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
        self._batch_size = batch_size
        self.reported = [i for i, label in enumerate(card.labels) if label.report]
        self.explain_layer = self.explainer_layer(self.model)
        logger.info(
            "loaded %s (%s, %d labels) on %s",
            card.name,
            card.architecture,
            len(card.labels),
            device,
        )

    @property
    def batch_size(self) -> int:
        return self._batch_size

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

    # -- prepare -------------------------------------------------------------------------

    def _read(self, path: Path) -> tuple[str, np.ndarray]:
        """Read one file: (SOP Instance UID, display image); UnusableInput says why not."""
        try:
            ds = read_dataset(path)
        except UnreadableDicom as exc:
            raise base.UnusableInput(str(exc)) from None
        uid = str(ds.get("SOPInstanceUID", "")) or path.name
        reason = self._unusable(ds)
        if reason is None:
            try:
                image = display_image(ds, self.card.input)
            except PixelDataError as exc:
                reason = str(exc)
            else:
                if np.isfinite(image).all():
                    return uid, image
                reason = "pixel values are not finite"
        raise base.UnusableInput(reason, ident=uid)

    def load(self, unit: Path) -> base.ModelInput[base.SourceImage, torch.Tensor]:
        uid, image = self._read(Path(unit))
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        x = to_model_input([image], self.card.input)[0]
        return base.ModelInput(base.SourceImage(Path(unit), uid, shape), x)

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

    # -- forward -------------------------------------------------------------------------

    def forward(self, batch: Sequence[torch.Tensor]) -> list[np.ndarray]:
        with torch.inference_mode():
            logits = self.model(torch.stack(list(batch)).to(self.device))
        return list(torch.softmax(logits.float(), dim=1).cpu().numpy())

    # -- interpret -----------------------------------------------------------------------

    def interpret(self, scored: base.Scored[base.SourceImage, np.ndarray]) -> base.PipelineResult:
        findings = []
        for item, probs in zip(scored.refs, scored.outputs, strict=True):
            for i in self.reported:
                label = self.card.labels[i]
                findings.append(self.finding(label, probs[i], [item.sop_instance_uid]))
                logger.debug("%s %s p=%.4f", item.sop_instance_uid, label.name, probs[i])
        return base.PipelineResult(findings=findings, heatmaps=self._heatmaps(scored))

    def _heatmaps(self, scored: base.Scored[base.SourceImage, np.ndarray]) -> list[base.Heatmap]:
        if self.explain_layer is None or not self.reported or not scored.refs:
            return []
        best = [max(self.reported, key=lambda i: p[i]) for p in scored.outputs]
        score = np.array([p[b] for p, b in zip(scored.outputs, best, strict=True)])
        chosen = np.argsort(-score, kind="stable")[: self.card.explainer.top_k]
        images, classes, items = [], [], []
        for j in chosen:
            item = scored.refs[j]
            try:
                images.append(self._read(item.path)[1])
            except base.UnusableInput as exc:  # changed on disk since it was scored
                self.skip(scored.skipped, item.sop_instance_uid, str(exc))
                continue
            classes.append(best[j])
            items.append(item)
        if not images:
            return []
        maps = compute_heatmaps(
            self.model,
            to_model_input(images, self.card.input),
            target_layer=self.explain_layer,
            class_indices=classes,
            output_shapes=[item.shape for item in items],
            method=self.card.explainer.method,
            batch_size=self.batch_size,
        )
        self.model.eval()
        return [
            item.heatmap(m, self.card.labels[c].name)
            for item, m, c in zip(items, maps, classes, strict=True)
        ]
