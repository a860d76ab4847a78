"""create_app(): the lifespan (database, migrations), the routers and the error handlers."""

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from types import FrameType
from typing import Any, TypedDict

from alembic.util import CommandError
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.routing import BaseRoute, Mount
from starlette.types import Message, Receive, Scope, Send

from devreg import __version__
from devreg.admission import Admission
from devreg.auth.authenticator import Authenticator, UnsafeBinding, check_binding
from devreg.auth.guard import SECURITY_SCHEMES
from devreg.auth.routes import router as tokens_router
from devreg.body_limit import BodyLimits
from devreg.changes.routes import router as changes_router
from devreg.compat.routes import router as tutorial_router
from devreg.compat.routes import with_tutorial_slashes
from devreg.config import Settings, get_settings
from devreg.cors import ProblemCORSMiddleware, cors_options
from devreg.db import migrations
from devreg.db.embedded import describe_database_in_use, embedded_cluster, resolve_database_url
from devreg.db.programs import EmbeddedPostgresError
from devreg.db.server import (
    DatabaseConnectError,
    DatabaseUnreachable,
    check_connection,
    folds_case_beyond_ascii,
    gone_away,
    no_room_for_the_pool,
    server_encoding,
    server_refusal,
)
from devreg.db.session import (
    SessionMaker,
    create_engine,
    create_sessionmaker,
    open_pool,
)
from devreg.db.watcher import keep_running
from devreg.devices.routes import router as devices_router
from devreg.edge import EdgeMiddleware
from devreg.health.routes import HEALTH_PATHS
from devreg.health.routes import router as health_router
from devreg.idempotency import service as idempotency
from devreg.idempotency.header import IdempotentReplay, replay
from devreg.problems import document_problems, register_error_handlers
from devreg.schemas import BIGINT_MAX
from devreg.users.routes import router as users_router

logger = logging.getLogger("devreg")

_ASCII_CASE_ONLY = (
    "the database folds only A-Z to lower case (its LC_CTYPE is C): name__ic, name__isw and "
    "emails match other letters in their own case only (ÉVE@x.org and éve@x.org are two users); "
    "create it with a UTF-8 LC_CTYPE, such as C.UTF-8 or en_US.UTF-8"
)

# SQL_ASCII stores the bytes it is sent, any UTF-8 among them, unchecked.
_ENCODINGS_OF_ALL_UNICODE = frozenset({"UTF8", "SQL_ASCII"})
_LACKS_CHARACTERS = (
    "the database's encoding is %s, not UTF8: text with a character %s lacks (a name with Ž "
    "or an emoji, say) is refused with a 422; create the database with ENCODING 'UTF8'"
)

_BEHIND = (
    "MIGRATE_ON_START=false, and the database is at revision %s, behind this release's %s: "
    "/readyz answers 503, as do requests its schema cannot serve, until devreg db upgrade"
)

_POOL_DOES_NOT_FIT = (
    "%s: each worker opens POOL_SIZE + MAX_OVERFLOW connections (%d + %d); make room for "
    "them all (max_connections, the role's CONNECTION LIMIT), or ask for fewer"
)

API_PREFIX = "/api/v1"


_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})


def _exact_bounds(node: Any) -> Any:
    """The OpenAPI document with its integer bounds as integers: FastAPI's model of a schema
    holds them as floats, in which BIGINT_MAX is 2**63, a value the API refuses."""
    if isinstance(node, list):
        return [_exact_bounds(each) for each in node]
    if not isinstance(node, dict):
        return node
    exact = {key: _exact_bounds(value) for key, value in node.items()}
    for key in _BOUNDS & exact.keys():
        bound = exact[key]
        if isinstance(bound, float) and bound.is_integer():
            exact[key] = BIGINT_MAX if bound == float(BIGINT_MAX) else int(bound)
    return exact


class State(TypedDict):
    engine: AsyncEngine
    sessionmaker: SessionMaker
    admission: Admission
    exports: Admission


_ROUTE_OPTIONS = (
    "response_model", "status_code", "tags", "dependencies", "summary", "description",
    "response_description", "responses", "deprecated", "methods", "operation_id",
    "response_model_include", "response_model_exclude", "response_model_by_alias",
    "response_model_exclude_unset", "response_model_exclude_defaults",
    "response_model_exclude_none", "include_in_schema", "response_class", "name", "callbacks",
    "openapi_extra", "generate_unique_id_function", "strict_content_type", "max_body_size",
)  # fmt: skip


def _served_whole(route: BaseRoute) -> BaseRoute:
    """The docs' static files served whole, a Range header ignored (RFC 9110, 14.2, allows it):
    Starlette answered a bad one with a plain-text 400 or 416, no problem+json. They are a few
    files a browser loads whole anyway, and are not said to be served in ranges
    (Accept-Ranges)."""
    if isinstance(route, Mount):
        files = route.app

        async def whole(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]

            async def send_without_ranges(message: Message) -> None:
                if message["type"] == "http.response.start":
                    kept = [h for h in message["headers"] if h[0] != b"accept-ranges"]
                    message = {**message, "headers": kept}
                await send(message)

            await files({**scope, "headers": headers}, receive, send_without_ranges)

        route.app = whole
    return route


def _operation_id(route: APIRoute) -> str:
    """The endpoint's name (`list_devices`), which clients generated from the schema name their
    functions after: FastAPI's default adds the path and method
    (`list_devices_api_v1_devices_get`)."""
    return route.name


def include_flat(app: FastAPI, router: APIRouter, *, prefix: str) -> None:
    """app.include_router(router, prefix=prefix), the router's routes added as the app's own.

    FastAPI 0.165 keeps an included router as one route and matches a request against the
    router's routes twice (once to find the router, once inside it): about 8% of a GET's CPU.
    Each route keeps what it and its router declare (tags, responses, dependencies, its route
    class), and app.dependency_overrides reaches it as usual."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"include_flat takes path operations only, not {route!r}")
        options = {option: getattr(route, option) for option in _ROUTE_OPTIONS}
        app.router.add_api_route(
            prefix + route.path, route.endpoint, route_class_override=type(route), **options
        )


# How often expired Idempotency-Keys are deleted while the app runs: every key lifetime, but
# at least every hour and at most every second.
_SWEEP_INTERVAL_MAX = timedelta(hours=1)
_SWEEP_INTERVAL_MIN = timedelta(seconds=1)


async def _sweep_expired_keys(
    sessionmaker: async_sessionmaker[AsyncSession], *, lifetime: timedelta
) -> None:
    """Delete expired Idempotency-Keys now and every so often (each worker): every keyed write
    adds one, and an expired key is never asked for again."""
    interval = max(min(lifetime, _SWEEP_INTERVAL_MAX), _SWEEP_INTERVAL_MIN).total_seconds()
    while True:
        try:
            await idempotency.forget_all_expired(sessionmaker, lifetime=lifetime)
        except (SQLAlchemyError, OSError) as exc:  # the database away, the pool busy: next time
            logger.warning(
                "expired idempotency keys not deleted", extra={"error_type": type(exc).__name__}
            )
        await asyncio.sleep(interval)


def _said_if_failed(chore: "asyncio.Task[None]") -> None:
    """A background chore that ends by an error it does not expect (a bug) is logged as it
    ends, not left to end silently while the server serves on without it."""
    if not chore.cancelled() and (error := chore.exception()) is not None:
        logger.error("background task failed", extra={"error_type": type(error).__name__})


async def _prepare_database(engine: AsyncEngine, settings: Settings) -> None:
    """Migrated (unless MIGRATE_ON_START=false: then a warning if it is behind), the pool's
    connections opened, and a warning if `lower()` folds ASCII alone, or the database's
    encoding lacks characters."""
    if settings.migrate_on_start:
        try:
            await migrations.upgrade(engine)
        except CommandError as exc:  # say, the database at a newer release's revision
            logger.critical("migrations: %s", exc)  # the one line that says what to fix
            raise
    else:
        revision = await migrations.current_revision(engine)
        if migrations.is_behind(revision):
            logger.warning(_BEHIND, revision or "none", migrations.head_revision())
    await open_pool(engine)
    if await folds_case_beyond_ascii(engine) is False:
        logger.warning(_ASCII_CASE_ONLY)
    encoding = await server_encoding(engine)
    if encoding not in _ENCODINGS_OF_ALL_UNICODE:
        logger.warning(_LACKS_CHARACTERS, encoding, encoding)


# Those uvicorn stops on (uvicorn.server.HANDLED_SIGNALS).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _unless_stopped(preparation: Coroutine[Any, Any, None]) -> bool:
    """Run `preparation`; False when a signal that stops the server cut it short. uvicorn's
    handlers only mark the server as stopping, which it looks at once start-up is over: a
    start-up waiting for another's migration (or running a long one) went on through SIGTERM
    and Ctrl-C, twice too, for as long as that took."""
    preparing = asyncio.ensure_future(preparation)
    loop = asyncio.get_running_loop()
    stopped_by: list[int] = []
    uvicorns: dict[int, Any] = {}

    def stop(number: int, frame: FrameType | None) -> None:
        uvicorns[number](number, frame)  # the server stops once start-up is over
        stopped_by.append(number)
        loop.call_soon_threadsafe(preparing.cancel)

    if threading.current_thread() is threading.main_thread():  # where signals are handled
        for ending in _STOP_SIGNALS:
            if callable(handler := signal.getsignal(ending)):
                uvicorns[ending] = handler
                signal.signal(ending, stop)
    try:
        await preparing
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not stopped_by or (current is not None and current.cancelling()):
            raise
        logger.info("stopped while starting: the database's migrations were not waited for")
        return False
    finally:
        for number, uvicorns_own in uvicorns.items():
            signal.signal(number, uvicorns_own)
    return True


def _say_why_it_failed(exc: Exception, url: URL, settings: Settings) -> None:
    """Log what a failed preparation of the database means, when the error itself would be
    logged as its type alone (logs.py): a pool the server has no room for, or what PostgreSQL
    refused, in its words (as the CLI says it)."""
    if (crowded := no_room_for_the_pool(exc, url)) is not None:
        logger.critical(_POOL_DOES_NOT_FIT, crowded, settings.pool_size, settings.max_overflow)
    elif (refused := server_refusal(exc)) is not None:
        logger.critical("database error: %s", refused)


def create_supervised_app() -> FastAPI:
    """create_app() for a worker of several (`devreg serve --workers N`), which leaves SIGHUP to
    its supervisor: that replaces the workers one by one, each stopped with SIGTERM once its
    requests are done. A SIGHUP sent to the whole process group (a terminal closed) ended every
    worker at once, the requests in flight answered with nothing."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_with_the_supervisor()
    return create_app()


# prctl(2)'s option that has the kernel send a signal when the process's parent ends.
_PR_SET_PDEATHSIG = 1


def _stop_with_the_supervisor() -> None:
    """SIGTERM (a stop that lets the requests in progress finish) once the supervisor has ended:
    killed (SIGKILL, or by the kernel short of memory), it left its workers serving alone for
    ever, holding the port, which a new `devreg serve` then found in use."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    supervisor = multiprocessing.parent_process()
    if supervisor is not None and os.getppid() != supervisor.pid:  # ended before that
        os.kill(os.getpid(), signal.SIGTERM)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        reachable = True
        try:
            check_binding(settings)
            url = await resolve_database_url(settings)
            logger.info("database: %s", describe_database_in_use(settings, url))
            await check_connection(url, connect_timeout=settings.db_connect_timeout)
        except DatabaseUnreachable as exc:
            # `devreg serve` found it before starting this worker: it is down for a while (a
            # restart, a failover) as this worker replaces one that ended. Ending this one too
            # would end the server (uvicorn stops all on a worker that cannot start).
            logger.warning("%s: serving 503s until it answers", exc)
            reachable = False
        except (UnsafeBinding, DatabaseConnectError, EmbeddedPostgresError) as exc:
            logger.critical(str(exc))  # the one line that says what to fix
            raise
        engine = create_engine(url, settings)
        try:
            stopping = False
            if reachable:
                try:
                    stopping = not await _unless_stopped(_prepare_database(engine, settings))
                except Exception as exc:
                    # Gone since the check (a second worker starting as the database restarts).
                    reason = gone_away(exc, url)
                    if reason is None:
                        _say_why_it_failed(exc, url, settings)
                        raise
                    logger.warning("%s: serving 503s until it answers", reason)
            sessionmaker = create_sessionmaker(engine)
            chores: list[Coroutine[Any, Any, None]] = []
            if not stopping:  # else uvicorn goes from start-up straight to its shutdown
                lifetime = settings.idempotency_key_lifetime
                chores.append(_sweep_expired_keys(sessionmaker, lifetime=lifetime))
                if settings.uses_embedded_cluster:
                    chores.append(keep_running(embedded_cluster(settings)))
            background = [asyncio.create_task(chore) for chore in chores]
            for task in background:
                task.add_done_callback(_said_if_failed)
            # What start-up built (modules, routes, schemas, the pool) lives as long as the
            # process: keep it out of the garbage collector's full passes, which would otherwise
            # walk all of it every few hundred requests.
            gc.collect()
            gc.freeze()
            admission = Admission(settings.max_requests_in_progress, timeout=settings.pool_timeout)
            # An export waits for no turn: it would wait holding one of `admission`'s.
            exports = Admission(settings.exports_at_once, timeout=0)
            try:
                yield {
                    "engine": engine,
                    "sessionmaker": sessionmaker,
                    "admission": admission,
                    "exports": exports,
                }
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        finally:
            await engine.dispose()

    app = FastAPIOffline(
        title="devreg",
        version=__version__,
        summary="A device registry: users own devices; create, find, update and retire them.",
        lifespan=lifespan,
        telemetry=None if settings.telemetry else _NO_TELEMETRY,
        generate_unique_id_function=_operation_id,
    )
    # `/devices/` is a 404 like any unknown path: Starlette's redirect to `/devices` came before
    # authentication, was no problem+json, and wrote the request's Host header into Location.
    # Only the tutorials' paths are redirected, as their apps did.
    app.router.redirect_slashes = False
    app.router.default = with_tutorial_slashes(app.router.default)
    app.state.settings = settings
    app.state.authenticator = Authenticator(
        settings.auth, cache_ttl=settings.auth_cache_ttl, trusted_origins=settings.cors_origins
    )

    # Busiest first: a request is matched against the routes in order, at about 10,000
    # instructions for each route it passes over. The documentation's routes, which FastAPI
    # added first, go behind the API's.
    documentation = [_served_whole(route) for route in app.router.routes]
    app.router.routes.clear()
    for router in (devices_router, users_router, tokens_router, changes_router):
        include_flat(app, router, prefix=API_PREFIX)
    app.router.routes.extend(documentation)
    app.include_router(health_router)
    app.include_router(tutorial_router)

    register_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(_exact_bounds(FastAPI.openapi(app)))
            app.openapi_schema["components"]["securitySchemes"] = SECURITY_SCHEMES
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(IdempotentReplay, replay)
    body_limits = BodyLimits(
        default=settings.max_body_size,
        limits={f"{API_PREFIX}/devices/bulk": settings.max_bulk_body_size},
        timeout=settings.body_timeout,
    )
    # The edge is outermost: every answer, a CORS preflight's too, has its security headers,
    # request id and log line; it passes its own answers (413, 503, ...) through CORS itself.
    cors = cors_options(settings)
    if cors is not None:
        app.add_middleware(ProblemCORSMiddleware, **cors)
    app.add_middleware(
        EdgeMiddleware, body_limits=body_limits, always_admitted=frozenset(HEALTH_PATHS), cors=cors
    )
    return app
