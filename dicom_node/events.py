"""The audit trail: one row per thing an operator may want to reconstruct later.

Stages record events (study completed, job failed, delivery dead-lettered,
configuration reloaded or rejected) through :func:`record`; ``dicom-node
status`` shows the latest. Events hold UIDs and ids, never patient data.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Integer, String, Text
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


def record(
    session: Session, stage: str, kind: str, subject: str | None = None, detail: str | None = None
) -> None:
    """Add an event to the session's transaction."""
    session.add(Event(at=utcnow(), stage=stage, kind=kind, subject=subject, detail=detail))
