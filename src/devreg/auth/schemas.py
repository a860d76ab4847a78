from datetime import datetime

from pydantic import Field, StrictBool

from devreg.auth.models import TokenScope
from devreg.pagination import Page
from devreg.schemas import Duration, Id, InputSchema, Schema


class TokenCreate(InputSchema):
    user_id: Id | None = Field(
        None, description="Whose token it is; by default the caller's own user."
    )
    scope: TokenScope = Field(TokenScope.WRITE, description="`read` may only read.")
    expires_in: Duration | None = Field(
        None,
        description="e.g. `90d`, `12h` or `P90D`. By default the token never expires, or, made "
        "by a token that expires, expires with it; it may not outlive it (422).",
    )
    admin: StrictBool = Field(False, description="Sees and changes everyone's data; admins only.")


class TokenRead(Schema):
    id: int
    user_id: int
    prefix: str = Field(description="The token's first characters, to recognise it by.")
    scope: TokenScope
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The token itself: shown this once, never stored.")


class TokenPage(Page[TokenRead]):
    pass
