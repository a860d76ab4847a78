from datetime import timedelta

from sqlalchemy import Integer, Interval, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from devreg.db.session import Repository
from devreg.idempotency.models import IdempotencyKey


class IdempotencyRepository(Repository):
    async def claim(
        self, token_id: int, key: str, fingerprint: bytes, *, lifetime: timedelta
    ) -> IdempotencyKey | None:
        """Claim the key for this request; None when claimed, else the earlier request's row.

        A key whose lifetime is over is claimed afresh. A key claimed by a request still in
        flight makes this wait for that request's transaction: it then answers its response
        (committed) or lets this one claim the key (rolled back)."""
        expired = IdempotencyKey.created_at < func.now() - lifetime
        statement = (
            insert(IdempotencyKey)
            .values(token_id=token_id, key=key, fingerprint=fingerprint)
            .on_conflict_do_update(
                index_elements=[IdempotencyKey.token_id, IdempotencyKey.key],
                set_={
                    "fingerprint": fingerprint,
                    "status": None,
                    "headers": None,
                    "body": None,
                    "created_at": func.now(),
                },
                where=expired,
            )
            .returning(IdempotencyKey.key)
        )
        if await self.session.scalar(statement) is not None:
            return None
        earlier = select(IdempotencyKey).where(
            IdempotencyKey.token_id == token_id, IdempotencyKey.key == key
        )
        return (await self.session.scalars(earlier)).one()

    async def remember(
        self,
        token_id: int,
        key: str,
        *,
        status: int,
        headers: dict[str, str],
        body: bytes | None,
    ) -> None:
        """Store the answer. The key's lifetime starts now, not when the request began: a retry
        waiting on a request slower than the lifetime must find its key alive."""
        await self.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key)
            .values(status=status, headers=headers, body=body, created_at=func.clock_timestamp())
        )

    async def delete_expired(self, lifetime: timedelta, *, limit: int) -> int:
        """Delete at most `limit` expired keys, the oldest first, passing over any that a
        request holds (a retry claiming its key anew): how many went."""
        result = await self.session.execute(_DELETE_EXPIRED, {"lifetime": lifetime, "limit": limit})
        return int(result.rowcount)  # type: ignore[attr-defined]


# By their row's address (a TID scan): matched by key, the batch read the whole table each time,
# a hash join (0.58 s a batch of 10,000 at a million keys, where this takes 17 ms).
_DELETE_EXPIRED = text("""
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE created_at < now() - :lifetime
    ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
))
""").bindparams(bindparam("lifetime", type_=Interval), bindparam("limit", type_=Integer))
