"""Scale benchmark: every listing filter, search, deep pages and counts at 10k and at 1M devices;
import and export throughput at 1M rows, and the import's floor: the same file written by
PostgreSQL alone, without devreg. Not part of the test suite.

    .venv/bin/python bench/scale.py                # full: 10k vs 1M devices (~6 minutes)
    .venv/bin/python bench/scale.py --large 100000 # quicker

It starts a throwaway PostgreSQL cluster (fsync off, a temporary directory) unless
BENCH_DATABASE_URL names a server (superuser URL) to create its databases on. Requests go through
the whole ASGI app in-process (routing, validation, SQL, serialisation), one at a time, so the
numbers compare query cost at two sizes, not server throughput. Loopback only; bounded by the
fixed number of repetitions.
"""

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL

from common import NOT_DURABLE, admin, fresh_database, server, settings_for
from devreg.app import create_app
from devreg.db.session import create_engine, create_sessionmaker, session_scope
from devreg.devices.filters import SORT_KEYS
from devreg.pagination import Cursors, Position, Sort
from devreg.seed import seed

DEVICES = "/api/v1/devices"
REPEATS = 30
WARMUP = 3
DEEP_PAGE = 10_000
PAGE_SIZE = 100

# (label, query string); {deep_id} and {deep_name} are filled in per database.
QUERIES = [
    ("first page, default sort", ""),
    ("status=inactive", "status=inactive"),
    ("status=active&status=inactive", "status=active&status=inactive"),
    ("owner_id=42", "owner_id={owner}"),
    ("owner_id of a tenth, added last", "owner_id={late}"),
    ("the same, sort=name", "owner_id={late}&sort=name"),
    ("the same, sort=created_at", "owner_id={late}&sort=created_at"),
    ("model=Jetson Nano", "model=Jetson%20Nano"),
    ("name (exact)", "name=camera-0000002"),
    ("name__ic=amer", "name__ic=amer"),
    ("name__isw=therm", "name__isw=therm"),
    ("serial_number (exact)", "serial_number={serial}"),
    ("created_after (recent)", "created_after={recent}"),
    ("last_seen_before (old)", "last_seen_before={old}"),
    ("tag=critical&tag=eu", "tag=critical&tag=eu"),
    ("has_owner=false", "has_owner=false"),
    ("attr.room=C", "attr.room=C"),
    ("q=raspbery pi (typo)", "q=raspbery%20pi"),
    ("sort=name", "sort=name"),
    ("sort=-created_at", "sort=-created_at"),
    ("sort=last_seen_at", "sort=last_seen_at"),
    ("sort=-last_seen_at", "sort=-last_seen_at"),
    (f"page {DEEP_PAGE:,} by id", "cursor={deep_id}"),
    (f"page {DEEP_PAGE:,} by name", "sort=name&cursor={deep_name}"),
    ("count=estimated", "count=estimated"),
    ("count=estimated&status=retired", "count=estimated&status=retired"),
    ("count=exact&status=retired (for scale)", "count=exact&status=retired"),
]


# A customer whose devices were imported last: it owns the last tenth of them (highest ids).
LATE_EMAIL = "late.customer@example.org"
LATE_CUSTOMER = (
    f"INSERT INTO users (name, email) VALUES ('late customer', '{LATE_EMAIL}')",
    "SET devreg.record_changes = 'off'",
    "UPDATE devices SET owner_id = (SELECT id FROM users WHERE email = '" + LATE_EMAIL + "')"
    " WHERE id > (SELECT max(id) - count(*) / 10 FROM devices)",
)


async def seeded_database(
    server_url: URL, name: str, devices: int, *, users: int | None = None
) -> tuple[URL, float]:
    url = await fresh_database(server_url, name)
    engine = create_engine(url, settings_for(url))
    try:
        started = time.perf_counter()
        async with session_scope(create_sessionmaker(engine)) as work:
            await seed(
                work, users=max(devices // 10, 1) if users is None else users, devices=devices
            )
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    await admin(url, *LATE_CUSTOMER, "VACUUM ANALYZE")
    return url, seconds


async def placeholders(url: URL) -> dict[str, str]:
    """Values that exist in this database: an owner, a serial, dates, deep cursors."""
    engine = create_engine(url, settings_for(url))
    async with engine.connect() as connection:
        owner = await connection.scalar(
            text("SELECT owner_id FROM devices WHERE owner_id IS NOT NULL ORDER BY id LIMIT 1")
        )
        late = await connection.scalar(
            text("SELECT id FROM users WHERE email = :email"), {"email": LATE_EMAIL}
        )
        serial = await connection.scalar(
            text("SELECT serial_number FROM devices ORDER BY id DESC LIMIT 1")
        )
        deep = DEEP_PAGE * PAGE_SIZE
        total = await connection.scalar(text("SELECT count(*) FROM devices"))
        offset = min(deep, max(total - PAGE_SIZE, 0))
        at_offset = {"offset": offset}
        by_id = (
            await connection.execute(
                text("SELECT id FROM devices ORDER BY id OFFSET :offset LIMIT 1"), at_offset
            )
        ).one()
        by_name = (
            await connection.execute(
                text("SELECT name, id FROM devices ORDER BY name, id OFFSET :offset LIMIT 1"),
                at_offset,
            )
        ).one()
    await engine.dispose()
    now = datetime.now(UTC)
    return {
        "owner": str(owner),
        "late": str(late),
        "serial": str(serial),
        "recent": (now.replace(microsecond=0)).isoformat().replace("+00:00", "Z"),
        "old": "2000-01-01T00:00:00Z",
        "deep_id": Cursors("devices", Sort("id"), {}, SORT_KEYS["id"]).encode(
            Position(by_id.id, by_id.id)
        ),
        "deep_name": Cursors("devices", Sort("name"), {}, SORT_KEYS["name"]).encode(
            Position(by_name.name, by_name.id)
        ),
    }


async def time_queries(url: URL, repeats: int) -> dict[str, tuple[float, float, int]]:
    """label -> (p50 ms, p99 ms, items on the page)."""
    values = await placeholders(url)
    app = create_app(settings_for(url))
    results: dict[str, tuple[float, float, int]] = {}
    async with app.router.lifespan_context(app) as state:

        async def asgi(scope, receive, send):  # type: ignore[no-untyped-def]
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        async with AsyncClient(transport=ASGITransport(app=asgi), base_url="http://localhost") as c:
            for label, query in QUERIES:
                target = f"{DEVICES}?limit={PAGE_SIZE}&{query.format(**values)}"
                samples = []
                for attempt in range(WARMUP + repeats):
                    started = time.perf_counter()
                    response = await c.get(target)
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code != 200:
                        raise SystemExit(f"{label}: {response.status_code} {response.text}")
                    if attempt >= WARMUP:
                        samples.append(elapsed)
                samples.sort()
                p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
                results[label] = (statistics.median(samples), p99, len(response.json()["items"]))
    return results


# PostgreSQL alone, for the import's floor: the file copied as it is into a table of text (no
# Python per row), then written as devreg's bulk-loading import writes (the devices' secondary
# indexes dropped, one INSERT ... SELECT under the change log's trigger, the indexes built again
# and the table's statistics gathered afresh, as db.bulk_load does).
_FLOOR_STAGING = """
CREATE TEMP TABLE floor_staging (
    id text, name text, serial_number text, model text, status text, owner_id bigint, tags text,
    attributes text, last_seen_at text, created_at text, updated_at text, version text
) ON COMMIT DROP
"""
_FLOOR_SECONDARY_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE tablename = 'devices' AND indexname NOT IN ('pk_devices', 'uq_devices_serial_number')
"""
_FLOOR_INSERT = """
INSERT INTO devices (name, serial_number, model, status, owner_id, tags, attributes, last_seen_at)
SELECT name, serial_number, model, status, owner_id,
       ARRAY(SELECT jsonb_array_elements_text(tags::jsonb)), attributes::jsonb,
       last_seen_at::timestamptz
FROM floor_staging
"""


async def postgresql_import_floor(url: URL, export_file: Path) -> float:
    """Seconds PostgreSQL alone takes to write `export_file` (devreg's CSV) as an import does,
    change records included; rolled back."""
    connection = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    started = time.perf_counter()
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT set_config('devreg.actor', '{}', true)")
        await connection.execute(_FLOOR_STAGING)
        await connection.copy_to_table(
            "floor_staging", source=export_file, format="csv", header=True
        )
        await connection.execute("LOCK TABLE devices")
        indexes = await connection.fetch(_FLOOR_SECONDARY_INDEXES)
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute(_FLOOR_INSERT)
        for index in indexes:
            await connection.execute(index["indexdef"])
        await connection.execute("ANALYZE devices")
        seconds = time.perf_counter() - started
        await transaction.rollback()
    finally:
        await connection.close()
    return seconds


def devreg_cli(url: URL, *args: str) -> tuple[float, int, str]:
    """Run `devreg ARGS` against `url`: (seconds, peak RSS in MiB of that process, stdout)."""
    env = {**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devreg", *args],
            env=env,
            stdout=output,
            stderr=output,
            text=True,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        output.seek(0)
        said = output.read()
    if status != 0:
        raise SystemExit(f"devreg {' '.join(args)} failed:\n{said}")
    return seconds, usage.ru_maxrss // 1024, said


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="measured requests a query")
    args = parser.parse_args()

    async with server(55433, NOT_DURABLE) as server_url:
        small_url, _ = await seeded_database(server_url, "bench_small", args.small)
        large_url, seed_seconds = await seeded_database(server_url, "bench_large", args.large)
        small = await time_queries(small_url, args.repeats)
        large = await time_queries(large_url, args.repeats)

        export_file = Path(tempfile.mkdtemp(prefix="devreg-export-")) / "devices.csv"
        export_seconds, export_rss, _ = devreg_cli(
            large_url, "export", "devices", "-o", str(export_file)
        )
        # The same users as the large database (ids 1..n), so every owner_id resolves.
        import_url, _ = await seeded_database(server_url, "bench_import", 0, users=args.large // 10)
        import_seconds, import_rss, import_output = devreg_cli(
            import_url, "import", "devices", str(export_file)
        )
        # What autovacuum would do to the import's rows meanwhile, done first and not timed.
        await admin(import_url, "VACUUM ANALYZE devices, changes")
        floor_url, _ = await seeded_database(server_url, "bench_floor", 0, users=args.large // 10)
        floor_seconds = await postgresql_import_floor(floor_url, export_file)
        shutil.rmtree(export_file.parent, ignore_errors=True)

    print(f"# devreg scale benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; command: `.venv/bin/python bench/scale.py "
        f"--small {args.small} --large {args.large}`\n"
    )
    print(f"Seeding {args.large:,} devices and {args.large // 10:,} users: {seed_seconds:.1f} s\n")
    print(
        f"| query (limit {PAGE_SIZE}) | p50 ms at {args.small:,} | p99 ms at {args.small:,} "
        f"| p50 ms at {args.large:,} | p99 ms at {args.large:,} | p50 ratio |"
    )
    print("|---|---|---|---|---|---|")
    for label, _ in QUERIES:
        s50, s99, _ = small[label]
        l50, l99, _ = large[label]
        print(f"| {label} | {s50:.1f} | {s99:.1f} | {l50:.1f} | {l99:.1f} | {l50 / s50:.2f}x |")
    rows = args.large
    print(f"\n| {rows:,} rows | seconds | rows/s | peak RSS MiB |\n|---|---|---|---|")
    print(
        f"| export CSV (`devreg export devices -o FILE`) | {export_seconds:.1f} | "
        f"{rows / export_seconds:,.0f} | {export_rss} |"
    )
    print(
        f"| import CSV (`devreg import devices FILE`) | {import_seconds:.1f} | "
        f"{rows / import_seconds:,.0f} | {import_rss} |"
    )
    print(
        f"| the same import by PostgreSQL alone (COPY of the file, one INSERT ... SELECT, the "
        f"indexes built after) | {floor_seconds:.1f} | {rows / floor_seconds:,.0f} | – |"
    )
    print(f"\nimport said: {import_output.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
