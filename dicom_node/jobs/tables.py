"""Tables owned by the jobs stage: one job per (study generation, route), and its results."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.db import Base, UTCDateTime


class JobState(StrEnum):
    """Where a job is; stored as its value in ``jobs.state``.

    ``pending`` (queued, or waiting for its model to be built), ``running``
    (claimed by a runner; found so at start-up, it was cut off and goes back
    to ``pending``), ``done`` (results stored and their deliveries queued in
    the same transaction) or ``failed`` (the error says why; ``dicom-node``
    never retries it by itself).
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ResultKind(StrEnum):
    """What a result object is; stored in ``results.kind``."""

    #: the TID 1500 Structured Report with the findings
    SR = "SR"
    #: a Secondary Capture heatmap
    SC = "SC"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_instance_uid", "generation", "route"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    route: Mapped[str] = mapped_column(String(128))
    pipeline: Mapped[str] = mapped_column(String(128))
    series_uids: Mapped[list[str]] = mapped_column(JSON)
    destinations: Mapped[list[str]] = mapped_column(JSON)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def key(self) -> str:
        """Stable identity of this job's work; result UIDs derive from it."""
        return f"{self.study_instance_uid}/{self.generation}/{self.route}"


class Result(Base):
    """A DICOM object a job produced, kept in the spool under ``results/``."""

    __tablename__ = "results"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    #: a :class:`ResultKind`
    kind: Mapped[str] = mapped_column(String(8))
    #: path relative to the spool folder
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
