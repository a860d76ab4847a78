"""`devreg serve` and `devreg db ...`."""

import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
from alembic import command as alembic_command
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from devreg.auth.authenticator import UnsafeBinding, refuse_unsafe_binding
from devreg.cli.common import (
    fail,
    load_settings,
    run_async,
    with_engine,
)
from devreg.cli.output import stdout, stdout_for_a_log, write_line
from devreg.db import migrations
from devreg.db.embedded import embedded_cluster
from devreg.db.programs import EmbeddedPostgresError
from devreg.logs import logging_config
from devreg.protocol import BoundedHeadProtocol

db_app = typer.Typer(help="Migrations and the embedded PostgreSQL.", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [HOST].")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port [PORT].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="Processes [WORKERS].")] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Serve the HTTP API (starting the embedded PostgreSQL when no database is configured)."""
    given = {name: value for name, value in (("host", host), ("port", port)) if value is not None}
    # The workers read their settings from the environment: they must see the same address.
    os.environ.update({name.upper(): str(value) for name, value in given.items()})
    settings = load_settings().model_copy(update=given)
    try:
        refuse_unsafe_binding(settings)  # the workers warn of AUTH=off, once logging is set up
    except UnsafeBinding as exc:
        fail(str(exc), code=2)
    if settings.uses_embedded_cluster and settings.port == settings.embedded_pg_port:
        # Free until the cluster starts on it: uvicorn then said only that it was in use.
        fail(
            f"PORT and EMBEDDED_PG_PORT are both {settings.port}: the embedded PostgreSQL "
            "listens on it; give them different ports",
            code=2,
        )
    _check_address(settings.host, settings.port)
    # Start the database and surface a bad URL or password as one line, before any worker runs.
    run_async(with_engine(settings, _nothing))
    stdout_for_a_log()
    options: dict[str, Any] = {
        "app": "devreg.app:create_app",
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": None if reload else (workers or settings.workers),
        "reload": reload,
        "log_config": logging_config(settings.log_level, echo_sql=settings.db_echo),
        "access_log": False,
        "server_header": False,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "root_path": settings.root_path,
        "http": BoundedHeadProtocol,
        # No route takes a WebSocket: an upgrade asked for is a request as any other.
        "ws": "none",
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    if (options["workers"] or 1) > 1:
        _supervise(uvicorn.Config(**{**options, "app": "devreg.app:create_supervised_app"}))
        return
    # One process: SIGHUP (a terminal closed, `systemctl reload`) drains the requests in
    # progress and stops, as SIGTERM does; by default it ended the server at once. Started
    # ignoring it (`nohup devreg serve`), it goes on ignoring it.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    uvicorn.run(**options)


# How long a worker just started may take to answer its supervisor's health check a first time.
_BOOT_TIMEOUT = 300

# How long a worker that replaces another (SIGHUP) may take to start: as long as the migrations
# it applies first take, in practice (one that fails to start ends the wait as it ends).
_REPLACEMENT_START_TIMEOUT = 24 * 3600


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, waiting for a worker that replaces another (SIGHUP) as long as its
    start-up takes: a new release's applies pending migrations first, or waits for another
    process applying them. uvicorn gave it 5 s (its health check's timeout), then killed it,
    amid a migration too, and kept the old workers: the new release never served. A stop signal
    still ends the wait at once.

    And waiting for a worker just started to answer its first health check: a thread of its
    own answers, once Python has loaded devreg, which on a slow or busy host took past the 5 s
    uvicorn gave it, and each worker was killed and started again, for ever. Once a worker has
    answered, 5 s is kept: a worker ending (its answering thread gone first) is not waited for
    longer."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._booted: set[int | None] = set()  # the workers (pids) that have answered once

    def keep_subprocess_alive(self) -> None:
        if all(map(self._booted_or_ended, self.processes)):
            super().keep_subprocess_alive()
        # else a signal came meanwhile: it is handled first, the check made next time round

    def _booted_or_ended(self, worker: Process) -> bool:
        """Wait until `worker` has answered a health check once, ended, or taken _BOOT_TIMEOUT
        (then uvicorn's check finds it hung); False if a signal comes first, or the server
        is stopping."""
        deadline = time.monotonic() + _BOOT_TIMEOUT
        while worker.pid not in self._booted and time.monotonic() < deadline:
            if not worker.process.is_alive():
                return True
            if self.signal_queue or self.should_exit.is_set():
                return False
            if worker.ping(timeout=1):
                self._booted.add(worker.pid)
        return True

    def restart_all(self) -> None:
        checked = self.config.timeout_worker_healthcheck
        previous = {ending: signal.getsignal(ending) for ending in (signal.SIGINT, signal.SIGTERM)}

        def stop(number: int, frame: FrameType | None) -> None:
            self.signal_queue.append(number)  # as uvicorn's own handler
            self.should_exit.set()  # which the wait for the replacement looks at

        self.config.timeout_worker_healthcheck = _REPLACEMENT_START_TIMEOUT
        for ending in previous:
            signal.signal(ending, stop)
        try:
            super().restart_all()
        finally:
            self.config.timeout_worker_healthcheck = checked
            for ending, handler in previous.items():
                signal.signal(ending, handler)


def _supervise(config: uvicorn.Config) -> None:
    """Workers started and kept running by uvicorn's supervisor (SIGHUP restarts them one by
    one). A worker that cannot start stops them all, as one alone does, with its exit status:
    uvicorn's supervisor ended with 0, as if asked to stop."""
    supervisor = _Supervisor(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        fail("a worker could not start (its log says why); stopped", code=STARTUP_FAILURE)


def _check_address(host: str, port: int) -> None:
    """Fail with one line if the address cannot be listened on (in use, not this machine's, a
    privileged port), before the database starts: uvicorn would log it and exit with 3. Bound
    as uvicorn binds it: IPv6 only for an address written with colons."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}")


async def _nothing(engine: AsyncEngine) -> None:
    return None


# Alembic's relative revisions (`-1`, `-2`) are revisions, not unknown options.
_RELATIVE_REVISIONS = {"ignore_unknown_options": True}


@db_app.command("upgrade", context_settings=_RELATIVE_REVISIONS)
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    reached = run_async(with_engine(load_settings(), _migrated(migrations.upgrade, revision)))
    stdout.print(f"database at revision {reached or 'base (empty)'}")


@db_app.command("downgrade", context_settings=_RELATIVE_REVISIONS)
def db_downgrade(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Undo migrations down to REVISION (default: one step; `base` for an empty schema)."""
    reached = run_async(with_engine(load_settings(), _migrated(migrations.downgrade, revision)))
    stdout.print(f"database downgraded to {reached or 'base (empty)'}")


def _migrated(
    migrate: Callable[[AsyncEngine, str], Awaitable[None]], revision: str
) -> Callable[[AsyncEngine], Awaitable[str | None]]:
    """Run `migrate` to `revision`, then say which revision the database is at."""

    async def run(engine: AsyncEngine) -> str | None:
        try:
            await migrate(engine, revision)
        except migrations.DatabaseFromANewerRelease as exc:
            # MIGRATE_ON_START is nothing to a migration asked for.
            raise migrations.DatabaseFromANewerRelease(
                exc.revision, "migrate it with that release's devreg db"
            ) from None
        return await migrations.current_revision(engine)

    return run


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does.")],
    autogenerate: Annotated[
        bool, typer.Option(help="Diff the models against the database.")
    ] = True,
) -> None:
    """Write a new migration file under migrations/versions."""
    run_async(with_engine(load_settings(), _nothing))  # else Alembic's traceback says it
    try:
        alembic_command.revision(
            migrations.alembic_config(), message=message, autogenerate=autogenerate
        )
    except CommandError as exc:  # the database not at the newest revision, say
        fail(f"migrations: {exc}", code=2)


@db_app.command("status")
def db_status() -> None:
    """Show the database's migration revision and the newest one."""
    settings = load_settings()
    current, head = run_async(with_engine(settings, _revisions))
    if current == head:
        state = "up to date"
    elif migrations.is_behind(current):
        state = "migrations pending"
    elif run_async(with_engine(settings, migrations.serves_this_release)):
        state = "unknown to this release: a newer one's?"
    else:
        state = "unknown to this release, and no devices table: another application's"
    stdout.print(f"current: {current or 'empty'}  head: {head}  ({state})")


async def _revisions(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """The database's revision and the newest (where a missing migration says so in one line)."""
    return await migrations.current_revision(engine), migrations.head_revision()


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL cluster (data is kept)."""
    try:
        cluster = embedded_cluster(load_settings())
        if cluster.stop():
            stdout.print("embedded PostgreSQL stopped")
        elif cluster.exists():
            stdout.print("embedded PostgreSQL is not running")
        else:
            write_line(f"no embedded PostgreSQL cluster in {cluster.data_dir}: nothing to stop")
    except EmbeddedPostgresError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(db_app, name="db")
