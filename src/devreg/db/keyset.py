"""SQL for keyset pages and counts, shared by every listing."""

import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    SQLColumnExpression,
    and_,
    any_,
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

from devreg.db.driver import fetch_all
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


# The label of the sort key's value, the last column of every row fetch_page returns.
SORT_VALUE = "sort_value"


async def fetch_page(
    work: UnitOfWork,
    statement: Select[Any],
    *,
    key: SQLColumnExpression[Any],
    id_column: SQLColumnExpression[int],
    descending: bool,
    nullable: bool,
    after: Position | None,
    limit: int,
) -> list[tuple[Rendered, SortValue]]:
    """Up to limit + 1 rows of `statement` (a `JsonShape.select`) ordered by (key, id), NULL
    keys last, after `after`: each as its rendered item and its key's value, for the next
    cursor.

    Rows with a NULL key are read by a second query when the first runs out, so each part is
    one ordered index scan, in either direction.
    """
    statement = statement.add_columns(key.label(SORT_VALUE))

    def direction(column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
        return column.desc() if descending else column.asc()

    def beyond(position: Position) -> ColumnElement[bool]:
        row, mark = tuple_(key, id_column), tuple_(position.value, position.id)
        return row < mark if descending else row > mark

    async def rows_of(
        part: Select[Any], *order: ColumnElement[Any], count: int
    ) -> list[tuple[Rendered, SortValue]]:
        return rendered(await fetch_all(work, part.order_by(*order).limit(count)))

    if not nullable:
        part = statement if after is None else statement.where(beyond(after))
        return await rows_of(part, direction(key), direction(id_column), count=limit + 1)

    rows: list[tuple[Rendered, SortValue]] = []
    if after is None or after.value is not None:
        part = statement.where(key.is_not(None))
        if after is not None:
            part = part.where(beyond(after))
        rows = await rows_of(part, direction(key), direction(id_column), count=limit + 1)
        if len(rows) > limit:
            return rows
    nulls = statement.where(key.is_(None))
    if after is not None and after.value is None:
        nulls = nulls.where(id_column < after.id if descending else id_column > after.id)
    return rows + await rows_of(nulls, direction(id_column), count=limit + 1 - len(rows))


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
    table: ClassVar[Any]
    # The Python type of each sort key's values (a cursor's), and those that may be NULL.
    sort_value_types: ClassVar[dict[str, type]]
    nullable_sort_keys: ClassVar[frozenset[str]] = frozenset()

    def _conditions(self, filters: FilterT) -> Sequence[ColumnElement[bool]]:
        raise NotImplementedError

    def _source(self) -> FromClause:
        return self.table.__table__  # type: ignore[no-any-return]

    def _shape(self, filters: FilterT) -> JsonShape:
        """How the rows are written for whoever `filters` lists them for."""
        return self.shape

    def _sort_key(self, sort: Sort, filters: FilterT) -> ColumnElement[Any]:
        column: ColumnElement[Any] = getattr(self.table, sort.key)
        return column

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
        statement = (
            shape.select(fields).select_from(self._source()).where(*self._conditions(filters))
        )
        return await fetch_page(
            self.work,
            statement,
            key=self._sort_key(sort, filters),
            id_column=shape.id_column,
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
