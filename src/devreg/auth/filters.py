"""What a token listing asks for."""

from dataclasses import dataclass

from devreg.pagination import Sort

SORT_KEYS: dict[str, type] = {"id": int}
DEFAULT_SORT = Sort("id")


@dataclass(frozen=True)
class TokenFilter:
    user_id: tuple[int, ...] = ()  # any of these users'
    # Only this user's: what a non-admin token may see of the tokens.
    visible_to: int | None = None
