"""Query-string handling shared by the listings: strict names, sparse fields, attr.<key>."""

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel

from devreg.errors import InvalidParameter
from devreg.pagination import PageRequest, PageResult

LISTING_PARAMETERS = frozenset({"limit", "cursor", "sort", "count", "fields"})

FilterT = TypeVar("FilterT")


@dataclass(frozen=True)
class Listing(Generic[FilterT]):
    """A listing request as the query string asked for it: filters, page, sparse fields."""

    filters: FilterT
    page: PageRequest
    fields: frozenset[str] | None


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
    except ValueError:
        return raw
    if isinstance(value, dict | list) or (isinstance(value, float) and not math.isfinite(value)):
        return raw
    return value


def page_response(
    page_model: type[BaseModel], result: PageResult[Any], fields: frozenset[str] | None
) -> Any:
    """The page as the declared model, or, with `fields`, only those fields of each item."""
    page = page_model.model_validate(result)
    if fields is None:
        return page
    body = page.model_dump_json(
        include={
            "items": {"__all__": set(fields)},
            "next_cursor": True,
            "total": True,
            "total_is_estimate": True,
        }
    )
    return Response(content=body, media_type="application/json")
