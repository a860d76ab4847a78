"""The Idempotency-Key header on POST routes: claim the key before the write, record the
answer with it, or give the first answer again."""

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.auth.principal import Principal
from devreg.idempotency import service
from devreg.idempotency.models import KEY_MAX_LENGTH
from devreg.idempotency.service import Answer

REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotentReplay(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class Idempotency:
    """This request's Idempotency-Key, if it has one: `claim` it before writing, `remember`
    the answer after; both are no-ops without a key."""

    def __init__(self, request: Request, key: str | None) -> None:
        self.request = request
        self.key = key
        self._claimed: tuple[AsyncSession, int] | None = None

    async def claim(self, session: AsyncSession, principal: Principal) -> None:
        """Hold the key in the session's transaction, or raise IdempotentReplay with the
        first answer (or a 422 when the key came with another request)."""
        if self.key is None:
            return
        request = self.request
        token_id = principal.token_id or 0
        earlier = await service.claim_key(
            session,
            token_id=token_id,
            key=self.key,
            fingerprint=service.fingerprint(request.method, request.url.path, await request.body()),
            lifetime=request.app.state.settings.idempotency_key_lifetime,
        )
        if earlier is not None:
            raise IdempotentReplay(earlier)
        self._claimed = (session, token_id)

    async def remember(
        self, status: int, body: BaseModel | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Keep the answer with the claimed key, in the write's transaction."""
        if self._claimed is None or self.key is None:
            return
        session, token_id = self._claimed
        answer = Answer(status, body.model_dump(mode="json") if body else None, dict(headers or {}))
        await service.remember_answer(session, token_id=token_id, key=self.key, answer=answer)


# Only the header: the session and the principal are the route's own (a dependency's
# sub-dependencies are solved again for each dependency that names them, cached or not).
async def idempotency(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=KEY_MAX_LENGTH,
            description="Retry safely: the same key with the same body within "
            "IDEMPOTENCY_KEY_LIFETIME answers as the first time, without writing again.",
        ),
    ] = None,
) -> Idempotency:
    return Idempotency(request, idempotency_key)


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]


async def replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    answer = exc.answer
    headers = {**answer.headers, REPLAYED_HEADER: "true"}
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)
