"""The Idempotency-Key header on POST routes: claim the key before the write, record the
answer with it, or give the first answer again."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.auth.guard import Writer
from devreg.db.session import SessionDep
from devreg.idempotency import service
from devreg.idempotency.models import KEY_MAX_LENGTH
from devreg.idempotency.service import Answer

REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotentReplay(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


@dataclass(frozen=True)
class Idempotency:
    """This request's key (None without one)."""

    session: AsyncSession
    token_id: int
    key: str | None

    async def remember(
        self, status: int, body: BaseModel | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Keep the answer with the key, in the write's transaction (nothing without a key)."""
        if self.key is None:
            return
        answer = Answer(status, body.model_dump(mode="json") if body else None, dict(headers or {}))
        await service.remember_answer(
            self.session, token_id=self.token_id, key=self.key, answer=answer
        )


async def idempotency(
    request: Request,
    session: SessionDep,
    principal: Writer,
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
    token_id = principal.token_id or 0
    if idempotency_key is not None:
        earlier = await service.claim_key(
            session,
            token_id=token_id,
            key=idempotency_key,
            fingerprint=service.fingerprint(request.method, request.url.path, await request.body()),
            lifetime=request.app.state.settings.idempotency_key_lifetime,
        )
        if earlier is not None:
            raise IdempotentReplay(earlier)
    return Idempotency(session, token_id, idempotency_key)


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]


async def replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    answer = exc.answer
    headers = {**answer.headers, REPLAYED_HEADER: "true"}
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)
