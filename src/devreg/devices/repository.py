import functools
import re
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
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
    driver_connection,
    echo,
    fetch_row,
    violations_raised_as,
)
from devreg.db.keyset import TableListing, any_of, any_pattern, pinned
from devreg.db.rendering import Expression, JsonShape, json_object, json_string, sql_text
from devreg.db.session import UNSYNCHRONIZED
from devreg.devices.filters import CURSOR_VALUE_TYPES, NULLABLE_SORT_KEYS, RELEVANCE, DeviceFilter
from devreg.devices.models import Device
from devreg.devices.schemas import DeviceRead, OnConflict
from devreg.errors import SerialAlreadyRegistered, UnknownOwner, UnstorableCharacter
from devreg.pagination import Sort
from devreg.users.models import User

# The columns a client writes, in the order every bulk statement and file format uses, with
# the types their values arrive as.
_WRITABLE_COLUMN_TYPES = {
    "name": "text", "serial_number": "text", "model": "text", "status": "text",
    "owner_id": "bigint", "tags": "text[]", "attributes": "jsonb", "last_seen_at": "timestamptz",
}  # fmt: skip
_WRITABLE_COLUMNS = tuple(_WRITABLE_COLUMN_TYPES)
_WRITABLE = ", ".join(_WRITABLE_COLUMNS)
_WRITABLE_DEFINITIONS = ", ".join(
    f"{name} {type_}" for name, type_ in _WRITABLE_COLUMN_TYPES.items()
)

_INSERT_MANY = f"""
INSERT INTO devices ({_WRITABLE})
SELECT {_WRITABLE}
FROM ROWS FROM (jsonb_to_recordset(:rows) AS ({_WRITABLE_DEFINITIONS}))
WITH ORDINALITY AS item({_WRITABLE}, position)
WHERE {ACTING_SQL}
ORDER BY position
RETURNING id
"""  # noqa: S608 - constant SQL: values are parameters

# The import's staging table, named for asyncpg's COPY; the statements below spell it out.
_STAGING_TABLE = "device_import"
_STAGING_COLUMNS = ["line", *_WRITABLE_COLUMNS, "given"]
# Where COPY met a value it could not take, as its error's context says: "COPY device_import,
# line 3, column name" (the row of the records sent, from 1).
_COPIED_ROW = re.compile(r"\bline (?P<row>\d+), column (?P<column>\w+)")
# The row's line, its writable fields, then which of them the file gives (an update changes only
# those), comma-separated: a list would be written as an array, at some cost for each row.
ImportRecord = tuple[
    int, str, str | None, str | None, str, int | None, list[str], str, datetime | None, str
]
# One batch of the file at a time; the serial numbers of every batch so far, to find a repeat.
_CREATE_STAGING = (
    f"""
CREATE TEMP TABLE device_import (line bigint, {_WRITABLE_DEFINITIONS}, given text) ON COMMIT DROP
""",
    """
CREATE TEMP TABLE device_import_serial (serial_number text PRIMARY KEY, line bigint NOT NULL)
ON COMMIT DROP
""",
)
_INDEX_STAGED_SERIALS = "CREATE INDEX ON device_import (serial_number)"
_EMPTY_STAGING = "TRUNCATE device_import"
_COPY_TO_STAGING = (
    f"COPY {_STAGING_TABLE} ({', '.join(_STAGING_COLUMNS)}) FROM STDIN (FORMAT binary)"
)
# Remembers the batch's serial numbers; the first line whose serial number came earlier.
_FIRST_REPEATED_SERIAL = """
WITH first_seen AS (
    INSERT INTO device_import_serial
    SELECT serial_number, line FROM device_import
    WHERE serial_number IS NOT NULL ORDER BY line
    ON CONFLICT (serial_number) DO NOTHING
    RETURNING line
)
SELECT min(line) FROM device_import
WHERE serial_number IS NOT NULL AND line NOT IN (SELECT line FROM first_seen)
"""
# Why a staged batch broke a constraint: run only then, so its plan is never on the hot path.
_STAGED_PROBLEMS = """
SELECT line, 'owner_id does not name an existing user' AS reason
FROM device_import AS staged
WHERE owner_id IS NOT NULL AND NOT EXISTS (SELECT FROM users WHERE users.id = staged.owner_id)
"""
_STAGED_ALREADY_REGISTERED = """
UNION ALL
SELECT line, 'serial_number is already registered'
FROM device_import AS staged JOIN devices USING (serial_number)
"""
# {} is the ON CONFLICT clause (_ON_CONFLICT).
_INSERT_STAGED = f"""
WITH written AS (
    INSERT INTO devices ({_WRITABLE})
    SELECT {_WRITABLE} FROM device_import ORDER BY line
    {{}}
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM written
"""  # noqa: S608 - constant SQL
_UPDATED_BY_IMPORT = tuple(column for column in _WRITABLE_COLUMNS if column != "serial_number")
_GIVEN_OR_KEPT = ", ".join(
    f"CASE WHEN '{column}' = ANY(string_to_array(staged.given, ',')) THEN EXCLUDED.{column} "
    f"ELSE devices.{column} END"
    for column in _UPDATED_BY_IMPORT
)
# Where the conflicting serial number's staged row is read from.
_STAGED_FOR_CONFLICT = (
    "FROM device_import AS staged WHERE staged.serial_number = EXCLUDED.serial_number"
)
_ON_CONFLICT = {
    OnConflict.ERROR: "",
    OnConflict.SKIP: "ON CONFLICT (serial_number) DO NOTHING",
    # A field the file leaves out (a CSV column it lacks, a key an NDJSON line lacks) keeps the
    # device's value, as in a PATCH. In the insert's own statement: a device another
    # transaction is inserting at the same time is waited for and then updated, not skipped.
    # A device the row would not change is left as it is (not written, nor counted updated).
    OnConflict.UPDATE: f"""ON CONFLICT (serial_number) DO UPDATE
SET ({", ".join(_UPDATED_BY_IMPORT)}) = (SELECT {_GIVEN_OR_KEPT} {_STAGED_FOR_CONFLICT})
WHERE ROW({", ".join(f"devices.{column}" for column in _UPDATED_BY_IMPORT)})
    IS DISTINCT FROM (SELECT ROW({_GIVEN_OR_KEPT}) {_STAGED_FOR_CONFLICT})""",  # noqa: S608
}

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


EXPORT_COLUMNS = ("id", *_WRITABLE_COLUMNS, "created_at", "updated_at", "version")
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

_VIOLATIONS: dict[str, type[Exception]] = {
    "uq_devices_serial_number": SerialAlreadyRegistered,
    "fk_devices_owner_id_users": UnknownOwner,
}

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
        _WRITABLE_COLUMNS, select(*_values(_WRITABLE_COLUMNS).values()).where(ACTING)
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
        with violations_raised_as(_VIOLATIONS):
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
        with violations_raised_as(_VIOLATIONS):
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

    async def create_import_staging(self, on_conflict: OnConflict) -> None:
        for statement in _CREATE_STAGING:
            await self.session.execute(text(statement))
        if on_conflict is OnConflict.UPDATE:  # each update finds its staged row by serial number
            await self.session.execute(text(_INDEX_STAGED_SERIALS))

    async def stage(self, records: Sequence[ImportRecord]) -> None:
        """Replace the staged batch: COPY (binary) on this session's connection and transaction."""
        connection = await driver_connection(self.session)
        echo(_EMPTY_STAGING)
        await connection.execute(_EMPTY_STAGING)
        echo(_COPY_TO_STAGING)
        try:
            await connection.copy_records_to_table(
                _STAGING_TABLE, records=records, columns=_STAGING_COLUMNS
            )
        except asyncpg.UntranslatableCharacterError as exc:
            encoding = connection.get_settings().server_encoding
            copied = _COPIED_ROW.search(exc.context or "")
            if copied is None:  # PostgreSQL's messages in another language
                raise UnstorableCharacter(encoding) from None
            line = records[int(copied["row"]) - 1][0]
            raise UnstorableCharacter(encoding, line=line, column=copied["column"]) from None

    async def first_repeated_serial(self) -> int | None:
        """The staged batch's first line whose serial number an earlier line (of this batch or
        an earlier one) has. Remembers the batch's serial numbers: call it once per batch."""
        line = await self.session.scalar(text(_FIRST_REPEATED_SERIAL))
        return int(line) if line is not None else None

    async def find_import_problem(self, *, check_existing: bool) -> tuple[int, str] | None:
        """The staged batch's first row that breaks a constraint, as (line, reason)."""
        query = _STAGED_PROBLEMS + (_STAGED_ALREADY_REGISTERED if check_existing else "")
        row = (await self.session.execute(text(query + " ORDER BY line LIMIT 1"))).first()
        return (int(row.line), str(row.reason)) if row else None

    async def insert_from_staging(self, on_conflict: OnConflict) -> tuple[int, int]:
        """Write the staged batch in one statement: (inserted, updated). Raises UnknownOwner, or
        (with OnConflict.ERROR) SerialAlreadyRegistered, for some row: find_import_problem says
        which."""
        statement = _INSERT_STAGED.format(_ON_CONFLICT[on_conflict])
        with violations_raised_as(_VIOLATIONS):
            row = (await self.session.execute(text(statement))).one()
        return int(row.inserted), int(row.updated)

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
        return await fetch_row(self.work, statement, values, _VIOLATIONS) is not None

    async def delete_by_owner(self, owner_id: int) -> None:
        await self.session.execute(
            _delete_in_id_order(Device.owner_id == owner_id), execution_options=UNSYNCHRONIZED
        )

    async def _one(
        self, statement: DriverStatement, values: Mapping[str, Any]
    ) -> DeviceRead | None:
        row = await fetch_row(self.work, statement, values, _VIOLATIONS)
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
