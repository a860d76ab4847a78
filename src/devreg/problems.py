"""The one place errors (devreg's own and every other failure) become RFC 9457 problems.

Every error response is `application/problem+json` with `type`, `title`, `status`, `detail`
(the human message, so `{"detail": ...}` clients keep working) and `instance`. No response
and no log line carries SQL, a stack trace, a DSN or a password.
"""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from devreg.db import migrations
from devreg.errors import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_PREFIX,
    UNDEFINED_TABLE,
    DatabaseNotMigrated,
    DatabaseOutage,
    DatabaseRefusal,
    DevregError,
    PoolExhausted,
    database_problem,
    error_entry,
    number_too_long,
    summary,
)
from devreg.paths import sent_path

logger = logging.getLogger("devreg.errors")

# A 422 lists this many errors at most: one for each item of the largest bulk write, and not a
# response of megabytes, built for seconds, for a body of 80,000 unknown keys.
ERRORS_LISTED_MAX = 10_000


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457), and the members some of them add."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ValidationIssue] | None = Field(
        None, description="422: what is wrong, and where (`loc`: the part, field, index)."
    )
    field: str | None = Field(None, description="409 and some 422s: the field at fault.")
    parameter: str | None = Field(None, description="400: the query parameter at fault.")
    current_version: int | None = Field(None, description="412: the resource's version now.")
    errors_not_listed: int | None = Field(
        None, description=f"422: errors found beyond the first {ERRORS_LISTED_MAX} listed."
    )


# RFC 9110's names where Python 3.11's are RFC 7231's.
_RENAMED = {413: "Content Too Large", 416: "Range Not Satisfiable", 422: "Unprocessable Content"}


def status_title(status: int) -> str:
    return _RENAMED.get(status) or HTTPStatus(status).phrase


def problem_response(
    request: Request,
    *,
    status: int,
    detail: str,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_PREFIX + slug if slug else "about:blank",
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "instance": sent_path(request.scope),
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def described_headers(descriptions: dict[str, str]) -> dict[str, Any]:
    """A response's `headers` in OpenAPI: each header's description (its value, text)."""
    return {
        name: {"description": description, "schema": {"type": "string"}}
        for name, description in descriptions.items()
    }


# What some problems carry beside their body.
_PROBLEM_HEADERS = {
    400: {"WWW-Authenticate": "When the Authorization header was malformed (RFC 6750)."},
    401: {"WWW-Authenticate": "How to authenticate (`Bearer`), and what was wrong (RFC 6750)."},
    403: {"WWW-Authenticate": "For a read-only token's write: `insufficient_scope` (RFC 6750)."},
    409: {"Retry-After": "When the write collided with a concurrent one: send it again after."},
    412: {"ETag": "The resource's current version."},
    415: {
        "Accept-Patch": "For a PATCH: the one media type it takes, `application/json`.",
        "Accept-Encoding": "For a compressed body: `identity`, the only encoding taken.",
    },
    503: {"Retry-After": "Seconds to wait before sending the request again."},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting a route's error statuses in OpenAPI."""
    return {
        status: {
            "model": Problem,
            "description": status_title(status),
            "content": {PROBLEM_MEDIA_TYPE: {}},
            **(
                {"headers": described_headers(_PROBLEM_HEADERS[status])}
                if status in _PROBLEM_HEADERS
                else {}
            ),
        }
        for status in statuses
    }


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema whose error responses name the media type they are sent as: FastAPI
    puts a response model's schema under application/json, which no error is sent as."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema


async def _devreg_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DevregError)
    if isinstance(exc, DatabaseNotMigrated) and await _migrated(request, exc):
        # A column devreg names missing, or of another type, at this release's own revision:
        # a bug of devreg's statement, which `devreg db upgrade` would not mend.
        return await unhandled_error(request, exc, sqlstate=exc.sqlstate)
    if isinstance(exc, DatabaseRefusal):  # the operator's to fix, not the client's
        said = {"sqlstate": exc.sqlstate} if exc.sqlstate else {}
        logger.log(exc.log_level, exc.log_message, extra=said)
    return error_response(request, exc)


async def _migrated(request: Request, exc: DatabaseNotMigrated) -> bool:
    """Whether the database is at this release's revision (or a newer one) though a statement
    found a column missing or of another type (42703, 42804): a table missing (42P01) is not
    migrated whatever the revision says (another schema on the search path, say)."""
    if exc.sqlstate == UNDEFINED_TABLE:
        return False
    try:
        revision = await migrations.current_revision(request.state.engine)
    except (SQLAlchemyError, OSError, AttributeError):  # not asked, then: as it was
        return False
    return not migrations.is_behind(revision)


def error_response(request: Request, exc: DevregError) -> JSONResponse:
    return problem_response(
        request,
        status=exc.status,
        detail=exc.detail,
        slug=exc.slug,
        headers=exc.headers,
        **exc.extensions,
    )


def _location(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


def request_validation_error(exc: ValidationError, *where: str) -> RequestValidationError:
    """Pydantic's errors for a part of the request read outside FastAPI's parameters (a query
    string, a header), located as FastAPI locates its own (("query", "limit"), ...)."""
    return RequestValidationError(
        [{**error, "loc": (*where, *error["loc"])} for error in exc.errors()]
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # `input` and `ctx` are left out: they echo what was sent, which may be huge or binary.
    found = exc.errors()
    errors = [
        error_entry(_location(error["loc"]), _message(error), error["type"])
        for error in found[:ERRORS_LISTED_MAX]
    ]
    not_listed: dict[str, Any] = (
        {"errors_not_listed": len(found) - len(errors)} if len(found) > len(errors) else {}
    )
    return problem_response(
        request,
        status=422,
        detail=summary(errors, total=len(found)) if errors else "The request is not valid",
        slug="validation-error",
        errors=errors,
        **not_listed,
    )


def _message(error: dict[str, Any]) -> str:
    """An error's message; for malformed JSON with the reader's reason, which quotes nothing of
    the body ("Expecting ',' delimiter")."""
    reason = (error.get("ctx") or {}).get("error")
    if error["type"] == "json_invalid" and isinstance(reason, str):
        return f"{error['msg']}: {reason}"
    return str(error["msg"])


_UNREADABLE_BODY = {
    UnicodeDecodeError: "JSON decode error: the body is not valid UTF-8",
    RecursionError: "JSON decode error: the body nests too deeply",
}


def _unreadable(cause: BaseException | None) -> str | None:
    """Why FastAPI could not read the body as JSON, for the reasons that are the sender's."""
    if cause is not None and (too_long := number_too_long(cause)) is not None:
        return f"JSON decode error: {too_long}"
    return _UNREADABLE_BODY.get(type(cause))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, DevregError):  # raised as an HTTPException to pass FastAPI
        return error_response(request, exc.__cause__)
    # FastAPI answers 400 when the body is not JSON text at all; like any malformed JSON,
    # that is a 422 here.
    unreadable = _unreadable(exc.__cause__)
    if unreadable is not None:
        error = {"type": "json_invalid", "loc": ("body",), "msg": unreadable}
        return await _validation_error(request, RequestValidationError([error]))
    detail = exc.detail if isinstance(exc.detail, str) else status_title(exc.status_code)
    headers = dict(exc.headers or {})
    allowed = _allowed_methods(request) if exc.status_code == 405 else ""
    if allowed:  # else the Allow of what raised it: a mounted app's (the docs' static files)
        headers["Allow"] = allowed
    return problem_response(request, status=exc.status_code, detail=detail, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method the path takes: Starlette's own Allow names only the first matching route."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    if "GET" in allowed and "HEAD" not in allowed:  # served wherever GET is (edge.py)
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return ", ".join(allowed)


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    return await _devreg_error(request, PoolExhausted())


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    problem = database_problem(exc)
    if problem is None:
        return await unhandled_error(request, exc)
    return await _devreg_error(request, problem)


async def _connection_error(request: Request, exc: Exception) -> JSONResponse:
    return await _devreg_error(request, DatabaseOutage())


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # Not a server error: the client hung up before its body arrived (as FastAPI answers when
    # it reads a body parameter), and nobody is left to read this answer.
    return problem_response(
        request, status=400, detail="The client closed the connection before the whole request."
    )


async def unhandled_error(
    request: Request, exc: BaseException, *, sqlstate: str | None = None
) -> JSONResponse:
    said = {"sqlstate": sqlstate} if sqlstate else {}
    logger.error(
        "unhandled error",
        extra={
            "error_type": type(exc).__name__,
            "method": request.method,
            "path": request.url.path,
            **said,
        },
    )
    return problem_response(request, status=500, detail=DevregError.default_detail)


def response_cut_short(request: Request, exc: BaseException) -> None:
    """Log an error that came after the response began (a streamed export): its status is sent,
    so the client learns of it only from the body ending early. One the app has a handler for
    (the database gone, a statement timeout) reaches here as Starlette's RuntimeError from it,
    and is a warning; anything else is a crash."""
    if isinstance(exc, RuntimeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    expected = isinstance(exc, DevregError)
    logger.log(
        logging.WARNING if expected else logging.ERROR,
        "response cut short" if expected else "unhandled error",
        extra={
            "error_type": type(exc).__name__,
            "method": request.method,
            "path": request.url.path,
        },
    )


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DevregError, _devreg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeoutError, _pool_timeout)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(OSError, _connection_error)
    app.add_exception_handler(TimeoutError, _connection_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
