"""Idempotent writes: a retried request with the same Idempotency-Key gets the first answer.
Services never commit: the caller's session scope does, writing the key, the write and the
answer together, or none of them."""

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta

from devreg.db.session import SessionMaker, UnitOfWork, session_scope
from devreg.errors import IdempotencyKeyReused
from devreg.idempotency.models import IDEMPOTENCY_KEY
from devreg.idempotency.repository import IdempotencyRepository


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What identifies a request for its key: method, path and body (JSON compared by value,
    so key order and spacing do not matter; anything else, nested too deep for that included,
    byte for byte)."""
    try:
        content = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        content = body
    return hashlib.sha256(b"\n".join([method.encode(), path.encode(), content])).digest()


async def claim_key(
    work: UnitOfWork, *, token_id: int, key: str, fingerprint: bytes, lifetime: timedelta
) -> Answer | None:
    """None: this request holds the key now and goes ahead. Otherwise the first request's
    answer, to give again without writing anything."""
    earlier = await IdempotencyRepository(work).claim(token_id, key, fingerprint, lifetime=lifetime)
    if earlier is None:
        return None
    if earlier.fingerprint != fingerprint:
        raise IdempotencyKeyReused(field=IDEMPOTENCY_KEY, part="header")
    return Answer(status=earlier.status or 200, body=earlier.body, headers=earlier.headers or {})


async def remember_answer(work: UnitOfWork, *, token_id: int, key: str, answer: Answer) -> None:
    await IdempotencyRepository(work).remember(
        token_id, key, status=answer.status, headers=answer.headers, body=answer.body
    )


SWEEP_BATCH = 10_000
"""Expired keys deleted by one statement, each batch in a transaction of its own: one DELETE
of them all (a million took 1.4 s here) ran past a STATEMENT_TIMEOUT of a second and was
cancelled, every hour, while they grew, and held a request that claims an expired key anew
until it ended."""


async def forget_expired(work: UnitOfWork, *, lifetime: timedelta) -> int:
    """Delete expired keys, at most SWEEP_BATCH of them: how many went (fewer than
    SWEEP_BATCH: none is left but those a request holds)."""
    return await IdempotencyRepository(work).delete_expired(lifetime, limit=SWEEP_BATCH)


async def forget_all_expired(sessionmaker: SessionMaker, *, lifetime: timedelta) -> int:
    """Delete every expired key, a batch a transaction: how many went."""
    forgotten = 0
    while True:
        async with session_scope(sessionmaker) as work:
            batch = await forget_expired(work, lifetime=lifetime)
        forgotten += batch
        if batch < SWEEP_BATCH:
            return forgotten
