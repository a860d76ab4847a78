"""Keyset pagination: a page is `limit` rows after an opaque cursor; never all rows at once.

A cursor carries the sort key and id of the last row seen, plus a fingerprint of the filters
and sort it was made for: reused with other filters or another sort, it is refused (400)
rather than silently skipping or repeating rows.
"""

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import orjson
from pydantic import Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from devreg.db.rendering import Rendered, json_fragments
from devreg.errors import InvalidCursor, InvalidParameter
from devreg.schemas import BIGINT_MAX, Schema, storable_text

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 1000
CURSOR_MAX_LENGTH = 1024

RowT = TypeVar("RowT")
ItemT = TypeVar("ItemT")

SortValue = str | int | float | datetime | None


class CountMode(enum.StrEnum):
    NONE = "none"
    EXACT = "exact"
    ESTIMATED = "estimated"


@dataclass(frozen=True)
class Sort:
    """One sort key (ties broken by id in the same direction)."""

    key: str = "id"
    descending: bool = False

    def __str__(self) -> str:
        return f"-{self.key}" if self.descending else self.key

    @classmethod
    def parse(cls, raw: str | None, allowed: Sequence[str], *, default: "Sort") -> "Sort":
        if raw is None:
            return default
        key = raw.removeprefix("-")
        if key not in allowed:
            raise InvalidParameter(
                "sort",
                f"sort must be one of {', '.join(allowed)}, "
                "optionally prefixed with - for descending",
            )
        return cls(key=key, descending=raw.startswith("-"))


@dataclass(frozen=True)
class Position:
    """Where the previous page ended: its last row's sort value and id."""

    value: SortValue
    id: int


@dataclass(frozen=True)
class PageRequest:
    limit: int = PAGE_LIMIT_DEFAULT
    sort: Sort = field(default_factory=Sort)
    cursor: str | None = None
    count: CountMode = CountMode.NONE
    fields: frozenset[str] | None = None
    """The item's fields to return (all when None)."""


@dataclass(frozen=True)
class PageResult(Generic[RowT]):
    items: Sequence[RowT]
    next_cursor: str | None
    total: int | None = None
    total_is_estimate: bool | None = None


def _is_none(value: object) -> bool:
    return value is None


class Page(Schema, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None = None
    # Only when counted. (Not a wrap serializer: that makes a page's items Python objects
    # first, which doubled the time to write a page as JSON.)
    total: int | None = Field(
        None, description="With `count=exact` or `count=estimated`.", exclude_if=_is_none
    )
    total_is_estimate: bool | None = Field(None, exclude_if=_is_none)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Documents an item as the whole item or, with `fields=`, the fields it names: an item
        with only some of its fields must still match the schema."""
        schema = handler(core_schema)
        items = handler.resolve_ref_schema(schema)["properties"]["items"]
        whole = items["items"]
        item = handler.resolve_ref_schema(whole)
        sparse = {key: value for key, value in item.items() if key != "required"}
        sparse["title"] = f"{item['title']} (fields=)"
        sparse["description"] = "The fields `fields=` named, of the whole item's."
        items["items"] = {"anyOf": [whole, sparse]}
        return schema


def page_json(page_model: type[Page[Any]], result: "PageResult[Rendered]") -> bytes:
    """The page as JSON: its items' as PostgreSQL wrote them (db/rendering.py), in the page
    model's envelope."""
    envelope = page_model(
        items=[],
        next_cursor=result.next_cursor,
        total=result.total,
        total_is_estimate=result.total_is_estimate,
    ).model_dump(mode="json")
    envelope["items"] = json_fragments(result.items)
    return orjson.dumps(envelope)


class Cursors:
    """Makes and reads the cursors of one listing (one set of filters and one sort)."""

    def __init__(
        self,
        listing: str,
        sort: Sort,
        filters: dict[str, Any],
        value_type: type,
        *,
        nullable: bool = False,
    ) -> None:
        self.value_type = value_type
        self.nullable = nullable
        canonical = json.dumps([listing, str(sort), filters], sort_keys=True, default=_as_text)
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, position: Position) -> str:
        value = position.value
        wire = value.isoformat() if isinstance(value, datetime) else value
        # UTF-8 rather than \u escapes (12 characters for one beyond the Basic Multilingual
        # Plane): the longest name's cursor stays within the 1,024 characters a cursor may have.
        payload = json.dumps(
            [self.fingerprint, wire, position.id], separators=(",", ":"), ensure_ascii=False
        )
        return _unpadded_base64(payload.encode())

    def decode(self, cursor: str) -> Position:
        if len(cursor) > CURSOR_MAX_LENGTH:
            raise InvalidCursor
        try:
            payload = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            # The decoder skips characters outside its alphabet: only the cursor as it was
            # given out is taken, not one with something added to it.
            if _unpadded_base64(payload) != cursor:
                raise InvalidCursor
            fingerprint, wire, row_id = json.loads(payload)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise InvalidCursor from exc
        if fingerprint != self.fingerprint:
            raise InvalidCursor(
                "The cursor was made for other filters or another sort; "
                "start again without a cursor."
            )
        if not _is_id(row_id):
            raise InvalidCursor
        return Position(value=self._value(wire), id=row_id)

    def _value(self, wire: Any) -> SortValue:
        if wire is None:
            if not self.nullable:
                raise InvalidCursor
            return None
        # Cursors are not signed: a value must be one a row could hold, or it would reach the
        # statement (a time beyond year 9999 in UTC, a lone surrogate, NUL).
        try:
            if self.value_type is datetime:
                parsed = datetime.fromisoformat(wire)
                if parsed.tzinfo is None:
                    raise InvalidCursor
                return parsed.astimezone(UTC)
            if self.value_type is float and type(wire) in (int, float):  # not a bool
                # Relevance, a similarity: NaN sorts after every number (page 1 again), and a
                # value beyond a PostgreSQL real's range was the statement's 422.
                value = float(wire)
                if not 0 <= value <= 1:
                    raise InvalidCursor
                return value
            if self.value_type is str and isinstance(wire, str):
                storable_text(wire)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCursor from exc
        if type(wire) is not self.value_type or (self.value_type is int and not _is_id(wire)):
            raise InvalidCursor
        return cast(SortValue, wire)


def describe_filters(filters: Any) -> dict[str, Any]:
    """A filters dataclass's filters in use, as JSON-able data: what a cursor's fingerprint is
    made of."""
    values = ((member.name, getattr(filters, member.name)) for member in fields(filters))
    return {name: _distinct(value) for name, value in values if value not in ((), None)}


def _as_text(value: Any) -> str:
    """A filter's value that JSON has no type for, as text; an instant in UTC, so that the same
    instant written with another offset is the same filter."""
    if isinstance(value, datetime):
        value = value.astimezone(UTC)
    return str(value)


def _distinct(value: Any) -> Any:
    """A filter's values as a set, which matches the same rows in any order and with repeats
    (`status=retired&status=active&status=active` is `status=active&status=retired`): without
    repeats, ordered by their JSON text, by which they are told apart (1 and true stay two
    attribute values)."""
    if not isinstance(value, tuple):
        return value
    items = (_distinct(item) for item in value)
    return [item for _, item in sorted({json.dumps(i, default=str): i for i in items}.items())]


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= BIGINT_MAX


class ListingFilters(Protocol):
    """A listing's filters: a dataclass, restricted to one user's rows by `visible_to` for a
    non-admin token (auth.principal.Principal.restrict)."""

    @property
    def visible_to(self) -> int | None: ...


FilterT_contra = TypeVar("FilterT_contra", contravariant=True)
FilterT = TypeVar("FilterT", bound=ListingFilters)


class Listable(Protocol[FilterT_contra]):
    """A repository that lists pages of rendered rows and counts them (db.keyset.TableListing);
    rows with a NULL value of a `nullable_sort_keys` key come last."""

    @property
    def sort_value_types(self) -> dict[str, type]: ...

    @property
    def nullable_sort_keys(self) -> frozenset[str]: ...

    async def list_page(
        self,
        filters: FilterT_contra,
        *,
        sort: Sort,
        after: Position | None,
        limit: int,
        fields: frozenset[str] | None,
    ) -> Sequence[tuple[Rendered, SortValue]]: ...

    async def count(self, filters: FilterT_contra, *, exact: bool) -> int: ...


async def paginate_listing(
    listing: str,
    repository: Listable[FilterT],
    filters: FilterT,
    page: PageRequest,
) -> PageResult[Rendered]:
    """One page of `listing` (its name keeps its cursors apart from other listings'): up to
    `limit` rows after the cursor's, and a cursor for the next page when the repository found
    one more. The total, when asked for, is counted, unless the first page is every matching
    row (an estimate could say otherwise); it is estimated only when asked for in a listing of
    everyone's rows."""
    sort = page.sort
    nullable = sort.key in repository.nullable_sort_keys
    value_type = repository.sort_value_types[sort.key]
    cursors = Cursors(listing, sort, describe_filters(filters), value_type, nullable=nullable)
    # An empty cursor too is one no page gave: read as none, a client writing a last page's
    # null as "" would be given the first page again, and again.
    after = cursors.decode(page.cursor) if page.cursor is not None else None
    rows = await repository.list_page(
        filters, sort=sort, after=after, limit=page.limit, fields=page.fields
    )
    items = [row for row, _ in rows[: page.limit]]
    next_cursor = None
    if len(rows) > page.limit:
        last, last_value = rows[page.limit - 1]
        next_cursor = cursors.encode(Position(value=last_value, id=last.id))
    if page.count is CountMode.NONE:
        return PageResult(items=items, next_cursor=next_cursor)
    if page.cursor is None and next_cursor is None:
        return PageResult(items=items, next_cursor=None, total=len(items), total_is_estimate=False)
    # The planner estimates from statistics of every row, other users' too: one user's listing
    # is counted, so that its total tells nothing of what others hold.
    exact = page.count is CountMode.EXACT or filters.visible_to is not None
    total = await repository.count(filters, exact=exact)
    return PageResult(
        items=items,
        next_cursor=next_cursor,
        # The planner's estimate may be below the rows this page has seen: it is at least those.
        total=total if exact else max(total, len(rows)),
        total_is_estimate=not exact,
    )


def _unpadded_base64(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
