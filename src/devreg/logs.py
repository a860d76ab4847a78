"""Structured logging: JSON lines, one per request, each with the request id."""

import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from asgi_correlation_id import CorrelationIdFilter, correlation_id

request_logger = logging.getLogger("devreg.request")

# No devreg line carries the thread, the process or the source line a record came from; not
# collecting them takes about half off the cost of the log line every request writes (the
# logging HOWTO's "Optimization" section).
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False
logging._srcfile = None

_TRACEBACK_HEADER = "Traceback (most recent call last)"

# What every LogRecord carries; anything else on a record is a field of its own (`extra=`).
# uvicorn's `color_message` repeats the message with terminal colour codes.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}
_RENAMED = {"correlation_id": "request_id"}


# What steers a terminal or a reader of lines rather than shows: the C0 and C1 controls (ESC,
# and its 8-bit forms U+009B and U+009D, start terminal commands), DEL, the line and paragraph
# separators (line breaks to some readers), and the bidirectional controls (U+202E shows the
# rest of a line reversed). JSON allows most of them raw, and orjson writes them so.
_STEERING = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with each character that would steer a terminal or a reader instead of showing
    written as its JSON escape (`\\u001b`): what a client sent or stored is shown to an operator,
    never obeyed by their terminal."""
    return _STEERING.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


def ascii_json(text: str) -> str:
    """The JSON document `text` in ASCII, as the standard library writes it (`\\u00e9`; a
    surrogate pair's two escapes beyond U+FFFF), which every JSON reader reads back the same,
    and nothing in it that steers a terminal (`visible`: DEL is ASCII). ASCII is written as it
    is in any encoding stdout may have (ASCII under LC_ALL=C, latin-1), where the character
    itself may be missing or a byte that is not UTF-8."""
    return visible(json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")))


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: its time (UTC, ISO 8601), level, logger and message, then its
    own fields (`extra=`, the request id). A record's exception becomes its type name: tracebacks
    (and the SQL and values in exception messages) stay out of logs by policy, and so does the
    traceback text uvicorn logs as the message when an application's start-up fails.

    Every line is ASCII (`ascii_json`), whatever stdout's encoding: with one that lacks a
    character of a request's path (ASCII, say), the line was lost to a UnicodeEncodeError; with
    latin-1, a log meant to be UTF-8 got a byte that is not.

    Written for the fields devreg logs rather than taken from a general JSON formatter:
    python-json-logger's merging of a record's attributes was 5% of a GET's instructions
    (docs/benchmarks.md)."""

    def format(self, record: logging.LogRecord) -> str:
        line = _line(
            datetime.fromtimestamp(record.created, UTC),
            record.levelname,
            record.name,
            _redacted(record),
            (
                (_RENAMED.get(key, key), value)
                for key, value in record.__dict__.items()
                if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
            ),
        )
        return _line_text(line)


def _line(
    time: datetime, level: str, logger: str, message: str, fields: Iterable[tuple[str, Any]]
) -> dict[str, Any]:
    """A line's fields: its own four first, then the others, each name once (the first)."""
    line: dict[str, Any] = {"time": time, "level": level, "logger": logger, "message": message}
    for key, value in fields:
        line.setdefault(key, value)
    return line


def _line_text(line: dict[str, Any]) -> str:
    written = _written(line)
    return written if len(written) <= LINE_MAX else _shortened(line)


# The longest line, its newline aside: PIPE_BUF, the most one write to a pipe keeps whole. The
# workers share stdout, and a longer line (a client's 30,000-character path) was cut by the
# other workers' lines, two lines then neither of them JSON.
LINE_MAX = 4096 - 1
_CUT = "..."


def _written(line: dict[str, Any]) -> str:
    written = orjson.dumps(line, default=_as_text).decode()
    # Nearly every line is ASCII already, and orjson escapes the C0 controls.
    return written if written.isascii() and "\x7f" not in written else ascii_json(written)


def _shortened(line: dict[str, Any]) -> str:
    """The line within LINE_MAX: its longest texts cut short, ending in "...", and named in
    its `truncated` field."""
    line["truncated"] = truncated = []
    written = _written(line)
    while len(written) > LINE_MAX:
        texts = [key for key, value in line.items() if isinstance(value, str) and value != _CUT]
        if not texts:
            break
        longest = max(texts, key=lambda key: len(line[key]))
        truncated.append(longest)
        whole = line[longest]
        # The most of it that fits, found by halving: a character beyond ASCII is written as
        # 6 or 12 (its escape), so the line's length says not how many to cut.
        fits, too_many = 0, len(whole)
        while too_many - fits > 1:
            middle = (fits + too_many) // 2
            line[longest] = whole[:middle] + _CUT
            if len(_written(line)) <= LINE_MAX:
                fits = middle
            else:
                too_many = middle
        line[longest] = whole[:fits] + _CUT
        written = _written(line)
    return written


def _redacted(record: logging.LogRecord) -> str:
    """The record's message; the record itself left without its traceback, for this and any
    other handler that gets it."""
    if record.exc_info and record.exc_info[0] is not None:
        record.error_type = record.exc_info[0].__name__
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
    message = record.getMessage()
    if _TRACEBACK_HEADER in message:
        message = record.msg = "error: " + _error_names(message)
        record.args = ()
    return message


def _as_text(value: object) -> str:
    """A field orjson cannot write, as text: never a lost line."""
    try:
        return str(value)
    except Exception:
        return repr(value)


def _error_names(traceback_text: str) -> str:
    """`DBAPIError (TooManyConnectionsError)`: the type of the exception a traceback ends with
    and of its first cause, from their lines (each the first unindented line after the frames,
    which are indented); never their messages, which may hold SQL and values."""
    names = []
    lines = traceback_text.strip().splitlines()
    for previous, line in itertools.pairwise(lines):
        if previous.startswith(" ") and line and not line.startswith(" "):
            names.append(line.split(":", 1)[0].rsplit(".", 1)[-1])
    if not names:
        return lines[-1].split(":", 1)[0].rsplit(".", 1)[-1]
    outermost, first_cause = names[-1], names[0]
    return outermost if outermost == first_cause else f"{outermost} ({first_cause})"


_UVICORN_LINES_LEFT_OUT = frozenset(
    {
        # A response the app left unfinished. The edge leaves one so only when it broke off (an
        # export cut by a statement timeout: ending it would tell the client the body was
        # whole), and has logged why, with the request line marked `incomplete`.
        "ASGI callable returned without completing response.",
        # A request asking to upgrade (`Upgrade: websocket`, `h2c`): it is served as plain
        # HTTP, as RFC 9110 (7.8) lets a server, and no client should make two warnings a
        # request, one of them advice to install a WebSocket library devreg has no use for.
        "Unsupported upgrade request.",
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\""
        ", or install 'websockets' or 'wsproto' manually.",
    }
)


class UvicornLinesLeftOut(logging.Filter):
    """Drops uvicorn's lines that tell an operator nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _UVICORN_LINES_LEFT_OUT


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the log to its stream (stdout); when the reader goes away (`devreg serve | head`)
    it says so once on stderr and drops the lines from then on, where logging printed a
    traceback on stderr for every line instead."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not isinstance(sys.exc_info()[1], BrokenPipeError):
            super().handleError(record)
            return
        # Written to nowhere from now on: what is still buffered too, at exit as before it.
        with open(os.devnull, "wb") as nowhere:
            os.dup2(nowhere.fileno(), self.stream.fileno())
        sys.stderr.write("devreg: the log's reader went away: its lines are dropped\n")

    def write_line(self, line: dict[str, Any]) -> None:
        """Write a line of JsonLineFormatter's fields as `emit` writes a record's."""
        self.acquire()
        try:
            self.stream.write(_line_text(line) + self.terminator)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({**line, "msg": line["message"]}))
        finally:
            self.release()


def log_request(fields: dict[str, Any]) -> None:
    """The request's line: `request_logger.info("request", extra=fields)`, written straight to
    the log's stream while logging is as logging_config sets it up. Logging's layers of
    records, filters and handlers were 7% of a GET's instructions (docs/benchmarks.md). Set up
    any other way (a test's capture, an operator's handlers or record factory), the line is a
    record as before."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_handler(request_logger)
    if handler is None:
        request_logger.info("request", extra=fields)
        return
    # request_id last, as logging_config's filter adds it to a record.
    request_id = ("request_id", correlation_id.get(None))
    line = _line(
        datetime.now(UTC), "INFO", request_logger.name, "request", [*fields.items(), request_id]
    )
    handler.write_line(line)


def _sole_handler(logger: logging.Logger) -> LogHandler | None:
    """The handler `logger`'s INFO records reach, when it is the only one, logging_config's,
    and nothing on their way changes or stops them: else None."""
    if (
        logger.filters
        or type(logger) is not logging.Logger
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None  # what would make or change its record
    while not logger.handlers and logger.propagate and logger.parent is not None:
        logger = logger.parent
    if logger is not logging.root or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if (
        type(handler) is not LogHandler
        or handler.level > logging.INFO
        or type(handler.formatter) is not JsonLineFormatter
        or len(handler.filters) != 1
    ):
        return None
    request_id = handler.filters[0]
    if (
        type(request_id) is not CorrelationIdFilter
        or request_id.uuid_length is not None
        or request_id.default_value is not None
    ):
        return None
    return handler


def logging_config(level: str, *, echo_sql: bool = False) -> dict[str, Any]:
    """A dictConfig for devreg and uvicorn alike (uvicorn applies it in every worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": None},
            "uvicorn_lines_left_out": {"()": UvicornLinesLeftOut},
        },
        "formatters": {"json": {"()": JsonLineFormatter}},
        "handlers": {
            "stdout": {
                "class": "devreg.logs.LogHandler",
                "formatter": "json",
                "filters": ["request_id"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {
                "handlers": [],
                "propagate": True,
                "filters": ["uvicorn_lines_left_out"],
            },
            "uvicorn.access": {"handlers": [], "propagate": False},
            "sqlalchemy.engine": {"level": "INFO" if echo_sql else "WARNING"},
            "alembic.runtime.plugins": {"level": "WARNING"},  # a line per plugin, every start
        },
    }
