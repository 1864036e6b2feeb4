"""Single sign-on for the console with an OpenID Connect provider (``monitoring.oidc``).

The authorization-code flow through Authlib's Starlette client: ``/login/sso``
sends the browser to the provider; ``/login/sso/callback`` exchanges the code,
checks the ID token (signature from the provider's keys, issuer, audience,
nonce), and reads the user's name and groups from its claims. The highest
console role whose groups the user is in applies, on every sign-in (a user
moved out of a group loses the role at the next one); none refuses the user.
The console session that follows is the same as a local account's. The flow's
own state (state, nonce) lives in a short-lived signed cookie of its own.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.config import ConfigError, OidcSettings
from dicom_node.console import accounts
from dicom_node.console.accounts import AccountError, Role
from dicom_node.console.deps import COOKIE, ConsoleState
from dicom_node.db import transaction
from dicom_node.events import record

log = logging.getLogger(__name__)

#: the flow's own cookie (state and nonce), good for this many seconds
FLOW_COOKIE, FLOW_SECONDS = "dicom_node_sso_flow", 600


def add_sso(app: FastAPI, settings: OidcSettings) -> None:
    """Add ``/login/sso`` and its callback to ``app`` for the provider in ``settings``."""
    try:
        secret = settings.client_secret_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"monitoring.oidc.client_secret_file {settings.client_secret_file}: {exc.strerror}; "
            "write the client secret the provider issued for this node there"
        ) from exc
    oauth = OAuth()
    oauth.register(
        name="provider",
        server_metadata_url=settings.issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_id=settings.client_id,
        client_secret=secret,
        client_kwargs={"scope": settings.scope},
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=secrets.token_urlsafe(32),
        session_cookie=FLOW_COOKIE,
        max_age=FLOW_SECONDS,
        same_site="lax",  # the provider's redirect back is a cross-site navigation
        https_only=False,
    )
    client: Any = oauth.create_client("provider")  # type: ignore[no-untyped-call]

    @app.get("/login/sso")
    async def sso(request: Request) -> Response:
        response: Response = await client.authorize_redirect(
            request, str(request.url_for("sso_callback"))
        )
        return response

    @app.get("/login/sso/callback", name="sso_callback")
    async def sso_callback(request: Request) -> Response:
        console: ConsoleState = request.app.state.console
        try:
            token = await client.authorize_access_token(request)
        except OAuthError as exc:
            log.warning("console: single sign-on refused by the provider: %s", exc.error)
            return _refused(request, console, "the identity provider did not sign you in")
        claims = token.get("userinfo") or {}
        name = str(claims.get(settings.name_claim) or "")
        role = role_for(settings, claims.get(settings.roles_claim))
        if not name or role is None:
            await run_in_threadpool(_record_refusal, console, name)
            return _refused(
                request,
                console,
                "your account has no console role: ask an administrator to add you to a group "
                "the node grants one",
            )
        try:
            session_token = await run_in_threadpool(_start, console, name, role)
        except AccountError as exc:
            return _refused(request, console, str(exc))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session_token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=accounts.MAX_HOURS * 3600,
        )
        return response


def role_for(settings: OidcSettings, groups: object) -> Role | None:
    """The highest console role the user's groups grant, or None."""
    held = {str(g) for g in groups} if isinstance(groups, list | tuple | set) else set()
    if isinstance(groups, str):
        held = {groups}
    granted = [Role(role) for role, names in settings.roles.items() if held & set(names)]
    return max(granted, key=list(Role).index) if granted else None


def _start(console: ConsoleState, name: str, role: Role) -> str:
    with transaction(console.sessions) as session:
        return accounts.start_session(session, accounts.sso_user(session, name, role))


def _record_refusal(console: ConsoleState, name: str) -> None:
    with transaction(console.sessions) as session:
        record(session, "console", "sign-in-failed", name[:64] or None, "single sign-on: no role")


def _refused(request: Request, console: ConsoleState, message: str) -> Response:
    return console.templates.TemplateResponse(
        request,
        "login.html",
        {"next": "/", "error": message, "user": None, "sso": console.sso_label},
        status_code=403,
    )
