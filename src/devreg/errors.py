"""Domain errors, and what a database error means for the client.

Free of the web framework, so that the CLI, which reports the same errors, starts without
loading it; `devreg.problems` makes them (and every other failure) HTTP responses.
"""

import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.exc import DBAPIError, IntegrityError

from devreg.conditional import etag

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:devreg:problem:"


def error_entry(loc: Sequence[str | int], msg: str, type_: str) -> dict[str, Any]:
    """One entry of a 422's `errors` list, as FastAPI writes a validation error's."""
    return {"loc": list(loc), "msg": msg, "type": type_}


def located(loc: Sequence[str | int], msg: str) -> str:
    """`body.2.owner_id: msg`; the message alone where nothing says where."""
    where = ".".join(str(part) for part in loc)
    return f"{where}: {msg}" if where else msg


def summary(errors: Sequence[dict[str, Any]], *, total: int | None = None) -> str:
    """A problem's detail for its `errors` (of `total`, when not all are listed): the first,
    located, and how many more."""
    first = errors[0]
    more = (len(errors) if total is None else total) - 1
    return located(first["loc"], first["msg"]) + (f" (and {more} more)" if more else "")


def number_too_long(exc: BaseException) -> str | None:
    """Why Python's JSON reader refused a document, when it was an integer of more digits than
    it converts (their conversion takes time quadratic in their length: "Exceeds the limit ...
    for integer string conversion"); else None."""
    if type(exc) is ValueError and "integer string conversion" in str(exc):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return None


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


class UndecodableQueryString(BadRequest):
    """Read with errors replaced, as Starlette reads query strings, its text would be stored
    and matched with U+FFFD where the client's bytes were."""

    default_detail = "The query string is not valid UTF-8 once percent-decoded."


class InvalidCursor(InvalidParameter):
    slug = "invalid-cursor"

    def __init__(
        self, detail: str = "The cursor is not valid; use the next_cursor of a previous page."
    ) -> None:
        super().__init__("cursor", detail)


class MalformedPrecondition(BadRequest):
    """An If-Match or If-None-Match that is neither `*` nor a list of entity tags."""

    slug = "malformed-precondition"

    def __init__(self, header: str) -> None:
        super().__init__(
            f'{header} must be "*" or entity tags in double quotes, as the ETag header writes '
            'them: "2" for version 2.'
        )


class MalformedAuthorization(BadRequest):
    """Credentials sent in a way RFC 6750 calls invalid_request (section 3.1): not a token to
    refresh, but a request to fix."""

    slug = "malformed-authorization"
    default_detail = "Authorization must be: Bearer <token>."
    default_headers = {"WWW-Authenticate": 'Bearer realm="devreg", error="invalid_request"'}


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
    default_headers = {
        "WWW-Authenticate": 'Bearer realm="devreg", error="insufficient_scope", scope="write"'
    }


class AdminRequired(Forbidden):
    default_detail = "Only an admin token may do that."


class NotALocalRequest(Forbidden):
    """A request without a token, for the open API, that came from elsewhere: a web page of
    another site (Origin), one reaching loopback under another name (DNS rebinding), or a
    client a proxy forwards for (X-Forwarded-For)."""

    slug = "not-a-local-request"
    default_detail = (
        "Without a token, the open API answers only this machine's own requests, to localhost "
        "(or a loopback address), from its own pages: send a token (devreg tokens create)."
    )


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


class ConcurrentWriteConflict(Conflict):
    """PostgreSQL undid the request's transaction to end a deadlock with a concurrent one (or a
    serialization failure): nothing was written, and sending it again may well succeed."""

    slug = "concurrent-write"
    default_detail = (
        "The request collided with a concurrent write and was not applied; send it again."
    )
    default_headers = {"Retry-After": "1"}


class AlreadyRegistered(Conflict):
    slug = "already-registered"
    field: ClassVar[str]

    def __init__(self, *, items: Sequence[int] = ()) -> None:
        """`items`: the indexes of a bulk request's items that name a registered value, located
        in an `errors` list as a 422's items are."""
        detail = f"{self.field} is already registered"
        errors = [
            error_entry(["body", index, self.field], detail, "already_registered")
            for index in items
        ]
        super().__init__(detail, field=self.field, **({"errors": errors} if errors else {}))


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

    def __init__(
        self,
        detail: str | None = None,
        *,
        field: str | None = None,
        part: str = "body",
        **extensions: Any,
    ) -> None:
        """`field` names what is wrong (in `part` of the request: the body, a header), and an
        `errors` list locates it as a validation error's does (`["body", "owner_id"]`; `[]`
        when nothing says where), so that a client's one handler for 422s reads every one."""
        if field is not None:
            extensions["field"] = field
        location = [part, field] if field is not None else []
        entry = error_entry(location, detail or self.default_detail, self.slug.replace("-", "_"))
        extensions.setdefault("errors", [entry])
        super().__init__(detail, **extensions)


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


class IdempotencyKeyNotTaken(InvalidInput):
    """A key sent where no answer can be kept to give again: the retry it meant to make safe
    would write a second time."""

    slug = "idempotency-key-not-taken"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, field="Idempotency-Key", part="header")


class UnstorableCharacter(InvalidInput):
    """A character the database's encoding has no equivalent for (22P05): a database created in
    another encoding than UTF8 (LATIN1, say) stores only its own characters. `line` and
    `column`: where an import's staged rows held it, when PostgreSQL said."""

    slug = "unstorable-character"

    def __init__(
        self, encoding: str | None = None, *, line: int | None = None, column: str | None = None
    ) -> None:
        self.encoding, self.line, self.column = encoding, line, column
        named = f" ({encoding})" if encoding else ""
        # Met in a search too (`q=Ž`), where nothing is being stored.
        super().__init__(
            f"A character in the request has no equivalent in the database's encoding{named}."
        )


class InvalidItems(InvalidInput):
    """Some items of a bulk request cannot be applied; none of them was."""

    slug = "invalid-items"

    def __init__(self, problems: dict[int, tuple[str | None, str]]) -> None:
        """`problems` maps an item's index to (its field, or None for the item itself, as an
        id of a bulk delete's list is; reason)."""
        errors = [
            error_entry(["body", index, *([field] if field else [])], reason, "invalid_item")
            for index, (field, reason) in sorted(problems.items())
        ]
        super().__init__(summary(errors), errors=errors)


class PreconditionFailed(DevregError):
    """If-Match named a version the resource no longer has, If-None-Match its current one, or
    If-Unmodified-Since a moment it has changed since."""

    status = 412
    slug = "precondition-failed"

    def __init__(self, current_version: int, detail: str | None = None) -> None:
        super().__init__(
            detail
            or f'The resource is at version {current_version} (ETag "{current_version}"), '
            "which If-Match does not name.",
            current_version=current_version,
        )
        self.headers["ETag"] = etag(current_version)


class ChangedSince(DevregError):
    """If-Unmodified-Since named a time before the resource's last change (a user's, which has
    no version to name)."""

    status = 412
    slug = "precondition-failed"

    def __init__(self, what: str, updated_at: datetime) -> None:
        super().__init__(changed_after(what, updated_at))


def changed_after(what: str, updated_at: datetime) -> str:
    """The detail of an If-Unmodified-Since that a change came after."""
    at = updated_at.isoformat().replace("+00:00", "Z")  # as the API writes times
    return f"The {what} changed after If-Unmodified-Since, at {at}."


class PreconditionOnUntaggedResource(DevregError):
    """A precondition sent to a resource that has no entity tag (a collection, a user, a bulk
    write, a heartbeat): If-Match naming a tag cannot match it (RFC 9110, section 13.1.1), and
    If-None-Match: * refuses a write to a resource that exists. Refused, not ignored: a write
    the client guarded must not go ahead unguarded."""

    status = 412
    slug = "precondition-failed"
    default_detail = (
        "This resource has no ETag, so If-Match cannot name it: only a device "
        "(/api/v1/devices/{id}) has one."
    )


class UnsupportedContentEncoding(DevregError):
    status = 415
    slug = "unsupported-content-encoding"
    default_detail = "Send the request body uncompressed (no Content-Encoding)."
    default_headers = {"Accept-Encoding": "identity"}  # RFC 9110, 15.5.16


class UnsupportedTransferCoding(DevregError):
    """RFC 9112, 6.1: the server decodes `chunked` alone, and passes a body in another transfer
    coding on as it came."""

    status = 501
    slug = "unsupported-transfer-coding"
    default_detail = (
        "Send the request body with Transfer-Encoding: chunked alone, or with a Content-Length."
    )


class UnsupportedMediaType(DevregError):
    status = 415
    slug = "unsupported-media-type"
    default_detail = "Send the request body as JSON, with Content-Type: application/json."


class PreconditionRequired(DevregError):
    status = 428
    slug = "precondition-required"
    default_detail = "Send If-Match with the ETag of the version you are changing."


class UnguardedBulkWrite(PreconditionRequired):
    """REQUIRE_IF_MATCH with a write of many devices, which cannot name their versions."""

    default_detail = (
        "REQUIRE_IF_MATCH is on and a bulk write cannot carry If-Match: change the devices one "
        "at a time, each with the ETag of its version."
    )


class ServiceUnavailable(DevregError):
    status = 503
    slug = "service-unavailable"
    default_detail = "The database is unavailable; try again shortly."
    default_headers = {"Retry-After": "1"}


class DatabaseRefusal(ServiceUnavailable):
    """PostgreSQL refusing work for a reason of its own, not the request's; the operator's to
    fix, so logged (at `log_level`, with the SQLSTATE) as well as answered with a 503."""

    log_level: ClassVar[int] = logging.WARNING
    log_message: ClassVar[str]

    def __init__(self, sqlstate: str | None = None) -> None:
        super().__init__()
        self.sqlstate = sqlstate


class DatabaseOutage(DatabaseRefusal):
    """The database not answering, or a connection to it lost (it stopped, restarted or was cut
    off; with a SQLSTATE of class 08 or 57P0x when it said so): each request a 503, and a
    warning, without which an outage left only the 503s in the log."""

    log_message = "database unreachable"


class DatabaseOutOfResources(DatabaseRefusal):
    """Out of connections, memory or disk (SQLSTATE class 53), or a disk failing (58): most
    likely for a while."""

    default_detail = "The database is out of connections, memory or disk; try again shortly."
    log_message = "database out of resources"


class DatabaseRefusesDevreg(DatabaseRefusal):
    """devreg's role, password or database refused (classes 28, 3D): a misconfiguration, say a
    password rotated in the database but not in DATABASE_URL."""

    log_level = logging.ERROR
    log_message = "database refused devreg's connection"


class DatabaseNotMigrated(DatabaseRefusal):
    """A table devreg's statements name does not exist (42P01), or a column (42703), or has
    another type (42804): the database is not migrated to this release (MIGRATE_ON_START=false,
    and no `devreg db upgrade` yet), or not all the way (still at the release before's
    revision, in a rolling deploy)."""

    log_level = logging.ERROR
    log_message = "database not migrated: run devreg db upgrade"


class DatabaseReadOnly(DatabaseRefusal):
    """The database takes no writes (25006): a standby after a failover, or the operator's
    default_transaction_read_only for maintenance."""

    default_detail = "The database takes no writes at the moment; try again shortly."
    log_message = "database is read-only"


class DatabaseDeniesPrivilege(DatabaseRefusal):
    """devreg's role lacks a privilege on its own tables (42501): granted reads alone, say."""

    log_level = logging.ERROR
    log_message = "database denies devreg's role a privilege it needs"


UNDEFINED_TABLE = "42P01"
# A table, or a column, that the database's schema lacks or holds in another type.
SCHEMA_BEHIND = frozenset({UNDEFINED_TABLE, "42703", "42804"})
INSUFFICIENT_PRIVILEGE = "42501"
READ_ONLY_TRANSACTION = "25006"
UNTRANSLATABLE_CHARACTER = "22P05"

# SQLSTATEs of a statement cut short by the database's limits on waiting: statement_timeout,
# and the operator's lock_timeout (a lock held elsewhere, say by a transaction left open).
QUERY_CANCELED = "57014"
LOCK_NOT_AVAILABLE = "55P03"
TIMED_OUT = frozenset({QUERY_CANCELED, LOCK_NOT_AVAILABLE})
# SQLSTATEs of a transaction PostgreSQL rolled back for colliding with another.
TRANSACTION_COLLISIONS = frozenset({"40P01", "40001"})  # deadlock, serialization failure


class StatementTimedOut(ServiceUnavailable):
    slug = "timeout"
    default_detail = "The database took too long to answer; try again shortly."


class ServerStopping(ServiceUnavailable):
    """A request still in progress when a stopping server's SHUTDOWN_TIMEOUT passed: cancelled,
    and to be sent again (to another worker, or once the server is back)."""

    slug = "stopping"
    default_detail = "The server stopped before this request was done; send it again."


class PoolExhausted(ServiceUnavailable):
    slug = "busy"
    default_detail = "The server is too busy to take this request now; try again shortly."


def database_problem(exc: DBAPIError) -> DevregError | None:
    """The problem a database error means for the client; None for a bug of devreg's own."""
    if isinstance(exc, IntegrityError):
        return Conflict()
    lost = exc.connection_invalidated or type(exc.orig).__name__ in _DRIVER_CONNECTION_ERRORS
    if lost and not half_sent(getattr(exc.orig, "driver_exception", None)):
        return DatabaseOutage()
    return sqlstate_problem(sqlstate_of(exc) or "")


def sqlstate_of(exc: DBAPIError) -> str | None:
    """The SQLSTATE PostgreSQL gave the error beneath SQLAlchemy's, if it gave one."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


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


# Class 08: connection exception; 57P0x: the server is shutting down or restarting (or ended
# an idle session); 25P03: idle_in_transaction_session_timeout ended the session.
CONNECTION_LOST_SQLSTATES = ("08", "57P0", "25P03")
# Class 53: out of connections, memory or disk; class 58: an I/O error outside PostgreSQL.
OUT_OF_RESOURCES = ("53", "58")
REFUSED_CONNECTION = ("28", "3D")  # invalid authorization, invalid catalog name
# asyncpg's errors for a connection that broke without a SQLSTATE, as SQLAlchemy names them.
_DRIVER_CONNECTION_ERRORS = frozenset({"InterfaceError", "InternalClientError"})


def sqlstate_problem(sqlstate: str) -> DevregError | None:
    """The problem a PostgreSQL error means for the client, by its SQLSTATE, whichever layer
    (SQLAlchemy or asyncpg itself) raised it; None for a bug of devreg's own."""
    if sqlstate.startswith(CONNECTION_LOST_SQLSTATES):
        return DatabaseOutage(sqlstate)
    if sqlstate.startswith(OUT_OF_RESOURCES):
        return DatabaseOutOfResources(sqlstate)
    if sqlstate.startswith(REFUSED_CONNECTION):
        return DatabaseRefusesDevreg(sqlstate)
    if sqlstate in TIMED_OUT:
        return StatementTimedOut()
    if sqlstate == READ_ONLY_TRANSACTION:
        return DatabaseReadOnly(sqlstate)
    if sqlstate in SCHEMA_BEHIND:
        return DatabaseNotMigrated(sqlstate)
    if sqlstate == INSUFFICIENT_PRIVILEGE:
        return DatabaseDeniesPrivilege(sqlstate)
    if sqlstate in TRANSACTION_COLLISIONS:
        return ConcurrentWriteConflict()
    if sqlstate == UNTRANSLATABLE_CHARACTER:
        return UnstorableCharacter()
    if sqlstate.startswith("22"):  # data exception: a value PG refused
        return InvalidInput("A value in the request is not valid.")
    return None
