"""Retention: remove finished studies from the spool, by age and when the disk runs low.

A node holds patient images only as long as it needs them. A study is
*finished* when nothing about it is outstanding:

* every instance it received is covered by a completion (nothing waits to
  be routed),
* none of its jobs is pending or running, and
* none of its deliveries is pending, being sent or dead-lettered (a dead
  letter keeps its study until ``dicom-node resend`` delivered it, so that
  nothing an administrator may still send is deleted).

``storage.retention`` in config.yaml then decides when a finished study's
images and results are deleted (files, and their index rows; jobs,
deliveries, completions and events stay as the audit trail):

* ``keep_days`` after its last activity (last instance received, job
  finished or delivery made);
* in an **emergency**: when free space on the spool's disk falls below
  ``min_free_disk_mb`` (the receiver then answers new objects with an
  out-of-resources status), finished studies are deleted oldest first until
  ``emergency_free_mb`` is free again. Studies with work outstanding are
  never touched; when deleting every finished study is not enough, the node
  says so in the log and keeps refusing until space is freed.

Nothing younger than ``settle_seconds`` is deleted: a copy of an instance
that is being received again is left alone (its file is newer than the
cut-off, and its row is indexed again as a new instance).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.complete.completion import completion_marks
from dicom_node.config import Config
from dicom_node.db import transaction, utcnow
from dicom_node.dispatch import outbox
from dicom_node.events import record
from dicom_node.jobs import queue
from dicom_node.receive import index
from dicom_node.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedStudy:
    """A study retention may delete: the instances through ``through_id`` and its last activity."""

    study_instance_uid: str
    through_id: int
    last_activity: datetime


@dataclass
class RetentionRun:
    """What one retention pass did."""

    expired: list[str] = field(default_factory=list)
    emergency: list[str] = field(default_factory=list)
    files: int = 0
    #: free MiB after the pass, and whether the disk is still below the watermark
    free_mb: float = 0.0
    still_low: bool = False


def finished_studies(session: Session) -> list[FinishedStudy]:
    """Every finished study (see the module doc), oldest last activity first.

    Each stage's tables are read through its own functions: completion's
    watermarks, the index's extents, the jobs still to run and the
    deliveries still open.
    """
    marks = completion_marks(session)
    open_jobs = outbox.jobs_with_open_deliveries(session)
    delivered_jobs = outbox.last_delivered_by_job(session)
    study_of = queue.study_by_job(session)
    busy = queue.busy_studies(session) | {study_of[j] for j in open_jobs if j in study_of}
    jobs = queue.last_finished_by_study(session)
    delivered: dict[str, datetime] = {}
    for job_id, at in delivered_jobs.items():
        uid = study_of.get(job_id)
        if uid is not None and (uid not in delivered or at > delivered[uid]):
            delivered[uid] = at
    out = []
    for uid, last_id, received in index.study_extents(session):
        mark = marks.get(uid)
        if mark is None or last_id > mark or uid in busy:
            continue
        activity = max(at for at in (received, jobs.get(uid), delivered.get(uid)) if at is not None)
        out.append(FinishedStudy(uid, int(mark), activity))
    out.sort(key=lambda s: (s.last_activity, s.study_instance_uid))
    return out


class Retention:
    """The retention pass the scheduler runs every ``retention.interval_seconds``."""

    def __init__(
        self, config: Callable[[], Config], sessions: sessionmaker[Session], spool: Spool
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.spool = spool

    def run(self, now: datetime | None = None) -> RetentionRun:
        """Delete expired studies, then, if the disk is low, finished studies oldest first."""
        now = now or utcnow()
        storage = self._config().storage
        policy = storage.retention
        cutoff = now - timedelta(seconds=policy.settle_seconds)
        done = RetentionRun()
        # a release older than twice the force deadline cannot decide a completion any more
        force_after = self._config().completion.force_after_seconds
        with transaction(self.sessions) as session:
            index.prune_releases(session, now - timedelta(seconds=2 * force_after))
        with self.sessions() as session:
            candidates = [s for s in finished_studies(session) if s.last_activity < cutoff]
        if policy.keep_days is not None:
            expiry = now - timedelta(days=policy.keep_days)
            for study in [s for s in candidates if s.last_activity < expiry]:
                done.files += self._delete(study, cutoff, "expired")
                done.expired.append(study.study_instance_uid)
        left = [s for s in candidates if s.study_instance_uid not in done.expired]
        free = self.spool.free_mb()
        if policy.emergency and free < storage.min_free_disk_mb:
            target = storage.emergency_free_mb
            log.warning(
                "spool disk low: %.0f MiB free, below min_free_disk_mb=%d; deleting finished "
                "studies oldest first until %.0f MiB are free",
                free,
                storage.min_free_disk_mb,
                target,
            )
            for study in left:
                if free >= target:
                    break
                done.files += self._delete(study, cutoff, "emergency")
                done.emergency.append(study.study_instance_uid)
                free = self.spool.free_mb()
            if free < storage.min_free_disk_mb:
                log.error(
                    "spool disk still low after deleting %d finished studies: %.0f MiB free; "
                    "the rest of the spool is work outstanding (jobs, deliveries, dead letters)"
                    " - free space or resend/clear dead letters",
                    len(done.emergency),
                    free,
                )
        done.free_mb = self.spool.free_mb()
        done.still_low = done.free_mb < storage.min_free_disk_mb
        return done

    def _delete(self, study: FinishedStudy, cutoff: datetime, why: str) -> int:
        """Remove one study's files and rows in one transaction; return the files removed."""
        removed = 0
        with transaction(self.sessions) as session:
            paths = index.forget_study(
                session,
                study.study_instance_uid,
                through_id=study.through_id,
                received_before=cutoff,
            )
            paths += queue.forget_results(session, study.study_instance_uid)
            for relative in paths:
                removed += self._unlink(relative, cutoff)
            record(session, "retention", why, study.study_instance_uid, f"{removed} files")
        log.info(
            "retention (%s): deleted study %s, %d files", why, study.study_instance_uid, removed
        )
        return removed

    def _unlink(self, relative: str, cutoff: datetime) -> int:
        path = self.spool.absolute(relative)
        try:
            if datetime.fromtimestamp(path.stat().st_mtime, cutoff.tzinfo) >= cutoff:
                return 0  # written again while we looked: a new copy, indexed anew
            path.unlink()
        except FileNotFoundError:
            return 0
        return 1
