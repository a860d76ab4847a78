"""The engine, and the one unit of work: committed on success, rolled back on error; its session
is made only when a statement needs one."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from pydantic_core import from_json, to_json
from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncSessionTransaction,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import QueuePool

from devreg.config import Settings, driver_connect_args, dsn_options
from devreg.errors import half_sent

SessionMaker = async_sessionmaker[AsyncSession]

UNSYNCHRONIZED: dict[str, Any] = {"synchronize_session": False}
"""Execution options of a bulk DELETE through the session that leaves the session's objects as
they are: by default SQLAlchemy adds `RETURNING` and fetches the key of every row deleted, which
for a prune of the change log (1.65 million records) held 580 MB in the process, and in every
server worker as it swept a million expired Idempotency-Keys, 470 MB."""


def dump_json(value: Any) -> str:
    """A JSON value's text, as json and jsonb values are written."""
    return to_json(value).decode()


JSON_CODECS: dict[str, Any] = {"json_serializer": dump_json, "json_deserializer": from_json}
"""How json and jsonb values are written and read: by pydantic-core, at a fifth of the standard
library's json.dumps and json.loads each (SQLAlchemy's default), which were about 2% of a
create's instructions apiece. The same values: integers of any size, floats read back exactly."""


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        url,
        **JSON_CODECS,
        # SQLAlchemy closes an overflow connection as soon as it is returned, so a steady load
        # above POOL_SIZE would open and close connections all the time. Instead every
        # connection, overflow included, opens on demand and stays open.
        pool_size=settings.pool_size + settings.max_overflow,
        max_overflow=0,
        pool_timeout=settings.pool_timeout,
        # No ping before each checkout: that would be a round trip per request.
        pool_pre_ping=False,
        # Bound parameters stay out of exception messages, so they cannot reach a log line.
        hide_parameters=True,
        connect_args={
            **driver_connect_args(url),
            "timeout": settings.db_connect_timeout,
            "command_timeout": answer_timeout(settings.statement_timeout),
            "server_settings": {
                **_default_application_name(url),
                "statement_timeout": str(round(settings.statement_timeout * 1000)),
                # `q=` matches words this similar (0..1); pg_trgm's 0.6 misses one-letter typos
                # in short words such as "rasberry".
                "pg_trgm.word_similarity_threshold": "0.4",
                # Timestamps PostgreSQL writes as text (exports, the change log's JSON) in UTC
                # and ISO order, whatever the server's or the database's defaults.
                "TimeZone": "UTC",
                "DateStyle": "ISO, MDY",
            },
        },
    )
    event.listen(engine.sync_engine, "handle_error", _discard_broken)
    return engine


def _default_application_name(url: URL) -> dict[str, str]:
    """devreg's name in pg_stat_activity, unless DATABASE_URL gives one (libpq's option, which
    config.py hands to asyncpg in a DSN of its own)."""
    return {} if "application_name" in dsn_options(url) else {"application_name": "devreg"}


# PostgreSQL cancels a statement at STATEMENT_TIMEOUT and says so at once: a server still
# silent this much later is not answering at all (frozen, or cut off by the network).
ANSWER_GRACE_SECONDS = 2.0


def answer_timeout(statement_timeout: float) -> float | None:
    """How long devreg waits for the answer to a statement before it gives up on the server
    (asyncpg's command_timeout): none without a STATEMENT_TIMEOUT."""
    return statement_timeout + ANSWER_GRACE_SECONDS if statement_timeout else None


def _discard_broken(context: ExceptionContext) -> None:
    """A connection asyncpg left half-way through a statement (errors.half_sent) is discarded,
    and only that one: the rest of the pool is fine. One whose server gave no answer in time
    (answer_timeout) is discarded with the connections made before it, as a lost one is: its
    rollback would only wait as long again."""
    if half_sent(getattr(context.original_exception, "driver_exception", None)):
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False
    elif isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True
        pooled = None if context.connection is None else context.connection.connection
        if pooled is not None and pooled.driver_connection is not None:
            # Ended now: SQLAlchemy would first close it politely, waiting 2 s more for the
            # server that already did not answer.
            pooled.driver_connection.terminate()


async def open_pool(engine: AsyncEngine) -> None:
    """Open every pooled connection now, so that neither the first burst of requests nor a steady
    load later pays for connecting (TCP, authentication, a backend process, type set-up)."""
    size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 0
    async with AsyncExitStack() as held:
        # Every connection is waited for, and back in the pool, before a failure is raised: a
        # connection made after another failed would otherwise stay checked out for good.
        opened = await asyncio.gather(
            *(held.enter_async_context(engine.connect()) for _ in range(size)),
            return_exceptions=True,
        )
    failure = next((each for each in opened if isinstance(each, BaseException)), None)
    if failure is not None:
        raise failure


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UnitOfWork:
    """What a request (or a command) reads and writes through: its session, made when first
    needed (`session`). A hot-path request's lone statement needs none (db.driver.fetch_row runs
    it on a pooled connection in autocommit), so it does not pay for making one."""

    __slots__ = ("_committed_effects", "_session", "_sessionmaker", "bind")

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None
        self._committed_effects: list[Callable[[], None]] | None = None
        # What the sessionmaker binds its sessions to: the engine, or a test's connection.
        self.bind: AsyncEngine | AsyncConnection | None = sessionmaker.kw.get("bind")

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessionmaker()
        return self._session

    def in_transaction(self) -> bool:
        return self._session is not None and self._session.in_transaction()

    def begin_nested(self) -> AsyncSessionTransaction:
        """A savepoint in the session's transaction (which this begins if need be)."""
        return self.session.begin_nested()

    def once_committed(self, effect: Callable[[], None]) -> None:
        """Run `effect` once what this unit of work wrote is committed, never if it is rolled
        back: an in-process effect of a write (the authenticator's knowing that tokens exist)
        must not outlive the write undone."""
        if self._committed_effects is None:
            self._committed_effects = []
        self._committed_effects.append(effect)

    async def commit(self) -> None:
        """Commit the transaction, if one was begun; then the effects waiting for it."""
        if self.in_transaction():
            await self.session.commit()
        effects, self._committed_effects = self._committed_effects, None
        for effect in effects or ():
            effect()

    async def rollback(self) -> None:
        """Roll the transaction back, if one was begun; the effects waiting for a commit go."""
        self._committed_effects = None
        if self.in_transaction():
            await self.session.rollback()

    async def abandon(self) -> None:
        """Roll back work that only read. Its connection may be gone (the database gone once a
        stream's rows were read, a COPY cancelled by the server's ending): then there is
        nothing to undo, and the connection leaves the pool."""
        try:
            await self.rollback()
        except DBAPIError:
            await self.session.invalidate()


@asynccontextmanager
async def session_scope(
    sessionmaker: SessionMaker, *, begin: bool = True
) -> AsyncIterator[UnitOfWork]:
    """One transaction: committed when the block ends normally, rolled back on any exception.

    begin=False (a request's unit of work) begins it only when a statement needs one: a lone
    hot-path statement then runs on its own, in autocommit, at the cost of one round trip
    (db.driver.fetch_row), and no session is made. The first ORM statement begins the
    transaction and every later statement joins it; a use case that needs several statements to
    stand or fall together begins it itself first (`await work.session.begin()`).
    """
    work = UnitOfWork(sessionmaker)
    if begin:
        await work.session.begin()
    # Ending the transaction returns its connection to the pool; a session that was never made,
    # or never began one, holds nothing, so there is no close() to pay for.
    try:
        yield work
    except BaseException:
        await work.rollback()
        raise
    await work.commit()


class Repository:
    """What a repository runs its statements in: a unit of work, whose session it makes only
    when a statement needs one (db.driver's fetch_row and fetch_all need none outside a
    transaction)."""

    def __init__(self, work: UnitOfWork) -> None:
        self.work = work

    @property
    def session(self) -> AsyncSession:
        return self.work.session
