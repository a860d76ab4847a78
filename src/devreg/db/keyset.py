"""SQL for keyset pages and counts, shared by every listing."""

import enum
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    SQLColumnExpression,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable, FromClause

from devreg.db.base import Base
from devreg.db.driver import DriverStatement, fetch_all
from devreg.db.rendering import JsonShape, Rendered, rendered
from devreg.db.session import Repository, UnitOfWork
from devreg.pagination import Position, Sort, SortValue

FilterT = TypeVar("FilterT")


class _ExplainJson(Executable, ClauseElement):
    """`EXPLAIN (FORMAT JSON) <select>`, with the select's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(_ExplainJson)
def _compile_explain(element: _ExplainJson, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


# The label of the sort key's value, the last column of every row a page's statement returns.
SORT_VALUE = "sort_value"
# The parameters of a page's statement: the cursor's sort value and id, and how many rows.
_AFTER_VALUE, _AFTER_ID, _ROWS = "page_after_value", "page_after_id", "page_rows"


class _Part(enum.Enum):
    """Which rows a statement of a page reads: all of them, or (sorted by a key that may be
    NULL) those with a value, then those without."""

    ALL = "all"
    VALUED = "valued"
    NULL = "null"


class _PageStatement(NamedTuple):
    select: Select[Any]
    # Its SQL, for a page without conditions: the statement as it is, SQLAlchemy's cache key
    # (a walk of the whole statement) not needed to find it.
    compiled: DriverStatement


@functools.lru_cache(maxsize=512)
def _page_statement(
    source: FromClause,
    shape: JsonShape,
    fields: frozenset[str] | None,
    key: SQLColumnExpression[Any],
    *,
    leading: SQLColumnExpression[Any] | None,
    descending: bool,
    part: _Part,
    past_cursor: bool,
) -> _PageStatement:
    """A page's statement but for its filters' conditions, its values parameters: built once
    for every listing, sort and part of the rows; built per request, it was a seventh of a first
    page's instructions, more with a cursor (docs/benchmarks.md)."""
    id_column = shape.id_column

    def direction(column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
        return column.desc() if descending else column.asc()

    def beyond(*mark: SQLColumnExpression[Any]) -> ColumnElement[bool]:
        row = tuple_(key, id_column) if len(mark) == 2 else id_column
        cursor = tuple_(*mark) if len(mark) == 2 else mark[0]
        return row < cursor if descending else row > cursor

    after_id: BindParameter[int] = bindparam(_AFTER_ID)
    statement = shape.select(fields).select_from(source).add_columns(key.label(SORT_VALUE))
    if part is _Part.NULL:
        statement = statement.where(key.is_(None))
        if past_cursor:
            statement = statement.where(beyond(after_id))
    else:
        if part is _Part.VALUED:
            statement = statement.where(key.is_not(None))
        if past_cursor:
            statement = statement.where(beyond(bindparam(_AFTER_VALUE), after_id))
    # Rows without a key are ordered by it too, though they all have NULL: the sort's index
    # (key, id) then serves them in order, NULL being one of its conditions (IS NULL).
    order = [direction(key), direction(id_column)]
    if leading is not None:
        order.insert(0, direction(leading))
    statement = statement.order_by(*order).limit(bindparam(_ROWS, type_=Integer))
    return _PageStatement(statement, DriverStatement.compile(statement))


async def fetch_page(
    work: UnitOfWork,
    shape: JsonShape,
    fields: frozenset[str] | None,
    *,
    source: FromClause,
    conditions: Sequence[ColumnElement[bool]],
    key: SQLColumnExpression[Any],
    key_values: Mapping[str, Any],
    leading: SQLColumnExpression[Any] | None,
    descending: bool,
    nullable: bool,
    after: Position | None,
    limit: int,
) -> list[tuple[Rendered, SortValue]]:
    """Up to limit + 1 rows of `source` meeting `conditions`, ordered by (key, id), NULL keys
    last, after `after`: each as its rendered item (`shape`'s `fields`) and its key's value, for
    the next cursor. `key_values` are the key's own parameters. `leading`: a column every
    matching row has the same value in, held by a `pinned` condition (or NULL in, held by IS
    NULL): ordering by it first lets an index that begins with it serve the page.

    Rows with a NULL key are read by a second query when the first runs out, so each part is
    one ordered index scan, in either direction.
    """

    async def rows_of(
        part: _Part, past: Position | None, count: int
    ) -> list[tuple[Rendered, SortValue]]:
        statement, compiled = _page_statement(
            source,
            shape,
            fields,
            key,
            leading=leading,
            descending=descending,
            part=part,
            past_cursor=past is not None,
        )
        values = {**key_values, _ROWS: count}
        if past is not None:
            values |= {_AFTER_VALUE: past.value, _AFTER_ID: past.id}
        if conditions:
            return rendered(await fetch_all(work, statement.where(*conditions), values))
        return rendered(await fetch_all(work, statement, values, compiled=compiled))

    if not nullable:
        return await rows_of(_Part.ALL, after, limit + 1)
    rows: list[tuple[Rendered, SortValue]] = []
    if after is None or after.value is not None:
        rows = await rows_of(_Part.VALUED, after, limit + 1)
        if len(rows) > limit:
            return rows
    past_nulls = after if after is not None and after.value is None else None
    return rows + await rows_of(_Part.NULL, past_nulls, limit + 1 - len(rows))


def pinned(column: ColumnElement[Any] | QueryableAttribute[Any], value: Any) -> ColumnElement[bool]:
    """`column` equal to `value`, written as a range of that one value. With `=` PostgreSQL takes
    the column for a constant and drops it from a page's ORDER BY (see `fetch_page`'s
    `leading`); it then may read the sort's index and filter out every row before the value's
    first: at a million devices, 0.15 s for an owner whose devices were added last, where the
    index that begins with the owner serves the page in 0.2 ms."""
    return column.between(value, value)


def any_pattern(
    columns: Sequence[QueryableAttribute[str]], patterns: Iterable[str], *, starts_with: bool
) -> list[ColumnElement[bool]]:
    """Each of `columns` contains (or starts with) one of `patterns`, in any case, taken as
    plain text (`%` and `_` escaped); no condition at all when there are none."""
    patterns = list(patterns)
    if not patterns:
        return []

    def matches(column: QueryableAttribute[str], pattern: str) -> ColumnElement[bool]:
        if starts_with:
            return column.istartswith(pattern, autoescape=True)
        return column.icontains(pattern, autoescape=True)

    return [or_(*(and_(*(matches(column, p) for column in columns)) for p in patterns))]


def any_of(
    column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any]
) -> list[ColumnElement[bool]]:
    """`column` equal to one of `values`, none of which may be NULL; no condition at all when
    there are none. Several values are one array parameter (`= ANY($1)`), not an IN list of a
    parameter each: one statement, compiled and prepared once, for any number of values."""
    values = list(values)
    if not values:
        return []
    if len(values) == 1:
        return [column == values[0]]
    return [column == any_(literal(values, ARRAY(column.type)))]


class TableListing(Repository, Generic[FilterT]):
    """A repository's listing of one table's rows, written by `shape`: the `list_page` and
    `count` that pagination.paginate_listing asks for. A subclass says which rows match
    (`_conditions`); it may write them another way for some readers (`_shape`), read them
    joined to other tables (`_source`), sort by something other than a column (`_sort_key`),
    and by columns that may be NULL (`nullable_sort_keys`: those rows come last).
    `sort_value_types` types each sort key's values for its cursors."""

    shape: ClassVar[JsonShape]
    table: ClassVar[type[Base]]
    # The Python type of each sort key's values (a cursor's), and those that may be NULL.
    sort_value_types: ClassVar[dict[str, type]]
    nullable_sort_keys: ClassVar[frozenset[str]] = frozenset()

    def _conditions(self, filters: FilterT) -> Sequence[ColumnElement[bool]]:
        raise NotImplementedError

    def _source(self, filters: FilterT) -> FromClause:
        """What a page reads from, for `filters` (and the `_shape` it writes them in)."""
        return self.table.__table__

    def _shape(self, filters: FilterT) -> JsonShape:
        """How the rows are written for whoever `filters` lists them for."""
        return self.shape

    def _sort_key(self, sort: Sort) -> SQLColumnExpression[Any]:
        """The sort's SQL: the same object for every request (a page's statement is built once
        for it); its own values are parameters, which `_sort_key_values` gives."""
        column: SQLColumnExpression[Any] = getattr(self.table, sort.key)
        return column

    def _sort_key_values(self, sort: Sort, filters: FilterT) -> Mapping[str, Any]:
        return {}

    def _pinned_column(self, filters: FilterT) -> SQLColumnExpression[Any] | None:
        """The column that `filters` hold to one value with a `pinned` condition (or to NULL,
        with IS NULL), if any."""
        return None

    async def list_page(
        self,
        filters: FilterT,
        *,
        sort: Sort,
        after: Position | None,
        limit: int,
        fields: frozenset[str] | None,
    ) -> list[tuple[Rendered, SortValue]]:
        """Up to `limit` + 1 matching rows after `after` (their `fields`, or all), each with
        its sort value; the extra row says more exist."""
        shape = self._shape(filters)
        return await fetch_page(
            self.work,
            shape,
            fields,
            source=self._source(filters),
            conditions=self._conditions(filters),
            key=self._sort_key(sort),
            key_values=self._sort_key_values(sort, filters),
            leading=self._pinned_column(filters),
            descending=sort.descending,
            nullable=sort.key in self.nullable_sort_keys,
            after=after,
            limit=limit,
        )

    async def count(self, filters: FilterT, *, exact: bool) -> int:
        matching = select(self.table).where(*self._conditions(filters))
        return await count_matching(self.session, matching, exact=exact)

    async def any_match(self, filters: FilterT) -> bool:
        found = await self.session.scalar(select(exists().where(*self._conditions(filters))))
        return bool(found)


async def count_matching(session: AsyncSession, statement: Select[Any], *, exact: bool) -> int:
    """The rows `statement` selects: counted, or the planner's estimate."""
    if exact:
        return await count_rows(session, statement)
    return await estimate_rows(session, statement)


async def count_rows(session: AsyncSession, statement: Select[Any]) -> int:
    total = await session.scalar(select(func.count()).select_from(statement.subquery()))
    return int(total or 0)


async def estimate_rows(session: AsyncSession, statement: Select[Any]) -> int:
    """The planner's row estimate for `statement`: instant at any size, roughly right."""
    plan = await session.scalar(_ExplainJson(statement))
    document = json.loads(plan) if isinstance(plan, str) else plan
    return int(document[0]["Plan"]["Plan Rows"])
