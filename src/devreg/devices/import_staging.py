"""The import's SQL: a staging table its batches are copied into, checked, then written from."""

import re
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from sqlalchemy import text

from devreg.db.driver import driver_connection, echo, violations_raised_as
from devreg.db.session import Repository
from devreg.devices.repository import VIOLATIONS, WRITABLE, WRITABLE_COLUMNS, WRITABLE_DEFINITIONS
from devreg.devices.schemas import OnConflict
from devreg.errors import UnstorableCharacter

# The import's staging table, named for asyncpg's COPY; the statements below spell it out.
_STAGING_TABLE = "device_import"
_STAGING_COLUMNS = ["line", *WRITABLE_COLUMNS, "given"]
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
CREATE TEMP TABLE device_import (line bigint, {WRITABLE_DEFINITIONS}, given text) ON COMMIT DROP
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
    INSERT INTO devices ({WRITABLE})
    SELECT {WRITABLE} FROM device_import ORDER BY line
    {{}}
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM written
"""  # noqa: S608 - constant SQL
_UPDATED_BY_IMPORT = tuple(column for column in WRITABLE_COLUMNS if column != "serial_number")
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


class ImportStaging(Repository):
    """The import's staging table, for the length of the import's transaction."""

    async def create(self, on_conflict: OnConflict) -> None:
        for statement in _CREATE_STAGING:
            await self.session.execute(text(statement))
        if on_conflict is OnConflict.UPDATE:  # each update finds its staged row by serial number
            await self.session.execute(text(_INDEX_STAGED_SERIALS))

    async def may_refuse_characters(self) -> bool:
        """Whether the database's encoding lacks some characters (any but UTF8), so that a COPY
        may be refused for one (UnstorableCharacter)."""
        connection = await driver_connection(self.session)
        return bool(connection.get_settings().server_encoding != "UTF8")

    async def empty(self) -> None:
        """Drop the staged batch, for the next."""
        connection = await driver_connection(self.session)
        echo(_EMPTY_STAGING)
        await connection.execute(_EMPTY_STAGING)

    async def stage(self, records: Sequence[ImportRecord]) -> None:
        """Add `records` to the staged batch: COPY (binary) on this session's connection and
        transaction."""
        connection = await driver_connection(self.session)
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

    async def first_problem(self, *, check_existing: bool) -> tuple[int, str] | None:
        """The staged batch's first row that breaks a constraint, as (line, reason)."""
        query = _STAGED_PROBLEMS + (_STAGED_ALREADY_REGISTERED if check_existing else "")
        row = (await self.session.execute(text(query + " ORDER BY line LIMIT 1"))).first()
        return (int(row.line), str(row.reason)) if row else None

    async def insert_staged(self, on_conflict: OnConflict) -> tuple[int, int]:
        """Write the staged batch in one statement: (inserted, updated). Raises UnknownOwner, or
        (with OnConflict.ERROR) SerialAlreadyRegistered, for some row: first_problem says
        which."""
        statement = _INSERT_STAGED.format(_ON_CONFLICT[on_conflict])
        with violations_raised_as(VIOLATIONS):
            row = (await self.session.execute(text(statement))).one()
        return int(row.inserted), int(row.updated)
