import functools
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    BindParameter,
    ColumnElement,
    DateTime,
    Delete,
    FromClause,
    Insert,
    Integer,
    Join,
    Select,
    SQLColumnExpression,
    Text,
    Update,
    all_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from devreg.changes.actor import ACTING, ACTING_SQL
from devreg.db.copy import copy_out
from devreg.db.driver import (
    DriverStatement,
    fetch_row,
    violations_raised_as,
)
from devreg.db.keyset import TableListing, any_of, any_pattern, pinned
from devreg.db.rendering import Expression, JsonShape, json_object, json_string, sql_text
from devreg.db.session import UNSYNCHRONIZED
from devreg.devices.filters import CURSOR_VALUE_TYPES, NULLABLE_SORT_KEYS, RELEVANCE, DeviceFilter
from devreg.devices.models import Device
from devreg.devices.schemas import DeviceRead
from devreg.errors import SerialAlreadyRegistered, UnknownOwner
from devreg.pagination import Sort
from devreg.users.models import User

# The columns a client writes, in the order every bulk statement and file format uses, with
# the types their values arrive as.
_WRITABLE_COLUMN_TYPES = {
    "name": "text", "serial_number": "text", "model": "text", "status": "text",
    "owner_id": "bigint", "tags": "text[]", "attributes": "jsonb", "last_seen_at": "timestamptz",
}  # fmt: skip
WRITABLE_COLUMNS = tuple(_WRITABLE_COLUMN_TYPES)
WRITABLE = ", ".join(WRITABLE_COLUMNS)
WRITABLE_DEFINITIONS = ", ".join(
    f"{name} {type_}" for name, type_ in _WRITABLE_COLUMN_TYPES.items()
)

_INSERT_MANY = f"""
INSERT INTO devices ({WRITABLE})
SELECT {WRITABLE}
FROM ROWS FROM (jsonb_to_recordset(:rows) AS ({WRITABLE_DEFINITIONS}))
WITH ORDINALITY AS item({WRITABLE}, position)
WHERE {ACTING_SQL}
ORDER BY position
RETURNING id
"""  # noqa: S608 - constant SQL: values are parameters

# A key an item leaves out keeps the device's value; a key sent as null sets NULL.
# Rows are locked in id order first (`locked`), as every write of many devices locks them
# (_delete_in_id_order): two bulk writes naming the same devices in different orders would
# otherwise deadlock. Only the rows the write may touch are locked (`owner`'s, when given).
_UPDATE_MANY = f"""
WITH locked AS MATERIALIZED (
    SELECT id FROM devices
    WHERE id IN (SELECT (item->>'id')::bigint FROM jsonb_array_elements(:items) AS item)
        AND (:owner IS NULL OR owner_id = :owner)
    ORDER BY id FOR UPDATE
)
UPDATE devices AS device SET
    name = CASE WHEN item ? 'name' THEN item->>'name' ELSE device.name END,
    serial_number = CASE WHEN item ? 'serial_number' THEN item->>'serial_number'
                         ELSE device.serial_number END,
    model = CASE WHEN item ? 'model' THEN item->>'model' ELSE device.model END,
    status = CASE WHEN item ? 'status' THEN item->>'status' ELSE device.status END,
    owner_id = CASE WHEN item ? 'owner_id' THEN (item->>'owner_id')::bigint
                    ELSE device.owner_id END,
    tags = CASE WHEN item ? 'tags' THEN ARRAY(SELECT jsonb_array_elements_text(item->'tags'))
                ELSE device.tags END,
    attributes = CASE WHEN item ? 'attributes' THEN item->'attributes' ELSE device.attributes END,
    last_seen_at = CASE WHEN item ? 'last_seen_at' THEN (item->>'last_seen_at')::timestamptz
                        ELSE device.last_seen_at END
FROM jsonb_array_elements(:items) AS item JOIN locked ON locked.id = (item->>'id')::bigint
WHERE device.id = locked.id
    AND {ACTING_SQL}
RETURNING device.id
"""  # noqa: S608 - constant SQL: values are parameters


def _iso(column: SQLColumnExpression[Any]) -> ColumnElement[str]:
    """A timestamp as ISO 8601 text, as `to_json` writes it (`2026-11-23T19:24:21.12+00:00`),
    made from its plain text output (`2026-11-23 19:24:21.12+00`, the session being in UTC with
    ISO dates: db.session) at about a third of `to_json`'s cost, a third of an export's time."""
    return func.replace(cast(column, Text), sql_text(" "), sql_text("T")).concat(sql_text(":00"))


EXPORT_COLUMNS = ("id", *WRITABLE_COLUMNS, "created_at", "updated_at", "version")
_CSV_COLUMNS: list[SQLColumnExpression[Any]] = [
    column.label(name)
    for name, column in zip(
        EXPORT_COLUMNS,
        [
            Device.id, Device.name, Device.serial_number, Device.model, Device.status,
            Device.owner_id, cast(func.to_json(Device.tags), Text),
            cast(Device.attributes, Text), _iso(Device.last_seen_at), _iso(Device.created_at),
            _iso(Device.updated_at), Device.version,
        ],
        strict=True,
    )
]  # fmt: skip
_JSON_LINE = json_object(
    {
        name: json_string(_iso(column)) if isinstance(column.type, DateTime) else column
        for name in EXPORT_COLUMNS
        for column in [getattr(Device, name)]
    }
)

VIOLATIONS: dict[str, type[Exception]] = {
    "uq_devices_serial_number": SerialAlreadyRegistered,
    "fk_devices_owner_id_users": UnknownOwner,
}


class RenderedDevice(NamedTuple):
    """A device as DeviceRead's JSON, written by PostgreSQL as a listing's items are (db.rendering):
    a GET of a device neither makes the model nor writes it again, which were 7% of its CPU
    (docs/benchmarks.md). With what its ETag and Last-Modified are made of."""

    version: int
    updated_at: datetime
    json: str


# The hot paths (one device by id: read, create, change, heartbeat) are single statements run
# straight on asyncpg: one round trip each, with the owner's name joined in.
_DEVICES = Device.__table__
_READ_COLUMNS = tuple(column.key for column in _DEVICES.c if column.key != "search_text")


def _and_owners(devices: FromClause) -> Join:
    """`devices`, each with its owner (if any)."""
    return devices.outerjoin(User, User.id == devices.c.owner_id)


def _with_owner(devices: FromClause) -> Select[Any]:
    return select(
        *(devices.c[key] for key in _READ_COLUMNS), User.name.label("owner_name")
    ).select_from(_and_owners(devices))


def _written_with_owner(statement: Insert | Update) -> DriverStatement:
    """`statement`, then the written device with its owner's name, in one statement."""
    written = statement.returning(*(_DEVICES.c[key] for key in _READ_COLUMNS)).cte("written")
    return DriverStatement.compile(_with_owner(written))


def _values(columns: Iterable[str]) -> dict[str, BindParameter[Any]]:
    return {name: bindparam(name, type_=_DEVICES.c[name].type) for name in columns}


_BY_ID = bindparam("device_id", type_=BigInteger)
_READ = _with_owner(_DEVICES)
_INSERT = _written_with_owner(
    insert(Device).from_select(
        WRITABLE_COLUMNS, select(*_values(WRITABLE_COLUMNS).values()).where(ACTING)
    )
)

_IN_VERSIONS = _DEVICES.c.version == any_(bindparam("versions", type_=ARRAY(Integer)))
_NOT_IN_VERSIONS = _DEVICES.c.version != all_(bindparam("not_versions", type_=ARRAY(Integer)))
_OWNED = _DEVICES.c.owner_id == bindparam("owner", type_=BigInteger)


def _by_id(
    *, owned: bool, guarded: bool = False, excluding: bool = False
) -> list[ColumnElement[bool]]:
    """The device by id; when `owned`, only if the user bound as `owner` owns it; when
    `guarded`, only at one of the versions bound as `versions`; when `excluding`, at none of
    those bound as `not_versions`. The checks are part of the statement itself: no extra round
    trip, and no window between a check and the write."""
    return [
        _DEVICES.c.id == _BY_ID,
        *([_OWNED] if owned else []),
        *([_IN_VERSIONS] if guarded else []),
        *([_NOT_IN_VERSIONS] if excluding else []),
    ]


@functools.cache
def _get_statement(owned: bool) -> DriverStatement:
    return DriverStatement.compile(_READ.where(*_by_id(owned=owned)))


@functools.cache
def _get_json_statement(owned: bool) -> DriverStatement:
    return DriverStatement.compile(
        select(_DEVICES.c.version, _DEVICES.c.updated_at, _DEVICE_JSON.json())
        .select_from(_DEVICES_AND_OWNERS)
        .where(*_by_id(owned=owned))
    )


@functools.cache
def _version_statement(owned: bool) -> DriverStatement:
    return DriverStatement.compile(
        select(_DEVICES.c.version, _DEVICES.c.updated_at).where(*_by_id(owned=owned))
    )


@functools.cache
def _heartbeat_statement(owned: bool) -> DriverStatement:
    return DriverStatement.compile(
        update(Device)
        .where(*_by_id(owned=owned))
        .values(last_seen_at=func.now())
        .returning(Device.id)
    )


@functools.cache
def _update_statement(
    columns: tuple[str, ...], owned: bool, guarded: bool, excluding: bool
) -> DriverStatement:
    """UPDATE of these columns; one compiled statement per set of columns a client changes."""
    where = _by_id(owned=owned, guarded=guarded, excluding=excluding)
    return _written_with_owner(update(Device).where(*where, ACTING).values(_values(columns)))


@functools.cache
def _delete_statement(owned: bool, guarded: bool, excluding: bool) -> DriverStatement:
    where = _by_id(owned=owned, guarded=guarded, excluding=excluding)
    return DriverStatement.compile(delete(Device).where(*where, ACTING).returning(Device.id))


def _target(device_id: int, owner: int | None) -> dict[str, Any]:
    return {"device_id": device_id, "owner": owner}


def _guarded_target(
    device_id: int,
    owner: int | None,
    versions: frozenset[int] | None,
    not_versions: frozenset[int] | None,
) -> dict[str, Any]:
    return {
        **_target(device_id, owner),
        "versions": sorted(versions) if versions is not None else None,
        "not_versions": sorted(not_versions) if not_versions else None,
    }


def _device(values: dict[str, Any]) -> DeviceRead:
    """A device from its row's values and its owner's name."""
    owner_name = values.pop("owner_name")
    owner_id = values["owner_id"]
    values["owner"] = None if owner_id is None else {"id": owner_id, "name": owner_name}
    return DeviceRead.model_validate(values)


def _device_json(owner_id: Expression, owner_name: Expression) -> JsonShape:
    return JsonShape.of_columns(
        DeviceRead,
        _DEVICES.c,
        owner=case(
            (_DEVICES.c.owner_id.is_(None), null()),
            else_=json_object({"id": owner_id, "name": owner_name}),
        ),
    )


# A listing has its devices' owners joined in, but for one owner's devices, whose owner's name
# each device looks up: with the join, PostgreSQL merged it in the users' order, reading every
# user below the owner (16 ms for the last of 100,000). A lookup (a SubPlan) everywhere kept
# PostgreSQL from sharing a large sort between processes: q= took 1.8 s, not 1.1, at 1M devices.
# The lookup names owner_id as SQL text: a shape is compiled alone (JsonShape), where SQLAlchemy
# would add devices to the lookup's own FROM.
_OWNER_NAME = (
    select(User.name)
    .where(User.id == literal_column(f"{Device.__tablename__}.{Device.owner_id.key}"))
    .scalar_subquery()
)
_DEVICE_JSON = _device_json(User.id, User.name)
_DEVICES_AND_OWNERS = _and_owners(_DEVICES)
_ONE_OWNERS_DEVICE_JSON = _device_json(_DEVICES.c.owner_id, _OWNER_NAME)
# With `q=` and no sort: how well the device matches what was searched for.
_SEARCHED = "searched_for"
_RELEVANCE = func.word_similarity(bindparam(_SEARCHED, type_=Text), Device.search_text)


def _owned_by(owners: tuple[int, ...]) -> list[ColumnElement[bool]]:
    """Devices of one of `owners`; of one alone, `pinned`: the listing of one owner's devices
    then reads an index that begins with the owner, whichever devices are theirs."""
    if len(owners) == 1:
        return [pinned(Device.owner_id, owners[0])]
    return any_of(Device.owner_id, owners)


class DeviceRepository(TableListing[DeviceFilter]):
    """Every device it returns carries its owner's id and name, found in the same statement."""

    shape = _DEVICE_JSON
    table = Device
    sort_value_types = CURSOR_VALUE_TYPES
    nullable_sort_keys = NULLABLE_SORT_KEYS

    async def get_by_id(self, device_id: int, *, owner: int | None = None) -> DeviceRead | None:
        """The device; with `owner`, only if that user owns it."""
        return await self._one(_get_statement(owner is not None), _target(device_id, owner))

    async def get_json_by_id(
        self, device_id: int, *, owner: int | None = None
    ) -> RenderedDevice | None:
        """The device as its JSON (as get_by_id), written by PostgreSQL."""
        statement = _get_json_statement(owner is not None)
        row = await fetch_row(self.work, statement, _target(device_id, owner))
        return None if row is None else RenderedDevice(**row)

    def _source(self, filters: DeviceFilter) -> FromClause:
        return _DEVICES_AND_OWNERS if self._pinned_column(filters) is None else _DEVICES

    def _shape(self, filters: DeviceFilter) -> JsonShape:
        return _DEVICE_JSON if self._pinned_column(filters) is None else _ONE_OWNERS_DEVICE_JSON

    def _sort_key(self, sort: Sort) -> SQLColumnExpression[Any]:
        return _RELEVANCE if sort.key == RELEVANCE else super()._sort_key(sort)

    def _sort_key_values(self, sort: Sort, filters: DeviceFilter) -> Mapping[str, Any]:
        return {_SEARCHED: filters.search or ""} if sort.key == RELEVANCE else {}

    def _pinned_column(self, filters: DeviceFilter) -> SQLColumnExpression[Any] | None:
        # Devices without an owner share one owner_id too, NULL, held by IS NULL: PostgreSQL
        # does not take that column for a constant either, and read the sort's index filtering
        # out every owned device before the first unowned one (0.16-0.23 s at a million devices
        # for a batch of unowned devices added last, by id or created_at).
        one_owner = filters.visible_to is not None or len(filters.owner_id) == 1
        return Device.owner_id if one_owner or filters.has_owner is False else None

    def export(self, filters: DeviceFilter, *, as_json: bool) -> AsyncGenerator[bytes, None]:
        """Matching devices by id, written by PostgreSQL's COPY: CSV with a header, or one JSON
        object per line (as CSV with a delimiter and quote that JSON text never contains, so
        nothing is quoted or escaped)."""
        columns = [_JSON_LINE] if as_json else _CSV_COLUMNS
        statement = select(*columns).where(*self._conditions(filters)).order_by(Device.id)
        if as_json:
            return copy_out(self.session, statement, format="csv", delimiter="\x01", quote="\x02")
        return copy_out(self.session, statement, format="csv", header=True)

    def _conditions(self, filters: DeviceFilter) -> list[ColumnElement[bool]]:
        conditions = [
            *_owned_by(() if filters.visible_to is None else (filters.visible_to,)),
            *any_of(Device.status, filters.status),
            *_owned_by(filters.owner_id),
            *any_of(Device.model, filters.model),
            *any_of(Device.name, filters.name),
            *any_of(Device.serial_number, filters.serial_number),
        ]
        # search_text begins with the name, so its trigram index narrows name searches too.
        named = (Device.search_text, Device.name)
        conditions += any_pattern(named, filters.name_contains, starts_with=False)
        conditions += any_pattern(named, filters.name_starts_with, starts_with=True)
        if filters.created_after is not None:
            conditions.append(Device.created_at > filters.created_after)
        if filters.created_before is not None:
            conditions.append(Device.created_at < filters.created_before)
        if filters.last_seen_after is not None:
            conditions.append(Device.last_seen_at > filters.last_seen_after)
        if filters.last_seen_before is not None:
            conditions.append(Device.last_seen_at < filters.last_seen_before)
        if filters.tags:
            conditions.append(Device.tags.contains(list(filters.tags)))
        if filters.has_owner is not None:
            conditions.append(
                Device.owner_id.is_not(None) if filters.has_owner else Device.owner_id.is_(None)
            )
        for name, values in filters.attributes:
            conditions.append(or_(*(Device.attributes.contains({name: value}) for value in values)))
        if filters.search:
            conditions.append(Device.search_text.op("%>")(filters.search))
        return conditions

    async def add(self, values: dict[str, Any], *, actor: str) -> DeviceRead:
        """`actor`: who writes, for the change log (changes.actor)."""
        device = await self._one(_INSERT, {**values, "actor": actor})
        assert device is not None
        return device

    async def update(
        self,
        device_id: int,
        changes: dict[str, Any],
        *,
        actor: str,
        owner: int | None = None,
        versions: frozenset[int] | None = None,
        not_versions: frozenset[int] | None = None,
    ) -> DeviceRead | None:
        """The device with `changes` applied; None if it does not exist or, when `owner`,
        `versions` or `not_versions` is given, is not that user's, at none of `versions` or at
        one of `not_versions`."""
        statement = _update_statement(
            tuple(sorted(changes)), owner is not None, versions is not None, bool(not_versions)
        )
        values = {**changes, **_guarded_target(device_id, owner, versions, not_versions)}
        return await self._one(statement, {**values, "actor": actor})

    async def current_version(self, device_id: int, *, owner: int | None = None) -> int | None:
        last = await self.last_change(device_id, owner=owner)
        return last[0] if last is not None else None

    async def last_change(
        self, device_id: int, *, owner: int | None = None
    ) -> tuple[int, datetime] | None:
        """The device's version and when it was last changed (`updated_at`), or None."""
        statement = _version_statement(owner is not None)
        row = await fetch_row(self.work, statement, _target(device_id, owner))
        return (int(row["version"]), row["updated_at"]) if row is not None else None

    async def add_many(self, rows: list[dict[str, Any]], *, actor: str) -> list[int]:
        """Insert every row in one statement; ids come back in the rows' order."""
        statement = text(_INSERT_MANY).bindparams(bindparam("rows", type_=JSONB))
        with violations_raised_as(VIOLATIONS):
            ids = (await self.session.scalars(statement, {"rows": rows, "actor": actor})).all()
        # Identity values are drawn in the SELECT's (input) order, whatever order RETURNING
        # reports them in.
        return sorted(ids)

    async def unknown_owners(self, owner_ids: Iterable[int]) -> set[int]:
        """Which of `owner_ids` name no user."""
        wanted = set(owner_ids)
        found = await self.session.scalars(select(User.id).where(User.id.in_(wanted)))
        return wanted - set(found)

    async def serial_holders(
        self, serial_numbers: Iterable[str], *, owner: int | None = None
    ) -> dict[str | None, int | None]:
        """The id of the device each of `serial_numbers` is registered to, if any: None for a
        device not `owner`'s (when given), whose id must not leak."""
        holder = Device.id if owner is None else case((Device.owner_id == owner, Device.id))
        rows = await self.session.execute(
            select(Device.serial_number, holder).where(
                Device.serial_number.in_(set(serial_numbers))
            )
        )
        return {serial_number: id_ for serial_number, id_ in rows}  # noqa: C416 - Row, not tuple

    async def update_many(
        self, changes: list[dict[str, Any]], *, actor: str, owner: int | None = None
    ) -> list[int]:
        """Apply each item's changes (only the keys it has) in one statement; the ids found
        (only `owner`'s devices, when given)."""
        statement = text(_UPDATE_MANY).bindparams(
            bindparam("items", type_=JSONB), bindparam("owner", type_=BigInteger)
        )
        with violations_raised_as(VIOLATIONS):
            found = await self.session.scalars(
                statement, {"items": changes, "owner": owner, "actor": actor}
            )
        return list(found.all())

    async def delete_many(
        self, ids: list[int], *, actor: str, owner: int | None = None
    ) -> list[int]:
        owned = [] if owner is None else [Device.owner_id == owner]
        statement = _delete_in_id_order(Device.id.in_(ids), *owned).where(ACTING)
        deleted = await self.session.scalars(statement.returning(Device.id), {"actor": actor})
        return list(deleted.all())

    async def touch_last_seen(self, device_id: int, *, owner: int | None = None) -> bool:
        statement = _heartbeat_statement(owner is not None)
        found = await fetch_row(self.work, statement, _target(device_id, owner))
        return found is not None

    async def delete(
        self,
        device_id: int,
        *,
        actor: str,
        owner: int | None = None,
        versions: frozenset[int] | None = None,
        not_versions: frozenset[int] | None = None,
    ) -> bool:
        """Whether a device was deleted (only `owner`'s, at one of `versions` and none of
        `not_versions`, when given)."""
        values = {**_guarded_target(device_id, owner, versions, not_versions), "actor": actor}
        statement = _delete_statement(owner is not None, versions is not None, bool(not_versions))
        return await fetch_row(self.work, statement, values) is not None

    async def delete_by_owner(self, owner_id: int) -> None:
        await self.session.execute(
            _delete_in_id_order(Device.owner_id == owner_id), execution_options=UNSYNCHRONIZED
        )

    async def _one(
        self, statement: DriverStatement, values: Mapping[str, Any]
    ) -> DeviceRead | None:
        row = await fetch_row(self.work, statement, values, VIOLATIONS)
        return _device(dict(row)) if row is not None else None


def _delete_in_id_order(*conditions: ColumnElement[bool]) -> Delete:
    """Delete the devices meeting `conditions`, locked in id order first (see _UPDATE_MANY)."""
    locked = (
        select(Device.id)
        .where(*conditions)
        .order_by(Device.id)
        .with_for_update()
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    return delete(Device).where(Device.id.in_(select(locked.c.id)))
