"""The Studies page: find a study, see what the node did with it, open its results.

A study's page lists its generations (each completion and the signal that
completed it), its series, its jobs with their results and each result's
deliveries. A result opens in the browser: an SR as a table of findings with
their certainty (and the model's words the SR carries), a heatmap as an image.
UIDs identify everything; patient names and IDs are not shown.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydicom.errors import InvalidDicomError

from dicom_node.complete.completion import completions_of
from dicom_node.console.deps import Console, ConsoleState, Viewer, json_response
from dicom_node.db import transaction
from dicom_node.dispatch import outbox
from dicom_node.events import record
from dicom_node.jobs import queue
from dicom_node.jobs.tables import ResultKind
from dicom_node.receive.index import find_studies, series_of_study, study_series
from dicom_node.results.read import image_png, read_report
from pipelines.card import CardError, ModelCard

router = APIRouter()


@router.get("/studies", response_class=HTMLResponse)
def studies(
    request: Request,
    console: Console,
    user: Viewer,
    uid: str = "",
    accession: str = "",
    day: str = "",
    route: str = "",
) -> Response:
    error = None
    found: list[tuple[str, Any]] = []
    try:
        when = date.fromisoformat(day) if day else None
    except ValueError:
        when, error = None, f"{day!r} is not a date (YYYY-MM-DD)"
    if error is None:
        with console.sessions() as session:
            routed = queue.studies_routed(session, route) if route else None
            found = find_studies(
                session,
                uid=uid.strip() or None,
                accession=accession.strip() or None,
                day=when,
                studies=routed,
            )
    return console.templates.TemplateResponse(
        request,
        "studies.html",
        {
            "user": user,
            "found": found,
            "filters": {"uid": uid, "accession": accession, "day": day, "route": route},
            "routes": [r.name for r in console.view.config().routes],
            "error": error,
        },
    )


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study(request: Request, study_uid: str, console: Console, user: Viewer) -> Response:
    with console.sessions() as session:
        series = series_of_study(session, study_uid)
        completions = completions_of(session, study_uid)
        jobs = queue.jobs_of(session, study_uid)
        ids = [job.id for job in jobs]
        results = queue.results_of(session, ids)
        deliveries = outbox.deliveries_of(session, ids)
    if not series and not jobs:
        return json_response({"error": f"no study {study_uid} in the index"}, 404)
    patient = None
    if user.role.value in console.view.config().monitoring.patient_data_roles:
        patient = _patient(console, study_uid, user.name)
    return console.templates.TemplateResponse(
        request,
        "study.html",
        {
            "user": user,
            "study_uid": study_uid,
            "series": series,
            "completions": completions,
            "jobs": jobs,
            "results": {j: [r for r in results if r.job_id == j] for j in ids},
            "deliveries": {j: [d for d in deliveries if d.job_id == j] for j in ids},
            "patient": patient,
        },
    )


def _patient(console: ConsoleState, study_uid: str, user: str) -> tuple[str, str] | None:
    """(Patient's Name, Patient ID) from the study's first file, for a role allowed to see them
    (``monitoring.patient_data_roles``); audited, never logged."""
    with console.sessions() as session:
        firsts = study_series(session, study_uid)
    for relative in firsts.values():
        try:
            header = pydicom.dcmread(
                console.view.spool.absolute(relative),
                stop_before_pixels=True,
                specific_tags=["PatientName", "PatientID", "SpecificCharacterSet"],
            )
        except (OSError, InvalidDicomError):
            continue
        with transaction(console.sessions) as session:
            record(session, "console", "patient-data-shown", study_uid, None, actor=user)
        return str(header.get("PatientName", "")), str(header.get("PatientID", ""))
    return None


@router.get("/results/{sop_uid}", response_class=HTMLResponse)
def result(request: Request, sop_uid: str, console: Console, user: Viewer) -> Response:
    with console.sessions() as session:
        row = queue.result(session, sop_uid)
        pipeline = queue.pipeline_of(session, row.job_id) if row is not None else None
    if row is None:
        return json_response({"error": f"no result {sop_uid}"}, 404)
    path = console.view.spool.absolute(row.path)
    if not path.is_file():
        return json_response({"error": f"result {sop_uid} is no longer in the spool"}, 404)
    report = read_report(path) if row.kind == ResultKind.SR else None
    return console.templates.TemplateResponse(
        request,
        "result.html",
        {"user": user, "result": row, "report": report, "card": _card(console, pipeline)},
    )


def _card(console: ConsoleState, pipeline: str | None) -> ModelCard | None:
    """The card the job's pipeline has now (its validation is shown with the result)."""
    spec = console.view.config().pipelines.get(pipeline) if pipeline is not None else None
    if spec is None or console.card is None:
        return None
    try:
        return console.card(spec.card)
    except (CardError, OSError):
        return None


@router.get("/results/{sop_uid}/image.png")
def result_image(sop_uid: str, console: Console, user: Viewer) -> Response:
    with console.sessions() as session:
        row = queue.result(session, sop_uid)
    if row is None or row.kind == ResultKind.SR:
        return json_response({"error": f"no image result {sop_uid}"}, 404)
    path = console.view.spool.absolute(row.path)
    if not path.is_file():
        return json_response({"error": f"result {sop_uid} is no longer in the spool"}, 404)
    return Response(image_png(path), media_type="image/png")
