"""The small interface every model pipeline implements.

A pipeline turns the DICOM files of the series a route selected into typed
:class:`Finding` objects and :class:`Heatmap` arrays. It never writes DICOM:
the node (``dicom_node.results``) turns findings into a TID 1500 SR and
heatmaps into Secondary Capture images. Keeping that boundary means a
pipeline can be unit-tested with plain arrays, and every pipeline gets the
same conformant output for free.

Three stages
------------
A job goes through three stages that an engine schedules
(:meth:`Pipeline.run` chains them for one job):

1. **prepare** (per job, no model): :meth:`Pipeline.units` orders what to
   read (slices along the normal, files as sent) and :meth:`Pipeline.load`
   reads and preprocesses one unit into a :class:`ModelInput`, in a reader
   thread ahead of the model, with at most a batch in flight. A unit that
   cannot be used raises :class:`UnusableInput` and is skipped with its reason.
2. **forward** (a batch from any job): :meth:`Pipeline.forward` maps the
   ``data`` of a batch of model inputs to one output each. It keeps no
   per-job state, so inputs of several jobs of the same model can share a
   batch (:meth:`Pipeline.score_together`).
3. **interpret** (per job, with the model): :meth:`Pipeline.interpret`
   turns the ``ref`` of every scored input and its output into findings
   (aggregation, thresholds, supporting images) and heatmaps.

Memory stays bounded by the batch: ``data`` is dropped once forward has
run, and only the small ``ref`` and the output are kept for interpret.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, final, get_args

import numpy as np

if TYPE_CHECKING:
    import torch

    from pipelines.card import LabelSpec, ModelCard


logger = logging.getLogger(__name__)

#: What one finding, and so the metric that says how far to trust it, is about:
#: a CT slice, a radiograph, a series, a whole study, a detected box, or one
#: femoral neck (one side of a hip radiograph).
Unit = Literal["slice", "image", "series", "study", "box", "femoral neck"]
UNITS: tuple[str, ...] = get_args(Unit)


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

    def __post_init__(self) -> None:
        if not self.sop_instance_uid:
            raise ValueError("Box.sop_instance_uid must name the image the box is on, got ''")
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.number) or not np.isfinite(value):
                shown = "NaN" if isinstance(value, float) and np.isnan(value) else repr(value)
                raise ValueError(f"Box.{name} must be a finite number of pixels, got {shown}")
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(
                "a Box needs x0 < x1 and y0 < y1 (top-left, then bottom-right corner), got "
                f"x0={self.x0}, x1={self.x1}, y0={self.y0}, y1={self.y1}"
                + (" (x1 < x0)" if self.x1 < self.x0 else "")
            )


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
    unit : str or None
        What the finding is about (one of :data:`UNITS`): the SR quotes the
        card's held-out metrics counted in this unit. ``None``: unknown, and
        the SR says the card has no metrics for it.
    advice : str
        What to do about a present finding (the card label's ``advice``),
        written into the result as a recommendation; empty for none.
    """

    label: str
    code: Code
    probability: float
    present: bool
    finding_site: Code | None = None
    source_sop_instance_uids: tuple[str, ...] = ()
    box: Box | None = None
    laterality: Code | None = None
    unit: Unit | None = None
    advice: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"Finding.label must be the card's label name, got {self.label!r}")
        if self.unit is not None and self.unit not in UNITS:
            raise ValueError(
                f"Finding.unit must be one of {', '.join(UNITS)} (or None), got {self.unit!r}"
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability must be in [0, 1], got {self.probability!r}")
        if not isinstance(self.source_sop_instance_uids, tuple) or not all(
            isinstance(uid, str) and uid for uid in self.source_sop_instance_uids
        ):
            raise ValueError(
                "Finding.source_sop_instance_uids must be a tuple of SOP Instance UIDs, "
                f"got {self.source_sop_instance_uids!r}"
            )
        if (
            self.box is not None
            and self.source_sop_instance_uids
            and self.box.sop_instance_uid not in self.source_sop_instance_uids
        ):
            raise ValueError(
                f"Finding.box is on image {self.box.sop_instance_uid}, which is not one of its "
                f"source_sop_instance_uids {self.source_sop_instance_uids}"
            )


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
        array = self.array
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(
                f"Heatmap.array must be a float (float32) array of values in [0, 1], got {found}"
            )
        if array.ndim != 2:
            raise ValueError(
                f"Heatmap.array must be 2-D (Rows, Columns of its source image), got shape "
                f"{array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError("Heatmap.array holds NaN or infinite values; fix the explainer")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(
                f"Heatmap.array values must lie in [0, 1] (normalise the map), got "
                f"[{array.min():.3g}, {array.max():.3g}]"
            )
        for note in self.annotations:
            if not isinstance(note, Annotation):
                raise ValueError(
                    f"Heatmap.annotations must hold Annotation objects, got {type(note).__name__}"
                )


@dataclass(frozen=True)
class SourceImage:
    """The image a model input came from: its file, SOP Instance UID and (Rows, Columns).

    What most pipelines keep of a scored input (its ``ref``) to name it in
    findings and to explain it with a heatmap afterwards.
    """

    path: Path
    sop_instance_uid: str
    shape: tuple[int, int]

    def heatmap(
        self, array: np.ndarray, label: str = "", annotations: Sequence[Annotation] = ()
    ) -> Heatmap:
        """A heatmap of this image (``array`` of its shape, values in [0, 1])."""
        return Heatmap(self.path, self.sop_instance_uid, array, label, tuple(annotations))


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


class UnusableInput(ValueError):
    """One unit (a file, a slice) that a pipeline cannot use; the job goes on without it.

    Raised by :meth:`Pipeline.load` (and the readers it calls); the message
    says why in words an operator understands, with UIDs or file names only.
    ``ident`` names the unit in the skip list when the reader learnt more
    than the unit's name (its SOP Instance UID).
    """

    def __init__(self, reason: str, *, ident: str = "") -> None:
        super().__init__(reason)
        self.ident = ident


UnitT = TypeVar("UnitT")
RefT = TypeVar("RefT")
DataT = TypeVar("DataT")
OutT = TypeVar("OutT")


@dataclass(frozen=True)
class ModelInput(Generic[RefT, DataT]):
    """One unit of work for the model, as the prepare stage made it.

    ``data`` is what :meth:`Pipeline.forward` takes (a preprocessed tensor,
    or a tensor and its slice position); it is dropped after the forward
    pass. ``ref`` is what :meth:`Pipeline.interpret` needs to know about the
    unit afterwards (its file, SOP Instance UID and shape): keep it small.
    """

    ref: RefT
    data: DataT


@dataclass
class Prepared(Generic[RefT, DataT]):
    """A job after the prepare stage: its model inputs, read lazily as they are taken."""

    series: tuple[SeriesInput, ...]
    inputs: Iterator[ModelInput[RefT, DataT]]
    #: (UID or file name, reason) of every unit not used so far
    skipped: list[tuple[str, str]]


@dataclass
class Scored(Generic[RefT, OutT]):
    """A job after the forward stage: each scored unit's ``ref`` and its output, in order."""

    series: tuple[SeriesInput, ...]
    refs: list[RefT] = field(default_factory=list)
    outputs: list[OutT] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def file_count(self) -> int:
        return sum(len(s.files) for s in self.series)


class Pipeline(abc.ABC, Generic[UnitT, RefT, DataT, OutT]):
    """Base class of model pipelines: prepare, forward and interpret (see the module).

    A pipeline is constructed once per (card, device) and kept: the node
    caches instances so that the model stays loaded between jobs.

    Subclasses set :attr:`accepts`, implement :meth:`load`, :meth:`forward`
    and :meth:`interpret` (and :meth:`units` when the inputs are not simply
    the files as sent), and are registered with
    :func:`pipelines.registry.register`.
    """

    name: ClassVar[str]
    #: What one finding is about (unless :meth:`finding` is told otherwise, e.g. a
    #: detector's box): the unit whose held-out metrics the SR quotes next to it.
    reports: ClassVar[Unit] = "image"
    #: What a usable input is, for the error of a job that has none; ``{card}``
    #: is replaced by the card's name, e.g. "an axial CT slice that {card} can read".
    accepts: ClassVar[str] = "an image that {card} can read"

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.card = card
        self.device = device
        # Forward passes and explainers (CAM hooks) share the model: one at a time.
        self.model_lock = threading.RLock()

    # -- configuration -------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Model inputs per forward pass (the card's ``options.batch_size``, else 16)."""
        size = getattr(getattr(self, "options", None), "batch_size", None)
        return int(size) if size else 16

    def explainer_layer(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The layer the card's explainer hooks on ``model``, checked now (None: no heatmaps).

        Raises
        ------
        CardError
            If the explainer's method or target layer is unknown; the message lists what is.
        """
        from pipelines.card import CardError
        from pipelines.common.cam import check_cam_method
        from pipelines.common.models import target_layer

        if self.card.explainer.top_k <= 0:
            return None
        try:
            check_cam_method(self.card.explainer.method)
            return target_layer(model, self.card.explainer.target_layer)
        except ValueError as exc:
            raise CardError(f"card {self.card.name!r}: explainer is invalid: {exc}") from exc

    def finding(
        self,
        label: LabelSpec,
        probability: float,
        sources: Sequence[str],
        *,
        present: bool | None = None,
        box: Box | None = None,
        laterality: Code | None = None,
        unit: Unit | None = None,
    ) -> Finding:
        """A finding for one of the card's labels: its code, site and threshold decision.

        ``probability`` is clipped to [0, 1]; ``present`` defaults to the
        label's threshold decision on it; ``unit`` to :attr:`reports`. A
        present finding carries the label's ``advice``.
        """
        p = min(max(float(probability), 0.0), 1.0)
        present = p >= label.threshold if present is None else present
        return Finding(
            label=label.name,
            code=label.code.to_code(),
            probability=p,
            present=present,
            finding_site=label.finding_site.to_code() if label.finding_site else None,
            source_sop_instance_uids=tuple(sources),
            box=box,
            laterality=laterality,
            unit=unit or self.reports,
            advice=label.advice if present else "",
        )

    @staticmethod
    def skip(skipped: list[tuple[str, str]], ident: str, reason: str) -> None:
        """Record (and log) that the image ``ident`` (a UID or file name, never PHI) was not used."""
        skipped.append((ident, reason))
        logger.info("skipping %s: %s", ident, reason)

    # -- stage 1: prepare ----------------------------------------------------------------

    def units(self, series: Sequence[SeriesInput], skipped: list[tuple[str, str]]) -> list[UnitT]:
        """What to read for a job, in the order the model sees it (default: every file as sent).

        Pipelines that order slices or need headers first override this;
        what they refuse here goes to ``skipped`` (with :meth:`skip`).
        """
        return [path for s in series for path in s.files]  # type: ignore[misc]

    def unit_name(self, unit: object) -> str:
        """A unit's name in the skip list: its SOP Instance UID when known, else its file name."""
        uid = getattr(unit, "sop_instance_uid", "")
        if uid:
            return str(uid)
        path = getattr(unit, "path", unit)
        return path.name if isinstance(path, Path) else str(path)

    @abc.abstractmethod
    def load(self, unit: UnitT) -> ModelInput[RefT, DataT]:
        """Read and preprocess one unit (runs in a reader thread; raises :class:`UnusableInput`)."""

    def prepare(self, series: Sequence[SeriesInput]) -> Prepared[RefT, DataT]:
        """The prepare stage of one job: its units, loaded ahead of the model as they are taken."""
        skipped: list[tuple[str, str]] = []
        units = self.units(series, skipped)
        return Prepared(tuple(series), self._loaded(units, skipped), skipped)

    def _loaded(
        self, units: Sequence[UnitT], skipped: list[tuple[str, str]]
    ) -> Iterator[ModelInput[RefT, DataT]]:
        from pipelines.common.prefetch import prefetch, spare_cores

        threaded = spare_cores(self.device)
        for unit, future in prefetch(self.load, units, depth=self.batch_size, threaded=threaded):
            try:
                yield future.result()
            except UnusableInput as exc:
                self.skip(skipped, exc.ident or self.unit_name(unit), str(exc))

    # -- stage 2: forward ----------------------------------------------------------------

    @abc.abstractmethod
    def forward(self, batch: Sequence[DataT]) -> Sequence[OutT]:
        """The model on a batch of inputs (from one job or several): one output per input."""

    def score(self, prepared: Prepared[RefT, DataT]) -> Scored[RefT, OutT]:
        """Run forward over one prepared job in batches of :attr:`batch_size`."""
        (scored,) = self.score_together([prepared])
        return scored

    def score_together(
        self, jobs: Sequence[Prepared[RefT, DataT]], batch_size: int | None = None
    ) -> list[Scored[RefT, OutT]]:
        """Run forward over several prepared jobs of this model, sharing batches between them.

        Inputs are taken from the jobs in turn (one from each while it has
        any), so a batch holds units of every job still reading and each job
        finishes after about its own share of forward passes. The outputs go
        back to the job each input came from, in that job's order.
        """
        size = batch_size or self.batch_size
        scored: list[Scored[RefT, OutT]] = [Scored(job.series, skipped=job.skipped) for job in jobs]
        pending: list[tuple[int, ModelInput[RefT, DataT]]] = []

        def flush() -> None:
            if not pending:
                return
            with self.model_lock:
                outputs = self.forward([item.data for _, item in pending])
            if len(outputs) != len(pending):
                raise RuntimeError(
                    f"{type(self).__name__}.forward returned {len(outputs)} outputs "
                    f"for {len(pending)} inputs"
                )
            for (job, item), output in zip(pending, outputs, strict=True):
                scored[job].refs.append(item.ref)
                scored[job].outputs.append(output)
            pending.clear()

        for job, item in _round_robin([job.inputs for job in jobs]):
            pending.append((job, item))
            if len(pending) >= size:
                flush()
        flush()
        return scored

    # -- stage 3: interpret --------------------------------------------------------------

    @abc.abstractmethod
    def interpret(self, scored: Scored[RefT, OutT]) -> PipelineResult:
        """Findings and heatmaps of one job from its scored inputs (never empty when called).

        Runs with the model lock held, so explainers may hook the model.
        Images dropped here (e.g. no anatomy found) go to ``scored.skipped``.
        """

    def finish(self, scored: Scored[RefT, OutT]) -> PipelineResult:
        """The interpret stage of one job, with the checks every pipeline shares.

        Raises
        ------
        PipelineInputError
            If nothing of the job could be used; the message lists why.
        """
        result = PipelineResult()
        if scored.refs:
            with self.model_lock:
                result = self.interpret(scored)
        result.skipped = scored.skipped
        if not result.findings:
            raise PipelineInputError(
                f"none of the {scored.file_count} file(s) in {len(scored.series)} series is "
                f"{self.accepts.format(card=repr(self.card.name))}: "
                f"{result.skipped_summary()}; check the route's selection for this model"
            )
        present = [f for f in result.findings if f.present]
        logger.info(
            "%s: %d input(s) from %d series, skipped %d, %d finding(s) present, %d heatmap(s)%s",
            self.card.name,
            len(scored.refs),
            len(scored.series),
            len(result.skipped),
            len(present),
            len(result.heatmaps),
            "".join(f", {f.label}={f.probability:.3f}" for f in present[:10]),
        )
        return result

    @final
    def run(self, series: Sequence[SeriesInput]) -> PipelineResult:
        """Run the three stages on one job's selected series and return typed results.

        Raises
        ------
        PipelineInputError
            If no selected file is an input this pipeline can use; the message lists why.
        """
        return self.finish(self.score(self.prepare(series)))


def _round_robin(sources: Sequence[Iterator[Any]]) -> Iterable[tuple[int, Any]]:
    """``(index of source, item)`` taking one item from each live source in turn."""
    live = list(enumerate(sources))
    while live:
        still = []
        for index, source in live:
            for item in source:
                yield index, item
                still.append((index, source))
                break
        live = still


#: A pipeline of any unit, reference, input and output types (what the registry holds).
AnyPipeline = Pipeline[Any, Any, Any, Any]
