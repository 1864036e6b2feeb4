"""Routing a completed study: which series go to which pipeline, one job per fired route."""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.orm import Session

from dicom_node.complete.tables import Completion
from dicom_node.config import Config
from dicom_node.events import record
from dicom_node.jobs import queue
from dicom_node.receive import index
from dicom_node.results.algorithm import AlgorithmInfo
from dicom_node.route.match import fired_routes, missing_series
from dicom_node.route.rules import Route
from dicom_node.spool import Spool
from imaging.storage import is_image_storage

log = logging.getLogger(__name__)

#: General Equipment Manufacturer of every object the node writes (see dicom_node.results)
OWN_MANUFACTURER = AlgorithmInfo.__dataclass_fields__["manufacturer"].default
#: series headers the router keeps for ``require:`` checks
HEADS_KEPT = 512


def is_own_result(header: Dataset) -> bool:
    """True for objects this node produced (SR and heatmaps carry our manufacturer)."""
    return str(header.get("Manufacturer", "")).strip() == OWN_MANUFACTURER


class Router:
    """Routes the series of a completed study and creates one job per fired route.

    Series of non-image objects (SR, PDF, presentation states, key objects:
    a PACS forwards them with the study) and of this node's own results are
    not routed: every pipeline analyses images, and a fallback rule must not
    turn a forwarded report into a failed job.

    A route with ``require:`` fires only when the study also holds the series
    it requires; :meth:`hold` lets the completion stage wait for them.

    Used as the completion stage's ``on_complete`` callback, inside its transaction.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        #: the first header of recently seen series (series attributes do not change)
        self._heads: OrderedDict[str, Dataset] = OrderedDict()

    def __call__(self, session: Session, completion: Completion, config: Config) -> None:
        selected = self._fired(session, completion.series_uids, config, explain=True)
        by_name = {route.name: route for route in config.routes}
        study = completion.study_instance_uid
        for name, series_uids in selected.items():
            route = by_name[name]
            missing = self._missing(session, study, route)
            if missing and route.require is not None:
                proceed = route.require.when_missing == "proceed"
                detail = f"route {name}: the study has no series with " + "; ".join(missing)
                log.warning("study %s: %s (%s)", study, detail, route.require.when_missing)
                record(
                    session,
                    "route",
                    "required-missing-proceed" if proceed else "required-missing-discard",
                    study,
                    detail[:500],
                )
                if not proceed:
                    continue
            queue.create_job(session, study, completion.generation, route, series_uids)

    def hold(
        self, session: Session, study_uid: str, series_uids: Sequence[str], config: Config
    ) -> str | None:
        """Why the study's completion should wait (a route with ``require.wait`` that its new
        series fire lacks a required series), or None."""
        by_name = {route.name: route for route in config.routes}
        for name in self._fired(session, series_uids, config, explain=False):
            route = by_name[name]
            if route.require is None or not route.require.wait:
                continue
            missing = self._missing(session, study_uid, route)
            if missing:
                return f"route {name} waits for a series with " + "; ".join(missing)
        return None

    def _missing(self, session: Session, study_uid: str, route: Route) -> list[str]:
        if route.require is None:
            return []
        heads = []
        for uid, path in index.study_series(session, study_uid).items():
            try:
                head = self._head(uid, path)
            except Exception:  # noqa: BLE001 - reported by _fired when the series is routed
                continue
            if not is_own_result(head):
                heads.append(head)
        return missing_series(route.require, heads)

    def _head(self, series_uid: str, path: str) -> Dataset:
        """The header of a series' first instance, read once (a failed read is not kept)."""
        if series_uid in self._heads:
            self._heads.move_to_end(series_uid)
            return self._heads[series_uid]
        head = dcmread(self.spool.absolute(path), stop_before_pixels=True)
        self._heads[series_uid] = head
        if len(self._heads) > HEADS_KEPT:
            self._heads.popitem(last=False)
        return head

    def _fired(
        self, session: Session, series_uids: Sequence[str], config: Config, *, explain: bool
    ) -> dict[str, list[str]]:
        """Route name → the series it takes; with ``explain``, log and record why a series
        was not routed."""

        def skipped(series_uid: str, kind: str, message: str, detail: str | None = None) -> None:
            if explain:
                log.info("series %s %s", series_uid, message)
                record(session, "route", kind, series_uid, detail)

        files = index.series_files(session, series_uids)
        selected: dict[str, list[str]] = defaultdict(list)
        for series_uid in series_uids:
            paths = files.get(series_uid) or []
            if not paths:
                continue
            try:
                header = self._head(series_uid, paths[0])
            except Exception as exc:  # noqa: BLE001 - an unreadable file must not block the study
                if explain:
                    log.error("series %s not routed: cannot read %s: %s", series_uid, paths[0], exc)
                    record(session, "route", "unreadable", series_uid, str(exc)[:500])
                continue
            if is_own_result(header):
                # a PACS that forwards everything sends our results back: never analyse them
                skipped(series_uid, "own-result", "holds this node's own results; not routed")
                continue
            sop_class = str(header.get("SOPClassUID", ""))
            if not is_image_storage(sop_class):
                # SR, PDF, presentation states, KOS travel with studies; pipelines analyse images
                name = UID(sop_class).name if sop_class else "no SOP Class UID"
                skipped(
                    series_uid,
                    "non-image",
                    f"holds non-image objects ({name}); not routed",
                    sop_class[:64],
                )
                continue
            calling = index.series_calling_ae(session, series_uid)
            routes = fired_routes(config.routes, header, calling)
            if not routes:
                skipped(series_uid, "no-route", "matched no route")
            for route in routes:
                selected[route.name].append(series_uid)
        return selected
