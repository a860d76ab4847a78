"""TELEMETRY: FastAPI's OpenTelemetry spans for every request, only when turned on."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import URL

from devreg.app import create_app
from tests.support import api_client, make_settings, running


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process's tracer provider (OpenTelemetry sets it once per process), kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.mark.parametrize(("telemetry", "traced"), [(False, False), (True, True)])
async def test_requests_are_traced_only_with_telemetry_on(
    database_url: URL, spans: InMemorySpanExporter, telemetry: bool, traced: bool
) -> None:
    spans.clear()
    app = create_app(make_settings(database_url, auth="off", telemetry=telemetry))
    async with running(app) as started, api_client(started) as client:
        response = await client.get("/api/v1/devices")

    assert response.status_code == 200
    names = [span.name for span in spans.get_finished_spans()]
    assert any("/api/v1/devices" in name for name in names) is traced, names
