"""Keyset pagination: a page is `limit` rows after an opaque cursor; never all rows at once."""

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query

from devreg.errors import InvalidCursor
from devreg.schemas import BIGINT_MAX, Schema

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 1000

RowT = TypeVar("RowT")
ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class PageRequest:
    limit: int = PAGE_LIMIT_DEFAULT
    after_id: int = 0


@dataclass(frozen=True)
class PageResult(Generic[RowT]):
    items: Sequence[RowT]
    next_cursor: str | None

    @classmethod
    def from_rows(
        cls, rows: Sequence[RowT], page: PageRequest, key: Callable[[RowT], int]
    ) -> "PageResult[RowT]":
        """`rows` holds up to limit + 1 rows: the extra one only says another page exists."""
        if len(rows) <= page.limit:
            return cls(items=rows, next_cursor=None)
        items = rows[: page.limit]
        return cls(items=items, next_cursor=encode_cursor(key(items[-1])))


class Page(Schema, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None = None


def encode_cursor(last_id: int) -> str:
    payload = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """The id a page continues after; InvalidCursor for anything encode_cursor did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))["after"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise InvalidCursor from exc
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= BIGINT_MAX:
        raise InvalidCursor
    return after


def page_request(
    limit: Annotated[
        int, Query(ge=1, le=PAGE_LIMIT_MAX, description="Rows per page.")
    ] = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="`next_cursor` of the previous page."),
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after_id=decode_cursor(cursor) if cursor else 0)


PageDep = Annotated[PageRequest, Depends(page_request)]
