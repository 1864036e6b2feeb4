"""The console's web application (FastAPI, server-rendered Jinja2 pages, no JavaScript build).

Open to anyone who reaches the port: ``/health`` and ``/metrics`` (for
probes and Prometheus), ``/login`` and ``/static/``. Everything else needs a
signed-in user, and the role its route names (:mod:`.deps`): a page answers
an anonymous browser with a redirect to the login page, anything else with
401; a signed-in user without the role gets 403. Every form that changes
something carries the session's CSRF token, and every change is an event in
the audit trail with the user's name. Values from DICOM headers are escaped
by the templates (Jinja2 autoescaping), never marked safe.

The pages live in :mod:`.pages` (dashboard, work, audit, users),
:mod:`.studies`, :mod:`.routes` and :mod:`.models`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from dicom_node.config import PipelineConfig
from dicom_node.console import accounts, models, pages, routes, studies, trying
from dicom_node.console.accounts import LoginLimiter
from dicom_node.console.deps import (
    COOKIE,
    Console,
    ConsoleState,
    Forbidden,
    NotSignedIn,
    json_response,
)
from dicom_node.db import session_factory, transaction
from dicom_node.events import record
from dicom_node.jobs.engine import CardCache, Inference
from dicom_node.monitor import NodeCollector, NodeView, health
from pipelines.base import SeriesInput

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: paths anyone may request
OPEN_PATHS = ("/health", "/metrics", "/login", "/static")


def make_app(
    view: NodeView,
    *,
    config_path: Path | None = None,
    reload: Callable[[], object] | None = None,
    wake_jobs: Callable[[], object] | None = None,
    wake_dispatch: Callable[[], object] | None = None,
    try_model: Callable[[str, PipelineConfig, Sequence[SeriesInput]], Inference] | None = None,
    limiter: LoginLimiter | None = None,
) -> FastAPI:
    """The console for the node that ``view`` reads.

    ``config_path`` and ``reload``: the node's config.yaml and how to apply it
    now (the Routes editor); ``wake_jobs`` and ``wake_dispatch``: a retried
    job or a resent delivery starts at once; ``try_model``: runs a pipeline for the Try page
    (the node's engine).
    """
    app = FastAPI(title="dicom-node console", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(view))
    app.state.console = ConsoleState(
        view=view,
        sessions=session_factory(view.engine),
        templates=Jinja2Templates(directory=HERE / "templates"),
        registry=registry,
        limiter=limiter or LoginLimiter(),
        config_path=config_path,
        reload=reload,
        wake_jobs=wake_jobs,
        wake_dispatch=wake_dispatch,
        try_model=try_model,
        card=CardCache(),
        sso_label=oidc.label if (oidc := view.config().monitoring.oidc) is not None else None,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BaseHTTPMiddleware, dispatch=_security_headers)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(Forbidden, _forbidden)
    app.get("/health")(health_check)
    app.get("/metrics")(metrics)
    app.get("/login", response_class=HTMLResponse)(login_page)
    app.post("/login")(login)
    for module in (pages, studies, routes, models, trying):
        app.include_router(module.router)
    oidc = view.config().monitoring.oidc
    if oidc is not None:
        from dicom_node.console.sso import add_sso

        add_sso(app, oidc)
    return app


async def _not_signed_in(request: Request, exc: Exception) -> Response:
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    return JSONResponse({"error": "sign in first: POST /login"}, status_code=401)


async def _forbidden(request: Request, exc: Exception) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        console: ConsoleState = request.app.state.console
        return console.templates.TemplateResponse(
            request, "error.html", {"message": str(exc), "user": None}, status_code=403
        )
    return JSONResponse({"error": str(exc)}, status_code=403)


async def _security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.url.path not in ("/health", "/metrics"):
        response.headers["Cache-Control"] = "no-store"
    return response


# --- open: probes, metrics, sign-in --------------------------------------------------------


def health_check(console: Console) -> Response:
    view = console.view
    ok, body = health(view.config(), view.engine, view.spool, view.receivers, view.inference)
    return json_response(body, 200 if ok else 503)


def metrics(console: Console) -> Response:
    return Response(generate_latest(console.registry), media_type="text/plain; version=0.0.4")


def login_page(request: Request, console: Console, next: str = "/") -> Response:  # noqa: A002
    return console.templates.TemplateResponse(
        request,
        "login.html",
        {"next": _local(next), "error": None, "user": None, "sso": console.sso_label},
    )


def login(
    request: Request,
    console: Console,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    address = request.client.host if request.client else "?"
    token = None
    if console.limiter.blocked(name, address):
        error, status = "too many failed sign-ins: wait five minutes", 429
    else:
        with transaction(console.sessions) as session:
            token = accounts.sign_in(session, name, password)
            if token is None:
                record(session, "console", "sign-in-failed", name[:64], address)
        error, status = "the name or the password is wrong", 401
        if token is None:
            console.limiter.failed(name, address)
    if token is None:
        log.warning("console: failed sign-in from %s", address)
        return console.templates.TemplateResponse(
            request,
            "login.html",
            {"next": _local(next), "error": error, "user": None, "sso": console.sso_label},
            status_code=status,
        )
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=accounts.MAX_HOURS * 3600,
    )
    return response


def _local(target: str) -> str:
    """A redirect target on this site only (``/path``), else ``/``: no open redirects."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"
