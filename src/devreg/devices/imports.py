"""Import: devices from CSV or NDJSON, validated row by row, loaded with COPY into a staging
table, then written by one INSERT ... SELECT. Any bad row aborts the whole import with its line
number; the devices table is untouched (everything runs in the caller's one transaction)."""

import csv
import enum
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.devices.repository import EXPORT_COLUMNS, DeviceRepository, ImportRecord
from devreg.devices.schemas import DeviceCreate
from devreg.errors import InvalidInput

_BATCH_SIZE = 10_000
# Server-owned columns an export carries; an import ignores them, so exports re-import as is.
_IGNORED = frozenset(EXPORT_COLUMNS) - DeviceCreate.model_fields.keys()
_JSON_COLUMNS = ("tags", "attributes")
_BATCH = TypeAdapter(list[DeviceCreate])


class ImportFormat(enum.StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


class OnConflict(enum.StrEnum):
    """What to do with a row whose serial number is already registered."""

    ERROR = "error"
    SKIP = "skip"
    UPDATE = "update"


class ImportRejected(InvalidInput):
    slug = "import-rejected"

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}", line=line)


@dataclass(frozen=True)
class ImportResult:
    rows: int
    inserted: int
    updated: int

    @property
    def skipped(self) -> int:
        return self.rows - self.inserted - self.updated


Progress = Callable[[int], None]


async def import_devices(
    session: AsyncSession,
    source: IO[str],
    *,
    format: ImportFormat,
    on_conflict: OnConflict,
    progress: Progress | None = None,
) -> ImportResult:
    """`progress`, if given, is called with the number of rows read so far, batch by batch."""
    repository = DeviceRepository(session)
    await repository.create_import_staging()
    rows_read = 0
    for batch in _batches(_parse(source, format)):
        await repository.copy_into_staging(_validated(batch))
        rows_read += len(batch)
        if progress:
            progress(rows_read)
    problem = await repository.find_import_problem(check_existing=on_conflict is OnConflict.ERROR)
    if problem is not None:
        raise ImportRejected(*problem)
    inserted, updated = await repository.insert_from_staging(
        update_existing=on_conflict is OnConflict.UPDATE
    )
    return ImportResult(rows=rows_read, inserted=inserted, updated=updated)


def _parse(source: IO[str], format: ImportFormat) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, fields) for each row; server-owned columns dropped."""
    rows = _csv_rows(source) if format is ImportFormat.CSV else _ndjson_rows(source)
    for line, row in rows:
        yield line, {key: value for key, value in row.items() if key not in _IGNORED}


def _csv_rows(source: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(source)
    header = reader.fieldnames or []
    unknown = set(header) - DeviceCreate.model_fields.keys() - _IGNORED
    if unknown:
        raise ImportRejected(1, f"unknown columns: {', '.join(sorted(unknown))}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ImportRejected(1, f"columns appear more than once: {', '.join(repeated)}")
    line = 2
    for row in reader:
        if None in row:
            raise ImportRejected(line, "more fields than the header has")
        if None in row.values():
            raise ImportRejected(line, "fewer fields than the header has")
        fields: dict[str, Any] = {key: value for key, value in row.items() if value != ""}
        for column in _JSON_COLUMNS:
            if column in fields:
                fields[column] = _json(fields[column], line, column)
        yield line, fields
        line = reader.line_num + 1


def _ndjson_rows(source: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(source, start=1):
        if not text.strip():
            continue
        fields = _json(text, line, "the line")
        if not isinstance(fields, dict):
            raise ImportRejected(line, "each line must be a JSON object")
        yield line, fields


def _json(text: str, line: int, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ImportRejected(line, f"{what} is not valid JSON") from None


def _batches(
    rows: Iterable[tuple[int, dict[str, Any]]],
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    batch: list[tuple[int, dict[str, Any]]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _validated(batch: list[tuple[int, dict[str, Any]]]) -> list[ImportRecord]:
    try:
        devices = _BATCH.validate_python([fields for _, fields in batch])
    except ValidationError as exc:
        error = exc.errors()[0]
        index, *location = error["loc"]
        where = ".".join(str(part) for part in location)
        line = batch[int(index)][0]
        raise ImportRejected(line, f"{where}: {error['msg']}" if where else error["msg"]) from None
    return [
        (
            line,
            device.name,
            device.serial_number,
            device.model,
            device.status.value,
            device.owner_id,
            device.tags,
            json.dumps(device.attributes),
            device.last_seen_at,
        )
        for (line, _), device in zip(batch, devices, strict=True)
    ]
