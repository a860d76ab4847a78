"""What every `devreg` command shares: settings, the database, errors and output."""

import asyncio
import json
import logging
import signal
import sys
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from types import FrameType, MappingProxyType
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from alembic.util import CommandError
from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from devreg.cli.output import STDOUT, as_written, console, stdout, write_json
from devreg.config import EnvFileError, Settings, get_settings
from devreg.db import migrations
from devreg.db.embedded import resolve_database_url
from devreg.db.programs import EmbeddedPostgresError
from devreg.db.rendering import Rendered
from devreg.db.server import DatabaseConnectError, InvalidDatabaseUrl, check_connection
from devreg.db.session import UnitOfWork, create_engine, create_sessionmaker, session_scope
from devreg.errors import (
    DatabaseNotMigrated,
    DatabaseOutage,
    DatabaseOutOfResources,
    DatabaseRefusal,
    DevregError,
    InvalidParameter,
    database_problem,
    sqlstate_problem,
)
from devreg.logs import visible
from devreg.pagination import PAGE_LIMIT_MAX, Page, PageResult, page_json
from devreg.schemas import Duration, Id, is_a_number, written_as_a_span

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Limit = Annotated[int, typer.Option(min=1, max=PAGE_LIMIT_MAX, help="Rows per page.")]
Cursor = Annotated[str | None, typer.Option(help="next_cursor printed by the previous page.")]
_ID: TypeAdapter[int] = TypeAdapter(Id)


def parse_id(text: str) -> int:
    """An id given as an argument or option, read as the API reads one (schemas.Id): typer's
    int took `1_0`, `+10` and ` 10` for 10, so that a typo deleted another device."""
    try:
        return _ID.validate_python(text)
    except ValidationError as exc:
        raise ValueError(_message(exc.errors()[0])) from None


DeviceIdArgument = Annotated[int, typer.Argument(parser=parse_id, help="The device's id.")]


def _message(error: ErrorDetails) -> str:
    """A validation error's message without Pydantic's "Value error, " before a validator's."""
    return error["msg"].removeprefix("Value error, ")


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with `message` as one line on stderr."""
    print_error(message)
    raise typer.Exit(code)


def print_error(message: str) -> None:
    """`message` as one line: what it names as given (a file's name, a field's from a file) has
    its control characters and line breaks escaped (logs.visible), never obeyed by a terminal."""
    print(f"devreg: {visible(message)}", file=sys.stderr)


def load_settings() -> Settings:
    try:
        return get_settings()
    except EnvFileError as exc:
        fail(str(exc), code=2)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A rule across settings (no one setting's) names them in its message.
        name = f" {str(first['loc'][0]).upper()}" if first["loc"] else ""
        fail(f"invalid setting{name}: {_message(first)}", code=2)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (`timeout`, systemd, a closed terminal) while a command works: unwound
    as Ctrl-C is, so that what the command leaves on its way out (an export's staged file, its
    transaction) is cleaned up; then the exit status says which signal it was (128 + its
    number). `devreg serve`'s uvicorn has handlers of its own, which drain requests."""

    def __init__(self, signal_number: int) -> None:
        self.signal_number = signal_number


_ENDINGS = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signal_number: int, _frame: FrameType | None) -> None:
    raise Terminated(signal_number)


def _run_until_ended(operation: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(operation), ended by SIGTERM or SIGHUP as asyncio ends it on Ctrl-C: while
    the loop runs, the signal cancels the operation, which cleans up at its next await, and
    Terminated is raised once the loop is done; before and after the loop, Terminated is
    raised where the signal lands. Raised by the signal handler inside whatever the loop was
    doing, it could leave a future never resolved (the command hung, its transaction open) or
    a connection taken for broken (a traceback). A signal this process was started ignoring
    stays ignored: `nohup devreg import ...` outlives its terminal."""
    endings = [ending for ending in _ENDINGS if signal.getsignal(ending) is not signal.SIG_IGN]
    previous = {ending: signal.signal(ending, _terminate) for ending in endings}
    ended_by: list[int] = []

    async def until_ended() -> T:
        loop = asyncio.get_running_loop()
        operation_task = asyncio.current_task()
        assert operation_task is not None

        def end(signal_number: int) -> None:
            ended_by.append(signal_number)
            operation_task.cancel()

        for ending in endings:
            loop.add_signal_handler(ending, end, ending)
        try:
            return await operation
        finally:
            for ending in endings:
                loop.remove_signal_handler(ending)
                signal.signal(ending, _terminate)  # for the loop's own shutdown

    try:
        result = asyncio.run(until_ended())
    except BaseException:
        if ended_by:  # whatever the cancellation became on its way out
            raise Terminated(ended_by[0]) from None
        raise
    finally:
        for ending, handler in previous.items():
            signal.signal(ending, handler)
    if ended_by:  # the operation finished before the cancellation reached it
        raise Terminated(ended_by[0])
    return result


def run_async(operation: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning the failures a user can act on into one line on stderr."""
    try:
        return _run_until_ended(operation)
    except InvalidDatabaseUrl as exc:
        fail(str(exc), code=2)
    except (DatabaseConnectError, EmbeddedPostgresError) as exc:
        fail(str(exc))
    except InvalidParameter as exc:
        fail(exc.detail, code=2)
    except DevregError as exc:
        cause = exc.__cause__
        fail(_meaning(exc, cause) if isinstance(cause, asyncpg.PostgresError) else exc.detail)
    except DBAPIError as exc:
        # What it means, as the API says it; else PostgreSQL's own message, without the
        # statement or its parameters.
        fail(_meaning(database_problem(exc), exc.orig))
    except asyncpg.PostgresError as exc:  # from COPY, which runs on asyncpg itself
        fail(_meaning(sqlstate_problem(str(exc.sqlstate)), exc))
    except asyncpg.InterfaceError:
        fail("the connection to PostgreSQL was lost")
    except (migrations.DatabaseFromANewerRelease, migrations.AnotherApplicationsDatabase) as exc:
        fail(str(exc))
    except CommandError as exc:  # Alembic's: an unknown revision, say
        fail(f"migrations: {exc}", code=2)


def _meaning(problem: DevregError | None, error: BaseException | None) -> str:
    if isinstance(problem, DatabaseNotMigrated):  # with MIGRATE_ON_START=false
        return f"the database is not migrated ({error}): run devreg db upgrade"
    # PostgreSQL's words name cluster files, or its internals (a connection terminated).
    if isinstance(problem, DatabaseOutOfResources | DatabaseOutage):
        return problem.detail
    if isinstance(problem, DatabaseRefusal):  # PostgreSQL's own words say which
        return f"database error: {error}"
    if problem is not None:
        return problem.detail
    return f"database error: {error}"


async def with_engine(settings: Settings, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    url = await resolve_database_url(settings)
    await check_connection(url, connect_timeout=settings.db_connect_timeout)
    engine = create_engine(url, settings)
    try:
        with _statements_echoed(settings.db_echo):
            return await use(engine)
    finally:
        await engine.dispose()


@contextmanager
def _statements_echoed(echo: bool) -> Iterator[None]:
    """With DB_ECHO, each SQL statement the command runs as a line on stderr (its values hidden,
    as in the server's log), where it stays out of the command's own output."""
    if not echo:
        yield
        return
    statements = logging.getLogger("sqlalchemy.engine")
    handler = logging.StreamHandler(sys.stderr)
    level = statements.level
    statements.addHandler(handler)
    statements.setLevel(logging.INFO)
    try:
        yield
    finally:
        statements.removeHandler(handler)
        statements.setLevel(level)


def run_in_transaction(operation: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """Run `operation` in one transaction on a migrated database."""
    settings = load_settings()

    async def use(engine: AsyncEngine) -> T:
        if settings.migrate_on_start:
            await migrations.upgrade(engine)
        async with session_scope(create_sessionmaker(engine)) as work:
            return await operation(work)

    return run_async(with_engine(settings, use))


_UNIT_FORMS = "a whole number with its unit (90d, 12h, 30m, 45s), HH:MM:SS or ISO 8601"


def _with_unit(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    # A number of no length or less is refused as such by Duration: no unit would mend it.
    if is_a_number(value) and float(value) > 0:
        number = value.strip()
        if number.isdigit():
            raise ValueError(f"needs a unit: {number}d, {number}h, {number}m or {number}s")
        raise ValueError(f"needs {_UNIT_FORMS} (PT1.5H)")
    # Duration's own word for text in no form lists a number of seconds, which an option is not.
    if not is_a_number(value) and not written_as_a_span(value):
        raise ValueError(f"must be {_UNIT_FORMS} (P90D)")
    return value


DurationWithUnit = Annotated[Duration, BeforeValidator(_with_unit)]
"""A Duration typed as an option: a number alone, which Duration takes for seconds, is refused:
`--older-than 90` meant 90 days far more often than 90 seconds, and pruned the change log."""

_NO_OPTIONS: Mapping[str, str] = MappingProxyType({})


def validated(
    schema: type[ModelT], options: Mapping[str, str] = _NO_OPTIONS, /, **fields: Any
) -> ModelT:
    """`fields` (the options given) as `schema`; else exit 2 naming each bad option as typed:
    `--owner-id` for owner_id, or the name `options` gives a field (`{"tags": "--tag"}`)."""
    try:
        return schema.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        messages = "; ".join(
            f"{_option(error['loc'], options)}: {_message(error)}" for error in exc.errors()
        )
        fail(messages, code=2)


def _option(location: tuple[int | str, ...], options: Mapping[str, str]) -> str:
    if not location:
        return "options"
    field, *within = location
    option = options.get(str(field), f"--{str(field).replace('_', '-')}")
    return " ".join([option, *(f"[{part}]" for part in within)])


# Wide enough for any row: a table written to a pipe or file is read by programs (grep, awk),
# which a value folded across lines at Rich's default 80 columns would defeat.
_UNFOLDED_WIDTH = 100_000


def _print_table(table: Table) -> None:
    # Laid out to the terminal's width: stdout's lines are otherwise never folded (cli.output).
    # Asked of stdout itself, not Rich, which FORCE_COLOR and TTY_COMPATIBLE tell a pipe is a
    # terminal (they are meant for colour in a CI's log, which colour still follows).
    (stdout if STDOUT.isatty() else console(width=_UNFOLDED_WIDTH)).print(table, soft_wrap=False)


def show(item: BaseModel, *, as_json: bool) -> None:
    if as_json:
        write_json(item.model_dump_json())
        return
    table = Table(show_header=False, box=None)
    for name, value in item.model_dump(mode="json").items():
        table.add_row(name, _cell(value))
    _print_table(table)


def show_page(
    page_model: type[Page[Any]],
    result: PageResult[Rendered],
    columns: Sequence[str],
    *,
    as_json: bool,
    unbroken: Collection[str] = (),
) -> None:
    """A page from a service, as a table of `columns` (and the next cursor) or as JSON. The
    `unbroken` columns' values are never folded across lines."""
    if as_json:
        write_json(page_json(page_model, result).decode())
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in unbroken)
    for item in result.items:
        row = json.loads(item.json)
        table.add_row(*(_cell(row[column]) for column in columns))
    _print_table(table)
    if result.next_cursor:
        # The cursor holds the filters it was made for: another command's is refused.
        hint = f"next page: the same command with --cursor {result.next_cursor}"
        stdout.print(hint, markup=False, highlight=False)


def _cell(value: Any) -> Text:
    """A value as it is: stored text is never read as Rich's markup ("[b]", "[/]"), nor its
    control characters by the terminal (logs.visible), and a character stdout's encoding lacks
    is its escape (output.as_written)."""
    if value is None:
        return Text()
    if isinstance(value, list | dict):
        return Text(as_written(visible(json.dumps(value, ensure_ascii=False))))
    return Text(as_written(visible(str(value))))
