"""Structured logging: JSON lines, one per request, each with the request id."""

import itertools
import logging
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

request_logger = logging.getLogger("devreg.request")

# No devreg line carries the thread, the process or the source line a record came from; not
# collecting them takes about half off the cost of the log line every request writes (the
# logging HOWTO's "Optimization" section).
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False
logging._srcfile = None

_TRACEBACK_HEADER = "Traceback (most recent call last)"


class RedactingJsonFormatter(OrjsonFormatter):
    """JSON lines that never carry a stack trace: a record's exception becomes its type name.

    Tracebacks (and the SQL and values in exception messages) stay out of logs by policy; this
    also covers the traceback text uvicorn logs when an application's start-up fails.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[0] is not None:
            record.error_type = record.exc_info[0].__name__
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        message = record.getMessage()
        if _TRACEBACK_HEADER in message:
            record.msg = "error: " + _error_names(message)
            record.args = ()
        return super().format(record)


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


def logging_config(level: str, *, echo_sql: bool = False) -> dict[str, Any]:
    """A dictConfig for devreg and uvicorn alike (uvicorn applies it in every worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": None}
        },
        "formatters": {
            "json": {
                "()": RedactingJsonFormatter,
                "fmt": "%(levelname)s %(name)s %(message)s",
                # The record's time in UTC, ISO 8601, as orjson writes a datetime: a fifth of
                # the cost of logging's own asctime.
                "timestamp": "time",
                # uvicorn's `color_message` repeats the message with terminal colour codes.
                "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
                "rename_fields": {
                    "levelname": "level",
                    "name": "logger",
                    "correlation_id": "request_id",
                },
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request_id"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "sqlalchemy.engine": {"level": "INFO" if echo_sql else "WARNING"},
        },
    }
