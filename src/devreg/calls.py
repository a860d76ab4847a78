"""How the API serves a request: its route opens the request's unit of work and finds out who it
acts for before FastAPI solves the endpoint's own parameters, and hands both to the endpoint in
one `Call`.

The route class does this, not FastAPI dependencies: FastAPI solves every dependency, and every
declared header, on every request, at about 5% of a GET's CPU apiece (docs/benchmarks.md). For
the same reason the optional request headers a route reads (If-Match, If-None-Match,
If-Unmodified-Since, Idempotency-Key) are read from the call and documented in the OpenAPI schema
by `documented`.
"""

from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, ClassVar, TypeVar

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from devreg.auth.guard import SECURITY_REQUIREMENT, app_authenticator, authenticate
from devreg.auth.principal import Principal
from devreg.conditional import IfMatch, Preconditions, check_tags, http_date
from devreg.config import Settings
from devreg.db.session import UnitOfWork, session_scope
from devreg.errors import (
    InvalidParameter,
    InvalidToken,
    MalformedPrecondition,
    PreconditionOnUntaggedResource,
    PreconditionRequired,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
    UnsupportedTransferCoding,
)
from devreg.problems import problem_responses, request_validation_error

# Methods that only read: any live token may use them; every other method needs a write scope.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

T = TypeVar("T")


class Call(Request):
    """An API request as its endpoint sees it (declare `call: Call`): the request itself, its
    unit of work (`db`) and who it acts for (`principal`)."""

    db: UnitOfWork
    """The request's unit of work: committed after the endpoint returns and before the response
    is sent (so a failed commit is an error response, not a 201 for data never saved); rolled
    back on any exception. Its session is made, and its transaction begun, only when a statement
    needs one (session_scope)."""
    principal: Principal

    @property
    def settings(self) -> Settings:
        settings: Settings = self.app.state.settings
        return settings

    def header_value(self, name: str) -> str | None:
        """An optional header's (first) value, or None: `headers.get(name)` without the KeyError
        that Mapping.get raises and catches for a header not sent, half the cost of that miss."""
        headers = self.headers
        return headers[name] if name in headers else None  # noqa: SIM401 - see above

    def list_header(self, name: str) -> str | None:
        """A list-valued header (If-Match, If-None-Match) sent on one line or several: one list
        (RFC 9110, section 5.3), or None."""
        if self.header_value(name) is None:
            return None
        return ", ".join(self.headers.getlist(name))

    def header(self, name: str, adapter: TypeAdapter[T]) -> T | None:
        """An optional header's value, validated as FastAPI validates a declared one (422); sent
        on several lines, it is refused too: which one the client meant is not known (of two
        Idempotency-Keys the first was taken, and a retry keyed by the other wrote again)."""
        raw = self.header_value(name)
        if raw is None:
            return None
        if len(self.headers.getlist(name)) > 1:
            raise RequestValidationError(
                [{"loc": ("header", name), "msg": "must be sent once", "type": "value_error"}]
            )
        try:
            return adapter.validate_python(raw)
        except ValidationError as exc:
            raise request_validation_error(exc, "header", name) from None


# What any API route may answer whatever its endpoint does: a query string that is not UTF-8
# (refused at the edge), a body too slow to arrive or too large (any request may send one), a
# precondition that cannot hold, the database unavailable, the pool exhausted or a statement past
# STATEMENT_TIMEOUT; and for a write, a body compressed or not sent as JSON (415), or in a
# transfer coding the server does not decode (501).
_EVERY_ROUTES_PROBLEMS = problem_responses(400, 408, 412, 413, 503)
_EVERY_WRITES_PROBLEMS = dict(
    sorted({**_EVERY_ROUTES_PROBLEMS, **problem_responses(415, 501)}.items())
)


class ApiRoute(APIRoute):
    """Every API route: before the endpoint's parameters are solved, the request's unit of work is
    opened and its caller authenticated (a safe method needs a live token, or none while the API
    is open; any other method a token that may write, and a body that is not compressed). A
    route with no query parameter refuses any (400), as a listing refuses one it does not know:
    `GET /devices/1?fields=id` must not quietly answer every field."""

    refuses_unknown_query_parameters: ClassVar[bool] = True

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: set[str] | list[str] | None = None,
        responses: dict[int | str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        self.writes = not SAFE_METHODS.issuperset(methods or ())
        if options.get("status_code") == HTTPStatus.NO_CONTENT:
            options["response_class"] = Response  # no content, so no Content-Type either
        documented = _EVERY_WRITES_PROBLEMS if self.writes else _EVERY_ROUTES_PROBLEMS
        openapi_extra = {
            "security": SECURITY_REQUIREMENT,
            **(options.pop("openapi_extra", None) or {}),
        }
        parameters = openapi_extra.get("parameters", ())
        # Its query string read by the endpoint itself (querystring.QueryString).
        self.reads_query = any(parameter["in"] == "query" for parameter in parameters)
        # Its resource has an entity tag, which the endpoint compares (conditional requests).
        self.tagged = any(parameter["name"] == "If-Match" for parameter in parameters)
        super().__init__(
            path,
            endpoint,
            methods=methods,
            responses={**documented, **(responses or {})},
            openapi_extra=openapi_extra,
            **options,
        )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        writes = self.writes
        tagged = self.tagged
        takes_json = bool(self.dependant.body_params)
        takes_no_query = self.refuses_unknown_query_parameters and not (
            self.reads_query or _declares_query(self.dependant)
        )

        async def serve(request: Request) -> Response:
            call = Call(request.scope, request.receive)
            async with session_scope(call.state.sessionmaker, begin=False) as work:
                call.db = work
                call.principal = await authenticate(call, work, writes=writes)
                if takes_no_query and call.scope["query_string"]:
                    _refuse_query_parameters(call)
                if writes:
                    _refuse_encoded_body(call)
                if takes_json:
                    _refuse_body_not_json(call)
                try:
                    if not tagged and (refusal := _unmatchable_precondition(call, writes)):
                        return await _served_then_refused(handler, call, refusal)
                    return await handler(call)
                except InvalidToken:
                    # The token, trusted from the cache, found gone as the request was served
                    # (revoked, or deleted with its user, by another worker): trusted no more.
                    if call.principal.token_id is not None:
                        app_authenticator(call).forget_token(call.principal.token_id)
                    raise

        return serve


async def _served_then_refused(
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
    call: Call,
    refusal: PreconditionOnUntaggedResource,
) -> Response:
    """RFC 9110, section 13.2.1: a precondition is judged only where the request would succeed
    without it. A user that does not exist stays a 404, an unknown query parameter a 400 (both
    were 412s), so the request is served first, in a transaction the refusal then rolls back."""
    if not call.db.in_transaction():  # finding out who it acts for may have begun it
        await call.db.session.begin()
    response = await handler(call)
    if response.status_code >= HTTPStatus.MULTIPLE_CHOICES:
        return response
    raise refusal


def _declares_query(dependant: Dependant) -> bool:
    """Whether the endpoint, or any of its dependencies, takes a FastAPI query parameter."""
    return bool(dependant.query_params) or any(map(_declares_query, dependant.dependencies))


def _refuse_query_parameters(call: Call) -> None:
    name = next(iter(call.query_params), None)  # none in `?&`
    if name is not None:
        raise InvalidParameter(name, f"unknown query parameter {name!r}")


# The transfer codings the HTTP server takes off a body (uvicorn: chunked; identity is none).
_DECODED_TRANSFER_CODINGS = frozenset({"chunked", "identity"})


def _refuse_encoded_body(call: Call) -> None:
    """A compressed body (gzip, say) is refused as such (415), before it is read: parsed as JSON
    it would only be "not valid UTF-8". So is one compressed in transit (`Transfer-Encoding: gzip,
    chunked`), which the server passes on as it came (501, RFC 9112, 6.1)."""
    encoding = call.list_header("content-encoding")  # on one line or several
    if encoding is not None and encoding.strip().lower() != "identity":
        raise UnsupportedContentEncoding
    transfer = call.list_header("transfer-encoding")
    if transfer is not None and not _DECODED_TRANSFER_CODINGS.issuperset(
        coding.strip().lower() for coding in transfer.split(",")
    ):
        raise UnsupportedTransferCoding


def _refuse_body_not_json(call: Call) -> None:
    """A body sent as anything but JSON (text/plain, a form, no Content-Type) is refused as
    such (415): FastAPI would not parse it, and its 422 said the JSON was not an object.

    A PATCH takes plain JSON only: the `+json` types a PATCH is sent as are patch formats of
    their own (`merge-patch+json` merges nested objects and removes members set to null,
    `json-patch+json` is a list of operations), and read as plain JSON they would replace a
    device's attributes whole, losing the members the client meant to keep."""
    media_type = (call.header_value("content-type") or "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        call.method != "PATCH"
        and media_type.startswith("application/")
        and media_type.endswith("+json")
    ):
        return
    if call.header_value("content-length") in (None, "0") and not call.header_value(
        "transfer-encoding"
    ):
        return  # no body: FastAPI says what is missing
    problem = UnsupportedMediaType()
    if call.method == "PATCH":  # RFC 5789, 2.2
        problem.headers["Accept-Patch"] = "application/json"
    raise problem


_PRECONDITIONS = frozenset({b"if-match", b"if-none-match", b"if-unmodified-since"})


def _unmatchable_precondition(call: Call, writes: bool) -> PreconditionOnUntaggedResource | None:
    """For a resource without an entity tag: an If-Match naming tags is false, and so is
    If-None-Match: * for a write that would succeed (the resource exists); 412, where ignored
    they would let a guarded write through. (`If-Match: *` holds, and If-None-Match naming tags:
    none matches. If-Unmodified-Since is the route's: a user judges it by its `updated_at`;
    where nothing tells when the resource last changed, RFC 9110 has it ignored.)"""
    conditions = read_preconditions(call)
    if conditions is None:
        return None
    if conditions.if_match is not None and conditions.if_match.versions is not None:
        return PreconditionOnUntaggedResource()
    if not writes:
        return None
    if conditions.refuses_any_version:
        return PreconditionOnUntaggedResource(
            "If-None-Match: * refuses to write to a resource that exists, as this one does."
        )
    return None


def header_parameter(name: str, description: str, **schema: object) -> dict[str, Any]:
    """The OpenAPI description of an optional request header a route reads from its call."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def documented(*parameters: dict[str, Any]) -> dict[str, Any]:
    """A route's `openapi_extra` naming the parameters it reads itself: headers
    (`header_parameter`) and query strings (`querystring.QueryString.parameters`)."""
    return {"parameters": list(parameters)}


async def streaming_work(request: Request) -> AsyncIterator[UnitOfWork]:
    """A request's second unit of work, for a streamed export: it stays open until the last
    byte is sent (the request's own ends before the response starts), and takes one of the
    worker's MAX_EXPORTS_IN_PROGRESS turns for that long (503 when none is free). Read-only
    use, so it is rolled back, never committed: a stream cut off may have left its connection
    invalidated."""
    async with (
        request.state.exports.turn(),
        session_scope(request.state.sessionmaker, begin=False) as work,
    ):
        try:
            yield work
        finally:
            await work.abandon()


StreamingWorkDep = Annotated[UnitOfWork, Depends(streaming_work)]


def read_if_match(call: Call) -> IfMatch | None:
    """The call's If-Match, or None; 400 if it is not one."""
    if_match = call.list_header("if-match")
    if if_match is None:
        return None
    try:
        return IfMatch.parse(if_match)
    except ValueError:
        raise MalformedPrecondition("If-Match") from None


def read_if_none_match(call: Call) -> str | None:
    """The call's If-None-Match, or None; 400 if it is not one."""
    if_none_match = call.list_header("if-none-match")
    if if_none_match is None or if_none_match.strip() == "*":
        return if_none_match
    try:
        check_tags(if_none_match)
    except ValueError:
        raise MalformedPrecondition("If-None-Match") from None
    return if_none_match


def read_if_unmodified_since(call: Call, if_match: IfMatch | None) -> datetime | None:
    """The call's If-Unmodified-Since, or None: without one, with If-Match (which supersedes
    it), or with one that is not an HTTP-date, several lines of it a list of dates among them
    (RFC 9110, section 13.1.4: all ignored)."""
    header = call.list_header("if-unmodified-since")
    if header is None or if_match is not None:
        return None
    return http_date(header)


def read_preconditions(call: Call) -> Preconditions | None:
    """The call's If-Match, If-None-Match and If-Unmodified-Since (400 for a tag list that is
    none), or None without any. One pass over the raw headers first, as most requests send
    none: asking for each by name cost a create 1.6% of its instructions."""
    if _PRECONDITIONS.isdisjoint([name for name, _ in call.scope["headers"]]):
        return None
    if_match = read_if_match(call)
    if_none_match = read_if_none_match(call)
    unmodified_since = read_if_unmodified_since(call, if_match)
    if if_match is None and if_none_match is None and unmodified_since is None:
        return None
    return Preconditions(if_match, if_none_match, unmodified_since)


def unmodified_since(call: Call) -> datetime | None:
    """The call's If-Unmodified-Since, for a resource judged by its time of change alone."""
    conditions = read_preconditions(call)
    return conditions.unmodified_since if conditions is not None else None


def write_precondition(call: Call) -> Preconditions | None:
    """The call's preconditions; without any, None (last write wins). Without If-Match naming
    a version, 428 if REQUIRE_IF_MATCH."""
    conditions = read_preconditions(call)
    if call.settings.require_if_match and (
        conditions is None or conditions.if_match is None or conditions.if_match.versions is None
    ):
        # `If-Match: *` holds for any version: it would meet the rule and guard nothing.
        raise PreconditionRequired
    return conditions
