"""The migrations build exactly the schema the models declare (no drift either way).

An upgraded node migrates its index in place (alembic), never by ``create_all``; a column a
model gained without a migration would exist in tests' minds only. Runs on SQLite, and on
PostgreSQL in the PostgreSQL pass.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import dicom_node.tables  # noqa: F401  (every stage's tables on Base)
from dicom_node.db import Base, make_engine, migrate


def test_the_migrated_schema_is_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], differences
