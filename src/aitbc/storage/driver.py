"""Hot statements run on the database driver's cursor, compiled once per dialect.

A job's money steps add a few statements to each lifecycle (its hold; its payment,
refund and receipt anchor; the sealer marking them sealed). Through SQLAlchemy each
execution costs about 60 µs of Python on this machine before the driver sees it
(parameter construction, the compiled cache, result set-up); on the driver's own
cursor it costs about 10 µs, a sixth, in the same database transaction. So these few
statements are still written as SQLAlchemy Core (the schema stays the one source of
their SQL), compiled once per dialect to the driver's positional form, and executed
with ``executemany`` on the cursor of the caller's connection.

Driver errors are turned back into SQLAlchemy's exception classes
(``sqlalchemy.exc.IntegrityError``, ``OperationalError``...), exactly as SQLAlchemy
would raise them, so callers and the unit-of-work retry logic cannot tell the
difference; a connection the driver reports lost is invalidated as SQLAlchemy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ClauseElement


class DriverStatement:
    """One Core statement, executed on the driver's cursor with positional rows."""

    def __init__(self, statement: ClauseElement, parameters: Sequence[str]) -> None:
        """``parameters`` names every bound parameter (or, for an INSERT, every column
        given); rows passed to :meth:`executemany` hold their values in that order."""
        self._statement = statement
        self._parameters = tuple(parameters)
        # Per dialect name: the SQL text and, per position in it, the row's index.
        self._compiled: dict[str, tuple[str, tuple[int, ...]]] = {}

    def _sql_for(self, connection: Connection) -> tuple[str, tuple[int, ...]]:
        dialect = connection.dialect
        cached = self._compiled.get(dialect.name)
        if cached is None:
            compiled = self._statement.compile(dialect=dialect, column_keys=list(self._parameters))
            order = getattr(compiled, "positiontup", None)  # an SQLCompiler's
            if order is None:  # a dialect with named parameters: none of ours
                raise TypeError(f"{dialect.name} does not take positional parameters")
            index = {name: position for position, name in enumerate(self._parameters)}
            cached = (compiled.string, tuple(index[name] for name in order))
            self._compiled[dialect.name] = cached
        return cached

    def executemany(self, connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Execute the statement once per row, in the caller's transaction."""
        if rows:
            self._run(connection, rows, fetch=False)

    def fetchall(self, connection: Connection, row: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Execute the statement (a SELECT) once with ``row``; its rows as tuples."""
        return self._run(connection, [row], fetch=True)

    def _run(
        self, connection: Connection, rows: Sequence[Sequence[Any]], *, fetch: bool
    ) -> list[tuple[Any, ...]]:
        sql, order = self._sql_for(connection)
        if order == tuple(range(len(self._parameters))):
            parameters = [tuple(row) for row in rows]
        else:
            parameters = [tuple(row[position] for position in order) for row in rows]
        fairy = connection.connection
        cursor = fairy.cursor()
        dialect = connection.dialect
        base_error = dialect.loaded_dbapi.Error
        try:
            if len(parameters) == 1:
                cursor.execute(sql, parameters[0])
            else:
                cursor.executemany(sql, parameters)
            return [tuple(found) for found in cursor.fetchall()] if fetch else []
        except base_error as exc:
            if dialect.is_disconnect(exc, fairy.dbapi_connection, cursor):
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql, parameters, exc, base_error, dialect=dialect, ismulti=len(parameters) > 1
            ) from exc
        finally:
            cursor.close()
