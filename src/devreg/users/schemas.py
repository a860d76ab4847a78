from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, EmailStr, Field, TypeAdapter, ValidationError

from devreg.pagination import Page
from devreg.schemas import InputSchema, Schema, ShortText, UpdateSchema, storable_text
from devreg.users.models import EMAIL_MAX_LENGTH

Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX_LENGTH), AfterValidator(storable_text)]
_EMAIL = TypeAdapter(EmailStr)


def _as_stored(text: str) -> str:
    """An email written as a stored one is (its domain in Unicode, NFC, lower case): a user
    registered as `y@xn--exmple-cua.org` is stored as `y@exämple.org`. Any other text as it is."""
    try:
        return _EMAIL.validate_python(text)
    except ValidationError:
        return text


EmailText = Annotated[
    str,
    Field(min_length=1, max_length=EMAIL_MAX_LENGTH),
    AfterValidator(storable_text),
    AfterValidator(_as_stored),
]
"""An email as a filter's value: any text a stored email may be."""


class UserCreate(InputSchema):
    name: ShortText
    email: Email | None = None


class UserUpdate(UpdateSchema):
    """Only the fields sent change; `email: null` clears the email, `name` cannot be null."""

    name: ShortText = None  # type: ignore[assignment]  # may be left out, never null
    email: Email | None = None


class UserRead(Schema):
    id: int
    name: str
    email: str | None
    created_at: datetime
    updated_at: datetime


class UserPage(Page[UserRead]):
    pass
