"""`devreg`: serve the API, manage the database, and work with users and devices.

Data commands call the same services as the HTTP API, inside the same kind of transaction.
"""

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvicorn
from alembic import command as alembic_command
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from devreg.config import Settings, get_settings
from devreg.db import migrations
from devreg.db.embedded import EmbeddedPostgresError, embedded_cluster, resolve_database_url
from devreg.db.server import DatabaseConnectError, check_connection
from devreg.db.session import create_engine, create_sessionmaker, session_scope
from devreg.devices import service as devices_service
from devreg.devices.filters import DeviceFilter
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import DeviceCreate, DevicePage, DeviceRead
from devreg.errors import DevregError, InvalidParameter
from devreg.logs import logging_config
from devreg.pagination import PAGE_LIMIT_DEFAULT, PageRequest
from devreg.schemas import BIGINT_MAX
from devreg.users import service as users_service
from devreg.users.filters import UserFilter
from devreg.users.schemas import UserCreate, UserPage, UserRead

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Migrations and the embedded PostgreSQL.", no_args_is_help=True)
users_app = typer.Typer(help="Create and list users.", no_args_is_help=True)
devices_app = typer.Typer(help="Create, show, list and delete devices.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(devices_app, name="devices")

stdout = Console()
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Limit = Annotated[int, typer.Option(min=1, max=1000, help="Rows per page.")]
Cursor = Annotated[str | None, typer.Option(help="next_cursor printed by the previous page.")]
DeviceIdArgument = Annotated[int, typer.Argument(min=1, max=BIGINT_MAX, help="The device's id.")]


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"devreg: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        fail(f"invalid setting {name}: {first['msg']}", code=2)


def run_async(operation: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning the failures a user can act on into one line on stderr."""
    try:
        return asyncio.run(operation)
    except (DatabaseConnectError, EmbeddedPostgresError) as exc:
        fail(str(exc))
    except InvalidParameter as exc:
        fail(exc.detail, code=2)
    except DevregError as exc:
        fail(exc.detail)


async def _with_engine(settings: Settings, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    url = await resolve_database_url(settings)
    await check_connection(url, connect_timeout=settings.db_connect_timeout)
    engine = create_engine(url, settings)
    try:
        return await use(engine)
    finally:
        await engine.dispose()


def in_transaction(operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `operation` in one transaction on a migrated database."""
    settings = load_settings()

    async def use(engine: AsyncEngine) -> T:
        if settings.migrate_on_start:
            await migrations.upgrade(engine)
        async with session_scope(create_sessionmaker(engine)) as session:
            return await operation(session)

    return run_async(_with_engine(settings, use))


def validated(schema: type[BaseModel], **fields: Any) -> Any:
    try:
        return schema.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        messages = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        fail(messages, code=2)


def show(item: BaseModel, *, as_json: bool) -> None:
    if as_json:
        print(item.model_dump_json())
        return
    table = Table(show_header=False, box=None)
    for name, value in item.model_dump(mode="json").items():
        table.add_row(name, _cell(value))
    stdout.print(table)


def show_page(
    page: BaseModel, items: Sequence[BaseModel], columns: Sequence[str], *, as_json: bool
) -> None:
    if as_json:
        print(page.model_dump_json())
        return
    table = Table(*columns)
    for item in items:
        row = item.model_dump(mode="json")
        table.add_row(*(_cell(row[column]) for column in columns))
    stdout.print(table)
    next_cursor = getattr(page, "next_cursor", None)
    if next_cursor:
        stdout.print(f"next page: --cursor {next_cursor}", markup=False, highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [HOST].")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port [PORT].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="Processes [WORKERS].")] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Serve the HTTP API (starting the embedded PostgreSQL when no database is configured)."""
    settings = load_settings()
    # Start the database and surface a bad URL or password as one line, before any worker runs.
    run_async(_with_engine(settings, _nothing))
    uvicorn.run(
        "devreg.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=None if reload else (workers or settings.workers),
        reload=reload,
        log_config=logging_config(settings.log_level, echo_sql=settings.db_echo),
        access_log=False,
        server_header=False,
    )


async def _nothing(engine: AsyncEngine) -> None:
    return None


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    run_async(_with_engine(load_settings(), lambda engine: migrations.upgrade(engine, revision)))
    stdout.print(f"database at revision {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Undo migrations down to REVISION (default: one step; `base` for an empty schema)."""
    run_async(_with_engine(load_settings(), lambda engine: migrations.downgrade(engine, revision)))
    stdout.print(f"database downgraded to {revision}")


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does.")],
    autogenerate: Annotated[
        bool, typer.Option(help="Diff the models against the database.")
    ] = True,
) -> None:
    """Write a new migration file under migrations/versions."""
    load_settings()
    alembic_command.revision(
        migrations.alembic_config(), message=message, autogenerate=autogenerate
    )


@db_app.command("status")
def db_status() -> None:
    """Show the database's migration revision and the newest one."""
    current = run_async(_with_engine(load_settings(), migrations.current_revision))
    head = migrations.head_revision()
    state = "up to date" if current == head else "migrations pending"
    stdout.print(f"current: {current or 'empty'}  head: {head}  ({state})")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL cluster (data is kept)."""
    try:
        stopped = embedded_cluster(load_settings()).stop()
    except EmbeddedPostgresError as exc:
        fail(str(exc))
    stdout.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL is not running")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Option(help="The user's name.")],
    email: Annotated[str | None, typer.Option(help="Unique, case-insensitively.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a user."""
    data = validated(UserCreate, name=name, email=email)
    user = in_transaction(lambda session: users_service.register_user(session, data=data))
    show(UserRead.model_validate(user), as_json=as_json)


@users_app.command("list")
def users_list(
    limit: Limit = PAGE_LIMIT_DEFAULT, cursor: Cursor = None, as_json: JsonFlag = False
) -> None:
    """List users, a page at a time."""
    page = PageRequest(limit=limit, cursor=cursor)
    result = in_transaction(
        lambda session: users_service.list_users(session, filters=UserFilter(), page=page)
    )
    users = UserPage.model_validate(result)
    show_page(users, users.items, ("id", "name", "email"), as_json=as_json)


@devices_app.command("create")
def devices_create(
    name: Annotated[str, typer.Option(help="The device's name.")],
    serial_number: Annotated[str | None, typer.Option("--serial-number", "--serial")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    status: Annotated[DeviceStatus | None, typer.Option()] = None,
    owner_id: Annotated[int | None, typer.Option(help="The owning user's id.")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="Repeat for more tags.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a device."""
    data = validated(
        DeviceCreate,
        name=name,
        serial_number=serial_number,
        model=model,
        status=status,
        owner_id=owner_id,
        tags=tags,
    )
    device = in_transaction(lambda session: devices_service.register_device(session, data=data))
    show(DeviceRead.model_validate(device), as_json=as_json)


@devices_app.command("get")
def devices_get(device_id: DeviceIdArgument, as_json: JsonFlag = False) -> None:
    """Show one device."""
    device = in_transaction(lambda session: devices_service.get_device(session, device_id))
    show(DeviceRead.model_validate(device), as_json=as_json)


@devices_app.command("list")
def devices_list(
    limit: Limit = PAGE_LIMIT_DEFAULT, cursor: Cursor = None, as_json: JsonFlag = False
) -> None:
    """List devices, a page at a time."""
    page = PageRequest(limit=limit, cursor=cursor)
    result = in_transaction(
        lambda session: devices_service.list_devices(session, filters=DeviceFilter(), page=page)
    )
    devices = DevicePage.model_validate(result)
    show_page(
        devices,
        devices.items,
        ("id", "name", "serial_number", "model", "status", "owner_id"),
        as_json=as_json,
    )


@devices_app.command("delete")
def devices_delete(device_id: DeviceIdArgument) -> None:
    """Delete a device."""
    in_transaction(lambda session: devices_service.delete_device(session, device_id))
    stdout.print(f"device {device_id} deleted")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
