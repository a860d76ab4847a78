"""Rows written as JSON by PostgreSQL in a response model's shape.

A listing's page is rendered by the database: Python only places each row's JSON text in the
page, where validating and serialising a hundred rows through SQLAlchemy and Pydantic took about
nine tenths of the page's CPU (docs/benchmarks.md). The JSON is the model's: the same keys in
the same order, timestamps written as Pydantic writes them; tests compare each listing with the
model's own serialisation.
"""

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Enum,
    Integer,
    Select,
    SQLColumnExpression,
    Text,
    cast,
    func,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.orm import QueryableAttribute

from devreg.db.driver import DIALECT

# What a JSON shape's values are: columns, mapped attributes and SQL expressions.
Expression = ColumnElement[Any] | QueryableAttribute[Any]


class Rendered(NamedTuple):
    """A listed row: its id (for the next page's cursor) and its JSON text."""

    id: int
    json: str


def sql_text(value: str) -> ColumnElement[Any]:
    """A constant of ours (a field name, a format) as an SQL string literal."""
    return literal_column("'" + value.replace("'", "''") + "'")


def instant(column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
    """A timestamp as Pydantic writes it, a JSON string: UTC with `Z`, microseconds only when
    there are any."""
    utc = func.timezone(sql_text("UTC"), column)
    written = func.to_char(utc, sql_text('YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    return json_string(func.replace(written, sql_text(".000000Z"), sql_text("Z")))


def json_string(plain: ColumnElement[Any]) -> ColumnElement[Any]:
    """Text in which nothing needs escaping (no quote, backslash or control character: a
    timestamp, say) as a JSON string, in quotes: cheaper than `to_json`."""
    return type_coerce(_concatenated([sql_text('"'), plain, sql_text('"')]), JSON)


def json_text(value: Expression) -> ColumnElement[str]:
    """`value` as JSON text (`null` when NULL): a number or boolean as PostgreSQL writes it, a
    JSON value as it is, one of an enum's plain values in quotes, anything else (text, arrays)
    as `to_json` writes it."""
    written: ColumnElement[Any]
    if isinstance(value.type, Integer | Boolean | JSON):
        written = cast(value, Text)
    elif _holds_only_plain_values(value.type):
        # A device's status: to_json was a tenth of an export's time in PostgreSQL.
        written = json_string(cast(value, Text))
    else:
        written = cast(func.to_json(value), Text)
    return func.coalesce(written, sql_text("null"))


def _holds_only_plain_values(type_: Any) -> bool:
    """Whether a column of `type_` can hold only values that need no escaping in JSON: an enum
    the database holds to its values (a native one, or one with its CHECK constraint)."""
    return (
        isinstance(type_, Enum)
        and bool(type_.native_enum or type_.create_constraint)
        and all(json.dumps(value) == f'"{value}"' for value in type_.enums)
    )


def json_object(values: Mapping[str, Expression]) -> ColumnElement[Any]:
    """A JSON object of these keys and values, in this order, as JSON text (typed JSON).

    Put together with `||` rather than by json_build_object, which looks up how to write each
    of its arguments on every row: that made rendering a listing's rows two and a half times
    the work for PostgreSQL (docs/benchmarks.md)."""
    parts: list[ColumnElement[Any]] = []
    for position, (key, value) in enumerate(values.items()):
        opening = "{" if position == 0 else ","
        parts += [sql_text(f"{opening}{json.dumps(key)}:"), json_text(value)]
    parts.append(sql_text("}" if values else "{}"))
    return type_coerce(_concatenated(parts), JSON)


def _concatenated(parts: Sequence[ColumnElement[Any]]) -> ColumnElement[Any]:
    """`a || b || ...`: concat() too looks up how to write each argument on every row."""
    return functools.reduce(lambda text, part: text.op("||")(part), parts)


class JsonShape:
    """A response model's fields as SQL expressions: the JSON text of a row in the model's
    shape, or in the shape of some of its fields (a listing's `fields=`)."""

    def __init__(
        self,
        model: type[BaseModel],
        values: Mapping[str, Expression],
        *,
        id_column: SQLColumnExpression[int],
    ):
        if list(values) != list(model.model_fields):
            raise TypeError(f"{model.__name__}'s fields, in order, are {list(model.model_fields)}")
        self.values = values
        self.id_column = id_column

    @classmethod
    def of_columns(
        cls,
        model: type[BaseModel],
        columns: Any,
        **others: Expression,
    ) -> "JsonShape":
        """`model`'s fields as the `columns` of the same names (a table's `.c`, or its mapped
        class), timestamps written as instants; `others` for the fields that are something
        else. The row's id is the `id` column."""
        values: dict[str, Expression] = {}
        for name in model.model_fields:
            if name in others:
                values[name] = others[name]
                continue
            column = getattr(columns, name)
            values[name] = instant(column) if isinstance(column.type, DateTime) else column
        return cls(model, values, id_column=columns.id)

    def select(self, fields: frozenset[str] | None = None) -> Select[Any]:
        """Each row's id and its JSON text (`rendered` reads the rows)."""
        columns: tuple[SQLColumnExpression[Any], ...] = (self.id_column, self.json(fields))
        return select(*columns)

    def json(self, fields: frozenset[str] | None = None) -> ColumnElement[str]:
        """A row's JSON text, as the column `json`."""
        return self._json_of(fields)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - shapes live as long as the process
    def _json_of(self, fields: frozenset[str] | None = None) -> ColumnElement[str]:
        if fields is not None and not fields <= self.values.keys():
            raise ValueError(f"not fields of the shape: {sorted(fields - self.values.keys())}")
        chosen = {
            name: value for name, value in self.values.items() if fields is None or name in fields
        }
        # Compiled to SQL text once: as an expression of a hundred elements or so, SQLAlchemy would
        # walk it for the statement's cache key on every execution, at about as much again as
        # building and keying the rest of a page's statement. The text names its tables as
        # they are: a statement using it selects from them under those names (not aliased).
        compiled = json_object(chosen).compile(dialect=DIALECT)
        if compiled.binds:
            raise TypeError("a JSON shape is made of columns and constants only")
        return literal_column(str(compiled), Text).label("json")


def rendered(rows: Iterable[Sequence[Any]]) -> list[tuple[Rendered, Any]]:
    """Rows of `JsonShape.select` with a sort value added last (keyset.fetch_page), as listed
    items and their sort values. (Rendered's fields given by position: by name, a NamedTuple
    takes twice as long to make, 20 µs more for a page of 100.)"""
    return [(Rendered(row[0], row[1]), row[2]) for row in rows]


def json_fragments(items: Sequence[Rendered]) -> list[orjson.Fragment]:
    """Rendered items as orjson places them in a document, unparsed."""
    return [orjson.Fragment(item.json) for item in items]
