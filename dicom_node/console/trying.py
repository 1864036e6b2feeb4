"""Try a model on one image: the seed studies' web platforms, inside the node.

Upload a DICOM file (or a PNG/JPEG for a radiograph pipeline), pick a
pipeline or let the routes pick, and see each finding with its certainty,
the heatmap as the PACS would get it, the model's validation as its card
records it, and its disclaimer. For the hip screen, a positive result says
what seed 003 advises: osteoporosis suspected, a DEXA exam of the hip to
confirm, with a self-assessment questionnaire.

The upload lives in a temporary folder for the length of the request and is
deleted after it; nothing is indexed, nothing is sent to a PACS. Files above
:data:`~dicom_node.console.uploads.MAX_UPLOAD_BYTES`, of another type, or that the pipeline cannot read
get a message, never a stack trace. One try runs at a time: the models are
the node's own, shared with its jobs.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydicom
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_node import __version__
from dicom_node.console.deps import Console, ConsoleState, Csrf, Viewer, check_csrf
from dicom_node.console.uploads import MAX_UPLOAD_BYTES, TooLarge, save_upload
from dicom_node.db import transaction
from dicom_node.events import record
from dicom_node.jobs.engine import EngineFailure
from dicom_node.results.algorithm import AlgorithmInfo
from dicom_node.results.read import dataset_png
from dicom_node.results.sc import build_heatmap_sc, label_units
from dicom_node.route.explain import explain_paths
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import CardError, ModelCard

log = logging.getLogger(__name__)
router = APIRouter()

#: pipelines (by card) that need DICOM: Hounsfield units come from the header
DICOM_ONLY = frozenset({"ich", "ct-slice-classifier"})
#: a PNG/JPEG becomes a DX image with this Body Part Examined, by the card's pipeline
BODY_PART = {"hip-osteoporosis": "HIP", "cxr-findings": "CHEST"}
#: seconds a try waits for the one before it
BUSY_SECONDS = 120.0
_one_at_a_time = threading.Lock()


class TryError(ValueError):
    """The upload cannot be tried; the message says why, in words for the page."""


@dataclass(frozen=True)
class TriedFinding:
    label: str
    meaning: str
    probability: float
    threshold: float
    present: bool


@dataclass(frozen=True)
class Tried:
    pipeline: str
    card: ModelCard
    findings: list[TriedFinding]
    #: (caption, PNG as a data: URL)
    heatmaps: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    how: str
    #: what the card says to do about the present findings (each label's advice, once)
    advice: list[str]


@router.get("/try", response_class=HTMLResponse)
def try_page(request: Request, console: Console, user: Viewer) -> Response:
    return _page(request, console, user)


@router.get("/try/hip-questionnaire", response_class=HTMLResponse)
def questionnaire(request: Request, console: Console, user: Viewer) -> Response:
    return console.templates.TemplateResponse(request, "questionnaire.html", {"user": user})


@router.post("/try", response_class=HTMLResponse)
async def try_model(
    request: Request,
    console: Console,
    user: Viewer,
    file: UploadFile,
    pipeline: Annotated[str, Form()] = "",
    csrf: Csrf = None,
) -> Response:
    check_csrf(user, csrf)
    with tempfile.TemporaryDirectory(prefix="dicom-node-try-") as tmp:
        try:
            upload = await save_upload(file, Path(tmp) / "upload")
        except TooLarge as exc:
            return _page(request, console, user, error=str(exc), status=413)
        try:
            tried = _run(console, upload, pipeline.strip(), Path(tmp))
        except TryError as exc:
            return _page(request, console, user, error=str(exc), status=400, chosen=pipeline)
    with transaction(console.sessions) as session:
        record(session, "console", "tried", tried.pipeline, None, actor=user.name)
    return _page(request, console, user, tried=tried, chosen=pipeline)


def _page(
    request: Request,
    console: ConsoleState,
    user: Any,
    *,
    status: int = 200,
    **extra: Any,
) -> Response:
    context: dict[str, Any] = {
        "user": user,
        "pipelines": list(console.view.config().pipelines),
        "tried": None,
        "error": None,
        "chosen": "",
        "max_mib": MAX_UPLOAD_BYTES >> 20,
    }
    context.update(extra)
    return console.templates.TemplateResponse(request, "try.html", context, status_code=status)


def _run(console: ConsoleState, upload: Path, pipeline: str, folder: Path) -> Tried:
    if console.try_model is None or console.card is None:
        raise TryError("This node cannot run models from the console.")
    config = console.view.config()
    if pipeline and pipeline not in config.pipelines:
        raise TryError(f"There is no pipeline {pipeline!r} on this node.")
    source = _as_dicom(upload, pipeline, console, folder)
    how = f"chosen: {pipeline}"
    if not pipeline:
        pipeline, how = _routed(config.routes, source)
    spec = config.pipelines[pipeline]
    try:
        card = console.card(spec.card)
    except (CardError, OSError) as exc:
        raise TryError(f"The {pipeline} model cannot be loaded: {exc}") from None
    header = pydicom.dcmread(source, stop_before_pixels=True)
    inputs = [SeriesInput(str(header.SeriesInstanceUID), (source,))]
    if not _one_at_a_time.acquire(timeout=BUSY_SECONDS):
        raise TryError("Another try is still running; try again in a minute.")
    try:
        inference = console.try_model(pipeline, spec, inputs)
    except PipelineInputError as exc:
        raise TryError(f"The model did not analyse this image: {exc}") from None
    except EngineFailure as exc:
        raise TryError(f"The model could not run now: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a message for the page; the log has the trace
        log.exception("console try of %s failed", pipeline)
        raise TryError(f"The model failed on this image ({type(exc).__name__}).") from None
    finally:
        _one_at_a_time.release()
    result = inference.result
    thresholds = {label.name: label for label in card.labels}
    findings = [
        TriedFinding(
            label=f.label,
            meaning=f.code.meaning,
            probability=float(f.probability),
            threshold=thresholds[f.label].threshold if f.label in thresholds else 0.5,
            present=bool(f.present),
        )
        for f in result.findings
    ]
    algorithm = AlgorithmInfo.from_card(card, __version__)
    units = label_units(result.findings)
    heatmaps = []
    for number, heatmap in enumerate(result.heatmaps, start=1):
        sc = build_heatmap_sc(
            pydicom.dcmread(heatmap.source),
            heatmap.array,
            algorithm,
            job_key=f"try-{header.SOPInstanceUID}",
            series_instance_uid=generate_uid(),
            series_number=1,
            instance_number=number,
            label=heatmap.label,
            annotations=heatmap.annotations,
            unit=units.get(heatmap.label),
        )
        png = base64.b64encode(dataset_png(sc)).decode()
        heatmaps.append((heatmap.label or "heatmap", f"data:image/png;base64,{png}"))
    advice = list(dict.fromkeys(f.advice for f in result.findings if f.present and f.advice))
    return Tried(pipeline, card, findings, heatmaps, list(result.skipped), how, advice)


def _as_dicom(upload: Path, pipeline: str, console: ConsoleState, folder: Path) -> Path:
    """The upload as a DICOM file: as it is, or a PNG/JPEG made a DX image for a radiograph
    pipeline."""
    try:
        pydicom.dcmread(upload, stop_before_pixels=True)
        return upload
    except (InvalidDicomError, OSError, ValueError, EOFError):
        pass
    try:
        with Image.open(upload) as image:
            if image.format not in ("PNG", "JPEG"):
                raise UnidentifiedImageError(image.format)
            gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError):
        raise TryError(
            "This is neither a DICOM file nor a PNG or JPEG image. Upload a DICOM file, or a "
            "PNG/JPEG radiograph."
        ) from None
    if not pipeline:
        raise TryError(
            "A PNG or JPEG carries no modality or body part for the routes to choose by: "
            "choose a pipeline."
        )
    spec = console.view.config().pipelines[pipeline]
    kind = console.card(spec.card).pipeline if console.card is not None else ""
    if kind in DICOM_ONLY:
        raise TryError(
            f"The {pipeline} pipeline needs DICOM (its CT values come from the header): "
            "upload a DICOM file."
        )
    return _radiograph(gray, BODY_PART.get(kind, ""), folder / "upload.dcm")


def _radiograph(gray: np.ndarray, body_part: str, path: Path) -> Path:
    """A greyscale picture as a DX image (8-bit MONOCHROME2), with fresh UIDs and no patient."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "TRY^UPLOAD", "TRY"
    ds.Modality, ds.BodyPartExamined = "DX", body_part
    ds.SeriesDescription = "uploaded picture"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _routed(routes: Any, source: Path) -> tuple[str, str]:
    """The pipeline the node's routes would send this file to, and which route said so."""
    for explanation in explain_paths(routes, [source]):
        for outcome in explanation.outcomes:
            if outcome.fired:
                return outcome.route.pipeline, f"route {outcome.route.name}"
    raise TryError("No route takes this file (the Routes page explains why): choose a pipeline.")
