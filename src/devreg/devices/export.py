"""Export: every matching device as CSV or NDJSON, streamed in constant memory."""

from collections.abc import AsyncGenerator

from devreg.auth.principal import Principal
from devreg.db.session import UnitOfWork
from devreg.devices.filters import DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import FileFormat

EXPORT_MEDIA_TYPES = {
    FileFormat.CSV: "text/csv; charset=utf-8",
    FileFormat.NDJSON: "application/x-ndjson",
}


def export_devices(
    work: UnitOfWork, *, filters: DeviceFilter, format: FileFormat, principal: Principal
) -> AsyncGenerator[bytes, None]:
    """Chunks of the export. CSV has a header; `tags` and `attributes` are JSON text in CSV,
    and an empty unquoted field is a missing value (an empty string would be quoted)."""
    return DeviceRepository(work).export(
        principal.restrict(filters), as_json=format is FileFormat.NDJSON
    )
