"""Alembic environment: runs on the connection handed over by ``aitbc.storage.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from aitbc.storage.models import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the migration scripts inside the caller's transaction."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through aitbc.storage.migrate (aitbc db upgrade)")
run_migrations(connection)
