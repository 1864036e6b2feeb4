"""The two models of a ``hip-osteoporosis`` card and the card's ``options``.

One card describes both models, because they only make sense together:

* ``weights`` (the card's own, sha256-checked by :func:`pipelines.card.load_card`)
  is the **classifier**: a torchvision ResNet-18 (the study's; any
  :func:`pipelines.common.models.supported_architectures` name works) with
  ONE output, the logit of osteoporosis, trained with BCEWithLogits; its
  sigmoid is the probability the SR reports;
* ``options.localiser`` names the **localiser**: a torchvision Faster R-CNN
  (:mod:`pipelines.common.detector`) with one class, ``femoral_neck``, whose
  weights file sits next to the card and whose sha256 is checked on load
  exactly as the card's own weights are: a swapped file is refused.

Card ``options`` (validated when the model is loaded)::

    options:
      localiser:
        architecture: fasterrcnn_mobilenet_v3_large_fpn
        weights: weights-localiser.pt
        sha256: <64 hex digits>
        size: 512             # shorter side of the localiser's input, pixels
        max_size: 683         # cap on the longer side
        score_threshold: 0.5  # a box at or above this is a femoral neck
        candidate_threshold: 0.05, nms_threshold: 0.3, detections_per_image: 10,
        rpn_pre_nms_top_n_test: 300, rpn_post_nms_top_n_test: 100,
        representation_size: null  # box head width (null: torchvision's 1024)
        anchor_sizes: null         # anchor sizes, input pixels (null: 32 to 512), ...
      crop_margin: 0.15       # the neck box grows by this x its size on every side
      batch_size: 8           # images per localiser pass, crops per classifier pass
      exclusions:             # images the study excluded (pipelines/hip/quality.py)
        enabled: true
        metal_level: 0.9, metal_radius: 0.04, metal_area: 0.004, max_noise: 0.04

One localiser class rather than one per side: left and right necks are
mirror images, and the side comes from the image geometry and header
(:mod:`pipelines.hip.sides`), which is more reliable than a learned left /
right on images that may be displayed flipped; one class also gives the
localiser twice the examples of each.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torchvision.models.detection import FasterRCNN

from pipelines.card import CardError, ModelCard, sha256_file
from pipelines.card import parse_options as parse_card_options
from pipelines.common.detector import DetectorSettings, build_detector, supported_detectors
from pipelines.common.models import build_classifier
from pipelines.hip.quality import ExclusionLimits

PIPELINE = "hip-osteoporosis"
#: File name of the localiser's weights next to the card
LOCALISER_FILE = "weights-localiser.pt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocaliserOptions(DetectorSettings):
    """``options.localiser`` of a ``hip-osteoporosis`` card."""

    architecture: str = "fasterrcnn_mobilenet_v3_large_fpn"
    #: weights file, relative to the card's folder
    weights: str = LOCALISER_FILE
    sha256: str
    size: int = Field(512, ge=32)
    max_size: int = Field(683, ge=32)
    #: per-channel normalisation of the [0, 1] input inside the detector
    image_mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = Field(default_factory=lambda: [0.25, 0.25, 0.25])
    #: a box scoring at least this is taken as a femoral neck
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: the detector drops candidates below this before NMS
    candidate_threshold: float = Field(0.05, ge=0.0, le=1.0)
    # one neck per side: fewer proposals and detections than torchvision's
    nms_threshold: float = Field(0.3, gt=0.0, le=1.0)
    detections_per_image: int = Field(10, ge=1)
    rpn_pre_nms_top_n_test: int = Field(300, ge=1)
    rpn_post_nms_top_n_test: int = Field(100, ge=1)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower()):
            raise ValueError("must be 64 hexadecimal digits")
        return v.lower()

    @field_validator("architecture")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in supported_detectors():
            raise ValueError(
                f"unknown detector {v!r}; use one of {', '.join(supported_detectors())}"
            )
        return v


class HipOptions(_Strict):
    """The ``options`` of a ``hip-osteoporosis`` card (see the module docstring)."""

    localiser: LocaliserOptions
    crop_margin: float = Field(0.15, ge=0.0, le=2.0)
    batch_size: int = Field(8, ge=1)
    #: the images the study excluded, refused before the models run (:mod:`pipelines.hip.quality`)
    exclusions: ExclusionLimits = Field(default_factory=ExclusionLimits)


def parse_options(card: ModelCard) -> HipOptions:
    """Validate a card's ``options`` (CardError naming the option)."""
    return parse_card_options(card, HipOptions, PIPELINE)


def build_localiser(spec: LocaliserOptions, *, trainable_layers: int | None = None) -> FasterRCNN:
    """The untrained one-class (``femoral_neck``) detector ``spec`` describes."""
    return build_detector(
        spec.architecture,
        1,
        min_size=spec.size,
        max_size=max(spec.max_size, spec.size),
        image_mean=spec.image_mean,
        image_std=spec.image_std,
        score_threshold=spec.candidate_threshold,
        trainable_layers=trainable_layers,
        **spec.detector_sizes(),
    )


def build_osteoporosis_classifier(
    architecture: str, *, in_channels: int = 3, pretrained_path: str | Path | None = None
) -> nn.Module:
    """The classifier with one output (the osteoporosis logit)."""
    return build_classifier(
        architecture, 1, in_channels=in_channels, pretrained_path=pretrained_path
    )


def localiser_path(card: ModelCard, spec: LocaliserOptions) -> Path:
    """Where the localiser's weights are: ``spec.weights`` relative to the card's folder."""
    return card.folder / spec.weights


def verify_localiser(card: ModelCard, spec: LocaliserOptions) -> Path:
    """Check that the localiser's weights exist and have the card's sha256; return their path.

    Raises
    ------
    CardError
        If the file is missing or its sha256 differs from ``options.localiser.sha256``.
    """
    path = localiser_path(card, spec)
    if not path.is_file():
        raise CardError(f"localiser weights {path} named by card {card.name!r} do not exist")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise CardError(
            f"localiser weights {path} have sha256 {actual} but card {card.name!r} says "
            f"{spec.sha256}; refusing to load a model that is not the one the card describes"
        )
    return path


def load_localiser(card: ModelCard, spec: LocaliserOptions) -> FasterRCNN:
    """Build the localiser and load its verified weights (eval mode, CPU).

    Raises
    ------
    CardError
        If the weights are missing, do not match the sha256, or do not fit
        the architecture.
    """
    path = verify_localiser(card, spec)
    try:
        model = build_localiser(spec)
    except ValueError as exc:
        raise CardError(f"card {card.name!r}: options.localiser: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # unreadable file, or tensors of another architecture
        raise CardError(
            f"localiser weights {path} do not fit a one-class {spec.architecture} as card "
            f"{card.name!r} says: {exc}"
        ) from exc
    return model.eval()
