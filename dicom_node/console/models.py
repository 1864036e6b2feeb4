"""The Models page: every configured pipeline's card, its validation and its plots.

What a radiologist or an admin asks of a model before trusting its results:
which model and version, trained on what (synthetic phantoms or clinical
data, and whether the card allows clinical use), the labels and their
thresholds, and the held-out metrics with their confidence intervals, as the
card's evaluation recorded them (shown as written, never recomputed here).
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from dicom_node.console.deps import Console, Viewer, json_response
from pipelines.card import CardError, ModelCard, card_state, load_card

router = APIRouter()

#: the picture files a card's folder may show (its evaluation's plots)
PLOTS = (".png", ".svg", ".jpg", ".jpeg")
#: how deep under the card's folder plots are looked for
PLOT_DEPTH = 3


@dataclass(frozen=True)
class ModelEntry:
    pipeline: str
    card_path: Path
    state: str
    detail: str
    card: ModelCard | None
    error: str | None
    plots: list[str]


def _entries(console: Any) -> list[ModelEntry]:
    entries = []
    for name, spec in console.view.config().pipelines.items():
        state, detail = card_state(spec.card)
        card, error, plots = None, None, []
        if state == "ready":
            try:
                card = load_card(spec.card, verify_weights=False)
                plots = _plots(card.folder)
            except (CardError, OSError) as exc:
                error = str(exc)
        entries.append(ModelEntry(name, Path(spec.card), state, detail, card, error, plots))
    return entries


def _plots(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if len(relative.parts) <= PLOT_DEPTH and path.suffix.lower() in PLOTS and path.is_file():
            found.append(relative.as_posix())
    return found[:24]


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, console: Console, user: Viewer) -> Response:
    return console.templates.TemplateResponse(
        request, "models.html", {"user": user, "entries": _entries(console)}
    )


@router.get("/models.json")
def models_json(console: Console, user: Viewer) -> Response:
    return json_response(
        [
            {
                "pipeline": e.pipeline,
                "state": e.state,
                "card": e.card.model_dump(mode="json") if e.card else None,
                "error": e.error,
            }
            for e in _entries(console)
        ]
    )


@router.get("/models/{pipeline}/plots/{relative:path}")
def plot(pipeline: str, relative: str, console: Console, user: Viewer) -> Response:
    """A plot from the card's folder: only picture files, only under that folder."""
    spec = console.view.config().pipelines.get(pipeline)
    if spec is None:
        return json_response({"error": f"no pipeline {pipeline!r}"}, 404)
    folder = Path(spec.card).parent.resolve()
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder) or path.suffix.lower() not in PLOTS or not path.is_file():
        return json_response({"error": "no such plot"}, 404)
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0])
