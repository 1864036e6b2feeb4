"""What every console page depends on: the console's state, the signed-in user and their role,
the CSRF check.

A page names the role it needs in its signature (``user: Viewer``,
``Operator`` or ``Admin``); FastAPI runs the check before the page, so a
page cannot forget it, and ``tests/test_console.py`` checks every route
refuses an anonymous request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Form, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import PipelineConfig
from dicom_node.console import accounts
from dicom_node.console.accounts import LoginLimiter, Role, SignedIn
from dicom_node.db import transaction
from dicom_node.jobs.engine import Inference
from dicom_node.monitor import NodeView
from pipelines.base import SeriesInput
from pipelines.card import ModelCard

#: the session cookie (HTTP-only, SameSite=Strict, Secure behind HTTPS)
COOKIE = "dicom_node_session"


@dataclass(frozen=True)
class ConsoleState:
    """The node as the console sees it, shared by every request."""

    view: NodeView
    sessions: sessionmaker[Session]
    templates: Jinja2Templates
    registry: CollectorRegistry
    limiter: LoginLimiter
    #: the node's ``config.yaml`` (None: the node was given a configuration without a file)
    config_path: Path | None
    #: reload the configuration now, receivers included (None: nothing to reload)
    reload: Callable[[], object] | None = None
    #: wake the job runner and the dispatcher (a retried job, a resent delivery starts now)
    wake_jobs: Callable[[], object] | None = None
    wake_dispatch: Callable[[], object] | None = None
    #: run a pipeline on files now, as a job would (the Try page; None: not offered)
    try_model: Callable[[str, PipelineConfig, Sequence[SeriesInput]], Inference] | None = None
    #: read a model card (the Try page shows its validation)
    card: Callable[[Path], ModelCard] | None = None
    #: the single sign-on button's words (None: no single sign-on)
    sso_label: str | None = None


class NotSignedIn(Exception):
    """The request has no valid session."""


class Forbidden(Exception):
    """The signed-in user may not do this (their role, or a form without its CSRF token)."""


def state(request: Request) -> ConsoleState:
    console: ConsoleState = request.app.state.console
    return console


def _needs(role: Role) -> Callable[[Request], SignedIn]:
    """A dependency: the request's signed-in user, who must have ``role`` (or a higher one)."""

    def check(request: Request) -> SignedIn:
        with transaction(state(request).sessions) as session:
            user = accounts.signed_in(session, request.cookies.get(COOKIE))
        if user is None:
            raise NotSignedIn()
        if not user.role.allows(role):
            raise Forbidden(f"{user.name} is {user.role.value}; this needs {role.value}")
        return user

    return check


Console = Annotated[ConsoleState, Depends(state)]
Viewer = Annotated[SignedIn, Depends(_needs(Role.VIEWER))]
Operator = Annotated[SignedIn, Depends(_needs(Role.OPERATOR))]
Admin = Annotated[SignedIn, Depends(_needs(Role.ADMIN))]
#: the CSRF token field every state-changing form sends
Csrf = Annotated[str | None, Form(alias="csrf")]


def check_csrf(user: SignedIn, sent: str | None) -> None:
    """Refuse a change whose form does not carry the session's own CSRF token."""
    if not accounts.csrf_matches(user, sent):
        raise Forbidden("this form's CSRF token is missing or wrong: reload the page and try again")


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as indented JSON (timestamps as ISO text)."""
    return Response(
        json.dumps(body, indent=2, default=str), status_code=status, media_type="application/json"
    )
