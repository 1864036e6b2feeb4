"""The job queue: create jobs for the routes a completed study fired, claim them, record how they ended.

A job is one (study generation, route): the route's pipeline runs on the
series of that study the route selected. Jobs live in the database, so a
restart finds pending work; a job found ``running`` at start-up was cut off
by a crash and is queued again (running a job twice is harmless: its result
UIDs are deterministic, so the second run replaces the first).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import rowcount, transaction, utcnow
from dicom_node.events import record
from dicom_node.jobs.tables import Job, JobState, Result
from dicom_node.route.rules import Route

log = logging.getLogger(__name__)


def create_job(
    session: Session,
    study_instance_uid: str,
    generation: int,
    route: Route,
    series_uids: list[str],
) -> Job:
    """Queue one job: ``route``'s pipeline on these series of a study generation.

    Called by the router inside the completion's transaction, so a completed
    study and its jobs are committed together.
    """
    job = Job(
        study_instance_uid=study_instance_uid,
        generation=generation,
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
        f"route {route.name}, {len(series_uids)} series",
    )
    log.info(
        "job %d: study %s route %s -> pipeline %s (%d series%s)",
        job.id,
        study_instance_uid,
        route.name,
        route.pipeline,
        len(series_uids),
        ", shadow" if route.shadow else "",
    )
    return job


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


def retry(
    sessions: sessionmaker[Session],
    job_id: int,
    reason: str,
    max_attempts: int,
    *,
    fail_last: bool = True,
) -> bool:
    """Queue a job again after its engine failed, or fail it once it had ``max_attempts``.

    Returns True when the job was queued again. Its ``error`` keeps the
    reason either way, so ``status`` shows why a pending job is on its
    second attempt. With ``fail_last=False`` a job out of attempts is left
    as it is, for the caller to fail (with its notice, in one transaction).
    """
    with transaction(sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            return False
        if job.attempts >= max_attempts and not fail_last:
            return False
        if job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.error = f"{reason} (gave up after {job.attempts} attempts)"[:2000]
            job.finished_at = utcnow()
            record(session, "jobs", "job-failed", str(job_id), job.error[:500])
            return False
        job.state = JobState.PENDING
        job.error = f"attempt {job.attempts} of {max_attempts} failed: {reason}"[:2000]
        record(session, "jobs", "job-retry", str(job_id), job.error[:500])
        return True


def jobs_of(session: Session, study_uid: str) -> list[Job]:
    """A study's jobs, oldest first."""
    return list(
        session.scalars(select(Job).where(Job.study_instance_uid == study_uid).order_by(Job.id))
    )


def studies_routed(session: Session, route: str, limit: int = 1000) -> list[str]:
    """The studies with a job on ``route``, newest job first."""
    rows = session.execute(
        select(Job.study_instance_uid, func.max(Job.id))
        .where(Job.route == route)
        .group_by(Job.study_instance_uid)
        .order_by(func.max(Job.id).desc())
        .limit(limit)
    )
    return [uid for uid, _ in rows]


def results_of(session: Session, job_ids: Collection[int]) -> list[Result]:
    """The results of these jobs (SR and SC objects), by job."""
    if not job_ids:
        return []
    return list(
        session.scalars(
            select(Result).where(Result.job_id.in_(list(job_ids))).order_by(Result.job_id)
        )
    )


def pipeline_of(session: Session, job_id: int) -> str | None:
    """The pipeline a job ran (or runs)."""
    return session.scalar(select(Job.pipeline).where(Job.id == job_id))


def result(session: Session, sop_instance_uid: str) -> Result | None:
    """One result object by its SOP Instance UID."""
    return session.get(Result, sop_instance_uid)


def job_times(
    session: Session, since: datetime
) -> list[tuple[datetime, datetime | None, datetime | None]]:
    """(queued, started, finished) of every job queued since ``since`` or not finished by then:
    enough to chart the queue's depth and the jobs' latency over time."""
    rows = session.execute(
        select(Job.created_at, Job.started_at, Job.finished_at).where(
            (Job.created_at >= since) | (Job.finished_at.is_(None)) | (Job.finished_at >= since)
        )
    )
    return [(created, started, finished) for created, started, finished in rows]


def failed_jobs(session: Session, limit: int = 200) -> list[Job]:
    """The failed jobs, newest first (the console lists them with a retry button)."""
    return list(
        session.scalars(
            select(Job).where(Job.state == JobState.FAILED).order_by(Job.id.desc()).limit(limit)
        )
    )


def requeue_failed(session: Session, job_id: int, *, actor: str | None) -> bool:
    """Queue a failed job again with fresh attempts; False when it is not (or no longer) failed."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.FAILED:
        return False
    job.state = JobState.PENDING
    job.attempts = 0
    job.finished_at = None
    job.error = f"queued again by {actor or 'an operator'} after: {job.error or 'failure'}"[:2000]
    record(session, "jobs", "job-requeued", str(job_id), None, actor=actor)
    return True


def fail(sessions: sessionmaker[Session], job_id: int, error: str) -> None:
    with transaction(sessions) as session:
        mark_failed(session, job_id, error)


def mark_failed(session: Session, job_id: int, error: str) -> None:
    """Fail a job for good with ``error``, in the caller's transaction."""
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
