"""The audit trail: one row per thing an operator may want to reconstruct later.

Stages record events (study completed, job failed, delivery dead-lettered,
configuration reloaded or rejected) through :func:`record`; ``dicom-node
status`` shows the latest. Events hold UIDs and ids, never patient data.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from dicom_node.db import Base, UTCDateTime, utcnow

log = logging.getLogger(__name__)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)
    #: the console user who made the change (None: the node itself, or the command line)
    actor: Mapped[str | None] = mapped_column(String(64))


def record(
    session: Session,
    stage: str,
    kind: str,
    subject: str | None = None,
    detail: str | None = None,
    *,
    actor: str | None = None,
) -> None:
    """Add an event to the session's transaction."""
    session.add(
        Event(at=utcnow(), stage=stage, kind=kind, subject=subject, detail=detail, actor=actor)
    )


def latest(
    session: Session,
    *,
    stage: str | None = None,
    kind: str | None = None,
    actor: str | None = None,
    limit: int = 200,
) -> list[Event]:
    """The newest events first, optionally only one stage's, kind's or user's."""
    query = select(Event).order_by(Event.id.desc()).limit(limit)
    if stage:
        query = query.where(Event.stage == stage)
    if kind:
        query = query.where(Event.kind == kind)
    if actor:
        query = query.where(Event.actor == actor)
    return list(session.scalars(query))
