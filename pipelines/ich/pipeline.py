"""The node's ``ich`` pipeline: a head CT series in, six study-level hemorrhage findings out.

What it does with a job
-----------------------
1. Each selected series is ordered along its slice normal
   (:func:`pipelines.common.series.order_slices`): localizers, non-axial
   reformats, multi-frame objects and unreadable files are skipped with a
   logged reason; each kept slice gets its normalised position z in [0, 1]
   within its series, the model's second input.
2. Slices are read, windowed and scored in batches of ``options.batch_size``
   (memory stays bounded by the batch, not the series: only six
   probabilities per slice are kept). With ``options.tta`` the probabilities
   are averaged over flips / small rotations.
3. Study result per label: the aggregation of the slice probabilities named
   by ``options.aggregation``. The default, ``max``, makes a study positive
   exactly when one of its slices crosses the label's threshold, which is
   how the thresholds are chosen at training time (per slice, on validation
   data) and how a radiologist reads a bleed visible on one slice;
   ``top_k_mean`` (mean of the ``options.aggregation_k`` highest slices)
   trades some sensitivity for robustness to a single noisy slice.
4. Each finding references its supporting slices: those at or above the
   threshold (highest first, at most ``options.max_supporting_slices``), or
   the single most suspicious slice when the label is absent, so the reader
   can check the model's best candidate.
5. Heatmaps: Grad-CAM of the ``any`` output on the ``explainer.top_k``
   slices with the highest ``any`` probability.

Card ``options`` (all optional; validated when the model is loaded):
``z_features`` (64), ``hidden`` (512), ``dropout`` (0.3) describe the
network; ``batch_size`` (16), ``aggregation`` (``max`` | ``top_k_mean``),
``aggregation_k`` (3), ``max_supporting_slices`` (10) and ``tta``
(``{hflip: false, vflip: false, rotations: []}``, degrees) the inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms.v2 import functional as TF

from pipelines import base
from pipelines.card import CardError, ModelCard
from pipelines.card import parse_options as parse_card_options
from pipelines.common.aggregate import aggregate
from pipelines.common.cam import compute_heatmaps
from pipelines.common.models import load_weights
from pipelines.common.preprocess import to_model_input
from pipelines.common.series import order_slices
from pipelines.common.slices import SliceError, read_slice
from pipelines.ich.labels import WINDOWS
from pipelines.ich.model import FixedPosition, ICHNet
from pipelines.registry import register

logger = logging.getLogger(__name__)

#: CAM methods that feed the model many copies of an input in one batch (not one row per slice).
BATCH_EXPANDING_METHODS = frozenset({"ablationcam"})


class TTASpec(BaseModel):
    """Test-time augmentation: probabilities averaged over the identity and these views."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hflip: bool = False
    vflip: bool = False
    #: rotations in degrees (e.g. [-10, 10])
    rotations: list[float] = Field(default_factory=list)

    @property
    def views(self) -> int:
        return 1 + int(self.hflip) + int(self.vflip) + len(self.rotations)


class IchOptions(BaseModel):
    """The ``options`` of an ``ich`` card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    z_features: int = Field(64, ge=1)
    hidden: int = Field(512, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1)
    aggregation: Literal["max", "top_k_mean"] = "max"
    aggregation_k: int = Field(3, ge=1)
    max_supporting_slices: int = Field(10, ge=1)
    tta: TTASpec = Field(default_factory=TTASpec)


def parse_options(card: ModelCard) -> IchOptions:
    """Validate a card's ``options`` for the ``ich`` pipeline (CardError naming the option)."""
    return parse_card_options(card, IchOptions, "ich")


def build_model(card: ModelCard, options: IchOptions | None = None) -> ICHNet:
    """The untrained network a card describes (backbone, labels, fusion sizes)."""
    options = options or parse_options(card)
    try:
        return ICHNet(
            card.architecture,
            len(card.labels),
            z_features=options.z_features,
            hidden=options.hidden,
            dropout=options.dropout,
        )
    except ValueError as exc:
        raise CardError(f"card {card.name!r}: {exc}") from exc


def tta_probabilities(
    model: ICHNet, x: torch.Tensor, z: torch.Tensor, tta: TTASpec, fill: list[float]
) -> torch.Tensor:
    """Sigmoid probabilities averaged over the TTA views (just the identity without TTA).

    The views go through the model in one forward pass (a batch ``views``
    times as large), which keeps a GPU busy instead of running it once per view.
    """
    views = [x]
    if tta.hflip:
        views.append(x.flip(-1))
    if tta.vflip:
        views.append(x.flip(-2))
    views.extend(TF.rotate(x, angle, fill=fill) for angle in tta.rotations)
    with torch.inference_mode():
        logits = model(torch.cat(views), z.repeat(len(views)))
        probs = torch.sigmoid(logits.float()).reshape(len(views), x.shape[0], -1)
    return probs.mean(dim=0)


@dataclass(frozen=True)
class _Slice:
    path: Path
    sop_instance_uid: str
    z: float
    shape: tuple[int, int] = (0, 0)


#: A slice's model input (channels, size, size) and its normalised position z.
SliceInput = tuple[torch.Tensor, float]


@register("ich")
class IntracranialHemorrhage(base.Pipeline[_Slice, _Slice, SliceInput, np.ndarray]):
    """Seed 002 on a head CT: six labels, supporting slices, Grad-CAM of ``any``."""

    reports = "study"
    accepts = "an axial CT slice that {card} can read"

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        super().__init__(card, device)
        self.options = parse_options(card)
        spec = card.input
        if spec.windows is None or spec.channels != 3:
            raise CardError(
                f"card {card.name!r}: the ich pipeline needs input.channels 3 and input.windows "
                f"(the seed's: {', '.join(f'{w.name} {w.center:g}/{w.width:g}' for w in WINDOWS)})"
            )
        names = [label.name for label in card.labels]
        if "any" not in names:
            raise CardError(
                f"card {card.name!r}: the ich pipeline needs a label named 'any' "
                f"(labels are {', '.join(names)})"
            )
        self.any_index = names.index("any")
        self.model = build_model(card, self.options)
        load_weights(self.model, card)
        self.model.to(device).eval()
        if card.explainer.top_k > 0 and card.explainer.method.lower() in BATCH_EXPANDING_METHODS:
            raise CardError(
                f"card {card.name!r}: explainer.method {card.explainer.method!r} runs the model "
                "on copies of each slice, which cannot carry the slice positions; use a "
                "gradient method (gradcam, gradcam++, hirescam, xgradcam, layercam) or eigencam"
            )
        self.explain_layer = self.explainer_layer(self.model)
        self._fill = air_fill(spec.mean, spec.std)
        logger.info(
            "loaded %s (ich, %s backbone, %d labels, TTA views %d) on %s",
            card.name,
            card.architecture,
            len(card.labels),
            self.options.tta.views,
            device,
        )

    # -- prepare: order the slices of every series, read and window them -------------

    def units(
        self, series: Sequence[base.SeriesInput], skipped: list[tuple[str, str]]
    ) -> list[_Slice]:
        slices: list[_Slice] = []
        for s in series:
            try:
                ordered = order_slices(list(s.files))
            except ValueError as exc:
                self.skip(skipped, s.series_instance_uid, f"series cannot be ordered: {exc}")
                continue
            skipped.extend(ordered.skipped)  # order_slices logged them
            slices.extend(
                _Slice(info.path, info.sop_instance_uid, info.z_norm) for info in ordered.slices
            )
        return slices

    def load(self, unit: _Slice) -> base.ModelInput[_Slice, SliceInput]:
        uid, image = read_slice(unit.path, self.card.input)
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        x = to_model_input([image], self.card.input)[0]
        return base.ModelInput(_Slice(unit.path, uid, unit.z, shape), (x, unit.z))

    # -- forward: slices of any job, with their positions ------------------------------

    def forward(self, batch: Sequence[SliceInput]) -> list[np.ndarray]:
        x = torch.stack([x for x, _ in batch]).to(self.device)
        z = torch.tensor([z for _, z in batch], dtype=torch.float32, device=self.device)
        p = tta_probabilities(self.model, x, z, self.options.tta, self._fill)
        return list(p.cpu().numpy())

    # -- interpret: study findings, supporting slices, heatmaps ------------------------

    def interpret(self, scored: base.Scored[_Slice, np.ndarray]) -> base.PipelineResult:
        probs = np.clip(np.stack(scored.outputs), 0.0, 1.0)
        return base.PipelineResult(
            findings=self._findings(scored.refs, probs),
            heatmaps=self._heatmaps(scored.refs, probs, scored.skipped),
        )

    def _findings(self, slices: Sequence[_Slice], probs: np.ndarray) -> list[base.Finding]:
        study = aggregate(probs, self.options.aggregation, self.options.aggregation_k)
        findings = []
        for i, label in enumerate(self.card.labels):
            if not label.report:
                continue
            column = probs[:, i]
            order = np.argsort(-column, kind="stable")
            probability = float(study[i])
            support = [j for j in order if column[j] >= label.threshold]
            if probability < label.threshold or not support:
                support = [int(order[0])]  # absent: the single most suspicious slice
            support = support[: self.options.max_supporting_slices]
            sources = [slices[j].sop_instance_uid for j in support]
            findings.append(self.finding(label, probability, sources))
        return findings

    def _heatmaps(
        self, slices: Sequence[_Slice], probs: np.ndarray, skipped: list[tuple[str, str]]
    ) -> list[base.Heatmap]:
        if self.explain_layer is None or not slices:
            return []
        chosen = np.argsort(-probs[:, self.any_index], kind="stable")[: self.card.explainer.top_k]
        images, items = [], []
        for j in chosen:
            try:
                _, image = read_slice(slices[j].path, self.card.input)
            except SliceError as exc:  # changed on disk since it was scored
                self.skip(skipped, slices[j].sop_instance_uid, str(exc))
                continue
            images.append(image)
            items.append(slices[j])
        if not images:
            return []
        z = torch.tensor([s.z for s in items], dtype=torch.float32, device=self.device)
        maps = compute_heatmaps(
            FixedPosition(self.model, z),
            to_model_input(images, self.card.input),
            target_layer=self.explain_layer,
            class_indices=[self.any_index] * len(items),
            output_shapes=[s.shape for s in items],
            method=self.card.explainer.method,
            batch_size=len(items),  # one chunk: FixedPosition binds z for exactly these slices
        )
        self.model.eval()
        label = self.card.labels[self.any_index].name
        return [
            base.Heatmap(source=s.path, sop_instance_uid=s.sop_instance_uid, array=m, label=label)
            for s, m in zip(items, maps, strict=True)
        ]


def _per_channel(values: Sequence[float]) -> list[float]:
    return list(values) * 3 if len(values) == 1 else list(values)


def air_fill(spec_mean: Sequence[float], spec_std: Sequence[float]) -> list[float]:
    """Per-channel normalised value of air (0 after windowing): what rotations fill corners with."""
    return [-m / s for m, s in zip(_per_channel(spec_mean), _per_channel(spec_std), strict=True)]


def score_dataset(
    model: ICHNet,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    device: torch.device,
    tta: TTASpec,
    fill: list[float],
) -> np.ndarray:
    """(N, labels) probabilities of a dataset of ``((image, z), labels)`` items, in order.

    The same arithmetic as the node's inference (TTA included), so that
    thresholds and metrics measured on it describe what the node reports.
    """
    model.to(device).eval()
    out = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for (x, z), _ in loader:
        out.append(tta_probabilities(model, x.to(device), z.to(device), tta, fill).cpu().numpy())
    if not out:
        return np.zeros((0, 0))
    return np.clip(np.concatenate(out), 0.0, 1.0)
