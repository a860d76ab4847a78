"""Who a request (or a command) acts for, and what that allows."""

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from devreg.errors import AdminRequired, ReadOnlyToken

FilterT = TypeVar("FilterT", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int | None
    token_id: int | None = None
    can_write: bool = True
    admin: bool = True
    # When the token acting expires: nothing it creates may outlive it.
    expires_at: datetime | None = None

    @property
    def owner(self) -> int | None:
        """The one user whose data this principal may see and change; None for everyone's."""
        return None if self.admin else self.user_id

    def restrict(self, filters: FilterT) -> FilterT:
        """A listing's filters (a dataclass with `visible_to`) narrowed to what this principal
        may see."""
        return filters if self.owner is None else replace(filters, visible_to=self.owner)

    def require_write(self) -> None:
        if not self.can_write:
            raise ReadOnlyToken

    def require_admin(self) -> None:
        if not self.admin:
            raise AdminRequired


# The CLI (it holds the database's credentials anyway) and the API while authentication is off.
FULL_ACCESS = Principal(user_id=None)
