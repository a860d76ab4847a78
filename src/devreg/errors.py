"""Domain errors, and the one place they (and every other failure) become RFC 9457 problems.

Every error response is `application/problem+json` with `type`, `title`, `status`, `detail`
(the human message, so `{"detail": ...}` clients keep working) and `instance`. No response
and no log line carries SQL, a stack trace, a DSN or a password.
"""

import logging
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from devreg.conditional import etag

logger = logging.getLogger("devreg.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:devreg:problem:"


class DevregError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    default_detail: ClassVar[str] = "The server could not handle the request."
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        self.detail = detail or self.default_detail
        self.extensions = extensions
        self.headers = dict(self.default_headers)
        super().__init__(self.detail)


class BadRequest(DevregError):
    status = 400
    slug = "bad-request"
    default_detail = "The request is malformed."


class InvalidParameter(BadRequest):
    """A query parameter that is unknown, or whose value cannot be used."""

    slug = "invalid-parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail, parameter=parameter)


class InvalidCursor(InvalidParameter):
    slug = "invalid-cursor"

    def __init__(
        self, detail: str = "The cursor is not valid; use the next_cursor of a previous page."
    ) -> None:
        super().__init__("cursor", detail)


class Unauthenticated(DevregError):
    """No usable credentials (RFC 6750: the challenge says how to authenticate)."""

    status = 401
    slug = "unauthenticated"
    default_detail = "Send a token: Authorization: Bearer <token>."
    default_headers = {"WWW-Authenticate": 'Bearer realm="devreg"'}


class InvalidToken(Unauthenticated):
    slug = "invalid-token"
    default_detail = "The token is not valid: unknown, expired or revoked."
    default_headers = {"WWW-Authenticate": 'Bearer realm="devreg", error="invalid_token"'}


class Forbidden(DevregError):
    status = 403
    slug = "forbidden"
    default_detail = "This token may not do that."


class ReadOnlyToken(Forbidden):
    default_detail = "This token may only read; writing needs a token with the write scope."


class AdminRequired(Forbidden):
    default_detail = "Only an admin token may do that."


class NotFound(DevregError):
    status = 404
    slug = "not-found"
    default_detail = "Not found"


class DeviceNotFound(NotFound):
    default_detail = "Device not found"


class UserNotFound(NotFound):
    default_detail = "User not found"


class TokenNotFound(NotFound):
    default_detail = "Token not found"


class Conflict(DevregError):
    status = 409
    slug = "conflict"
    default_detail = "The request conflicts with data already stored."


class AlreadyRegistered(Conflict):
    slug = "already-registered"
    field: ClassVar[str]

    def __init__(self) -> None:
        super().__init__(f"{self.field} is already registered", field=self.field)


class SerialAlreadyRegistered(AlreadyRegistered):
    field = "serial_number"


class EmailAlreadyRegistered(AlreadyRegistered):
    field = "email"


class UserHasDevices(Conflict):
    slug = "user-has-devices"
    default_detail = (
        "The user still owns devices; reassign or delete them, or delete with ?cascade=devices."
    )


class InvalidInput(DevregError):
    status = 422
    slug = "invalid-input"
    default_detail = "The request is not valid."


class UnknownOwner(InvalidInput):
    slug = "unknown-owner"
    default_detail = "owner_id does not name an existing user"

    def __init__(self) -> None:
        super().__init__(field="owner_id")


class UnknownUser(InvalidInput):
    slug = "unknown-user"
    default_detail = "user_id does not name an existing user"

    def __init__(self) -> None:
        super().__init__(field="user_id")


class IdempotencyKeyReused(InvalidInput):
    slug = "idempotency-key-reused"
    default_detail = "This Idempotency-Key was used for a different request."


class InvalidItems(InvalidInput):
    """Some items of a bulk request cannot be applied; none of them was."""

    slug = "invalid-items"

    def __init__(self, problems: dict[int, tuple[str, str]]) -> None:
        """`problems` maps an item's index to (field, reason)."""
        errors = [
            {"loc": ["body", index, field], "msg": reason, "type": "invalid_item"}
            for index, (field, reason) in sorted(problems.items())
        ]
        first = errors[0]
        detail = f"body.{first['loc'][1]}.{first['loc'][2]}: {first['msg']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        super().__init__(detail, errors=errors)


class PreconditionFailed(DevregError):
    """If-Match named a version the resource no longer has."""

    status = 412
    slug = "precondition-failed"

    def __init__(self, current_version: int) -> None:
        super().__init__(
            f"The resource has changed: its version is now {current_version}.",
            current_version=current_version,
        )
        self.headers["ETag"] = etag(current_version)


class PreconditionRequired(DevregError):
    status = 428
    slug = "precondition-required"
    default_detail = "Send If-Match with the ETag of the version you are changing."


class ServiceUnavailable(DevregError):
    status = 503
    slug = "service-unavailable"
    default_detail = "The database is unavailable; try again shortly."
    default_headers = {"Retry-After": "1"}


# SQLSTATE of a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"


class StatementTimedOut(ServiceUnavailable):
    slug = "timeout"
    default_detail = "The database took too long to answer; try again shortly."


class PoolExhausted(ServiceUnavailable):
    slug = "busy"
    default_detail = "The server is too busy to take this request now; try again shortly."


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


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
        "type": _TYPE_PREFIX + slug if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting a route's error statuses in OpenAPI."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {}},
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
    return error_response(request, exc)


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
    issues = [
        ValidationIssue(loc=_location(error["loc"]), msg=error["msg"], type=error["type"])
        for error in exc.errors()
    ]
    first = issues[0] if issues else None
    detail = "The request is not valid"
    if first is not None:
        where = ".".join(str(part) for part in first.loc)
        detail = f"{where}: {first.msg}" if where else first.msg
        if len(issues) > 1:
            detail += f" (and {len(issues) - 1} more)"
    return problem_response(
        request,
        status=422,
        detail=detail,
        slug="validation-error",
        errors=[issue.model_dump() for issue in issues],
    )


_UNREADABLE_BODY = {
    UnicodeDecodeError: "JSON decode error: the body is not valid UTF-8",
    RecursionError: "JSON decode error: the body nests too deeply",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI answers 400 when the body is not JSON text at all; like any malformed JSON,
    # that is a 422 here.
    unreadable = _UNREADABLE_BODY.get(type(exc.__cause__))
    if unreadable is not None:
        error = {"type": "json_invalid", "loc": ("body",), "msg": unreadable}
        return await _validation_error(request, RequestValidationError([error]))
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
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


def database_problem(exc: DBAPIError) -> DevregError | None:
    """The problem a database error means for the client; None for a bug of devreg's own."""
    if isinstance(exc, IntegrityError):
        return Conflict()
    lost = exc.connection_invalidated or type(exc.orig).__name__ in _DRIVER_CONNECTION_ERRORS
    if lost and not half_sent(getattr(exc.orig, "driver_exception", None)):
        return ServiceUnavailable()
    return sqlstate_problem(getattr(exc.orig, "sqlstate", None) or "")


def half_sent(driver_error: BaseException | None) -> bool:
    """Whether asyncpg refused one of a statement's values itself (one it could not encode, such
    as an integer beyond the column's type) rather than PostgreSQL refusing the statement.

    For a statement the connection had not prepared yet, asyncpg has by then sent its Parse and
    Describe but no Sync, so the server keeps the connection inside an implicit transaction (its
    locks held, its `now()` frozen) until the connection's next statement: the connection is to
    be discarded. PostgreSQL's own errors always carry a severity; asyncpg's carry none."""
    return (
        isinstance(getattr(driver_error, "sqlstate", None), str)
        and getattr(driver_error, "severity", None) is None
    )


# Class 08: connection exception; 57P0x: the server is shutting down or restarting.
CONNECTION_LOST_SQLSTATES = ("08", "57P0")
# asyncpg's errors for a connection that broke without a SQLSTATE, as SQLAlchemy names them.
_DRIVER_CONNECTION_ERRORS = frozenset({"InterfaceError", "InternalClientError"})


def sqlstate_problem(sqlstate: str) -> DevregError | None:
    """The problem a PostgreSQL error means for the client, by its SQLSTATE, whichever layer
    (SQLAlchemy or asyncpg itself) raised it; None for a bug of devreg's own."""
    if sqlstate.startswith(CONNECTION_LOST_SQLSTATES):
        return ServiceUnavailable()
    if sqlstate == QUERY_CANCELED:
        return StatementTimedOut()
    if sqlstate.startswith("22"):  # data exception: a value PG refused
        return InvalidInput("A value in the request is not valid.")
    return None


async def _connection_error(request: Request, exc: Exception) -> JSONResponse:
    return await _devreg_error(request, ServiceUnavailable())


async def unhandled_error(request: Request, exc: BaseException) -> JSONResponse:
    logger.error(
        "unhandled error",
        extra={
            "error_type": type(exc).__name__,
            "method": request.method,
            "path": request.url.path,
        },
    )
    return problem_response(request, status=500, detail=DevregError.default_detail)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DevregError, _devreg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeoutError, _pool_timeout)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(OSError, _connection_error)
    app.add_exception_handler(TimeoutError, _connection_error)
