"""The node's ``ct-slice-classifier`` pipeline: CT series in, one finding per series and label out.

Seed 000 classifies single CT slices (cholecystitis or not, one model for
contrast-enhanced and one for non-contrast abdominal CT) and was then
retrained, unchanged, for aortic dissection, pulmonary embolism and
peritoneal dialysis. So this pipeline knows nothing of gallbladders: the
card names the architecture, the labels (softmax over them, in card order),
their codes and thresholds, the window and the explainer, and a new CT task
is a new card.

What it does with a job
-----------------------
1. Each selected series is ordered along its slice normal
   (:func:`pipelines.common.series.order_slices`); localizers, non-axial
   reformats, multi-frame objects and unreadable files are skipped with a
   logged reason.
2. Each slice: HU = stored value x RescaleSlope + RescaleIntercept, the
   card's window (``input.window_center`` / ``input.window_width``; a card
   that names none gets the abdomen window WL 40 / WW 400 HU, see
   :func:`input_spec`; ``input.windows`` gives one window per channel),
   scaled to [0, 1], resized to ``input.size`` and normalised with the
   card's mean / std (:mod:`pipelines.common.preprocess`, the same code as
   training). Slices are scored in batches of ``options.batch_size``; the
   next slices are read while the model runs.
3. Series decision, per reported label (``report: true``): the slice
   probabilities are aggregated by ``options.aggregation``
   (:mod:`pipelines.common.aggregate`). The default, ``top_k_mean`` with
   ``aggregation_k`` 3, asks for the finding on about three slices: the
   gallbladder (or an embolus, a dissection flap) spans several 5 mm
   slices, and one spurious slice should not make a series positive;
   ``max`` is the sensitive choice. The finding is present when the
   aggregate reaches the label's threshold.
4. One :class:`~pipelines.base.Finding` per series and reported label whose
   source images are its key slices (:func:`pipelines.common.aggregate.key_slices`:
   the slices the aggregate was drawn from, then any other slice at or
   above the threshold, most probable first, at most
   ``options.max_key_slices``), so the SR points the reader at them.
5. Heatmaps: Grad-CAM (card ``explainer``) of the ``explainer.top_k`` slices
   of each series with the highest reported-label probability, explaining
   that label.

Contrast
--------
The pipeline never decides which model suits a series: routing does
(``match: {contrast: enhanced}``, :mod:`imaging.contrast`). A card
may say which kind of series it was trained on, ``options.contrast``
(``enhanced``, ``unenhanced`` or ``any``, the default); a series whose
attributes say otherwise is still scored, and a warning names the series
and the attribute that decided, because a route that sends plain CT to a
contrast model is a configuration error the admin must see.

Card ``options`` (all optional; validated when the model is loaded):
``batch_size`` (16), ``aggregation`` (``top_k_mean`` | ``max`` | ``mean``),
``aggregation_k`` (3), ``max_key_slices`` (5), ``contrast`` (``any``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipelines import base
from pipelines.card import CardError, InputSpec, ModelCard
from pipelines.card import parse_options as parse_card_options
from pipelines.common.aggregate import Aggregation, aggregate, key_slices
from pipelines.common.cam import compute_heatmaps
from pipelines.common.models import MIN_INPUT_SIZE, build_classifier, load_weights
from pipelines.common.preprocess import to_model_input
from pipelines.common.series import SliceInfo, order_slices
from pipelines.common.slices import SliceError, read_slice
from pipelines.ctslice.labels import ABDOMEN_WINDOW
from pipelines.registry import register

logger = logging.getLogger(__name__)

PIPELINE_NAME = "ct-slice-classifier"


class CtSliceOptions(BaseModel):
    """The ``options`` of a ``ct-slice-classifier`` card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(16, ge=1)
    aggregation: Aggregation = "top_k_mean"
    aggregation_k: int = Field(3, ge=1)
    max_key_slices: int = Field(5, ge=1)
    #: the kind of series the model was trained on; a mismatch is logged, not refused
    contrast: Literal["enhanced", "unenhanced", "any"] = "any"


def parse_options(card: ModelCard) -> CtSliceOptions:
    """Validate a card's ``options`` for this pipeline (CardError naming the option)."""
    return parse_card_options(card, CtSliceOptions, PIPELINE_NAME)


def input_spec(card: ModelCard) -> InputSpec:
    """The card's input with the abdomen window (WL 40 / WW 400) when it names no window.

    A CT classifier must see Hounsfield units on a fixed scale; the
    object's own VOI (what a card without a window would otherwise get) is
    whatever the technologist last chose.
    """
    spec = card.input
    if spec.windows is None and spec.window_center is None and spec.window_width is None:
        centre, width = ABDOMEN_WINDOW
        return spec.model_copy(update={"window_center": centre, "window_width": width})
    return spec


def build_model(card: ModelCard) -> torch.nn.Module:
    """The untrained classifier a card describes (architecture, labels, input channels).

    Raises
    ------
    CardError
        If the architecture is unknown or the input too small for it.
    """
    try:
        model = build_classifier(
            card.architecture, len(card.labels), in_channels=card.input.channels
        )
    except ValueError as exc:
        raise CardError(f"card {card.name!r}: {exc}") from exc
    smallest = MIN_INPUT_SIZE.get(card.architecture, 1)
    if card.input.size < smallest:
        raise CardError(
            f"card {card.name!r}: {card.architecture} needs input.size >= {smallest}, "
            f"got {card.input.size}"
        )
    return model


#: One slice that was scored: its file, UID and (Rows, Columns).
ScoredSlice = base.SourceImage


@dataclass(frozen=True)
class ScoredSeries:
    """The slices of one series in anatomical order and their (slices, labels) probabilities."""

    series_instance_uid: str
    slices: tuple[ScoredSlice, ...]
    probabilities: np.ndarray


@dataclass(frozen=True)
class _Unit:
    """A slice to read and the series it belongs to."""

    series_instance_uid: str
    info: SliceInfo

    @property
    def sop_instance_uid(self) -> str:
        return self.info.sop_instance_uid

    @property
    def path(self) -> Path:
        return self.info.path


@dataclass(frozen=True)
class _Ref:
    series_instance_uid: str
    slice: ScoredSlice


@register(PIPELINE_NAME)
class CtSliceClassifier(base.Pipeline[_Unit, _Ref, torch.Tensor, np.ndarray]):
    """Seed 000's CT slice classifier: slice softmax, series decision, key slices, Grad-CAM."""

    reports = "series"
    accepts = "an axial CT slice that {card} can read"

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        super().__init__(card, device)
        self.options = parse_options(card)
        if len(card.labels) < 2:
            raise CardError(
                f"card {card.name!r} has {len(card.labels)} label(s); the {PIPELINE_NAME} "
                "pipeline needs at least two (softmax), e.g. a 'normal' label with report: false"
            )
        self.reported = [i for i, label in enumerate(card.labels) if label.report]
        if not self.reported:
            raise CardError(
                f"card {card.name!r}: no label has report: true, so nothing would be reported"
            )
        self.spec = input_spec(card)
        try:
            to_model_input([np.zeros((2, 2), dtype=np.float32)], self.spec)
        except ValueError as exc:
            raise CardError(f"card {card.name!r}: {exc}") from exc
        self.model = build_model(card)
        load_weights(self.model, card)
        self.model.to(device).eval()
        self.explain_layer = self.explainer_layer(self.model)
        logger.info(
            "loaded %s (%s, %s, labels %s, window %s) on %s",
            card.name,
            PIPELINE_NAME,
            card.architecture,
            ", ".join(label.name for label in card.labels),
            _window_text(self.spec),
            device,
        )

    # -- prepare: each series in anatomical order -------------------------------------

    def units(
        self, series: Sequence[base.SeriesInput], skipped: list[tuple[str, str]]
    ) -> list[_Unit]:
        units: list[_Unit] = []
        for s in series:
            uid = s.series_instance_uid
            try:
                ordered = order_slices(list(s.files))
            except ValueError as exc:
                self.skip(skipped, uid, f"series cannot be ordered: {exc}")
                continue
            skipped.extend(ordered.skipped)  # order_slices logged them
            if ordered.slices:
                self._check_contrast(uid, ordered.slices[0].path)
            units.extend(_Unit(uid, info) for info in ordered.slices)
        return units

    def load(self, unit: _Unit) -> base.ModelInput[_Ref, torch.Tensor]:
        sop, image = read_slice(unit.path, self.spec)
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        x = to_model_input([image], self.spec)[0]
        return base.ModelInput(
            _Ref(unit.series_instance_uid, ScoredSlice(unit.path, sop, shape)), x
        )

    # -- forward -----------------------------------------------------------------------

    def forward(self, batch: Sequence[torch.Tensor]) -> list[np.ndarray]:
        x = torch.stack(list(batch)).to(self.device)
        with torch.inference_mode():
            p = torch.softmax(self.model(x).float(), dim=1)
        return list(p.cpu().numpy())

    # -- interpret: per series ---------------------------------------------------------

    def scored_series(self, scored: base.Scored[_Ref, np.ndarray]) -> list[ScoredSeries]:
        """The scored slices of a job grouped by series, in the order the series came."""
        groups: dict[str, tuple[list[ScoredSlice], list[np.ndarray]]] = {}
        for ref, p in zip(scored.refs, scored.outputs, strict=True):
            slices, probs = groups.setdefault(ref.series_instance_uid, ([], []))
            slices.append(ref.slice)
            probs.append(p)
        return [
            ScoredSeries(uid, tuple(slices), np.clip(np.stack(probs), 0.0, 1.0))
            for uid, (slices, probs) in groups.items()
        ]

    def score_series(
        self, series: base.SeriesInput, skipped: list[tuple[str, str]]
    ) -> ScoredSeries:
        """Order, read and score the slices of one series (no aggregation, no heatmaps).

        The evaluation (:mod:`pipelines.ctslice.evaluate`) calls this too, so
        its numbers are those of the node. Unusable files are added to
        ``skipped``; the result has no slices when none was usable.
        """
        scored = self.score(self.prepare([series]))
        skipped.extend(scored.skipped)
        found = self.scored_series(scored)
        if found:
            return found[0]
        empty = np.zeros((0, len(self.card.labels)), dtype=np.float32)
        return ScoredSeries(series.series_instance_uid, (), empty)

    def series_probabilities(self, scored: ScoredSeries) -> np.ndarray:
        """(labels,) series-level probabilities: the card's aggregation of the slices."""
        return aggregate(scored.probabilities, self.options.aggregation, self.options.aggregation_k)

    def _check_contrast(self, series_uid: str, first: Path) -> None:
        wanted = self.options.contrast
        if wanted == "any":
            return
        from imaging.contrast import contrast_decision

        try:
            ds = pydicom.dcmread(first, stop_before_pixels=True)
        except Exception:  # order_slices read it a moment ago; a vanished file is skipped later
            return
        decision = contrast_decision(ds)
        if decision.state != wanted:
            logger.warning(
                "%s: series %s looks %s (%s) but the model was trained on %s series; "
                "check the route that sent it",
                self.card.name,
                series_uid,
                decision.state,
                decision.because,
                wanted,
            )

    def interpret(self, scored: base.Scored[_Ref, np.ndarray]) -> base.PipelineResult:
        result = base.PipelineResult()
        for series in self.scored_series(scored):
            result.findings.extend(self._findings(series))
            result.heatmaps.extend(self._heatmaps(series, scored.skipped))
        return result

    def _findings(self, scored: ScoredSeries) -> list[base.Finding]:
        series_probs = self.series_probabilities(scored)
        findings = []
        for i in self.reported:
            label = self.card.labels[i]
            keys = key_slices(
                scored.probabilities[:, i],
                self.options.aggregation,
                self.options.aggregation_k,
                label.threshold,
                self.options.max_key_slices,
            )
            sources = [scored.slices[j].sop_instance_uid for j in keys]
            findings.append(self.finding(label, float(series_probs[i]), sources))
        return findings

    def _heatmaps(self, scored: ScoredSeries, skipped: list[tuple[str, str]]) -> list[base.Heatmap]:
        if self.explain_layer is None:
            return []
        reported = scored.probabilities[:, self.reported]
        best = reported.max(axis=1)
        chosen = np.argsort(-best, kind="stable")[: self.card.explainer.top_k]
        images, items, classes = [], [], []
        for j in chosen:
            item = scored.slices[j]
            try:
                _, image = read_slice(item.path, self.spec)
            except SliceError as exc:  # changed on disk since it was scored
                self.skip(skipped, item.sop_instance_uid, str(exc))
                continue
            images.append(image)
            items.append(item)
            classes.append(self.reported[int(np.argmax(reported[j]))])
        if not images:
            return []
        maps = compute_heatmaps(
            self.model,
            to_model_input(images, self.spec),
            target_layer=self.explain_layer,
            class_indices=classes,
            output_shapes=[s.shape for s in items],
            method=self.card.explainer.method,
            batch_size=self.options.batch_size,
        )
        self.model.eval()
        return [
            s.heatmap(m, self.card.labels[c].name)
            for s, m, c in zip(items, maps, classes, strict=True)
        ]


def _window_text(spec: InputSpec) -> str:
    if spec.windows is not None:
        return ", ".join(f"{w.name or '?'} {w.center:g}/{w.width:g}" for w in spec.windows)
    return f"{spec.window_center:g}/{spec.window_width:g}"
