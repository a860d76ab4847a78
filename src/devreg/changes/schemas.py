from datetime import datetime
from typing import Any

from pydantic import Field

from devreg.changes.models import Action, ObjectType
from devreg.pagination import Page
from devreg.schemas import Schema


class ChangeRead(Schema):
    id: int
    at: datetime
    object_type: ObjectType
    object_id: int
    action: Action
    user_id: int | None = Field(description="The acting token's user; none from the CLI.")
    token_id: int | None
    request_id: str | None = Field(description="The request's X-Request-ID.")
    before: dict[str, Any] | None = Field(
        description="Update: the changed fields' old values; delete: every field."
    )
    after: dict[str, Any] | None = Field(
        description="Update: the changed fields' new values; create: every field."
    )


class ChangePage(Page[ChangeRead]):
    pass
