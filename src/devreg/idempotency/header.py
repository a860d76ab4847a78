"""The Idempotency-Key header on POST routes: claim the key before the write, record the
answer with it, or give the first answer again."""

from typing import Annotated, Any

from fastapi import Request, status
from fastapi.responses import Response
from pydantic import StringConstraints, TypeAdapter

from devreg.calls import Call, documented, header_parameter
from devreg.idempotency import service
from devreg.idempotency.models import IDEMPOTENCY_KEY, KEY_MAX_LENGTH
from devreg.idempotency.service import Answer
from devreg.problems import described_headers, problem_responses

REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = TypeAdapter(Annotated[str, StringConstraints(min_length=1, max_length=KEY_MAX_LENGTH)])

IDEMPOTENCY_KEY_HEADER = header_parameter(
    IDEMPOTENCY_KEY,
    "Retry safely: the same key with the same body within IDEMPOTENCY_KEY_LIFETIME answers as "
    "the first time, without writing again.",
    minLength=1,
    maxLength=KEY_MAX_LENGTH,
)


REPLAYED = {REPLAYED_HEADER: "`true` when this is the first answer to the Idempotency-Key again."}
"""The header a repeated key's answer has, described for a route's responses."""


def idempotent_create(**headers: str) -> dict[str, Any]:
    """A creating POST's route options: 201 with these headers, or the first answer again for
    a repeated Idempotency-Key."""
    return {
        "status_code": status.HTTP_201_CREATED,
        "responses": {
            201: {"headers": described_headers({**headers, **REPLAYED})},
            **problem_responses(409, 422),
        },
        "openapi_extra": documented(IDEMPOTENCY_KEY_HEADER),
    }


def _target(call: Call) -> str:
    """The path, and the query string when there is one (the tutorial's POST /users/?name=):
    two requests that differ in either are two requests."""
    query = call.scope["query_string"]
    return f"{call.url.path}?{query.decode('latin-1')}" if query else call.url.path


class IdempotentReplay(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class Idempotency:
    """The call's Idempotency-Key, if it has one (422 if it is empty or too long): `claim` it
    before writing, `remember` the answer after; both are no-ops without a key."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.key = call.header(IDEMPOTENCY_KEY, _KEY)
        self._claimed = False

    @property
    def _token_id(self) -> int:
        return self.call.principal.token_id or 0

    async def claim(self) -> None:
        """Hold the key in the call's transaction, or raise IdempotentReplay with the first
        answer (or a 422 when the key came with another request)."""
        if self.key is None:
            return
        call = self.call
        earlier = await service.claim_key(
            call.db,
            token_id=self._token_id,
            key=self.key,
            fingerprint=service.fingerprint(call.method, _target(call), await call.body()),
            lifetime=call.settings.idempotency_key_lifetime,
        )
        if earlier is not None:
            raise IdempotentReplay(earlier)
        self._claimed = True

    async def remember(self, response: Response, *replayed_headers: str) -> None:
        """Keep the response (its status, body and the headers named) with the claimed key, in
        the write's transaction."""
        if not self._claimed or self.key is None:
            return
        headers = {name: response.headers[name] for name in replayed_headers}
        answer = Answer(response.status_code, bytes(response.body) or None, headers)
        await service.remember_answer(
            self.call.db, token_id=self._token_id, key=self.key, answer=answer
        )


async def replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    answer = exc.answer
    headers = {**answer.headers, REPLAYED_HEADER: "true"}
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return Response(answer.body, answer.status, headers, media_type="application/json")
