"""The migrations build exactly the tables, columns and indexes the models declare
(Alembic's own comparison), on both databases: a model changed without a migration,
or the other way round, fails here."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from aitbc.storage.models import Base
from tests.conftest import Coordinator

# An index over an expression ("priority DESC"), which Alembic compares only
# approximately on SQLite: it reports it removed and added again.
EXPRESSION_INDEXES = {"ix_jobs_dispatch"}


def _expected(diff: Any) -> bool:
    kind = diff[0]
    if kind == "remove_table" and diff[1].name == "alembic_version":
        return True  # Alembic's own bookkeeping table is not a model
    return kind in ("add_index", "remove_index") and diff[1].name in EXPRESSION_INDEXES


async def test_migrations_match_the_models(coordinator: Coordinator) -> None:
    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection)
        return [diff for diff in compare_metadata(context, Base.metadata) if not _expected(diff)]

    async with coordinator.runtime.engine.connect() as connection:
        found = await connection.run_sync(differences)
    assert found == []
