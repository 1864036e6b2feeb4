"""Routing a completed study: which series go to which pipeline, one job per fired route."""

from __future__ import annotations

import logging
from collections import defaultdict

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
from dicom_node.route.match import fired_routes
from dicom_node.spool import Spool
from imaging.storage import is_image_storage

log = logging.getLogger(__name__)

#: General Equipment Manufacturer of every object the node writes (see dicom_node.results)
OWN_MANUFACTURER = AlgorithmInfo.__dataclass_fields__["manufacturer"].default


def is_own_result(header: Dataset) -> bool:
    """True for objects this node produced (SR and heatmaps carry our manufacturer)."""
    return str(header.get("Manufacturer", "")).strip() == OWN_MANUFACTURER


class Router:
    """Routes the series of a completed study and creates one job per fired route.

    Series of non-image objects (SR, PDF, presentation states, key objects:
    a PACS forwards them with the study) and of this node's own results are
    not routed: every pipeline analyses images, and a fallback rule must not
    turn a forwarded report into a failed job.

    Used as the completion stage's ``on_complete`` callback, inside its transaction.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def __call__(self, session: Session, completion: Completion, config: Config) -> None:
        files = index.series_files(session, completion.series_uids)
        selected: dict[str, list[str]] = defaultdict(list)
        for series_uid in completion.series_uids:
            paths = files.get(series_uid) or []
            if not paths:
                continue
            try:
                header = dcmread(self.spool.absolute(paths[0]), stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - an unreadable file must not block the study
                log.error("series %s not routed: cannot read %s: %s", series_uid, paths[0], exc)
                record(session, "route", "unreadable", series_uid, str(exc)[:500])
                continue
            if is_own_result(header):
                # a PACS that forwards everything sends our results back: never analyse them
                log.info("series %s holds this node's own results; not routed", series_uid)
                record(session, "route", "own-result", series_uid)
                continue
            sop_class = str(header.get("SOPClassUID", ""))
            if not is_image_storage(sop_class):
                # SR, PDF, presentation states, KOS travel with studies; pipelines analyse images
                log.info(
                    "series %s holds non-image objects (%s); not routed",
                    series_uid,
                    UID(sop_class).name if sop_class else "no SOP Class UID",
                )
                record(session, "route", "non-image", series_uid, sop_class[:64])
                continue
            calling = index.series_calling_ae(session, series_uid)
            routes = fired_routes(config.routes, header, calling)
            if not routes:
                log.info("series %s matched no route", series_uid)
                record(session, "route", "no-route", series_uid)
            for route in routes:
                selected[route.name].append(series_uid)
        by_name = {route.name: route for route in config.routes}
        for name, series_uids in selected.items():
            queue.create_job(
                session,
                completion.study_instance_uid,
                completion.generation,
                by_name[name],
                series_uids,
            )
