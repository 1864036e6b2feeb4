"""The job queue: create jobs from a completed study, claim them, record how they ended.

A job is one (study generation, route): the route's pipeline runs on the
series of that study the route selected. Jobs live in the database, so a
restart finds pending work; a job found ``running`` at start-up was cut off
by a crash and is queued again (running a job twice is harmless: its result
UIDs are deterministic, so the second run replaces the first).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.complete.tables import Completion
from dicom_node.config import Config
from dicom_node.db import rowcount, transaction, utcnow
from dicom_node.events import record
from dicom_node.jobs.tables import Job, JobState, Result
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
            route = by_name[name]
            job = Job(
                study_instance_uid=completion.study_instance_uid,
                generation=completion.generation,
                route=route.name,
                pipeline=route.pipeline,
                series_uids=series_uids,
                destinations=[] if route.shadow else list(route.destinations),
                shadow=route.shadow,
                state=JobState.PENDING,
                attempts=0,
                created_at=utcnow(),
            )
            session.add(job)
            session.flush()
            record(
                session,
                "jobs",
                "job-created",
                str(job.id),
                f"route {name}, {len(series_uids)} series",
            )
            log.info(
                "job %d: study %s route %s -> pipeline %s (%d series%s)",
                job.id,
                completion.study_instance_uid,
                name,
                route.pipeline,
                len(series_uids),
                ", shadow" if route.shadow else "",
            )


def claim_next(sessions: sessionmaker[Session], *, waiting: Collection[str] = ()) -> int | None:
    """Mark the oldest pending job running and return its id (None when the queue is empty).

    Jobs of the pipelines named in ``waiting`` (models still being built)
    stay pending and are passed over.
    """
    with transaction(sessions) as session:
        query = select(Job.id).where(Job.state == JobState.PENDING)
        if waiting:
            query = query.where(Job.pipeline.not_in(list(waiting)))
        job_id = session.scalar(query.order_by(Job.id).limit(1))
        if job_id is None:
            return None
        claimed = rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.PENDING)
                .values(state=JobState.RUNNING, started_at=utcnow(), attempts=Job.attempts + 1)
            )
        )
        return job_id if claimed else None


def counts_by_state(session: Session) -> dict[str, int]:
    """How many jobs are in each state (states without jobs are left out)."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {str(state): count for state, count in rows}


def result_paths(session: Session, job_id: int) -> list[str]:
    """Spool paths of a job's results, the SR before its heatmaps."""
    return list(
        session.scalars(select(Result.path).where(Result.job_id == job_id).order_by(Result.kind))
    )


def oldest_pending_since(session: Session) -> datetime | None:
    """When the oldest job still waiting to run was created (None when none waits)."""
    return session.scalar(select(func.min(Job.created_at)).where(Job.state == JobState.PENDING))


def finished_since(session: Session, since: datetime) -> list[tuple[datetime, datetime]]:
    """(created, finished) of every job that finished at or after ``since``."""
    rows = session.execute(
        select(Job.created_at, Job.finished_at).where(Job.finished_at >= since)
    ).all()
    return [(created, finished) for created, finished in rows if finished is not None]


def pending_by_pipeline(session: Session) -> dict[str, int]:
    """How many jobs wait for each configured pipeline name."""
    rows = session.execute(
        select(Job.pipeline, func.count())
        .where(Job.state == JobState.PENDING)
        .group_by(Job.pipeline)
    ).all()
    return {str(name): int(count) for name, count in rows}


def recover(sessions: sessionmaker[Session]) -> int:
    """Queue again the jobs a crash left running; return how many."""
    with transaction(sessions) as session:
        count = rowcount(
            session.execute(
                update(Job).where(Job.state == JobState.RUNNING).values(state=JobState.PENDING)
            )
        )
        if count:
            record(session, "jobs", "recovered", None, f"{count} interrupted jobs queued again")
    if count:
        log.warning("%d jobs were interrupted by a stop and are queued again", count)
    return count


def fail(sessions: sessionmaker[Session], job_id: int, error: str) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.FAILED, error=error[:2000], finished_at=utcnow())
        )
        record(session, "jobs", "job-failed", str(job_id), error[:500])


def forget_results(session: Session, study_uid: str) -> list[str]:
    """Delete the result rows of a study's jobs and return their spool paths (jobs stay).

    For retention, which removes the files in the same transaction.
    """
    jobs = select(Job.id).where(Job.study_instance_uid == study_uid)
    return list(
        session.scalars(delete(Result).where(Result.job_id.in_(jobs)).returning(Result.path)).all()
    )


def busy_studies(session: Session) -> set[str]:
    """Studies with a job still to run (pending or running)."""
    return set(
        session.scalars(
            select(Job.study_instance_uid)
            .where(Job.state.in_([JobState.PENDING, JobState.RUNNING]))
            .distinct()
        )
    )


def last_finished_by_study(session: Session) -> dict[str, datetime]:
    """When each study's latest job finished."""
    rows = session.execute(
        select(Job.study_instance_uid, func.max(Job.finished_at)).group_by(Job.study_instance_uid)
    ).all()
    return {uid: at for uid, at in rows if at is not None}


def study_by_job(session: Session) -> dict[int, str]:
    """The Study Instance UID of every job, by job id."""
    rows = session.execute(select(Job.id, Job.study_instance_uid)).all()
    return {int(job_id): str(uid) for job_id, uid in rows}
