"""Tables owned by the dispatch stage: the persisted outbox of deliveries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.db import Base, UTCDateTime


class DeliveryState(StrEnum):
    """Where a delivery is; stored as its value in ``deliveries.state``.

    ``pending`` (due now or after its backoff), ``sending`` (an association
    is open; found so at start-up, it was cut off and is queued again),
    ``done`` (the destination acknowledged every object) or ``dead`` (given
    up after ``dispatch.retry.max_attempts``; ``dicom-node resend`` queues it
    again).
    """

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    DEAD = "dead"


class Delivery(Base):
    """All results of one job to one destination, sent over one association."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True, default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
