"""The index database: engine creation, the shared declarative base, and migrations.

Each stage declares its own tables in its ``tables.py`` on :class:`Base` and
is the only writer of them; other stages read through the owning stage's
functions. The schema is created and upgraded by alembic
(``dicom_node/migrations``), never by ``create_all``, so that an upgraded
node migrates an existing index in place.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``
and a busy timeout, so that several receiver processes can write while the
worker reads, and a committed row survives ``kill -9`` and power loss.
PostgreSQL is used by URL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Result,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned timezone-aware (UTC).

    SQLite keeps no time zone; storing naive UTC everywhere keeps comparisons
    in SQL correct on both SQLite and PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Seconds a writer waits for a locked SQLite database (``?timeout=`` in the URL changes it);
#: after that the receiver answers 0xA700 (out of resources) and the peer retries later.
SQLITE_TIMEOUT_SECONDS = 30.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with the node's settings for its dialect.

    For SQLite the parent folder of the database file is created, and
    ``?timeout=SECONDS`` sets how long a writer waits for a lock (default
    :data:`SQLITE_TIMEOUT_SECONDS`). PostgreSQL connections are checked
    before use, so the node reconnects by itself after a database restart.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            timeout = float(parsed.query.get("timeout", SQLITE_TIMEOUT_SECONDS))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"timeout in {url!r} must be a number of seconds") from None
        engine = create_engine(
            parsed.difference_update_query(["timeout"]),
            connect_args={"timeout": timeout, "check_same_thread": False},
        )
        event.listen(
            engine, "connect", functools.partial(_sqlite_pragmas, busy_ms=int(timeout * 1000))
        )
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE or DELETE run through ``Session.execute`` matched.

    ``Session.execute`` is typed to return a plain :class:`~sqlalchemy.Result`, but
    for an ORM bulk UPDATE or DELETE it returns a :class:`~sqlalchemy.CursorResult`,
    the one kind of result that has a row count.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"expected the result of an UPDATE or DELETE, got {type(result).__name__}")
    return result.rowcount


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration (``alembic upgrade head``)."""
    from alembic import command

    import dicom_node.tables  # noqa: F401  (register every stage's tables on Base)

    cfg = _alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
