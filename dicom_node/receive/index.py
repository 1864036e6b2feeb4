"""The receive stage's index: record what arrived, and answer what other stages ask about it.

Writes are upserts keyed on UIDs, so a second copy of an instance updates the
row (and bumps ``copies``) instead of adding one: the instance is counted
once, and its file in the spool is the latest copy.
"""

from __future__ import annotations

import functools
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicom_node.receive.tables import Instance, PerformedStep, ReleasedAssociation, Series, Study


@dataclass(frozen=True)
class ReceivedInstance:
    """What the SCP learnt about one stored object (no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    path: str
    size: int
    calling_ae_title: str
    source_address: str | None
    received_at: datetime
    #: the association it came in (see :func:`record_release`)
    association: str | None = None
    accession_number: str | None = None


@functools.cache
def _statements(dialect: str) -> tuple[Any, Any, Any]:
    """The three upserts, built once per dialect with bind parameters (and run as executemany).

    Building an insert and its ON CONFLICT clause costs more than running it
    (~2 ms per object here); built once, execution only looks up the cached
    compiled form.
    """
    if dialect == "postgresql":
        insert: Any = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise RuntimeError(
            f"database dialect {dialect!r} is not supported (use SQLite or PostgreSQL)"
        )
    study = insert(Study).values(
        study_instance_uid=bindparam("study_instance_uid"),
        first_received_at=bindparam("received_at"),
        accession_number=bindparam("accession_number"),
    )
    study = study.on_conflict_do_nothing(index_elements=[Study.study_instance_uid])
    series = insert(Series).values(
        {name: bindparam(name) for name in SERIES_FIELDS}
        | {"first_received_at": bindparam("received_at")}
    )
    series = series.on_conflict_do_nothing(index_elements=[Series.series_instance_uid])
    instance = insert(Instance).values(
        {name: bindparam(name) for name in INSTANCE_FIELDS} | {"copies": 1}
    )
    instance = instance.on_conflict_do_update(
        index_elements=[Instance.sop_instance_uid],
        set_={
            "copies": Instance.copies + 1,
            "path": instance.excluded.path,
            "size": instance.excluded.size,
            "transfer_syntax_uid": instance.excluded.transfer_syntax_uid,
            "received_at": instance.excluded.received_at,
            "association": instance.excluded.association,
        },
    )
    return study, series, instance


SERIES_FIELDS = (
    "series_instance_uid",
    "study_instance_uid",
    "modality",
    "body_part_examined",
    "series_description",
)
INSTANCE_FIELDS = (
    "sop_instance_uid",
    "sop_class_uid",
    "series_instance_uid",
    "study_instance_uid",
    "transfer_syntax_uid",
    "path",
    "size",
    "calling_ae_title",
    "source_address",
    "received_at",
    "association",
)


def index_instances(
    connection: Connection | Session,
    items: Sequence[ReceivedInstance],
    *,
    known_series: Container[str] = (),
) -> list[bool]:
    """Upsert a group of instances (and their study and series rows); whether each is new.

    Runs inside the caller's transaction, one statement per table for the
    whole group (the receiver's indexer commits what queued together): one
    SELECT finds the copies of instances indexed before, then the study and
    series rows of series not in ``known_series`` (series this process
    indexed before need none), then the instance rows. A SOP Instance UID
    twice in the group goes into a later statement, because one statement
    may not update a row twice; the later copy's file and arrival win.
    """
    if not items:
        return []
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    study, series, instance = _statements(bind.dialect.name)
    uids = {item.sop_instance_uid for item in items}
    present = set(
        connection.scalars(
            select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))
        )
    )
    unknown: dict[str, ReceivedInstance] = {}
    for item in items:
        if item.series_instance_uid not in known_series:
            unknown.setdefault(item.series_instance_uid, item)
    if unknown:
        studies = {item.study_instance_uid: item for item in reversed(unknown.values())}
        connection.execute(study, [vars(item) for item in studies.values()])
        connection.execute(series, [vars(item) for item in unknown.values()])
    rounds: list[list[dict[str, Any]]] = []
    seen: dict[str, int] = {}
    new = []
    for item in items:
        copy = seen.get(item.sop_instance_uid, 0)
        seen[item.sop_instance_uid] = copy + 1
        if copy == len(rounds):
            rounds.append([])
        rounds[copy].append(vars(item))  # each statement takes the names it binds
        new.append(copy == 0 and item.sop_instance_uid not in present)
    for params in rounds:
        connection.execute(instance, params)
    return new


def index_instance(connection: Connection | Session, item: ReceivedInstance) -> bool:
    """Upsert one instance (and its study and series rows); True if the instance is new."""
    return index_instances(connection, [item])[0]


def is_indexed(connection: Connection | Session, sop_instance_uid: str) -> bool:
    """Whether an instance with this SOP Instance UID has a row."""
    found = connection.execute(
        select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
    ).first()
    return found is not None


def record_release(
    connection: Connection | Session, association: str, calling_ae_title: str, at: datetime
) -> None:
    """Record that a ``complete_on_release`` peer released ``association`` at ``at``."""
    connection.execute(
        insert(ReleasedAssociation).values(
            association=association, calling_ae_title=calling_ae_title, released_at=at
        )
    )


def prune_releases(session: Session, before: datetime) -> int:
    """Forget releases older than ``before`` (their studies completed long ago)."""
    result = session.execute(
        delete(ReleasedAssociation).where(ReleasedAssociation.released_at < before)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- read side, used by the completion and jobs stages ------------------------------------


@dataclass(frozen=True)
class StepsVerdict:
    """What a study's MPPS steps say about its new instances (see :func:`steps_verdict`)."""

    #: a step is COMPLETED, none IN PROGRESS, every new instance is listed, every listed one here
    complete: bool
    #: listed by a COMPLETED step but not (yet) received
    missing: list[str]
    #: the COMPLETED steps, and when the last of them was set
    steps: list[str]
    completed_at: datetime | None


def steps_verdict(
    session: Session, study_uid: str, *, after_id: int, through_id: int
) -> StepsVerdict:
    """The MPPS signal for a study's instances in ``(after_id, through_id]``.

    ``complete`` when no step of the study is still IN PROGRESS, at least one
    is COMPLETED, every new instance is listed by a COMPLETED step, and every
    instance those steps list has arrived.
    """
    steps = session.execute(
        select(
            PerformedStep.sop_instance_uid,
            PerformedStep.status,
            PerformedStep.instances,
            PerformedStep.updated_at,
        ).where(PerformedStep.study_instance_uid == study_uid)
    ).all()
    done = [s for s in steps if s.status == "COMPLETED"]
    if not done:
        return StepsVerdict(False, [], [], None)
    listed = {uid for s in done for uid in s.instances}
    present = set(
        session.scalars(
            select(Instance.sop_instance_uid).where(Instance.study_instance_uid == study_uid)
        )
    )
    new = set(
        session.scalars(
            select(Instance.sop_instance_uid).where(
                Instance.study_instance_uid == study_uid,
                Instance.id > after_id,
                Instance.id <= through_id,
            )
        )
    )
    missing = sorted(listed - present)
    in_progress = any(s.status == "IN PROGRESS" for s in steps)
    return StepsVerdict(
        complete=not in_progress and not missing and new <= listed,
        missing=missing,
        steps=[s.sop_instance_uid for s in done],
        completed_at=max(s.updated_at for s in done),
    )


def all_released(
    session: Session, study_uid: str, *, after_id: int, through_id: int, released_before: datetime
) -> bool:
    """Whether every instance of a study in ``(after_id, through_id]`` came in an association
    its peer released before ``released_before`` (the completion stage's release signal)."""
    open_ones = session.scalar(
        select(func.count())
        .select_from(Instance)
        .outerjoin(ReleasedAssociation, ReleasedAssociation.association == Instance.association)
        .where(
            Instance.study_instance_uid == study_uid,
            Instance.id > after_id,
            Instance.id <= through_id,
            (ReleasedAssociation.association.is_(None))
            | (ReleasedAssociation.released_at >= released_before),
        )
    )
    return not open_ones


def series_files(session: Session, series_uids: Sequence[str]) -> dict[str, list[str]]:
    """Spool-relative paths of all instances of each series, in arrival order."""
    rows = session.execute(
        select(Instance.series_instance_uid, Instance.path)
        .where(Instance.series_instance_uid.in_(list(series_uids)))
        .order_by(Instance.id)
    ).all()
    out: dict[str, list[str]] = {uid: [] for uid in series_uids}
    for uid, path in rows:
        out[uid].append(path)
    return out


def study_series(session: Session, study_uid: str) -> dict[str, str]:
    """Each series of a study (every generation) → the spool path of its first instance."""
    first = (
        select(func.min(Instance.id))
        .where(Instance.study_instance_uid == study_uid)
        .group_by(Instance.series_instance_uid)
    )
    rows = session.execute(
        select(Instance.series_instance_uid, Instance.path).where(Instance.id.in_(first))
    ).all()
    return {str(uid): str(path) for uid, path in rows}


def series_calling_ae(session: Session, series_uid: str) -> str | None:
    """Calling AE title of the latest instance of a series."""
    return session.scalar(
        select(Instance.calling_ae_title)
        .where(Instance.series_instance_uid == series_uid)
        .order_by(Instance.id.desc())
        .limit(1)
    )


def forget_study(
    session: Session, study_uid: str, *, through_id: int, received_before: datetime
) -> list[str]:
    """Delete a study's instance rows that retention may remove; return their spool paths.

    Only instances covered by a completion (``id <= through_id``) that have not
    been received again since ``received_before`` go; series and study rows
    go when no instance is left. A copy that arrives later is a new instance
    again (a new generation). The caller removes the files in the same
    transaction, before it commits.
    """
    paths = session.scalars(
        delete(Instance)
        .where(
            Instance.study_instance_uid == study_uid,
            Instance.id <= through_id,
            Instance.received_at < received_before,
        )
        .returning(Instance.path)
    ).all()
    remaining = select(Instance.series_instance_uid).where(Instance.study_instance_uid == study_uid)
    session.execute(
        delete(Series).where(
            Series.study_instance_uid == study_uid, Series.series_instance_uid.not_in(remaining)
        )
    )
    if not session.scalar(
        select(func.count()).select_from(Series).where(Series.study_instance_uid == study_uid)
    ):
        session.execute(delete(Study).where(Study.study_instance_uid == study_uid))
    return list(paths)


def counts(session: Session) -> dict[str, int]:
    return {
        "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
        "series": session.scalar(select(func.count()).select_from(Series)) or 0,
        "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
    }


@dataclass(frozen=True)
class SeriesSummary:
    """A series as the console lists it: UIDs and the header text the router reads."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str | None
    series_description: str | None
    instances: int
    first_received_at: datetime


def recent_series(session: Session, limit: int = 20) -> list[SeriesSummary]:
    """The series received last, newest first, with their instance counts."""
    return _summaries(session, None, Series.first_received_at.desc(), limit)


def _summaries(
    session: Session, study_uid: str | None, order: Any, limit: int | None
) -> list[SeriesSummary]:
    """Series (of one study, or all) with their instance counts, in ``order``."""
    counting = select(Instance.series_instance_uid, func.count().label("instances"))
    if study_uid is not None:
        counting = counting.where(Instance.study_instance_uid == study_uid)
    counted = counting.group_by(Instance.series_instance_uid).subquery()
    query = (
        select(
            Series.series_instance_uid,
            Series.study_instance_uid,
            Series.modality,
            Series.series_description,
            func.coalesce(counted.c.instances, 0),
            Series.first_received_at,
        )
        .outerjoin(counted, counted.c.series_instance_uid == Series.series_instance_uid)
        .order_by(order)
        .limit(limit)
    )
    if study_uid is not None:
        query = query.where(Series.study_instance_uid == study_uid)
    return [SeriesSummary(*row) for row in session.execute(query).all()]


def find_studies(
    session: Session,
    *,
    uid: str | None = None,
    day: date | None = None,
    studies: Sequence[str] | None = None,
    accession: str | None = None,
    limit: int = 100,
) -> list[tuple[str, datetime]]:
    """(Study Instance UID, first received) of the studies matching every filter given,
    newest first: ``uid`` a study, series or SOP Instance UID (or the start of one), ``day``
    the UTC day the study was first received, ``studies`` a set of study UIDs, ``accession``
    its Accession Number."""
    query = select(Study.study_instance_uid, Study.first_received_at)
    if accession:
        query = query.where(Study.accession_number == accession)
    if uid:
        like = uid.replace("%", "").replace("_", "") + "%"
        query = query.where(
            Study.study_instance_uid.like(like)
            | Study.study_instance_uid.in_(
                select(Instance.study_instance_uid).where(
                    Instance.series_instance_uid.like(like) | Instance.sop_instance_uid.like(like)
                )
            )
        )
    if day is not None:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        query = query.where(
            Study.first_received_at >= start, Study.first_received_at < start + timedelta(days=1)
        )
    if studies is not None:
        query = query.where(Study.study_instance_uid.in_(list(studies)))
    rows = session.execute(query.order_by(Study.first_received_at.desc()).limit(limit)).all()
    return [(uid_, at) for uid_, at in rows]


def studies_first_received_since(session: Session, since: datetime) -> list[datetime]:
    """When each study first received since ``since`` arrived."""
    return list(
        session.scalars(select(Study.first_received_at).where(Study.first_received_at >= since))
    )


def series_of_study(session: Session, study_uid: str) -> list[SeriesSummary]:
    """A study's series with their instance counts, in order of arrival."""
    return _summaries(session, study_uid, Series.first_received_at, None)


def study_extents(session: Session) -> list[tuple[str, int, datetime]]:
    """(Study Instance UID, highest instance id, last received) of every indexed study."""
    rows = session.execute(
        select(
            Instance.study_instance_uid, func.max(Instance.id), func.max(Instance.received_at)
        ).group_by(Instance.study_instance_uid)
    ).all()
    return [(uid, int(last_id), received) for uid, last_id, received in rows]
