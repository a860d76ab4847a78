import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from asgi_correlation_id import correlation_id
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from devreg.app import create_app
from devreg.db.server import check_connection, ensure_database
from devreg.logs import JsonLineFormatter, log_request, logging_config, request_logger
from tests.support import (
    admin,
    api_client,
    devreg_environment,
    devreg_process,
    free_port,
    make_settings,
    running,
)


def format_record(message: str, *, exc_info: bool = False) -> dict[str, object]:
    formatter = JsonLineFormatter()
    try:
        raise RuntimeError("SELECT secret FROM users WHERE password='hunter2'")
    except RuntimeError:
        record = logging.LogRecord(
            "devreg.test",
            logging.ERROR,
            __file__,
            1,
            message,
            (),
            sys.exc_info() if exc_info else None,
        )
    return json.loads(formatter.format(record))  # type: ignore[no-any-return]


def test_exception_becomes_its_type_name() -> None:
    line = format_record("failed", exc_info=True)
    assert line["message"] == "failed"
    assert line["error_type"] == "RuntimeError"
    assert "hunter2" not in json.dumps(line)
    assert "Traceback" not in json.dumps(line)


def test_traceback_text_in_a_message_is_reduced_to_the_error_type() -> None:
    traceback_text = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "sqlalchemy.exc.ProgrammingError: (asyncpg.exceptions.Foo) SELECT password='hunter2'"
    )
    line = format_record(traceback_text)
    assert line["message"] == "error: ProgrammingError"


def test_a_start_up_failure_names_the_error_and_its_first_cause() -> None:
    """uvicorn logs a failed start-up's traceback as the message: SQLAlchemy's error, the
    driver's that caused it, and a link to SQLAlchemy's documentation last."""
    try:
        try:
            raise asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")
        except asyncpg.PostgresError as cause:
            raise DBAPIError("SELECT password FROM secrets", {}, cause) from cause
    except DBAPIError:
        traceback_text = traceback.format_exc()

    line = format_record(traceback_text)

    assert line["message"] == "error: DBAPIError (TooManyConnectionsError)"
    assert "SELECT" not in json.dumps(line)
    assert "too many clients" not in json.dumps(line)


def test_sql_is_logged_only_with_db_echo() -> None:
    quiet = logging_config("info")["loggers"]["sqlalchemy.engine"]["level"]
    echoing = logging_config("info", echo_sql=True)["loggers"]["sqlalchemy.engine"]["level"]
    assert (quiet, echoing) == ("WARNING", "INFO")


@contextmanager
def devreg_logging() -> Iterator[None]:
    """Logging as devreg configures it (to the stdout of the moment), then as it was."""
    config = logging_config("info")
    touched = [logging.getLogger(name) for name in ("", *config["loggers"])]
    saved = [(lg.handlers[:], lg.filters[:], lg.level, lg.propagate) for lg in touched]
    try:
        logging.config.dictConfig(config)
        yield
    finally:
        for logger, (handlers, filters, level, propagate) in zip(touched, saved, strict=True):
            logger.handlers[:], logger.filters[:] = handlers, filters
            logger.setLevel(level)
            logger.propagate = propagate


def test_uvicorns_error_for_a_response_broken_off_by_the_edge_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The edge logs why it broke a response off (test_http_guards); uvicorn's error for the
    same response, "returned without completing response", said nothing more, at ERROR."""
    with devreg_logging():
        logging.getLogger().addHandler(caplog.handler)
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.error("ASGI callable returned without completing response.")
        uvicorn_errors.error("Exception in ASGI application\n")

    assert [r.getMessage() for r in caplog.records] == ["Exception in ASGI application\n"]


async def test_a_request_asking_to_upgrade_is_served_without_warnings(
    committed_database_url: URL,
) -> None:
    """Each request with `Upgrade: websocket` (or `h2c`) made uvicorn log two warnings, one of
    them advice to install a WebSocket library: anyone could fill the log with them."""
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_process(DATABASE_URL=url) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            upgrades = [
                await client.get("/livez", headers={"Connection": "Upgrade", "Upgrade": protocol})
                for protocol in ("websocket", "h2c")
            ]
        log = server.log()

    assert [answer.status_code for answer in upgrades] == [200, 200]
    assert "upgrade" not in log.lower()
    assert "WebSocket" not in log


async def test_a_request_line_names_the_client_a_trusted_proxy_forwards_for(
    committed_database_url: URL,
) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_process(DATABASE_URL=url, FORWARDED_ALLOW_IPS="127.0.0.1") as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            await client.get("/livez", headers={"X-Request-ID": "direct"})
            forwarded = {"X-Forwarded-For": "203.0.113.5, 127.0.0.1", "X-Request-ID": "proxied"}
            await client.get("/livez", headers=forwarded)
        requests = server.request_lines("direct", "proxied")

    assert [line["client"] for line in requests] == ["127.0.0.1", "203.0.113.5"]


def test_start_up_logs_no_line_per_alembic_plugin(committed_database_url: URL) -> None:
    """Alembic 1.17 and later log each of its plugins at INFO as they are set up: seven lines in
    every worker at every start (seen with two workers, the default on two cores)."""
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_process(DATABASE_URL=url, WORKERS="2") as server:
        log = server.log()

    assert "Application startup complete" in log
    assert "alembic.runtime.plugins" not in log


def test_a_line_is_stamped_in_utc_as_iso_8601() -> None:
    config = logging_config("info")["formatters"]["json"]
    formatter = config["()"](**{key: value for key, value in config.items() if key != "()"})
    record = logging.LogRecord("devreg.request", logging.INFO, __file__, 1, "request", (), None)
    record.created = 1_764_700_000.25

    line = json.loads(formatter.format(record))

    assert datetime.fromisoformat(line["time"]) == datetime(2025, 12, 2, 18, 26, 40, 250000, UTC)
    assert line["time"].endswith("+00:00")
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "devreg.request", "request")


def test_a_line_carries_the_records_own_fields_and_none_of_logging_internals() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "x.py", 7, "Started %s", ("x",), None)
    record.correlation_id = "abc"
    record.color_message = "\x1b[1mStarted x\x1b[0m"
    record.status = 200

    line = json.loads(JsonLineFormatter().format(record))

    assert list(line) == ["time", "level", "logger", "message", "request_id", "status"]
    assert (line["message"], line["request_id"], line["status"]) == ("Started x", "abc", 200)


async def test_a_requests_path_cannot_steer_the_terminal_or_split_the_line(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client's path reached the log raw but for C0 controls: C1 controls (U+009B, 8-bit
    ESC [), a right-to-left override spoofing the status shown, and U+2028 / U+0085, which
    split the line for readers breaking on them."""
    steering = "\u009b2J\u009d0;title\u009c\u202e\u2028\u0085\u061c\x7f"
    app = create_app(make_settings(database_url, auth="off"))
    with devreg_logging():
        async with running(app) as started, api_client(started) as client:
            await client.get("/api/v1/devices/" + quote(steering))
    lines = [line for line in capsys.readouterr().out.splitlines() if '"devreg.request"' in line]

    assert len(lines) == 1
    assert lines[0].isascii()
    assert json.loads(lines[0])["path"] == "/api/v1/devices/" + steering


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_every_line_is_written_as_json_whatever_stdouts_encoding(
    committed_database_url: URL, encoding: str
) -> None:
    """Under PYTHONIOENCODING=ascii a request for a path beyond ASCII lost its line (stderr
    said "--- Logging error ---"); under latin-1, `café` reached the log as a byte that is not
    UTF-8."""
    url = committed_database_url.render_as_string(hide_password=False)
    paths = ["/api/v1/café", "/api/v1/\N{ROCKET}"]
    with devreg_process(DATABASE_URL=url, PYTHONIOENCODING=encoding) as server:
        for number, path in enumerate(paths):
            httpx.get(server.base_url + quote(path), headers={"X-Request-ID": f"path-{number}"})
        server.request_lines(*(f"path-{number}" for number in range(len(paths))))
        log = server.log()

    assert "Logging error" not in log
    assert log.isascii()
    records = [json.loads(line) for line in log.splitlines()]
    logged = [r["path"] for r in records if r["logger"] == "devreg.request"]
    assert [path for path in logged if path.startswith("/api/")] == paths


def test_the_record_itself_loses_its_traceback_for_any_other_handler() -> None:
    try:
        raise RuntimeError("SELECT secret")
    except RuntimeError:
        record = logging.LogRecord("devreg", logging.ERROR, "x.py", 1, "failed", (), sys.exc_info())
    record.time = "not the time"
    record._private = 1

    line = json.loads(JsonLineFormatter().format(record))

    assert (record.exc_info, record.exc_text) == (None, None)
    assert line["error_type"] == "RuntimeError"
    assert "_private" not in line
    assert datetime.fromisoformat(line["time"]).tzinfo is not None


def test_a_field_without_a_json_form_is_written_as_text() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise ValueError

    record = logging.LogRecord("devreg", logging.INFO, "x.py", 1, "m", (), None)
    record.thing = Unprintable()

    line = json.loads(JsonLineFormatter().format(record))

    assert line["thing"].startswith("<")


async def test_db_echo_shows_the_statements_sent_straight_to_asyncpg_too(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """DB_ECHO turns on SQLAlchemy's statement log; the hot paths' single statements, which
    asyncpg runs without SQLAlchemy, were missing from it."""
    settings = make_settings(committed_database_url)
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = (await client.post("/api/v1/devices", json={"name": "pi"})).json()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            await client.get(f"/api/v1/devices/{device['id']}")
            await client.get("/api/v1/devices")
            await client.post(f"/api/v1/devices/{device['id']}/heartbeat")
            await client.get("/api/v1/devices/export")

    logged = [r.getMessage() for r in caplog.records if r.name == "sqlalchemy.engine.Engine"]
    statements = [statement for statement in logged if "devices" in statement]
    assert [statement.split()[0] for statement in statements] == [
        "SELECT", "SELECT", "UPDATE", "SELECT"  # the export's COPY (SELECT ...) is last
    ]  # fmt: skip
    assert "$1" in statements[0]  # the id is a parameter, not in the text


async def test_db_echo_shows_no_value_the_start_up_sends(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """README: DB_ECHO logs each statement "without its values"; the engines that check the
    server and create the database logged theirs (the database's name, at least)."""
    secret = "s3cr3t_value"  # the name of a database there is: no CREATE DATABASE names it
    await admin(committed_database_url, f"CREATE DATABASE {secret}")
    try:
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            await ensure_database(committed_database_url.set(database=secret))
            await check_connection(committed_database_url, connect_timeout=5)
    finally:
        await admin(committed_database_url, f"DROP DATABASE {secret}")

    logged = [r.getMessage() for r in caplog.records if r.name == "sqlalchemy.engine.Engine"]
    assert any("pg_database" in line for line in logged)
    assert not any(secret in line for line in logged), logged


@pytest.mark.parametrize(
    "path",
    [
        "/" + "a" * 30_000,
        "/" + "\N{ROCKET}" * 3_000,
        "/a/" + "\N{LATIN SMALL LETTER E WITH ACUTE}" * 1_000,
    ],
    ids=["ascii", "beyond-the-bmp", "latin"],
)
def test_a_line_is_never_longer_than_one_write_to_a_pipe_keeps_whole(path: str) -> None:
    """Workers share stdout, and the kernel keeps a write to a pipe whole only up to 4,096
    bytes: a client's 30,000-character path had its line cut by another worker's. As much of
    the path is kept as fits (a character beyond ASCII is 6 or 12 in the line)."""
    record = logging.LogRecord("devreg.request", logging.INFO, __file__, 1, "request", (), None)
    record.path = path
    record.method = "GET"

    written = JsonLineFormatter().format(record)
    line = json.loads(written)

    assert 4096 - 12 < len(written) + len("\n") <= 4096
    assert line["truncated"] == ["path"]
    assert line["path"].endswith("...")
    assert path.startswith(line["path"].removesuffix("..."))
    assert line["method"] == "GET"


def test_a_line_within_the_bound_is_written_whole() -> None:
    record = logging.LogRecord("devreg.request", logging.INFO, __file__, 1, "request", (), None)
    record.path = "/" + "a" * 3_900

    line = json.loads(JsonLineFormatter().format(record))

    assert line["path"] == record.path
    assert "truncated" not in line


def test_a_log_whose_reader_went_away_is_said_once_then_dropped(
    committed_database_url: URL, tmp_path: Path
) -> None:
    """`devreg serve | head`: after head ended, every log line printed a traceback of its own
    on stderr (56 lines a request); the server serves on."""
    port = free_port()
    with (tmp_path / "stderr").open("w+") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "devreg", "serve", "--port", str(port)],
            env=devreg_environment(
                DATABASE_URL=committed_database_url.render_as_string(hide_password=False),
                WORKERS="1",
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # its first line, as `head -n 1` reads, and gone
            server.stdout.close()
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base_url}/livez", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "devreg serve did not come up"
                    time.sleep(0.1)
            statuses = [httpx.get(f"{base_url}/livez").status_code for _ in range(10)]
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        stderr.seek(0)
        said = stderr.read()

    assert statuses == [200] * 10
    assert said.splitlines() == ["devreg: the log's reader went away: its lines are dropped"]


_REQUEST = {"method": "GET", "path": "/api/v1/devices/7", "status": 200, "duration_ms": 1.5}


def _without_time(line: str) -> dict[str, object]:
    fields = json.loads(line)
    datetime.fromisoformat(fields.pop("time"))
    return fields  # type: ignore[no-any-return]


def test_a_request_line_written_straight_is_the_records_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_request skips logging's layers while logging is devreg's: the same line, fields in
    the same order, as the record it stands for."""
    request = {**_REQUEST, "path": "/caf\u00e9"}
    token = correlation_id.set("r-1")
    try:
        with devreg_logging():
            capsys.readouterr()
            with monkeypatch.context() as patched:
                patched.setattr(request_logger, "handle", pytest.fail)
                log_request(request)
            straight = capsys.readouterr().out
            request_logger.info("request", extra=request)
            recorded = capsys.readouterr().out
    finally:
        correlation_id.reset(token)

    assert straight.endswith("\n")
    assert straight.count("\n") == 1
    assert straight.isascii()
    assert list(_without_time(straight).items()) == list(_without_time(recorded).items())
    assert _without_time(straight)["request_id"] == "r-1"


def test_a_request_line_is_a_record_where_logging_is_set_up_otherwise(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with devreg_logging(), monkeypatch.context() as patched:
        patched.setattr(request_logger, "handlers", [logging.StreamHandler(sys.stderr)])
        log_request(_REQUEST)
        written = capsys.readouterr()
    with caplog.at_level(logging.INFO, logger=request_logger.name):
        log_request(_REQUEST)

    assert '"/api/v1/devices/7"' in written.out, "devreg's own handler still has it"
    assert written.err == "request\n", "and the other handler its record"
    assert [record.getMessage() for record in caplog.records] == ["request"]
    assert caplog.records[0].path == "/api/v1/devices/7"


def test_no_request_line_below_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    with devreg_logging():
        logging.root.setLevel(logging.WARNING)
        log_request(_REQUEST)
    assert "devreg.request" not in capsys.readouterr().out


def test_a_record_factory_of_its_own_gets_its_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record factory (OpenTelemetry's log correlation installs one, adding the trace id)
    makes the request's line from its record, fields and all."""
    made_by = logging.getLogRecordFactory()

    def with_trace_id(*args: object, **kwargs: object) -> logging.LogRecord:
        record = made_by(*args, **kwargs)
        record.trace_id = "abc123"
        return record

    with devreg_logging():
        logging.setLogRecordFactory(with_trace_id)
        try:
            log_request(_REQUEST)
        finally:
            logging.setLogRecordFactory(made_by)
        line = json.loads(capsys.readouterr().out)

    assert line["trace_id"] == "abc123"
    assert line["path"] == _REQUEST["path"]


def test_a_request_line_that_cannot_be_written_is_reported_as_a_records_would_be(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with devreg_logging():
        handler = logging.root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        closed = open(os.devnull, "w")  # noqa: SIM115 - closed at once
        closed.close()
        writing_to, handler.stream = handler.stream, closed
        try:
            log_request(_REQUEST)
        finally:
            handler.stream = writing_to

    assert "Message: 'request'" in capsys.readouterr().err
