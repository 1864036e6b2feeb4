"""The operator pages: dashboard, status, work (retry, resend), audit trail, users, sign-out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.console import accounts
from dicom_node.console.accounts import AccountError, Role, SignedIn
from dicom_node.console.charts import hourly
from dicom_node.console.deps import (
    COOKIE,
    Admin,
    Console,
    ConsoleState,
    Csrf,
    Operator,
    Viewer,
    check_csrf,
    json_response,
)
from dicom_node.db import transaction, utcnow
from dicom_node.dispatch import outbox
from dicom_node.events import latest, record
from dicom_node.jobs import queue
from dicom_node.monitor import health, work_figures
from dicom_node.receive.index import recent_series
from dicom_node.status import collect

router = APIRouter()
HOUR = timedelta(hours=1)


@router.post("/logout")
def logout(request: Request, console: Console, user: Viewer, csrf: Csrf = None) -> Response:
    check_csrf(user, csrf)
    with transaction(console.sessions) as session:
        accounts.sign_out(session, request.cookies.get(COOKIE))
        record(session, "console", "signed-out", user.name, None, actor=user.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, console: Console, user: Viewer) -> Response:
    view = console.view
    config = view.config()
    ok, checks = health(config, view.engine, view.spool, view.receivers, view.inference)
    now = utcnow()
    with console.sessions() as session:
        work = work_figures(session, now)
        series = recent_series(session, 15)
        charts = hourly(session, now)
    return console.templates.TemplateResponse(
        request,
        "dashboard.html",
        {
            "user": user,
            "ok": ok,
            "checks": checks["checks"],
            "work": work,
            "series": series,
            "charts": charts,
            "ae_title": config.node.ae_title,
            "port": config.node.port,
        },
    )


@router.get("/status")
def status(console: Console, user: Viewer) -> Response:
    return json_response(collect(console.view.config(), engine=console.view.engine))


@router.get("/work", response_class=HTMLResponse)
def work(request: Request, console: Console, user: Viewer) -> Response:
    with console.sessions() as session:
        failed = queue.failed_jobs(session)
        dead = outbox.dead_letters(session)
        waiting = outbox.waiting(session)
    return console.templates.TemplateResponse(
        request,
        "work.html",
        {
            "user": user,
            "failed": failed,
            "dead": dead,
            "waiting": waiting,
            "can_act": user.role.allows(Role.OPERATOR),
            "done": request.query_params.get("done"),
        },
    )


@router.post("/work/jobs/{job_id}/retry")
def retry_job(job_id: int, console: Console, user: Operator, csrf: Csrf = None) -> Response:
    check_csrf(user, csrf)
    with transaction(console.sessions) as session:
        queued = queue.requeue_failed(session, job_id, actor=user.name)
    if queued and console.wake_jobs is not None:
        console.wake_jobs()
    done = f"job {job_id} queued again" if queued else f"job {job_id} is not failed"
    return RedirectResponse(f"/work?done={quote(done)}", status_code=303)


@router.post("/work/deliveries/{delivery_id}/resend")
def resend_delivery(
    delivery_id: int, console: Console, user: Operator, csrf: Csrf = None
) -> Response:
    check_csrf(user, csrf)
    count = outbox.resend(console.sessions, [delivery_id], actor=user.name)
    if count and console.wake_dispatch is not None:
        console.wake_dispatch()
    done = (
        f"delivery {delivery_id} queued again"
        if count
        else f"delivery {delivery_id} is not a dead letter"
    )
    return RedirectResponse(f"/work?done={quote(done)}", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request,
    console: Console,
    user: Viewer,
    stage: str | None = None,
    kind: str | None = None,
    actor: str | None = None,
) -> Response:
    with console.sessions() as session:
        events = latest(session, stage=stage, kind=kind, actor=actor, limit=300)
    return console.templates.TemplateResponse(
        request,
        "audit.html",
        {
            "user": user,
            "events": events,
            "filters": {"stage": stage or "", "kind": kind or "", "actor": actor or ""},
        },
    )


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, console: Console, user: Admin) -> Response:
    return _users_page(request, console, user, None, 200)


@router.post("/users")
def add_user(
    request: Request,
    console: Console,
    user: Admin,
    name: Annotated[str, Form()],
    role: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf: Csrf = None,
) -> Response:
    check_csrf(user, csrf)
    try:
        with transaction(console.sessions) as session:
            accounts.add_user(session, name, role, password, actor=user.name)
    except AccountError as exc:
        return _users_page(request, console, user, str(exc), 400)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{name}/remove")
def remove_user(
    request: Request, name: str, console: Console, user: Admin, csrf: Csrf = None
) -> Response:
    check_csrf(user, csrf)
    if name == user.name:
        return _users_page(request, console, user, "you cannot remove yourself", 400)
    try:
        with transaction(console.sessions) as session:
            accounts.remove_user(session, name, actor=user.name)
    except AccountError as exc:
        return _users_page(request, console, user, str(exc), 400)
    return RedirectResponse("/users", status_code=303)


def _users_page(
    request: Request, console: ConsoleState, user: SignedIn, error: str | None, status: int
) -> Response:
    with console.sessions() as session:
        rows = accounts.list_users(session)
    return console.templates.TemplateResponse(
        request,
        "users.html",
        {"user": user, "users": rows, "roles": [r.value for r in Role], "error": error},
        status_code=status,
    )
