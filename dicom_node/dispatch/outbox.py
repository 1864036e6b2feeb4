"""The outbox: deliveries of a job's results to its destinations, with retries and a dead letter.

A delivery is created in the same transaction that marks its job done, so
results are never produced without being queued. It is retried with
exponential backoff (``dispatch.retry``); after ``max_attempts`` it is
dead-lettered and waits for ``dicom-node resend``. A delivery found
``sending`` at start-up was cut off mid-association and is queued again
(resending is harmless: result UIDs are deterministic, the PACS replaces).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import RetryPolicy
from dicom_node.db import rowcount, transaction, utcnow
from dicom_node.dispatch.tables import Delivery, DeliveryState
from dicom_node.events import record

log = logging.getLogger(__name__)


def enqueue(session: Session, job_id: int, destinations: Sequence[str]) -> None:
    """Queue one delivery per destination (inside the caller's transaction); idempotent."""
    existing = set(
        session.scalars(select(Delivery.destination).where(Delivery.job_id == job_id)).all()
    )
    now = utcnow()
    for name in destinations:
        if name in existing:
            session.execute(
                update(Delivery)
                .where(Delivery.job_id == job_id, Delivery.destination == name)
                .values(
                    state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, last_error=None
                )
            )
        else:
            session.add(
                Delivery(
                    job_id=job_id,
                    destination=name,
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )


def claim_due(sessions: sessionmaker[Session]) -> Delivery | None:
    """Mark the next due delivery ``sending`` and return it."""
    with transaction(sessions) as session:
        delivery = session.scalars(
            select(Delivery)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= utcnow())
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(1)
        ).first()
        if delivery is None:
            return None
        claimed = rowcount(
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.PENDING)
                .values(state=DeliveryState.SENDING, attempts=Delivery.attempts + 1)
            )
        )
        if not claimed:
            return None
        session.refresh(delivery)
        return delivery


def succeeded(sessions: sessionmaker[Session], delivery_id: int) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(state=DeliveryState.DONE, delivered_at=utcnow(), last_error=None)
        )
        record(session, "dispatch", "delivered", str(delivery_id))


def failed(
    sessions: sessionmaker[Session], delivery: Delivery, error: str, policy: RetryPolicy
) -> str:
    """Schedule the next attempt, or dead-letter after the last; return the new state."""
    dead = delivery.attempts >= policy.max_attempts
    state = DeliveryState.DEAD if dead else DeliveryState.PENDING
    delay = policy.delay(delivery.attempts)
    with transaction(sessions) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id)
            .values(
                state=state,
                last_error=error[:2000],
                next_attempt_at=utcnow() + timedelta(seconds=delay),
            )
        )
        if dead:
            record(session, "dispatch", "dead-letter", str(delivery.id), error[:500])
    if dead:
        log.error(
            "delivery %d (job %d to %s) dead-lettered after %d attempts: %s; "
            "run 'dicom-node resend' once the destination is fixed",
            delivery.id,
            delivery.job_id,
            delivery.destination,
            delivery.attempts,
            error,
        )
    else:
        log.warning(
            "delivery %d (job %d to %s) attempt %d failed: %s; next in %.0f s",
            delivery.id,
            delivery.job_id,
            delivery.destination,
            delivery.attempts,
            error,
            delay,
        )
    return state


def recover(sessions: sessionmaker[Session]) -> int:
    """Queue again the deliveries a crash left ``sending``."""
    with transaction(sessions) as session:
        count = rowcount(
            session.execute(
                update(Delivery)
                .where(Delivery.state == DeliveryState.SENDING)
                .values(state=DeliveryState.PENDING, next_attempt_at=utcnow())
            )
        )
    if count:
        log.warning("%d deliveries were interrupted by a stop and are queued again", count)
    return count


def resend(
    sessions: sessionmaker[Session],
    delivery_ids: Sequence[int] = (),
    *,
    include_delivered: bool = False,
    actor: str | None = None,
) -> int:
    """Queue dead-lettered deliveries again (all, or the given ids); return how many.

    ``actor``: the console user who asked (recorded in the audit trail)."""
    states = [DeliveryState.DEAD]
    if include_delivered:
        states.append(DeliveryState.DONE)
    with transaction(sessions) as session:
        stmt = update(Delivery).where(Delivery.state.in_(states))
        if delivery_ids:
            stmt = stmt.where(Delivery.id.in_(list(delivery_ids)))
        count = rowcount(
            session.execute(
                stmt.values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=utcnow())
            )
        )
        if count:
            subject = ",".join(str(i) for i in delivery_ids) if delivery_ids else None
            record(
                session,
                "dispatch",
                "resend",
                subject,
                f"{count} deliveries queued again",
                actor=actor,
            )
    return count


def counts_by_state(session: Session) -> dict[str, int]:
    """How many deliveries are in each state (states without deliveries are left out)."""
    rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return {str(state): int(count) for state, count in rows}


def oldest_waiting_since(session: Session) -> datetime | None:
    """When the oldest delivery not yet acknowledged (pending or sending) was created."""
    return session.scalar(
        select(func.min(Delivery.created_at)).where(
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING])
        )
    )


def dead_letters(session: Session) -> list[Delivery]:
    """The deliveries given up on, oldest first (``dicom-node resend`` queues them again)."""
    return list(
        session.scalars(
            select(Delivery).where(Delivery.state == DeliveryState.DEAD).order_by(Delivery.id)
        )
    )


def deliveries_of(session: Session, job_ids: Sequence[int]) -> list[Delivery]:
    """The deliveries of these jobs, by job."""
    if not job_ids:
        return []
    return list(
        session.scalars(
            select(Delivery).where(Delivery.job_id.in_(list(job_ids))).order_by(Delivery.id)
        )
    )


def waiting(session: Session, limit: int = 200) -> list[Delivery]:
    """Deliveries not yet acknowledged (pending or sending), oldest first."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
            .order_by(Delivery.id)
            .limit(limit)
        )
    )


def jobs_with_open_deliveries(session: Session) -> set[int]:
    """Jobs with a delivery not yet done (pending, sending, or dead and waiting for a resend)."""
    open_states = [DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.DEAD]
    return set(
        session.scalars(select(Delivery.job_id).where(Delivery.state.in_(open_states)).distinct())
    )


def last_delivered_by_job(session: Session) -> dict[int, datetime]:
    """When each job's latest delivery was acknowledged."""
    rows = session.execute(
        select(Delivery.job_id, func.max(Delivery.delivered_at)).group_by(Delivery.job_id)
    ).all()
    return {job_id: at for job_id, at in rows if at is not None}
