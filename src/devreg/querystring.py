"""Query-string handling shared by the listings: strict names, sparse fields, attr.<key>."""

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel

from devreg.db.rendering import Rendered, json_fragments
from devreg.errors import InvalidParameter
from devreg.pagination import (
    PAGE_LIMIT_DEFAULT,
    CountMode,
    CountParam,
    CursorParam,
    Limit,
    Page,
    PageRequest,
    PageResult,
    Sort,
    page_json,
)

LISTING_PARAMETERS = frozenset({"limit", "cursor", "sort", "count", "fields"})

FilterT = TypeVar("FilterT")


@dataclass(frozen=True)
class Listing(Generic[FilterT]):
    """A listing request as the query string asked for it: filters and page."""

    filters: FilterT
    page: PageRequest


@dataclass(frozen=True)
class PageOptions:
    """The page part of a listing's query string, before the listing interprets it."""

    sort: str | None
    limit: int
    cursor: str | None
    count: CountMode
    fields: str | None

    def listing(
        self,
        filters: FilterT,
        *,
        sort_keys: Collection[str],
        default_sort: Sort,
        item: type[BaseModel],
    ) -> Listing[FilterT]:
        return Listing(
            filters=filters,
            page=PageRequest(
                limit=self.limit,
                sort=Sort.parse(self.sort, list(sort_keys), default=default_sort),
                cursor=self.cursor,
                count=self.count,
                fields=parse_fields(self.fields, item),
            ),
        )


async def page_options(
    sort: Annotated[
        str | None,
        Query(
            description="A sort key (see the errors for each listing's), `-` for descending; "
            "ties are broken by id."
        ),
    ] = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    cursor: CursorParam = None,
    count: CountParam = CountMode.NONE,
    fields: Annotated[
        str | None, Query(description="Comma-separated fields to return for each item.")
    ] = None,
) -> PageOptions:
    return PageOptions(sort=sort, limit=limit, cursor=cursor, count=count, fields=fields)


PageOptionsDep = Annotated[PageOptions, Depends(page_options)]


def reject_unknown(request: Request, known: Collection[str], *, prefix: str | None = None) -> None:
    """A misspelt filter must not be ignored: that would silently return everything."""
    for name in request.query_params:
        if name not in known and not (prefix and name.startswith(prefix)):
            raise InvalidParameter(name, f"unknown query parameter {name!r}")


def parse_fields(raw: str | None, model: type[BaseModel]) -> frozenset[str] | None:
    if raw is None:
        return None
    fields = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = sorted(fields - model.model_fields.keys())
    if not fields or unknown:
        raise InvalidParameter(
            "fields", f"fields must name fields of the item: {', '.join(model.model_fields)}"
        )
    return fields


def json_scalar(raw: str) -> Any:
    """A query value as a JSON scalar where it parses as one (7, true, null, "x"), else text."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested arrays, which are text here
        return raw
    if isinstance(value, dict | list) or (isinstance(value, float) and not math.isfinite(value)):
        return raw
    return value


def page_response(page_model: type[Page[Any]], result: PageResult[Rendered]) -> Response:
    return Response(content=page_json(page_model, result), media_type="application/json")


def items_response(items: Sequence[Rendered]) -> Response:
    """The items alone, as a JSON array."""
    return Response(content=orjson.dumps(json_fragments(items)), media_type="application/json")
