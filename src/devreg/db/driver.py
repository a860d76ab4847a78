"""Statements straight on asyncpg, for the hot paths: one round trip each, none of the ORM's or
the session's machinery per request. SQLAlchemy still writes the SQL (compiled once)."""

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Dialect, Select
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from devreg.db.greenlets import in_kept_greenlet
from devreg.db.session import JSON_CODECS, UnitOfWork
from devreg.errors import (
    CONNECTION_LOST_SQLSTATES,
    Conflict,
    DatabaseOutage,
    ServiceUnavailable,
    half_sent,
    sqlstate_problem,
)

DIALECT = PGDialect_asyncpg(**JSON_CODECS)  # type: ignore[no-untyped-call]
# Where SQLAlchemy logs the statements it runs, which DB_ECHO turns on (logs.logging_config).
_ECHO = logging.getLogger("sqlalchemy.engine.Engine")
T = TypeVar("T")
Violations = Mapping[str, Callable[[], Exception]]
"""The error each constraint's violation is (by constraint name); any other is a 409."""
_NONE_NAMED: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled once to asyncpg's SQL ($1, $2, ...), with what binds its values the
    way SQLAlchemy would (e.g. JSONB as JSON text): values stay parameters, never SQL text."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def compile(cls, statement: ClauseElement) -> "DriverStatement":
        return cls._of(_compiled(statement, DIALECT), DIALECT)

    @classmethod
    def _of(cls, compiled: SQLCompiler, dialect: Dialect) -> "DriverStatement":
        names = tuple(compiled.positiontup or ())
        binds = {name: bind.type.bind_processor(dialect) for name, bind in compiled.binds.items()}
        # An expanded IN list's parameters are named <parameter>_<n>.
        processors = tuple(binds.get(name) or binds.get(name.rsplit("_", 1)[0]) for name in names)
        return cls(str(compiled), names, processors)

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [
            value if processor is None or value is None else processor(value)
            for value, processor in zip(
                (values[name] for name in self.names), self.processors, strict=True
            )
        ]


def driver_sql(statement: ClauseElement, dialect: Dialect) -> tuple[str, list[Any]]:
    """`statement` with the values bound in it, as asyncpg's SQL and arguments."""
    compiled = _compiled(statement, dialect)
    return str(compiled), DriverStatement._of(compiled, dialect).arguments(
        compiled.construct_params() or {}
    )


def _compiled(statement: ClauseElement, dialect: Dialect) -> SQLCompiler:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    return compiled


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside its transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def fetch_row(
    work: UnitOfWork,
    statement: DriverStatement,
    values: Mapping[str, Any],
    violations: Violations = _NONE_NAMED,
) -> Mapping[str, Any] | None:
    """The first row of one statement that is atomic on its own, or None.

    Outside a transaction (a hot-path request's lone statement) it runs straight on a pooled
    asyncpg connection in autocommit: one round trip, no BEGIN or COMMIT, no session made or used.
    Inside the session's transaction (session_scope's, one an earlier statement began, or a
    test's) it runs on that transaction's connection, so it commits or rolls back with the rest.

    A constraint violation becomes the error `violations` names for that constraint; a lost
    connection is dropped from the pool and becomes a 503.
    """
    arguments = statement.arguments(values)
    bind = work.bind
    if work.in_transaction() or not isinstance(bind, AsyncEngine):
        connection = await work.session.connection()
        with violations_raised_as(violations):
            result = await connection.exec_driver_sql(statement.sql, tuple(arguments))
        found = result.mappings().first()
        return dict(found) if found is not None else None
    row: Mapping[str, Any] | None = await _pooled(
        bind, statement.sql, lambda driver: driver.fetchrow(statement.sql, *arguments), violations
    )
    return row


async def fetch_all(
    work: UnitOfWork,
    statement: Select[Any],
    values: Mapping[str, Any] = _NONE_NAMED,
    *,
    compiled: DriverStatement | None = None,
) -> Sequence[Sequence[Any]]:
    """Every row of one read-only statement (a listing's page), `values` given for its named
    parameters; `compiled`, when given, is its SQL, which names all its parameters.

    Outside a transaction it runs straight on a pooled asyncpg connection in autocommit, compiled
    once per structure: one round trip, no BEGIN or ROLLBACK, and none of SQLAlchemy's execution
    and result handling, which was a fifth of a page's instructions. Inside, it runs on the
    transaction's connection."""
    bind = work.bind
    if work.in_transaction() or not isinstance(bind, AsyncEngine):
        result = await work.session.execute(statement, dict(values))
        rows: Sequence[Sequence[Any]] = result.all()
        return rows
    if compiled is None:
        sql, arguments = _compiled_once(statement, values)
    else:
        sql, arguments = compiled.sql, compiled.arguments(values)
    records: list[asyncpg.Record] = await _pooled(
        bind, sql, lambda driver: driver.fetch(sql, *arguments), {}
    )
    return records


# Compiled statements by structure, as SQLAlchemy's own cache keeps them per engine; bounded by
# dropping the oldest.
_COMPILED: dict[tuple[Any, ...], tuple[SQLCompiler, DriverStatement]] = {}
_COMPILED_LIMIT = 500


def _compiled_once(statement: Select[Any], values: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The statement as asyncpg's SQL and arguments: compiled the first time its structure (its
    SQLAlchemy cache key) is seen, with this statement's values each time, and `values` for its
    named parameters."""
    cache_key = statement._generate_cache_key()
    assert cache_key is not None, "every listing's statement is cacheable"
    cached = _COMPILED.get(cache_key.key)
    if cached is None:
        compiled = statement.compile(dialect=DIALECT, cache_key=cache_key)
        assert isinstance(compiled, SQLCompiler)
        if compiled.post_compile_params or compiled.literal_execute_params:
            # Their SQL depends on their values, which a cache key leaves out.
            raise TypeError("no IN list of values (keyset.any_of) or value rendered as SQL")
        if len(_COMPILED) >= _COMPILED_LIMIT:
            del _COMPILED[next(iter(_COMPILED))]
        cached = _COMPILED[cache_key.key] = (compiled, DriverStatement._of(compiled, DIALECT))
    compiled, driver_statement = cached
    named = {**cache_key.params, **values} if cache_key.params else values
    bound = compiled.construct_params(named, extracted_parameters=cache_key.bindparams)
    return driver_statement.sql, driver_statement.arguments(bound)


def echo(sql: str) -> None:
    """Log a statement sent straight to asyncpg as SQLAlchemy logs those it runs itself."""
    if _ECHO.isEnabledFor(logging.INFO):
        _ECHO.info(sql)


async def _pooled(
    bind: AsyncEngine,
    sql: str,
    run: Callable[[asyncpg.Connection], Awaitable[T]],
    violations: Violations,
) -> T:
    """`run` (which sends `sql`) on a pooled connection in autocommit, returned to the pool
    after. Its errors become problems as on SQLAlchemy's path (_problem)."""
    echo(sql)
    try:
        pooled = await in_kept_greenlet(bind.sync_engine.raw_connection)
    except bind.dialect.loaded_dbapi.Error as exc:
        # The pool had to connect, and could not: the database down or starting up (no SQLSTATE,
        # or a connection one), out of connections, or refusing devreg's role or password.
        refusal = sqlstate_problem(getattr(exc, "sqlstate", None) or "")
        raise (refusal if isinstance(refusal, ServiceUnavailable) else DatabaseOutage()) from None
    try:
        return await run(pooled.driver_connection)
    except BaseException as exc:
        problem = _problem(exc, bind.pool, pooled, violations)
        if problem is None:
            raise
        raise problem from None
    finally:
        pooled.close()


def violation_error(constraint: str | None, violations: Violations) -> Exception:
    """The error `violations` names for a violated constraint; a plain 409 for any other."""
    violation = violations.get(constraint or "")
    return violation() if violation is not None else Conflict()


@contextmanager
def violations_raised_as(violations: Violations) -> Iterator[None]:
    """SQLAlchemy's IntegrityError inside, raised as violation_error says."""
    try:
        yield
    except IntegrityError as exc:
        raise violation_error(_violated_constraint(exc), violations) from None


def _violated_constraint(exc: DBAPIError) -> str | None:
    """The name of the constraint behind SQLAlchemy's IntegrityError, as PostgreSQL reported it."""
    name = getattr(getattr(exc.orig, "driver_exception", None), "constraint_name", None)
    return name if isinstance(name, str) else None


def _problem(
    exc: BaseException, pool: Pool, pooled: PoolProxiedConnection, violations: Violations
) -> Exception | None:
    """The problem asyncpg's error is on SQLAlchemy's path (errors.database_problem), None to
    let it through as it is; a connection in doubt leaves the pool."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return violation_error(exc.constraint_name, violations)
    if _connection_lost(exc, pooled.driver_connection):
        # Most likely every other connection the pool made before this one is lost too (the
        # server restarted): each is replaced at its next checkout, as SQLAlchemy does on its own
        # path, rather than found dead by a request of its own, a 503 each.
        pool._invalidate(pooled, exc)
        return DatabaseOutage()
    if not isinstance(exc, asyncpg.PostgresError) or half_sent(exc):
        # Cancelled mid-statement, or left half-way through the statement's messages.
        pooled.invalidate()
    if isinstance(exc, asyncpg.PostgresError):
        return sqlstate_problem(str(exc.sqlstate))
    return None


async def discard_if_lost(session: AsyncSession, exc: BaseException) -> bool:
    """Whether `exc`, raised by asyncpg on the session's connection, lost that connection; if
    so it leaves the pool, and the connections the pool made before it with it (as _problem)."""
    connection = await session.connection()
    pooled = await connection.get_raw_connection()
    if not _connection_lost(exc, pooled.driver_connection):
        return False
    connection.sync_engine.pool._invalidate(pooled, exc, _checkin=False)
    await discard(session, exc)
    return True


async def discard(session: AsyncSession, exc: BaseException | None = None) -> None:
    """End the session's connection now and keep it out of the pool (SQLAlchemy, left to
    close it, would first wait 2 s for the server to answer a polite goodbye)."""
    connection = await session.connection()
    pooled = await connection.get_raw_connection()
    if pooled.driver_connection is not None:
        pooled.driver_connection.terminate()
    await connection.invalidate(exc)


def _connection_lost(exc: BaseException, connection: asyncpg.Connection) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate).startswith(CONNECTION_LOST_SQLSTATES) or connection.is_closed()
    # InternalClientError: the connection broke in the middle of the statement's messages.
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError)
