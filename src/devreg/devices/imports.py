"""Import: devices from CSV or NDJSON, validated row by row, then batch by batch loaded with COPY
into a staging table and written by one INSERT ... SELECT. Any bad row aborts the whole import
with its line number; the devices table is untouched (everything runs in the caller's one
transaction)."""

import asyncio
import csv
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, suppress
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from devreg.db.bulk_load import bulk_loading
from devreg.db.session import UnitOfWork, dump_json
from devreg.devices.import_staging import ImportRecord, ImportStaging
from devreg.devices.models import Device
from devreg.devices.repository import EXPORT_COLUMNS
from devreg.devices.schemas import DeviceCreate, FileFormat, OnConflict
from devreg.errors import (
    Conflict,
    InvalidInput,
    UnknownOwner,
    UnstorableCharacter,
    located,
    number_too_long,
)

_BATCH_SIZE = 10_000
# Server-owned columns an export carries; an import ignores them, so exports re-import as is.
_IGNORED = frozenset(EXPORT_COLUMNS) - DeviceCreate.model_fields.keys()
_JSON_COLUMNS = ("tags", "attributes")
# What an empty CSV cell can mean: no value (null) where a device may have none; elsewhere
# (status, tags, attributes) nothing at all, so an update keeps the device's value.
_EMPTY_IS_NULL = frozenset(
    name for name, field in DeviceCreate.model_fields.items() if field.default is None
)
_BATCH = TypeAdapter(list[DeviceCreate])

T = TypeVar("T")


class ImportRejected(InvalidInput):
    slug = "import-rejected"

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}", line=line)


class ImportUnreadable(InvalidInput):
    slug = "import-unreadable"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the file cannot be read: {reason}")


@dataclass(frozen=True)
class ImportResult:
    rows: int
    inserted: int
    updated: int

    @property
    def left_alone(self) -> int:
        """Rows whose serial number was registered already: skipped (`--on-conflict skip`), or
        (`update`) naming no change to the device."""
        return self.rows - self.inserted - self.updated


class Progress(Protocol):
    """What an import tells of its course (a progress bar)."""

    def written(self, rows: int) -> None:
        """`rows` written so far: called batch by batch."""

    def indexing(self) -> None:
        """Every row written; the devices' indexes being built (db.bulk_load)."""


async def import_devices(
    work: UnitOfWork,
    source: IO[str],
    *,
    format: FileFormat,
    on_conflict: OnConflict,
    progress: Progress | None = None,
    rows_expected: int = 0,
) -> ImportResult:
    """`progress`, if given, is told how far the import is. `rows_expected`: about how many rows
    `source` holds, if known. A large import into a registry holding fewer devices locks the
    devices table until it is done (db.bulk_load)."""
    staging = ImportStaging(work)
    await staging.create(on_conflict)
    refusing = await staging.may_refuse_characters()
    batches = _validated_batches(_parse(source, format))
    rows_read = inserted = updated = 0
    # The file is read and validated a batch ahead, in a thread, while PostgreSQL writes the
    # batch before it: an import takes about as long as the slower side, not as both together.
    async with (
        AsyncExitStack() as loading,
        aclosing(
            _read_ahead(batches, prepare=lambda batch: _stage(work, staging, batch, refusing))
        ) as staged,
    ):
        indexing = False
        async for batch in staged:
            # Decided once the file's first batch proves good, not before.
            if not rows_read and batch.refusal is None:
                indexing = await loading.enter_async_context(
                    bulk_loading(work, Device, adding=rows_expected)
                )
            written = await _write(work, staging, on_conflict, rows=len(batch.records))
            if batch.refusal is not None:
                raise batch.refusal
            inserted, updated = inserted + written[0], updated + written[1]
            rows_read += len(batch.records)
            if progress is not None:
                progress.written(rows_read)
        if indexing and progress is not None:
            progress.indexing()
    return ImportResult(rows=rows_read, inserted=inserted, updated=updated)


async def _stage(
    work: UnitOfWork, staging: ImportStaging, batch: "_Batch", refusing: bool
) -> "_Batch":
    """The batch staged. Where the database's encoding lacks characters (`refusing`), a value
    it cannot hold ends the batch at its line, as a bad field does: the rows before that line
    are staged instead, to be written (and checked) first, so that one of them the database
    refuses (an unknown owner) is named before it."""
    # Emptied outside the savepoint: PostgreSQL empties a table in place only in the
    # (sub)transaction that made it, else keeps each batch's old file until the import commits.
    await staging.empty()
    if not refusing:  # UTF8: no savepoint to pay for
        await staging.stage(batch.records)
        return batch
    try:
        async with work.begin_nested():
            await staging.stage(batch.records)
    except UnstorableCharacter as exc:
        if exc.line is None:
            raise
        reason = f"{exc.column} has a character the database's encoding ({exc.encoding}) lacks"
        before = [record for record in batch.records if record[0] < exc.line]
        await staging.stage(before)
        return _Batch(before, ImportRejected(exc.line, reason))
    return batch


async def _write(
    work: UnitOfWork, staging: ImportStaging, on_conflict: OnConflict, *, rows: int
) -> tuple[int, int]:
    """The staged batch of `rows` inserted: (inserted, updated). Constraints are left to the
    insert to enforce; only when one fails is the batch searched for the line that broke it, or
    when rows were left alone (skipped), which the insert checks for nothing."""
    check_existing = on_conflict is OnConflict.ERROR
    repeated = await staging.first_repeated_serial()
    if repeated is not None:
        problem = await staging.first_problem(check_existing=check_existing)
        if problem is None or problem[0] >= repeated:  # on the repeated line, the repeat is why
            problem = (repeated, "serial_number repeats an earlier line of the file")
        raise ImportRejected(*problem)
    try:
        async with work.begin_nested():
            written = await staging.insert_staged(on_conflict)
    except (UnknownOwner, Conflict):
        problem = await staging.first_problem(check_existing=check_existing)
        if problem is None:
            raise
        raise ImportRejected(*problem) from None
    if sum(written) < rows:
        problem = await staging.first_problem(check_existing=False)
        if problem is not None:
            raise ImportRejected(*problem)
    return written


async def _read_ahead(
    items: Iterator[T], *, prepare: Callable[[T], Awaitable[T]]
) -> AsyncGenerator[T, None]:
    """`items` (never None), each `prepare`d, then yielded as `prepare` gives it back while the
    next is taken in a thread.
    Preparing (a batch encoded for COPY) holds the GIL as taking one (reading, validating) does:
    the two at once took turns, slowly: a batch took five times as long to stage."""
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, items, None))
    try:
        while (item := await upcoming) is not None:
            prepared = await prepare(item)
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, items, None))
            yield prepared
    finally:
        # The caller stopped early (a bad row): let the thread finish before the source closes;
        # what it read, or the error it met, no longer matters.
        with suppress(Exception):
            await upcoming


Row = tuple[int, dict[str, Any], tuple[str, ...]]


def _parse(source: IO[str], format: FileFormat) -> Iterator[Row]:
    """(line number, fields, the fields the file gives) for each row; server-owned columns
    dropped. A CSV row gives its header's columns, but not an empty cell of a column that
    cannot be null; an NDJSON line gives its keys."""
    lines = _lines(source)
    return _csv_rows(lines) if format is FileFormat.CSV else _ndjson_rows(lines)


def _lines(source: IO[str]) -> Iterator[str]:
    try:
        yield from source
    except OSError as exc:  # the disk, or the network it is on, failed
        raise ImportUnreadable(exc.strerror or type(exc).__name__) from None


def _csv_rows(source: Iterator[str]) -> Iterator[Row]:
    records = _records(csv.reader(source, strict=True))
    # Blank lines before the header are skipped too.
    header_line, header = next(((line, values) for line, values in records if values), (1, []))
    unknown = set(header) - DeviceCreate.model_fields.keys() - _IGNORED
    if unknown:
        names = ", ".join(_shown(column) for column in sorted(unknown))
        raise ImportRejected(header_line, f"unknown columns: {names}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ImportRejected(header_line, f"columns appear more than once: {', '.join(repeated)}")
    kept = [(index, column) for index, column in enumerate(header) if column not in _IGNORED]
    for line, values in records:
        if not values:  # a blank line
            continue
        if len(values) > len(header):
            raise ImportRejected(line, "more fields than the header has")
        if len(values) < len(header):
            raise ImportRejected(line, "fewer fields than the header has")
        fields: dict[str, Any] = {
            column: values[index] for index, column in kept if values[index] != ""
        }
        for column in _JSON_COLUMNS:
            if column in fields:
                fields[column] = _json(fields[column], line, column)
        given = tuple(column for _, column in kept if column in fields or column in _EMPTY_IS_NULL)
        yield line, fields, given


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """The CSV reader's records, each with the line it starts on (a quoted field may span
    lines); one it cannot read (most often from a quote never closed) rejects the import at
    that line."""
    while True:
        line = reader.line_num + 1
        try:
            values: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportRejected(
                line, f"not readable as CSV ({exc}; a stray or unclosed quote?)"
            ) from None
        yield line, values


def _shown(column: str) -> str:
    """A column's name in a one-line message: quoted when empty or not plainly printable."""
    return column if column.isprintable() and column else repr(column)


def _ndjson_rows(source: Iterator[str]) -> Iterator[Row]:
    for line, text in enumerate(source, start=1):
        if not text.strip():
            continue
        fields = _json(text, line, "the line")
        if not isinstance(fields, dict):
            raise ImportRejected(line, "each line must be a JSON object")
        kept = {key: value for key, value in fields.items() if key not in _IGNORED}
        yield line, kept, tuple(kept)


def _json(text: str, line: int, what: str) -> Any:
    # pydantic-core's parser reads the same values as the standard library's, four times as
    # fast; what it refuses (escaped lone surrogates, nesting past its limit) is left to the
    # standard library, for the same outcome and message either way.
    with suppress(ValueError):
        return from_json(text)
    try:
        return json.loads(text)
    except ValueError as exc:
        too_long = number_too_long(exc)
        reason = "is not valid JSON" if too_long is None else f"is not readable: {too_long}"
        raise ImportRejected(line, f"{what} {reason}") from None
    except RecursionError:
        raise ImportRejected(line, f"{what} nests too deep") from None


@dataclass(frozen=True)
class _Batch:
    """Rows validated; `refusal`, the bad line after them that ends the file's rows."""

    records: list[ImportRecord]
    refusal: ImportRejected | None = None


def _validated_batches(rows: Iterator[Row]) -> Iterator[_Batch]:
    """The rows, validated a batch at a time, up to the first bad line: the rows before it in
    its batch come with its refusal, to be written first, so that the database's refusal of one
    of them (an unknown owner, say) is named instead. The first bad line is the one named,
    whichever way it is bad (a field, its fields miscounted, not JSON, refused by the database),
    but for text that is not UTF-8, which the decoder meets ahead of the rows before it."""
    batch: list[Row] = []
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except ImportRejected as unreadable:
            yield _validated(batch, then=unreadable)
            return
        batch.append(row)
        if len(batch) == _BATCH_SIZE:
            validated = _validated(batch)
            yield validated
            if validated.refusal is not None:
                return
            batch = []
    if batch:
        yield _validated(batch)


def _validated(batch: list[Row], *, then: ImportRejected | None = None) -> _Batch:
    """The batch's rows up to the first invalid one, with its refusal (else `then`)."""
    try:
        return _Batch(_import_records(batch), then)
    except ValidationError as exc:
        error = exc.errors()[0]  # the first row's: items are validated in order
        index, *location = error["loc"]
        refusal = ImportRejected(batch[int(index)][0], located(location, error["msg"]))
        return _Batch(_import_records(batch[: int(index)]), refusal)


def _import_records(batch: list[Row]) -> list[ImportRecord]:
    devices = _BATCH.validate_python([fields for _, fields, _ in batch])
    return [
        (
            line,
            device.name,
            device.serial_number,
            device.model,
            device.status.value,
            device.owner_id,
            device.tags,
            dump_json(device.attributes),
            device.last_seen_at,
            ",".join(given),
        )
        for (line, _, given), device in zip(batch, devices, strict=True)
    ]
