"""A route's query string read strictly (unknown names and repeats refused, sparse fields,
JSON scalars for `attr.<key>`), and a listing's answer written (pagination.page_json, in a
Response: here, not in pagination, which the CLI loads without the web framework)."""

import json
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, get_origin

import orjson
from annotated_types import MaxLen
from fastapi import Request, Response
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo

from devreg.db.rendering import Rendered, json_fragments
from devreg.errors import InvalidParameter
from devreg.pagination import (
    CURSOR_MAX_LENGTH,
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    CountMode,
    Page,
    PageRequest,
    PageResult,
    Sort,
    page_json,
)
from devreg.problems import request_validation_error
from devreg.schemas import REPEATS_MAX, NamePattern, in_digits

FilterT = TypeVar("FilterT")


@dataclass(frozen=True)
class Listing(Generic[FilterT]):
    """A listing request as the query string asked for it: filters and page."""

    filters: FilterT
    page: PageRequest


class PageQuery(BaseModel):
    """The page part of every listing's query string."""

    sort: str | None = Field(
        None,
        description="A sort key, `-` before it for descending; ties are broken by id.",
    )
    limit: Annotated[int, BeforeValidator(in_digits)] = Field(
        PAGE_LIMIT_DEFAULT, ge=1, le=PAGE_LIMIT_MAX, description="Rows per page."
    )
    # Its length is checked with the rest of it, as a bad cursor (400), by Cursors.decode.
    cursor: str | None = Field(
        None,
        description="`next_cursor` of the previous page.",
        json_schema_extra={"maxLength": CURSOR_MAX_LENGTH},
    )
    count: CountMode = Field(
        CountMode.NONE,
        description="Add the total: `exact` counts, `estimated` asks the planner (fast).",
    )
    fields: str | None = Field(None, description="Comma-separated fields to return for each item.")


QueryT = TypeVar("QueryT", bound=BaseModel)
PageQueryT = TypeVar("PageQueryT", bound=PageQuery)


class QueryString(Generic[QueryT]):
    """A route's query string read as one model, its fields the parameters (a list or tuple
    field may be repeated), documented in the OpenAPI schema as FastAPI documents parameters.

    The listings read their query strings this way, not as FastAPI parameters: FastAPI solves
    each declared parameter on its own, present or not, at about 70,000 instructions apiece;
    a device listing has 19. Unknown names are refused (400) unless they begin with `prefix`,
    which the route reads itself."""

    sorts: Sequence[str] = ()
    """What a listing's `sort` takes, documented as such (its field only says text)."""

    def __init__(self, model: type[QueryT], *, prefix: str | None = None) -> None:
        self.model = model
        self.prefix = prefix
        # How many times each repeatable parameter may be given.
        self.repeatable = {
            name: _most_values(field)
            for name, field in model.model_fields.items()
            if get_origin(field.annotation) in (list, tuple)
        }

    def __call__(self, request: Request) -> QueryT:
        params = request.query_params
        values = {
            name: params.getlist(name) if name in self.repeatable else params[name]
            for name in params
            if name in self.model.model_fields
        }
        # Too many values is the parameter's 400 whatever its limit: `name__ic`'s ten were the
        # model's 422, `status`'s hundred a 400.
        if len(params.multi_items()) > len(params):
            _reject_repeats(params.multi_items(), self.model.model_fields, self.repeatable)
        _reject_many_prefixed(params.multi_items(), prefix=self.prefix)
        try:
            query = self.model.model_validate(values)
        except ValidationError as exc:
            raise request_validation_error(exc, "query") from None
        _reject_unknown(request, self.model.model_fields, prefix=self.prefix)
        return query

    def parameters(self) -> list[dict[str, Any]]:
        """The OpenAPI parameters (for a route's `openapi_extra`, see calls.documented)."""
        schema = self.model.model_json_schema()
        definitions = schema.get("$defs", {})
        required = schema.get("required", ())
        return [
            {
                "name": name,
                "in": "query",
                "required": name in required,
                **({"description": field["description"]} if "description" in field else {}),
                "schema": (
                    {"type": "string", "enum": self.sorts}
                    if name == "sort" and self.sorts
                    else self._bounded(name, _inlined(field, definitions))
                ),
            }
            for name, field in schema["properties"].items()
        ]

    def _bounded(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """A repeatable parameter's schema says how many times it may be given."""
        if name not in self.repeatable:
            return schema
        return {**schema, "maxItems": self.repeatable[name]}


class ListingQueryString(QueryString[PageQueryT]):
    """A listing's query string: its filters, and which page of `item`s it asks for, sorted by
    one of `sort_keys` (`default_sort` when it names none)."""

    def __init__(
        self,
        model: type[PageQueryT],
        *,
        item: type[BaseModel],
        sort_keys: Collection[str],
        default_sort: Sort,
        prefix: str | None = None,
    ) -> None:
        super().__init__(model, prefix=prefix)
        self.item = item
        self.sort_keys = list(sort_keys)
        self.default_sort = default_sort
        self.sorts = [f"{descending}{key}" for key in sort_keys for descending in ("", "-")]

    def page(self, query: PageQueryT, *, default_sort: Sort | None = None) -> PageRequest:
        """`default_sort`: this request's, when it is not the listing's (a search's relevance)."""
        return PageRequest(
            limit=query.limit,
            sort=Sort.parse(query.sort, self.sort_keys, default=default_sort or self.default_sort),
            cursor=query.cursor,
            count=query.count,
            fields=parse_fields(query.fields, self.item),
        )


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with its references to `definitions` replaced by what they name."""
    if isinstance(schema, list):
        return [_inlined(part, definitions) for part in schema]
    if not isinstance(schema, dict):
        return schema
    reference = schema.get("$ref")
    if reference is not None:
        named = definitions[reference.rsplit("/", 1)[-1]]
        schema = {**named, **{key: value for key, value in schema.items() if key != "$ref"}}
    return {key: _inlined(value, definitions) for key, value in schema.items()}


PATTERNS_MAX = 10
NamePatterns = Annotated[tuple[NamePattern, ...], Field(max_length=PATTERNS_MAX)]
"""The values of `name__ic` or `name__isw`, fewer: each is a search of its own."""


def _most_values(field: FieldInfo) -> int:
    limits = [limit.max_length for limit in field.metadata if isinstance(limit, MaxLen)]
    return min([REPEATS_MAX, *limits])


def _reject_repeats(
    items: Sequence[tuple[str, str]], known: Collection[str], repeatable: Mapping[str, int]
) -> None:
    """A parameter given twice must not quietly mean its last value, and a repeatable one
    must not make one request a statement of thousands of conditions."""
    times = Counter(name for name, _ in items if name in known)
    for name, count in times.items():
        most = repeatable.get(name, 1)
        if count > most == 1:
            raise InvalidParameter(name, f"query parameter {name!r} may be given only once")
        if count > most:
            raise InvalidParameter(
                name, f"query parameter {name!r} may be given at most {most} times"
            )


def _reject_many_prefixed(items: Sequence[tuple[str, str]], *, prefix: str | None) -> None:
    """Parameters beginning with `prefix` (`attr.<key>`) count together against REPEATS_MAX."""
    if prefix is None:
        return
    prefixed = [name for name, _ in items if name.startswith(prefix)]
    if len(prefixed) > REPEATS_MAX:
        raise InvalidParameter(
            prefixed[-1], f"at most {REPEATS_MAX} query parameters may begin with {prefix!r}"
        )


def _reject_unknown(request: Request, known: Collection[str], *, prefix: str | None) -> None:
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
