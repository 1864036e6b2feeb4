"""The small interface every model pipeline implements.

A pipeline turns the DICOM files of the series a route selected into typed
:class:`Finding` objects and :class:`Heatmap` arrays. It never writes DICOM:
the node (``dicom_node.results``) turns findings into a TID 1500 SR and
heatmaps into Secondary Capture images. Keeping that boundary means a
pipeline can be unit-tested with plain arrays, and every pipeline gets the
same conformant output for free.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from pipelines.card import ModelCard


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Code:
    """A coded concept: ``value`` in coding ``scheme`` meaning ``meaning``.

    Mirrors DICOM's (CodeValue, CodingSchemeDesignator, CodeMeaning) triplet
    so that model cards can carry SNOMED CT (``SCT``), DICOM (``DCM``) or a
    documented local scheme (``99DCMNODE``) codes verbatim.
    """

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Box:
    """An axis-aligned box on one source image, in pixel coordinates.

    ``x0, y0`` is the top-left and ``x1, y1`` the bottom-right corner, in the
    DICOM image coordinate system (column, row; origin at the top-left corner
    of the top-left pixel), as used by SR SCOORD graphic data.
    """

    sop_instance_uid: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Finding:
    """One result of a model about one label.

    Parameters
    ----------
    label : str
        The card's label name (e.g. ``"lesion"``).
    code : Code
        What was looked for (the SR's Finding).
    probability : float
        Model probability in [0, 1]; the SR reports it as Certainty of Finding in %.
    present : bool
        The card's threshold decision.
    finding_site : Code or None
        Anatomic site of the finding, when the card names one.
    source_sop_instance_uids : tuple of str
        Images that support the finding (referenced from the SR), the most telling first:
        without a box, the SR anchors the finding on the outline of that image.
    box : Box or None
        Optional region on one of the source images.
    laterality : Code or None
        Optional laterality of the finding site (SCT 24028007 right, 7771000 left).
    """

    label: str
    code: Code
    probability: float
    present: bool
    finding_site: Code | None = None
    source_sop_instance_uids: tuple[str, ...] = ()
    box: Box | None = None
    laterality: Code | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability must be in [0, 1], got {self.probability!r}")


@dataclass(frozen=True)
class Annotation:
    """A box with a short caption, burned into the Secondary Capture of a heatmap.

    Detectors report *where* they found something; drawing the box and its
    label on the same image as the heatmap lets the radiologist see both
    without a viewer that renders SR boxes. The SR still carries the boxes
    as coordinates (:attr:`Finding.box`); this is only their picture.

    Parameters
    ----------
    box : Box
        The region, in pixel coordinates of the heatmap's source image (its
        ``sop_instance_uid`` must be that image's).
    text : str
        Caption drawn in a tag just above the box, e.g.
        ``"cardiac_hypertrophy 87%"``: the model's label and score only,
        never patient information (the SC declares Burned In Annotation
        ``NO``). Empty draws the box without a tag.
    """

    box: Box
    text: str = ""


@dataclass(frozen=True)
class Heatmap:
    """An explanation map for one source image.

    ``array`` is float32, shape (Rows, Columns) of the source image, values in
    [0, 1]. The node renders it as an RGB overlay of the source image.

    ``annotations`` are boxes (with their labels and scores) drawn on that
    same Secondary Capture, on top of the overlay. Each box must lie on the
    heatmap's source image: a box whose ``sop_instance_uid`` differs is an
    error when the SC is rendered, not silently dropped, because a box shown
    on the wrong image is worse than no box. A list is accepted and stored
    as a tuple.
    """

    source: Path
    sop_instance_uid: str
    array: np.ndarray
    label: str = ""
    annotations: tuple[Annotation, ...] = ()

    def __post_init__(self) -> None:
        # Frozen: the tuple keeps a Heatmap from changing after the pipeline returns it.
        object.__setattr__(self, "annotations", tuple(self.annotations))


@dataclass(frozen=True)
class SeriesInput:
    """The files of one series that a route selected for a job."""

    series_instance_uid: str
    files: tuple[Path, ...]


@dataclass
class PipelineResult:
    """What a pipeline returns for one job."""

    findings: list[Finding] = field(default_factory=list)
    heatmaps: list[Heatmap] = field(default_factory=list)
    #: (SOP Instance UID or file name, reason) for every image the pipeline skipped
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_summary(self, limit: int = 5) -> str:
        """The first ``limit`` skip reasons, for an error message (UIDs or file names only)."""
        if not self.skipped:
            return "no files"
        text = "; ".join(f"{ident}: {why}" for ident, why in self.skipped[:limit])
        rest = len(self.skipped) - limit
        return text + (f" (and {rest} more)" if rest > 0 else "")


class PipelineInputError(ValueError):
    """The selected series hold nothing this pipeline can use (logged, job fails cleanly)."""


class Pipeline(abc.ABC):
    """Base class of model pipelines.

    A pipeline is constructed once per (card, device) and kept: the node
    caches instances so that the model stays loaded between jobs.

    Subclasses set :attr:`name` and are registered with
    :func:`pipelines.registry.register`.
    """

    name: ClassVar[str]

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.card = card
        self.device = device

    @staticmethod
    def skip(skipped: list[tuple[str, str]], ident: str, reason: str) -> None:
        """Record (and log) that the image ``ident`` (a UID or file name, never PHI) was not used."""
        skipped.append((ident, reason))
        logger.info("skipping %s: %s", ident, reason)

    @abc.abstractmethod
    def run(self, series: Sequence[SeriesInput]) -> PipelineResult:
        """Run the model on the selected series and return typed results."""
