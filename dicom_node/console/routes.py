"""The Routes page: the routing rules as the node runs them, the configuration editor (admin),
and a dry run of the rules on an uploaded DICOM file.

Saving validates the edited ``config.yaml`` exactly as the node's reload does
(:func:`dicom_node.config.parse_config`): an edit that does not validate is
refused with the node's own error, which names the key, and nothing is
written; one that does is written atomically (a temporary file, fsync'ed,
renamed over the old one) and reloaded at once, receivers included. The
audit trail keeps who changed what, as a unified diff.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.config import ConfigError, parse_config
from dicom_node.console.accounts import Role, SignedIn
from dicom_node.console.deps import Admin, Console, ConsoleState, Csrf, Viewer, check_csrf
from dicom_node.console.uploads import TooLarge, save_upload
from dicom_node.db import transaction
from dicom_node.events import record
from dicom_node.route.explain import explain_paths, format_explanation

router = APIRouter()

#: an audited diff is cut after this many characters
MAX_DIFF = 8000


def _page(
    request: Request,
    console: ConsoleState,
    user: SignedIn,
    *,
    status: int = 200,
    **extra: Any,
) -> Response:
    config = console.view.config()
    context: dict[str, Any] = {
        "user": user,
        "routes": config.routes,
        "routes_yaml": yaml.safe_dump(
            [r.model_dump(mode="json", exclude_defaults=True) for r in config.routes],
            sort_keys=False,
        ),
        "path": console.config_path,
        "can_edit": user.role.allows(Role.ADMIN) and console.config_path is not None,
        "text": None,
        "explanation": None,
        "error": None,
        "saved": None,
    }
    context.update(extra)
    return console.templates.TemplateResponse(request, "routes.html", context, status_code=status)


@router.get("/routes", response_class=HTMLResponse)
def routes(request: Request, console: Console, user: Viewer) -> Response:
    return _page(request, console, user, saved=request.query_params.get("saved"))


@router.post("/routes/explain", response_class=HTMLResponse)
async def explain(
    request: Request, console: Console, user: Viewer, file: UploadFile, csrf: Csrf = None
) -> Response:
    """Which rules fire for an uploaded file, and why: ``dicom-node route --explain``'s words."""
    check_csrf(user, csrf)
    with tempfile.TemporaryDirectory(prefix="dicom-node-explain-") as tmp:
        try:
            target = await save_upload(file, Path(tmp) / "upload.dcm")
        except TooLarge as exc:
            return _page(request, console, user, error=str(exc), status=413)
        explanations = explain_paths(console.view.config().routes, [target])
        text = format_explanation(explanations).replace(str(target), file.filename or "upload")
    return _page(request, console, user, explanation=text)


@router.get("/routes/edit", response_class=HTMLResponse)
def edit(request: Request, console: Console, user: Admin) -> Response:
    if console.config_path is None:
        return _page(request, console, user, error="this node runs without a configuration file")
    return _page(request, console, user, text=console.config_path.read_text())


@router.post("/routes/edit", response_class=HTMLResponse)
def save(
    request: Request,
    console: Console,
    user: Admin,
    text: Annotated[str, Form()],
    csrf: Csrf = None,
) -> Response:
    """Validate as the node's reload does; write atomically; reload; audit the diff."""
    check_csrf(user, csrf)
    path = console.config_path
    if path is None:
        return _page(request, console, user, error="this node runs without a configuration file")
    text = text.replace("\r\n", "\n")
    try:
        parse_config(text, path.parent, path)
    except ConfigError as exc:
        return _page(request, console, user, text=text, error=f"not saved: {exc}", status=400)
    old = path.read_text()
    if old == text:
        return RedirectResponse("/routes?saved=unchanged", status_code=303)
    _write_atomically(path, text)
    if console.reload is not None:
        console.reload()
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            text.splitlines(keepends=True),
            "config.yaml (before)",
            "config.yaml (after)",
        )
    )
    with transaction(console.sessions) as session:
        record(session, "config", "edited", str(path), diff[:MAX_DIFF], actor=user.name)
    return RedirectResponse("/routes?saved=1", status_code=303)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: whole or not at all, even on power loss."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
