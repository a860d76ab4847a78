from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    LargeBinary,
    bindparam,
    exists,
    extract,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from devreg.auth.filters import SORT_KEYS, TokenFilter
from devreg.auth.models import ApiToken, FirstToken, TokenScope
from devreg.auth.principal import Principal
from devreg.auth.schemas import TokenRead
from devreg.db.driver import DriverStatement, fetch_row, violations_raised_as
from devreg.db.keyset import TableListing, any_of
from devreg.db.rendering import JsonShape
from devreg.errors import UnknownUser

_VIOLATIONS = {"fk_api_tokens_user_id_users": UnknownUser}

_LIVE = (
    ApiToken.revoked_at.is_(None),
    or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
)

_BY_HASH = (ApiToken.token_hash == bindparam("token_hash", type_=LargeBinary), *_LIVE)
_PRINCIPAL = (
    ApiToken.id,
    ApiToken.user_id,
    ApiToken.scope,
    ApiToken.admin,
    ApiToken.expires_at,
    extract("epoch", ApiToken.expires_at - func.now()).label("expires_in"),
)
# A cache miss's one statement: is the token live, and whose is it; the same statement notes
# that it was used.
_USE = DriverStatement.compile(
    update(ApiToken).where(*_BY_HASH).values(last_used_at=func.now()).returning(*_PRINCIPAL)
)
# The same, its use not noted: for a database that takes no writes.
_LOOK_UP = DriverStatement.compile(select(*_PRINCIPAL).where(*_BY_HASH))
_EVER_CREATED = DriverStatement.compile(select(exists(select(FirstToken.id)).label("found")))


_TOKEN_JSON = JsonShape.of_columns(TokenRead, ApiToken)


class TokenRepository(TableListing[TokenFilter]):
    shape = _TOKEN_JSON
    sort_value_types = SORT_KEYS
    table = ApiToken

    def _conditions(self, filters: TokenFilter) -> list[ColumnElement[bool]]:
        conditions = any_of(ApiToken.user_id, filters.user_id)
        if filters.visible_to is not None:
            conditions.append(ApiToken.user_id == filters.visible_to)
        return conditions

    async def add(self, values: dict[str, Any], *, expires_in: timedelta | None = None) -> ApiToken:
        """The token; `expires_in` after its creation by the database's clock, as `created_at`
        is (by the app's, a token could expire before it was made), and never after the
        `expires_at` given (the creating token's)."""
        if expires_in is not None:
            expires_at = func.least(func.now() + expires_in, values["expires_at"])
            values = {**values, "expires_at": expires_at}
        statement = insert(ApiToken).values(values).returning(ApiToken)
        with violations_raised_as(_VIOLATIONS):
            return (await self.session.scalars(statement)).one()

    async def get(self, token_id: int, *, owner: int | None) -> ApiToken | None:
        """The token, given an `owner` (a non-admin's read) only if it is that user's."""
        statement = select(ApiToken).where(ApiToken.id == token_id)
        if owner is not None:
            statement = statement.where(ApiToken.user_id == owner)
        token: ApiToken | None = await self.session.scalar(statement)
        return token

    async def revoke(self, token_id: int, *, owner: int | None, plain_only: bool) -> bytes | None:
        """Revoke the token (a no-op if it already is); its hash, or None if there is none, or
        none that `owner` holds (when given), or none but an admin token (with `plain_only`)."""
        statement = (
            update(ApiToken)
            .where(ApiToken.id == bindparam("token_id", type_=BigInteger))
            .values(revoked_at=func.coalesce(ApiToken.revoked_at, func.now()))
            .returning(ApiToken.token_hash)
        )
        if owner is not None:
            statement = statement.where(ApiToken.user_id == owner)
        if plain_only:
            statement = statement.where(ApiToken.admin.is_(False))
        digest: bytes | None = await self.session.scalar(statement, {"token_id": token_id})
        return digest

    async def hold_if_live(self, token_id: int) -> bool:
        """Whether the token is live, and if so, held so (a revocation waits) until the
        transaction ends."""
        statement = (
            select(ApiToken.id).where(ApiToken.id == token_id, *_LIVE).with_for_update(read=True)
        )
        return await self.session.scalar(statement) is not None

    async def is_admin_token_of(self, token_id: int, owner: int) -> bool:
        statement = select(
            exists().where(ApiToken.id == token_id, ApiToken.user_id == owner, ApiToken.admin)
        )
        return bool(await self.session.scalar(statement))

    async def use(self, token_hash: bytes) -> tuple[Principal, float | None] | None:
        """The live token's principal and seconds until it expires; None if it is not live."""
        return await self._verified(_USE, token_hash)

    async def look_up(self, token_hash: bytes) -> tuple[Principal, float | None] | None:
        """As `use`, without noting that the token was used: a read alone."""
        return await self._verified(_LOOK_UP, token_hash)

    async def _verified(
        self, statement: DriverStatement, token_hash: bytes
    ) -> tuple[Principal, float | None] | None:
        row = await fetch_row(self.work, statement, {"token_hash": token_hash})
        if row is None:
            return None
        principal = Principal(
            user_id=row["user_id"],
            token_id=row["id"],
            can_write=row["scope"] == TokenScope.WRITE,
            admin=row["admin"],
            expires_at=row["expires_at"],
        )
        expires_in = row["expires_in"]
        return principal, None if expires_in is None else float(expires_in)

    async def any_ever_created(self, *, held: bool = False) -> bool:
        """Whether a token has ever been created, even if none is left. `held`: and until the
        transaction ends, none is created elsewhere (its creation waits)."""
        if held:
            # Taken by no one else but such a check: a token's creation takes ROW EXCLUSIVE
            # (its trigger's insert), which waits for it; a second check, which waits too.
            await self.session.execute(text("LOCK TABLE first_token IN SHARE ROW EXCLUSIVE MODE"))
        row = await fetch_row(self.work, _EVER_CREATED, {})
        return bool(row is not None and row["found"])
