"""Alembic environment: runs migrations on the connection handed over by :func:`dicom_node.db.migrate`."""

from alembic import context

import dicom_node.tables  # noqa: F401
from dicom_node.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from sqlalchemy import create_engine

        url = config.get_main_option("sqlalchemy.url")
        if url is None:
            raise RuntimeError(
                "alembic got neither a connection nor sqlalchemy.url; "
                "run migrations through dicom_node.db.migrate()"
            )
        engine = create_engine(url)
        with engine.begin() as conn:
            context.configure(
                connection=conn, target_metadata=target_metadata, render_as_batch=True
            )
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
