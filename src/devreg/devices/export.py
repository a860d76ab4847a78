"""Export: every matching device as CSV or NDJSON, streamed in constant memory."""

import csv
import enum
import io
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession

from devreg.devices.filters import DeviceFilter
from devreg.devices.repository import EXPORT_COLUMNS, DeviceRepository

_BATCH_SIZE = 5_000


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


EXPORT_MEDIA_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.NDJSON: "application/x-ndjson",
}


async def export_devices(
    session: AsyncSession, *, filters: DeviceFilter, format: ExportFormat
) -> AsyncIterator[bytes]:
    """Chunks of the export, a batch of rows each. CSV has a header; `tags` and `attributes`
    are JSON text in CSV, and an empty field is a missing value."""
    batches = DeviceRepository(session).stream_export(
        filters, as_json=format is ExportFormat.NDJSON, batch_size=_BATCH_SIZE
    )
    if format is ExportFormat.NDJSON:
        async for rows in batches:
            yield "".join(f"{line}\n" for (line,) in rows).encode()
        return
    yield _csv_lines([EXPORT_COLUMNS])
    async for rows in batches:
        yield _csv_lines(rows)


def _csv_lines(rows: object) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)  # type: ignore[arg-type]
    return buffer.getvalue().encode()
