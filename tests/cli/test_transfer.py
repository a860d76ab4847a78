"""`devreg import devices`, `devreg export devices` and `devreg seed`, run in-process against a
database of the test's own (real commits)."""

import asyncio
import csv
import io
import json
import os
import pty
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from typer.testing import Result

from devreg import seed
from devreg.cli.common import Terminated
from devreg.db import bulk_load
from devreg.db.session import session_scope
from devreg.devices import imports
from devreg.devices.schemas import FileFormat, OnConflict
from devreg.schemas import REPEATS_MAX
from tests.api import DEVICE_DEFAULTS
from tests.cli.conftest import Invoke
from tests.support import (
    EXPORT_HEADER,
    EXPORT_PARSERS,
    admin,
    asyncpg_connection,
    create_database,
    csv_records,
    devreg_environment,
    export_view,
    login_role,
    one_connection,
    query,
    run_devreg,
    started_devreg,
    waiting_for_a_lock,
)

FORMATS = list(EXPORT_PARSERS)
# The fields an import sets.
IMPORT_COLUMNS = ("name", *DEVICE_DEFAULTS)

# Rows with text CSV must quote, and text beyond ASCII; each must arrive exactly as written.
RECORDS: list[dict[str, Any]] = [
    {
        "name": 'gw, "main"',
        "serial_number": "SN-1",
        "model": "Pi\n5\r\nrev 2",
        "status": "retired",
        "tags": ["lab", "é 🚀", "a,b"],
        "attributes": {"rack": 4, "note": 'a,b"c\nd', "nested": {"ok": True, "none": None}},
        "last_seen_at": "2024-05-06T05:08:09.123456+00:00",
    },
    {"name": "bare"},
    {"name": "Ölfühler 温度 🌡", "serial_number": "SN-2", "tags": [], "status": "inactive"},
]


# --- helpers -------------------------------------------------------------------------------


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def output(result: Result) -> str:
    """stdout exactly as written (Result.stdout turns CSV's CRLF line ends into LF)."""
    return ok(result).stdout_bytes.decode()


def listed(devreg: Invoke, kind: str, **env: str) -> list[dict[str, Any]]:
    """Every user or device `devreg KIND list` shows, page after page."""
    items: list[dict[str, Any]] = []
    cursor: list[str] = []
    while True:
        result = ok(devreg(kind, "list", "--limit", "1000", *cursor, "--json", env=env or None))
        page = json.loads(result.stdout)
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        cursor = ["--cursor", page["next_cursor"]]


def stored(devreg: Invoke, **env: str) -> list[dict[str, Any]]:
    return listed(devreg, "devices", **env)


def content(device: dict[str, Any]) -> dict[str, Any]:
    """The fields an import sets, defaults filled in: what must survive a round trip."""
    values = {**DEVICE_DEFAULTS, **{key: device[key] for key in IMPORT_COLUMNS if key in device}}
    if values["last_seen_at"] is not None:
        values["last_seen_at"] = datetime.fromisoformat(values["last_seen_at"])
    return values


def as_ndjson(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def as_csv(records: list[dict[str, Any]], columns: tuple[str, ...] = IMPORT_COLUMNS) -> str:
    """A CSV file of `records`, the way an export writes one: JSON text for tags and attributes,
    an empty field for a missing value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for record in records:
        writer.writerow([_csv_field(column, record.get(column)) for column in columns])
    return buffer.getvalue()


def _csv_field(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in ("tags", "attributes"):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


WRITERS = {"csv": as_csv, "ndjson": as_ndjson}


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def import_devices(devreg: Invoke, path: Path, *options: str, **env: str) -> Result:
    return devreg("import", "devices", str(path), *options, env=env or None)


def assert_summary(
    result: Result, rows: int, inserted: int, updated: int, skipped: int, *, left: str = "skipped"
) -> None:
    """`left`: what the rows left alone are, "skipped" or (`--on-conflict update`) "unchanged"."""
    ok(result)
    expected = f"{rows} rows: {inserted} inserted, {updated} updated, {skipped} {left} in "
    assert result.stdout.startswith(expected), result.stdout


def assert_refused(result: Result, code: int | None, *fragments: str) -> None:
    """A handled failure: a `devreg: ...` line on stderr, no traceback, nothing on stdout; exit
    `code` (None: any but 0)."""
    assert result.exit_code != 0, (result.stdout, result.stderr, result.exception)
    assert code is None or result.exit_code == code, (result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr.startswith("devreg: ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert result.stdout == ""


def create_device(devreg: Invoke, name: str, *options: str) -> dict[str, Any]:
    device: dict[str, Any] = json.loads(
        ok(devreg("devices", "create", "--name", name, *options, "--json")).stdout
    )
    return device


def create_user(devreg: Invoke, name: str = "ann") -> dict[str, Any]:
    user: dict[str, Any] = json.loads(
        ok(devreg("users", "create", "--name", name, "--json")).stdout
    )
    return user


@pytest.fixture
async def other_database_url(committed_database_url: URL, server_url: URL) -> AsyncIterator[URL]:
    """A second fresh database, cloned from the test's own before anything is written to it."""
    name = f"{committed_database_url.database}_other"
    url = await create_database(server_url, name, template=committed_database_url.database)
    yield url
    await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def kolkata_database_url(other_database_url: URL, server_url: URL) -> URL:
    """The second database, its sessions' default time zone UTC+05:30 and their dates written
    the SQL way, day first (`06/05/2024 10:38:09.123456 IST`)."""
    name = other_database_url.database
    await admin(server_url, f"ALTER DATABASE {name} SET timezone = 'Asia/Kolkata'")
    await admin(server_url, f"ALTER DATABASE {name} SET datestyle = 'SQL, DMY'")
    return other_database_url


def database_env(url: URL) -> dict[str, str]:
    return {"DATABASE_URL": url.render_as_string(hide_password=False)}


# --- import --------------------------------------------------------------------------------


class TestImport:
    @pytest.mark.parametrize("format", FORMATS)
    def test_rows_are_inserted_in_file_order(self, devreg, tmp_path, format):
        owner = create_user(devreg)
        records = [*RECORDS, {"name": "owned", "owner_id": owner["id"]}]
        path = write(tmp_path, f"devices.{format}", WRITERS[format](records))

        result = import_devices(devreg, path)

        assert_summary(result, rows=4, inserted=4, updated=0, skipped=0)
        devices = stored(devreg)
        assert [content(device) for device in devices] == [content(r) for r in records]
        assert devices[3]["owner"] == {"id": owner["id"], "name": "ann"}
        assert {device["version"] for device in devices} == {1}

    def test_times_as_postgresql_writes_them_are_read(self, devreg, tmp_path):
        """psql and COPY write a timestamptz's offset in hours alone (`+00`), which ISO 8601
        allows: a file of them was refused for "unexpected extra characters at the end of the
        input"."""
        path = write(
            tmp_path,
            "devices.csv",
            "name,last_seen_at\na,2024-05-06 05:08:09.123456+00\nb,2024-05-06 05:08:09-05\n",
        )

        result = import_devices(devreg, path)

        assert_summary(result, rows=2, inserted=2, updated=0, skipped=0)
        assert [device["last_seen_at"] for device in stored(devreg)] == [
            "2024-05-06T05:08:09.123456Z",
            "2024-05-06T10:08:09Z",
        ]

    @pytest.mark.parametrize(
        ("name", "format", "option"),
        [
            pytest.param("devices.txt", "ndjson", "ndjson", id="txt-as-ndjson"),
            pytest.param("devices.csv", "ndjson", "ndjson", id="csv-name-ndjson-content"),
            pytest.param("devices.ndjson", "csv", "csv", id="ndjson-name-csv-content"),
            pytest.param("DEVICES.CSV", "csv", None, id="upper-case-extension"),
        ],
    )
    def test_format_option_overrides_the_extension(self, devreg, tmp_path, name, format, option):
        path = write(tmp_path, name, WRITERS[format](RECORDS))

        result = import_devices(devreg, path, *(["--format", option] if option else []))

        assert_summary(result, rows=3, inserted=3, updated=0, skipped=0)
        assert [content(device) for device in stored(devreg)] == [content(r) for r in RECORDS]

    def test_unknown_extension_needs_a_format(self, devreg, tmp_path):
        path = write(tmp_path, "devices.json", as_ndjson(RECORDS))

        result = import_devices(devreg, path)

        assert_refused(result, 2, "--format")
        assert stored(devreg) == []

    def test_server_owned_fields_of_an_export_are_ignored(self, devreg, tmp_path):
        record = {
            "id": 77,
            "name": "pi",
            "created_at": "2001-01-01T00:00:00+00:00",
            "updated_at": "2001-01-01T00:00:00+00:00",
            "version": 9,
        }
        path = write(tmp_path, "devices.ndjson", as_ndjson([record]))

        assert_summary(import_devices(devreg, path), rows=1, inserted=1, updated=0, skipped=0)

        (device,) = stored(devreg)
        assert device["id"] != 77
        assert device["version"] == 1
        assert not device["created_at"].startswith("2001")

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            pytest.param("devices.csv", ",".join(IMPORT_COLUMNS) + "\r\n", id="csv-header-only"),
            pytest.param("devices.csv", "", id="csv-empty"),
            pytest.param("devices.ndjson", "", id="ndjson-empty"),
            pytest.param("devices.ndjson", "\n  \n\n", id="ndjson-blank-lines"),
        ],
    )
    def test_file_without_rows_imports_nothing(self, devreg, tmp_path, name, text):
        create_device(devreg, "existing")
        before = stored(devreg)

        result = import_devices(devreg, write(tmp_path, name, text))

        assert_summary(result, rows=0, inserted=0, updated=0, skipped=0)
        assert stored(devreg) == before

    @pytest.mark.parametrize(
        ("name", "data", "line"),
        [
            pytest.param("devices.csv", "name\ncafé\n".encode("latin-1"), 2, id="csv-latin-1"),
            pytest.param("devices.csv", b"name\na\n\xff\xfe\n", 3, id="csv-garbage"),
            pytest.param("devices.csv", b"name\ra\rb\xff\r", 3, id="csv-cr-line-ends"),
            pytest.param("devices.csv", b"name\r\na\r\nb\xff\r\n", 3, id="csv-crlf-line-ends"),
            pytest.param("devices.ndjson", '{"name": "café"}\n'.encode("cp1252"), 1, id="ndjson"),
            pytest.param("devices.csv", "name\nx\n".encode("utf-16"), 1, id="utf-16"),
            pytest.param(
                "devices.csv",
                b"name\n" + b"device\n" * 100_000 + b"caf\xe9\n",
                100_002,
                id="past-the-first-buffer",
            ),
        ],
    )
    def test_non_utf8_file_is_refused_with_its_line(self, devreg, tmp_path, name, data, line):
        create_device(devreg, "existing")
        before = stored(devreg)

        result = import_devices(devreg, write(tmp_path, name, data))

        assert_refused(result, 2, f"is not UTF-8 text: line {line}\n")
        assert stored(devreg) == before

    def test_missing_file_is_a_usage_error(self, devreg, tmp_path, monkeypatch):
        # A short path, as a user types it: the usage box wraps long ones mid-name.
        monkeypatch.chdir(tmp_path)
        result = import_devices(devreg, Path("nowhere.csv"))

        assert result.exit_code == 2
        assert "nowhere.csv" in result.stderr

    def test_blank_lines_between_csv_rows_are_skipped(self, devreg, tmp_path):
        result = import_devices(devreg, write(tmp_path, "d.csv", "name,model\na,m\n\nb,m\n"))

        assert_summary(result, rows=2, inserted=2, updated=0, skipped=0)
        assert [device["name"] for device in stored(devreg)] == ["a", "b"]


class TestImportConflicts:
    """A row whose serial number is already registered, after a row that is new."""

    @pytest.fixture
    def registered(self, devreg) -> dict[str, Any]:
        return create_device(devreg, "old", "--serial", "SN-1", "--model", "m1", "--tag", "x")

    @pytest.fixture(params=FORMATS)
    def file(self, request, tmp_path) -> Path:
        rows = [
            {"name": "fresh", "serial_number": "SN-2"},
            {"name": "new", "serial_number": "SN-1", "status": "retired", "tags": ["y"]},
        ]
        return write(tmp_path, f"devices.{request.param}", WRITERS[request.param](rows))

    @pytest.mark.parametrize("options", [(), ("--on-conflict", "error")])
    def test_error_aborts_naming_the_line(self, devreg, registered, file, options):
        result = import_devices(devreg, file, *options)

        line = 3 if file.suffix == ".csv" else 2
        assert_refused(result, 1, f"line {line}:", "serial_number is already registered")
        assert stored(devreg) == [registered]

    def test_skip_keeps_the_registered_device(self, devreg, registered, file):
        result = import_devices(devreg, file, "--on-conflict", "skip")

        assert_summary(result, rows=2, inserted=1, updated=0, skipped=1)
        first, second = stored(devreg)
        assert first == registered
        assert (second["name"], second["serial_number"]) == ("fresh", "SN-2")

    @pytest.mark.parametrize("on_conflict", ["skip", "update", "error"])
    def test_a_row_with_an_unknown_owner_is_refused_whatever_its_serial(
        self, devreg, registered, tmp_path, on_conflict
    ):
        """Skipped for its serial number, such a row never met the foreign key's check: `skip`
        reported it skipped (exit 0) where `update` and `error` refused the file."""
        rows = [{"name": "new", "serial_number": "SN-1", "owner_id": 987_654}]
        path = write(tmp_path, "devices.ndjson", WRITERS["ndjson"](rows))

        result = import_devices(devreg, path, "--on-conflict", on_conflict)

        assert_refused(result, 1, "line 1:", "owner_id does not name an existing user")
        assert stored(devreg) == [registered]

    def test_update_rewrites_the_registered_device(self, devreg, registered, file):
        result = import_devices(devreg, file, "--on-conflict", "update")

        assert_summary(result, rows=2, inserted=1, updated=1, skipped=0, left="unchanged")
        first, second = stored(devreg)
        assert first["id"] == registered["id"]
        assert (first["name"], first["status"], first["tags"]) == ("new", "retired", ["y"])
        # The CSV file has a model column, empty on that row: no model. The NDJSON line has no
        # model key: the device keeps its own.
        assert first["model"] == (None if file.suffix == ".csv" else "m1")
        assert first["version"] == registered["version"] + 1
        assert second["serial_number"] == "SN-2"

    def test_update_leaves_devices_it_would_not_change(self, devreg, registered, file):
        """Imported again, the same file changes nothing: it said "2 updated"."""
        import_devices(devreg, file, "--on-conflict", "update")
        before = stored(devreg)

        result = import_devices(devreg, file, "--on-conflict", "update")

        assert_summary(result, rows=2, inserted=0, updated=0, skipped=2, left="unchanged")
        assert stored(devreg) == before

    async def test_update_waits_for_a_device_being_registered_and_updates_it(
        self, committed_database_url, tmp_path
    ):
        path = write(tmp_path, "d.csv", "name,serial_number\nfrom-file,SN-R\n")
        url = committed_database_url.render_as_string(hide_password=False)
        engine = create_async_engine(committed_database_url, poolclass=NullPool)
        try:
            async with engine.connect() as registering:
                await registering.execute(
                    text("INSERT INTO devices (name, serial_number) VALUES ('first', 'SN-R')")
                )
                importing = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "devreg", "import", "devices", str(path),
                    "--on-conflict", "update",
                    env={**os.environ, "DATABASE_URL": url}, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                # The import now waits for this transaction.
                await waiting_for_a_lock((await registering.get_raw_connection()).driver_connection)
                await registering.commit()
            output, _ = await asyncio.wait_for(importing.communicate(), 60)
        finally:
            await engine.dispose()

        assert importing.returncode == 0
        assert output.decode().startswith("1 rows: 0 inserted, 1 updated, 0 unchanged")
        names = await query(committed_database_url, "SELECT name FROM devices")
        assert names == [{"name": "from-file"}]

    def test_an_empty_cell_clears_only_what_can_be_empty(self, devreg, tmp_path):
        header = "name,serial_number,model,status,tags,attributes\n"
        registered = header + 'old,SN-9,m1,retired,"[""x""]","{""k"": 1}"\n'
        ok(import_devices(devreg, write(tmp_path, "registered.csv", registered)))

        emptied = header + "upd,SN-9,,,,\n"
        ok(import_devices(devreg, write(tmp_path, "d.csv", emptied), "--on-conflict", "update"))

        [after] = stored(devreg)
        assert (after["name"], after["model"]) == ("upd", None)
        assert (after["status"], after["tags"], after["attributes"]) == ("retired", ["x"], {"k": 1})

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("d.csv", "name,serial_number,model\nupd,SN-9,\n"),
            ("d.ndjson", '{"name": "upd", "serial_number": "SN-9", "model": null}\n'),
        ],
    )
    def test_update_changes_only_the_fields_the_file_gives(self, devreg, tmp_path, name, text):
        owner = create_user(devreg)
        before = create_device(devreg, "old", "--serial", "SN-9", "--model", "m1", "--tag", "x",
                               "--owner-id", str(owner["id"]), "--status", "retired")  # fmt: skip

        ok(import_devices(devreg, write(tmp_path, name, text), "--on-conflict", "update"))

        [after] = stored(devreg)
        changed = {key for key in after if after[key] != before[key]}
        assert changed == {"name", "model", "version", "updated_at"}
        assert (after["name"], after["model"]) == ("upd", None)
        assert (after["owner_id"], after["tags"], after["status"]) == (
            owner["id"],
            ["x"],
            "retired",
        )


CSV_HEADER = "name,serial_number,status,owner_id,tags\n"
GOOD_CSV_ROW = "a,SN-1,active,,[]\n"

# A file with one bad row (or header) among good ones: (file name, text, line of the problem,
# what stderr must say about it).
BAD_FILES = [
    pytest.param(
        "d.csv", "name,serial_number,owner_id\na,SN-0,\nb,SN-9,999\n", 2,
        "serial_number is already registered", id="csv-registered-serial-before-unknown-owner",
    ),
    pytest.param(
        "d.csv", "name,serial_number\na,X\nb,X\nc,X\n", 3, "repeats an earlier line",
        id="csv-serial-thrice",
    ),
    pytest.param(
        "d.csv", "name,serial_number,owner_id\na,X,\nb,X,\nc,Y,999\n", 3,
        "serial_number repeats an earlier line", id="csv-repeat-before-unknown-owner",
    ),
    pytest.param(
        "d.csv", "name,serial_number,owner_id\na,X,\nb,X,999\n", 3,
        "serial_number repeats an earlier line", id="csv-repeat-and-unknown-owner-on-one-line",
    ),
    pytest.param(
        "d.csv", "name,zeta,alpha,mid\na,1,2,3\n", 1, "unknown columns: alpha, mid, zeta",
        id="csv-unknown-columns-named-in-order",
    ),
    pytest.param(
        # Which of the two would be the name? Neither is taken.
        "d.csv", "\nname,model,name\na,m,b\n", 2, "columns appear more than once: name",
        id="csv-column-given-twice",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + ",SN-2,active,,[]\n" + "c,,,,\n", 3, "name",
        id="csv-empty-name",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "   ,SN-2,active,,[]\n", 3, "name", id="csv-blank-name"
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + f"{'n' * 101},,,,\n", 3, "name", id="csv-long-name"
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,broken,,[]\nc,,,,\n", 3, "status",
        id="csv-bad-status",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + 'b,SN-2,active,,"[""x"""\n', 3, "tags",
        id="csv-malformed-json-tags",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + 'b,SN-2,active,,"{""a"": 1}"\n', 3, "tags",
        id="csv-tags-not-a-list",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,active,999,[]\n", 3, "owner_id",
        id="csv-unknown-owner",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,active,abc,[]\n", 3, "owner_id",
        id="csv-owner-not-a-number",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,,,,\n" + "c, SN-1 ,,,\n", 4, "serial_number",
        id="csv-serial-repeated-in-the-file",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,active,,[],extra\n", 3, "more fields",
        id="csv-more-fields-than-the-header",
    ),
    pytest.param(
        "d.csv", "name,tags,serial_number\n" + "a,[],SN-1\n" + "b,[]\n", 3, "fields",
        id="csv-fewer-fields-than-the-header",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,active\n", 3, "fields",
        id="csv-fewer-fields-leaving-out-a-json-column",
    ),
    pytest.param(
        "d.csv", "name,colour\n" + "a,red\n", 1, "colour", id="csv-unknown-column"
    ),
    pytest.param(
        "d.csv", "\n\nname,colour\n" + "a,red\n", 3, "colour",
        id="csv-unknown-column-after-blank-lines",
    ),
    pytest.param(
        "d.csv", "name,model,\n" + "a,m,\n", 1, "unknown columns: ''",
        id="csv-header-with-a-trailing-comma",
    ),
    pytest.param(
        "d.csv", '\n"na\nme",model\n' + "a,m\n", 2, "unknown columns: 'na\\nme'",
        id="csv-header-over-two-lines",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + '"two\nlines",SN-1,active,,[]\n' + "b,SN-2,nope,,[]\n", 4, "status",
        id="csv-line-after-a-quoted-newline",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b",}\n', 2, "not valid JSON",
        id="ndjson-malformed-line",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b"}\n["c"]\n', 3, "JSON object",
        id="ndjson-not-an-object",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n\n{"name": "c", "status": "nope"}\n', 3, "status",
        id="ndjson-line-after-a-blank-line",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b", "colour": "red"}\n', 2, "colour",
        id="ndjson-unknown-field",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b", "owner_id": 999}\n', 2, "owner_id",
        id="ndjson-unknown-owner",
    ),
    pytest.param(
        "d.ndjson",
        '{"name": "a", "serial_number": "SN-9"}\n{"name": "b"}\n'
        '{"name": "c", "serial_number": "SN-9"}\n',
        3, "serial_number", id="ndjson-serial-repeated-in-the-file",
    ),
    pytest.param(
        "d.ndjson",
        '{"name": "a", "serial_number": "SN-9"}\n{"name": "b", "owner_id": 999}\n'
        '{"name": "c", "serial_number": "SN-9"}\n',
        2, "owner_id", id="ndjson-unknown-owner-before-a-repeated-serial",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + 'b,"never closed\n' + "c,,,,\n" * 30000, 3,
        "not readable as CSV", id="csv-quote-never-closed",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + 'b,"SN-2\n' + "c,SN-3,active,,[]\n", 3,
        "not readable as CSV", id="csv-quote-never-closed-in-a-short-file",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + 'b,SN-2,active,,"' + "[" * 30000 + '"\n', 3,
        "tags nests too deep", id="csv-json-nested-too-deep",
    ),
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b", "attributes": {"x": ' + "[" * 100000 + "}\n",
        2, "nests too deep", id="ndjson-nested-too-deep",
    ),
    # Valid JSON Python's reader will not convert: it was "not valid JSON", as if malformed.
    pytest.param(
        "d.ndjson", '{"name": "a"}\n{"name": "b", "attributes": {"x": ' + "9" * 5000 + "}}\n",
        2, "the line is not readable: a number has more than 4300 digits",
        id="ndjson-number-of-too-many-digits",
    ),
    pytest.param(
        "d.csv", CSV_HEADER + GOOD_CSV_ROW + "b,SN-2,active,,[" + "9" * 5000 + "]\n", 3,
        "tags is not readable: a number has more than 4300 digits",
        id="csv-number-of-too-many-digits",
    ),
]  # fmt: skip


def test_blank_lines_before_the_csv_header_are_skipped(devreg, tmp_path):
    ok(import_devices(devreg, write(tmp_path, "d.csv", "\n\nname,model\nx,m\n")))

    assert [(device["name"], device["model"]) for device in stored(devreg)] == [("x", "m")]


class TestLargeImport:
    """An import of many rows into a registry holding fewer builds the devices' secondary indexes
    once, after the rows (db.bulk_load); its outcome is the same as row by row."""

    @staticmethod
    def numbered(count: int, owner: int | None = None) -> list[dict[str, Any]]:
        return [
            {"name": f"d{i}", "serial_number": f"SN-{i}", "owner_id": owner, "tags": ["t"],
             "attributes": {"i": i}}
            for i in range(count)
        ]  # fmt: skip

    @classmethod
    async def imported(
        cls,
        url: URL,
        records: int | list[dict[str, Any]],
        *,
        rows_expected: int,
        progress: imports.Progress | None = None,
        sent: list[str] | None = None,
    ) -> imports.ImportResult:
        """`records` (or that many numbered devices) imported in-process (callable from within
        a test's loop); the SQL statements it sends appended to `sent`, if given."""
        if isinstance(records, int):
            records = cls.numbered(records)
        async with one_connection(url) as sessions, session_scope(sessions) as work:
            if sent is not None:
                event.listen(
                    sessions.kw["bind"].sync_engine,
                    "before_cursor_execute",
                    lambda _connection, _cursor, statement, *_: sent.append(statement),
                )
            return await imports.import_devices(
                work,
                io.StringIO(as_csv(records)),
                format=FileFormat.CSV,
                on_conflict=OnConflict.ERROR,
                progress=progress,
                rows_expected=rows_expected,
            )

    @pytest.mark.parametrize("format", FORMATS)
    def test_builds_the_indexes_after_the_rows(
        self, devreg, committed_database_url, tmp_path, large_from_500, format
    ):
        owner = create_user(devreg)
        records = self.numbered(600, owner=owner["id"])
        path = write(tmp_path, f"devices.{format}", WRITERS[format](records))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        assert_summary(import_devices(devreg, path), rows=600, inserted=600, updated=0, skipped=0)

        after = asyncio.run(device_indexes_and_keys(committed_database_url))
        assert rebuilt(before, after) == SECONDARY_INDEXES
        assert [content(device) for device in stored(devreg)] == [content(r) for r in records]
        (logged,) = asyncio.run(
            query(committed_database_url, "SELECT count(*) FROM changes WHERE action = 'create'")
        )
        assert logged["count"] == 601  # the user and every device

    def test_a_large_import_leaves_the_planner_knowing_its_rows(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        """Until autovacuum came by, the planner had no statistics of the new rows' values (the
        index builds count the rows, nothing more): a filter's estimate was a guess."""
        path = write(tmp_path, "devices.csv", as_csv(self.numbered(600)))

        assert_summary(import_devices(devreg, path), rows=600, inserted=600, updated=0, skipped=0)

        known = asyncio.run(
            query(
                committed_database_url,
                "SELECT attname FROM pg_stats WHERE tablename = 'devices' AND attname = 'status'",
            )
        )
        assert [row["attname"] for row in known] == ["status"]

    def test_updates_registered_serials_as_row_by_row(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        registered = create_device(devreg, "old", "--serial", "SN-3", "--model", "m1")
        records = self.numbered(600)
        path = write(tmp_path, "devices.csv", as_csv(records, ("name", "serial_number")))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        result = import_devices(devreg, path, "--on-conflict", "update")

        assert_summary(result, rows=600, inserted=599, updated=1, skipped=0, left="unchanged")
        assert rebuilt(before, asyncio.run(device_indexes_and_keys(committed_database_url)))
        devices = stored(devreg)
        assert len(devices) == 600
        assert (devices[0]["id"], devices[0]["name"]) == (registered["id"], "d3")
        assert devices[0]["model"] == "m1"  # a column the file lacks is kept

    def test_a_rejected_import_leaves_the_indexes_and_devices(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        create_device(devreg, "existing")
        before_devices = stored(devreg)
        records = [*self.numbered(600), {"name": "orphan", "owner_id": 999_999}]
        path = write(tmp_path, "devices.csv", as_csv(records))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        result = import_devices(devreg, path)

        assert_refused(result, 1, "line 602:", "owner_id does not name an existing user")
        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before
        assert stored(devreg) == before_devices

    def test_an_import_smaller_than_the_registry_keeps_the_indexes(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        ok(devreg("seed", "--devices", "700", "--users", "0"))
        path = write(tmp_path, "devices.csv", as_csv(self.numbered(600)))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        assert_summary(import_devices(devreg, path), rows=600, inserted=600, updated=0, skipped=0)

        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before
        assert len(stored(devreg)) == 1300

    def test_reimporting_its_own_csv_export_keeps_the_indexes(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        """As many rows as the registry holds (the header is no row): nothing to rebuild for."""
        ok(devreg("seed", "--devices", "600", "--users", "0"))
        exported = tmp_path / "devices.csv"
        ok(devreg("export", "devices", "-o", str(exported)))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        result = import_devices(devreg, exported, "--on-conflict", "skip")

        assert_summary(result, rows=600, inserted=0, updated=0, skipped=600)
        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before

    def test_rows_ended_by_carriage_returns_count(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        text = "name\r" + "".join(f"d{i}\r" for i in range(600))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        result = import_devices(devreg, write(tmp_path, "devices.csv", text))

        assert_summary(result, rows=600, inserted=600, updated=0, skipped=0)
        after = asyncio.run(device_indexes_and_keys(committed_database_url))
        assert rebuilt(before, after) == SECONDARY_INDEXES

    async def test_while_another_transaction_uses_the_devices_it_goes_row_by_row(
        self, committed_database_url, large_from_500
    ):
        """Waiting for the table would queue every later reader behind the import, for as long
        as the reader before it (an export, say) takes."""
        before = await device_indexes_and_keys(committed_database_url)
        reader = await asyncpg_connection(committed_database_url)
        try:
            async with reader.transaction():
                await reader.fetch("SELECT id FROM devices LIMIT 1")
                result = await asyncio.wait_for(
                    self.imported(committed_database_url, 600, rows_expected=600), 60
                )
            assert result == imports.ImportResult(rows=600, inserted=600, updated=0)
            assert await reader.fetchval("SELECT count(*) FROM devices") == 600
        finally:
            await reader.close()
        assert await device_indexes_and_keys(committed_database_url) == before

    async def test_a_role_that_does_not_own_the_devices_goes_row_by_row(
        self, committed_database_url, server_url, large_from_500
    ):
        """Only the table's owner may drop and make its indexes: a role granted its rows alone
        (the tables migrated by another) had every large import and seed refused, "must be
        owner of index ix_devices_attributes"."""
        before = await device_indexes_and_keys(committed_database_url)
        grant = "SELECT, INSERT, UPDATE, DELETE"
        async with login_role(server_url, committed_database_url, grant=grant) as url:
            result = await self.imported(url, 600, rows_expected=600)

        assert result == imports.ImportResult(rows=600, inserted=600, updated=0)
        assert await device_indexes_and_keys(committed_database_url) == before

    @pytest.mark.parametrize(
        ("rows_expected", "told"), [(600, ["600 written", "indexing"]), (0, ["600 written"])]
    )
    async def test_progress_tells_of_the_index_build(
        self, committed_database_url, large_from_500, rows_expected, told
    ):
        """A bar at its end would otherwise stand still while the indexes are built."""

        class Told(list[str]):
            def written(self, rows: int) -> None:
                self.append(f"{rows} written")

            def indexing(self) -> None:
                self.append("indexing")

        progress = Told()
        await self.imported(
            committed_database_url, 600, rows_expected=rows_expected, progress=progress
        )

        assert progress == told

    @pytest.mark.parametrize("refused", [True, False])
    async def test_the_table_is_asked_for_once_the_first_batch_is_read(
        self, committed_database_url, large_from_500, refused
    ):
        """A file refused while its first batch is read and validated (at its header, say) never
        locks the devices, not even until its rollback: every reader would queue behind that
        lock. (One the database refuses, for an unknown owner, is refused after the lock,
        unless a line of the same batch is refused too.)"""
        records = self.numbered(600)
        if refused:
            records[1]["name"] = None
        sent: list[str] = []

        async def importing() -> None:
            await self.imported(committed_database_url, records, rows_expected=600, sent=sent)

        if refused:
            with pytest.raises(imports.ImportRejected) as rejected:
                await importing()
            assert rejected.value.extensions["line"] == 3
        else:
            await importing()

        asked = [statement for statement in sent if statement.startswith("LOCK TABLE")]
        assert len(asked) == (0 if refused else 1)

    def test_a_pipe_of_unknown_length_keeps_the_indexes(
        self, devreg, committed_database_url, tmp_path, large_from_500
    ):
        """A pipe cannot be counted first (read twice): its rows go in row by row."""
        fifo = tmp_path / "devices.csv"
        os.mkfifo(fifo)
        feeding = threading.Thread(
            target=fifo.write_text, args=(as_csv(self.numbered(600)),), daemon=True
        )
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        feeding.start()
        result = import_devices(devreg, fifo)
        feeding.join(timeout=30)

        assert_summary(result, rows=600, inserted=600, updated=0, skipped=0)
        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before


class TestImportRejectsBadRows:
    @pytest.mark.parametrize("on_conflict", ["skip", "update"])
    @pytest.mark.parametrize(
        ("text", "line", "reason"),
        [
            ("name,serial_number\na,SN-0\nb,Y\nc,Y\n", 4, "serial_number repeats"),
            ("name,serial_number,owner_id\na,SN-0,\nb,Z,999\n", 3, "owner_id does not name"),
        ],
        ids=["repeat", "unknown-owner"],
    )
    def test_a_registered_serial_is_no_problem_where_it_is_skipped_or_updated(
        self, devreg, tmp_path, on_conflict, text, line, reason
    ):
        """The line named is the bad one, not the registered serial --on-conflict takes care
        of."""
        create_device(devreg, "existing", "--serial", "SN-0")
        before = stored(devreg)

        result = import_devices(
            devreg, write(tmp_path, "d.csv", text), "--on-conflict", on_conflict
        )

        assert_refused(result, 1, f"line {line}:", reason)
        assert stored(devreg) == before

    @pytest.mark.parametrize(("name", "text", "line", "reason"), BAD_FILES)
    def test_bad_row_aborts_naming_its_line(self, devreg, tmp_path, name, text, line, reason):
        create_device(devreg, "existing", "--serial", "SN-0")
        before = stored(devreg)

        result = import_devices(devreg, write(tmp_path, name, text))

        assert_refused(result, 1, f"line {line}:", reason)
        assert stored(devreg) == before

    @pytest.mark.parametrize(
        ("name", "text", "shown"),
        [
            ("d.ndjson", '{"name": "a", "co\\nlour\\u001b[2J": 1}\n', "co\\u000alour\\u001b[2J"),
            ("d\n\x1b[2J.txt", "name\na\n", "d\\u000a\\u001b[2J.txt"),
        ],
        ids=["ndjson-field-named-with-control-characters", "file-named-with-control-characters"],
    )
    def test_a_refusal_naming_what_it_was_given_is_one_line(
        self, devreg, tmp_path, name, text, shown
    ):
        """A field's name or a file's, as given, is shown with its control characters escaped:
        the error is one line, which no terminal takes for a command."""
        result = import_devices(devreg, write(tmp_path, name, text))

        assert_refused(result, None, shown)
        assert result.stderr.count("\n") == 1
        assert "\x1b" not in result.stderr

    @pytest.mark.parametrize(
        ("name", "text", "line", "reason"),
        [
            ("d.csv", "name,status\na,broken\nb,active,extra\n", 2, "status"),
            ("d.ndjson", '{"name": "a", "status": "broken"}\n[1]\n', 1, "status"),
            ("d.csv", "name,owner_id\na,999\n,\n", 2, "owner_id does not name"),
            ("d.csv", "name,owner_id\na,999\nb,1,extra\n", 2, "owner_id does not name"),
        ],
        ids=[
            "field-before-miscounted-fields", "field-before-not-an-object",
            "unknown-owner-before-field", "unknown-owner-before-miscounted-fields",
        ],
    )  # fmt: skip
    def test_the_first_bad_line_is_named_whichever_way_it_is_bad(
        self, devreg, tmp_path, name, text, line, reason
    ):
        """The file was read, then validated, then written, a batch at a time, and the first
        of these to refuse a line named it: a later line, when an earlier one had a bad field
        or an owner the database did not know."""
        result = import_devices(devreg, write(tmp_path, name, text))

        assert_refused(result, 1, f"line {line}:", reason)
        assert stored(devreg) == []

    def test_bad_row_after_the_first_batch_names_its_line(self, devreg, tmp_path):
        rows = [{"name": f"d{i}", "serial_number": f"SN-{i}"} for i in range(10_050)]
        rows[10_020]["status"] = "broken"  # line 10,022: the header is line 1

        result = import_devices(devreg, write(tmp_path, "d.csv", as_csv(rows)))

        assert_refused(result, 1, "line 10022:", "status")
        assert stored(devreg) == []

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"owner_id": 999}, "owner_id does not name an existing user"),
            ({"serial_number": "SN-0"}, "serial_number is already registered"),
        ],
        ids=["unknown-owner", "registered-serial"],
    )
    def test_constraint_broken_after_the_first_batch_names_its_line(
        self, devreg, tmp_path, change, reason
    ):
        create_device(devreg, "existing", "--serial", "SN-0")
        before = stored(devreg)
        rows = [{"name": f"d{i}", "serial_number": f"SN-{i + 1}"} for i in range(10_050)]
        rows[10_030].update(change)

        result = import_devices(devreg, write(tmp_path, "d.ndjson", as_ndjson(rows)))

        assert_refused(result, 1, "line 10031:", reason)
        assert stored(devreg) == before

    def test_a_character_the_databases_encoding_lacks_names_its_line(
        self, devreg, tmp_path, latin1_database_url
    ):
        """A LATIN1 database refused the row, and the import said "A value in the request is
        not valid.", naming no line."""
        url = latin1_database_url.render_as_string(hide_password=False)
        rows = [{"name": f"café {i}", "serial_number": f"SN-{i}"} for i in range(10_050)]
        rows[10_030]["model"] = "Žluťoučký 🚀"

        result = import_devices(
            devreg, write(tmp_path, "d.ndjson", as_ndjson(rows)), DATABASE_URL=url
        )

        assert_refused(result, 1, "line 10031:", "model", "encoding (LATIN1)")
        assert stored(devreg, DATABASE_URL=url) == []

    def test_an_unknown_owner_before_a_character_the_encoding_lacks_is_named_first(
        self, devreg, tmp_path, latin1_database_url
    ):
        """The rows of a batch before the character its encoding lacks were never written, so
        the unknown owner on an earlier line went unseen and the later line was named."""
        url = latin1_database_url.render_as_string(hide_password=False)
        rows = [{"name": "a"}, {"name": "b", "owner_id": 999}, {"name": "c", "model": "Ž"}]

        result = import_devices(
            devreg, write(tmp_path, "d.ndjson", as_ndjson(rows)), DATABASE_URL=url
        )

        assert_refused(result, 1, "line 2:", "owner_id")
        assert stored(devreg, DATABASE_URL=url) == []

    def test_serial_repeated_across_batches_names_the_later_line(self, devreg, tmp_path):
        rows = [{"name": f"d{i}", "serial_number": f"SN-{i}"} for i in range(10_050)]
        rows[10_030]["serial_number"] = "SN-5"

        result = import_devices(devreg, write(tmp_path, "d.ndjson", as_ndjson(rows)))

        assert_refused(result, 1, "line 10031:", "serial_number")
        assert stored(devreg) == []


class TestRoundTrip:
    @pytest.mark.parametrize("format", FORMATS)
    def test_export_imports_into_another_database(
        self, devreg, tmp_path, other_database_url, format
    ):
        ok(import_devices(devreg, write(tmp_path, "seed.ndjson", as_ndjson(RECORDS))))
        exported = tmp_path / f"export.{format}"
        ok(devreg("export", "devices", "-o", str(exported)))
        other = database_env(other_database_url)

        result = import_devices(devreg, exported, **other)

        assert_summary(result, rows=3, inserted=3, updated=0, skipped=0)
        copies = stored(devreg, **other)
        assert [content(device) for device in copies] == [content(r) for r in RECORDS]

    @pytest.mark.parametrize("format", FORMATS)
    def test_export_writes_iso_utc_whatever_the_servers_time_zone_and_date_style(
        self, devreg, tmp_path, kolkata_database_url, format
    ):
        other = database_env(kolkata_database_url)
        ok(import_devices(devreg, write(tmp_path, "seed.ndjson", as_ndjson(RECORDS[:1])), **other))
        exported = tmp_path / f"export.{format}"

        ok(devreg("export", "devices", "-o", str(exported), env=other))

        assert RECORDS[0]["last_seen_at"] in exported.read_text()  # "...+00:00", not "+05:30"

    @pytest.mark.parametrize("format", FORMATS)
    def test_export_reimported_skips_every_row_with_a_serial(self, devreg, tmp_path, format):
        owner = create_user(devreg)
        create_device(devreg, "a", "--serial", "SN-1", "--owner-id", str(owner["id"]))
        create_device(devreg, "b")
        create_device(devreg, "c", "--serial", "SN-3", "--tag", "lab")
        before = stored(devreg)
        exported = tmp_path / f"export.{format}"
        ok(devreg("export", "devices", "--format", format, "-o", str(exported)))

        result = import_devices(devreg, exported, "--on-conflict", "skip")

        assert_summary(result, rows=3, inserted=1, updated=0, skipped=2)
        after = stored(devreg)
        assert after[:3] == before
        assert content(after[3]) == content(before[1])  # the device without a serial, again


# --- export --------------------------------------------------------------------------------


class TestExport:
    @pytest.fixture
    def fleet(self, devreg) -> list[dict[str, Any]]:
        owner = create_user(devreg)
        create_device(devreg, "Raspberry Pi 4", "--tag", "lab", "--tag", "eu")
        create_device(devreg, "Jetson Nano", "--status", "retired", "--tag", "lab")
        create_device(devreg, "Arduino Uno", "--status", "inactive", "--owner-id", str(owner["id"]))
        create_device(devreg, "Raspberry Pi 5", "--status", "retired", "--tag", "eu")
        return stored(devreg)

    def test_csv_goes_to_stdout_by_default(self, devreg, fleet):
        text = output(devreg("export", "devices"))

        assert text.splitlines()[0] == EXPORT_HEADER
        assert csv_records(text) == [export_view(device) for device in fleet]

    @pytest.mark.parametrize("format", FORMATS)
    def test_stdout_carries_awkward_text_exactly(self, devreg, tmp_path, format):
        ok(import_devices(devreg, write(tmp_path, "seed.ndjson", as_ndjson(RECORDS))))

        text = output(devreg("export", "devices", "--format", format))

        records = EXPORT_PARSERS[format](text)
        assert records == [export_view(device) for device in stored(devreg)]
        assert records[0]["model"] == RECORDS[0]["model"]

    @pytest.mark.parametrize(
        ("name", "options", "format"),
        [
            pytest.param("out.ndjson", [], "ndjson", id="ndjson-from-extension"),
            pytest.param("out.csv", [], "csv", id="csv-from-extension"),
            pytest.param("out.txt", ["--format", "ndjson"], "ndjson", id="format-option"),
            pytest.param("out.csv", ["--format", "ndjson"], "ndjson", id="format-over-extension"),
        ],
    )
    def test_output_file_gets_the_export(self, devreg, fleet, tmp_path, name, options, format):
        path = tmp_path / name

        result = ok(devreg("export", "devices", "-o", str(path), *options))

        assert result.stdout == ""
        records = EXPORT_PARSERS[format](path.read_text(encoding="utf-8"))
        assert records == [export_view(device) for device in fleet]

    @pytest.mark.parametrize(
        ("options", "names"),
        [
            pytest.param(["--status", "retired"], ["Jetson Nano", "Raspberry Pi 5"], id="status"),
            pytest.param(
                ["--status", "active", "--status", "inactive"],
                ["Raspberry Pi 4", "Arduino Uno"],
                id="status-any-of",
            ),
            pytest.param(["--tag", "lab"], ["Raspberry Pi 4", "Jetson Nano"], id="tag"),
            pytest.param(["--tag", "lab", "--tag", "eu"], ["Raspberry Pi 4"], id="tags-all-of"),
            pytest.param(["--q", "rasberry"], ["Raspberry Pi 4", "Raspberry Pi 5"], id="q"),
            pytest.param(["--status", "retired", "--tag", "eu"], ["Raspberry Pi 5"], id="both"),
            pytest.param(["--tag", "nowhere"], [], id="no-match"),
        ],
    )
    @pytest.mark.parametrize("format", FORMATS)
    def test_filters_choose_the_devices(self, devreg, fleet, options, names, format):
        text = output(devreg("export", "devices", "--format", format, *options))

        assert [record["name"] for record in EXPORT_PARSERS[format](text)] == names

    def test_owner_filter_chooses_the_owned_devices(self, devreg, fleet):
        owner_id = next(device["owner_id"] for device in fleet if device["owner_id"])

        text = output(devreg("export", "devices", "--owner-id", str(owner_id)))

        assert [record["name"] for record in csv_records(text)] == ["Arduino Uno"]

    @pytest.mark.parametrize("option", ["--owner-id", "--tag", "--status"])
    def test_a_filter_takes_as_many_values_as_the_api_does(self, devreg, option):
        value = {"--owner-id": "1", "--tag": "t", "--status": "active"}[option]
        ok(devreg("export", "devices", *[option, value] * REPEATS_MAX))

        result = devreg("export", "devices", *[option, value] * (REPEATS_MAX + 1))

        assert result.exit_code == 2
        assert result.stderr.startswith(f"devreg: {option}: ")
        assert str(REPEATS_MAX) in result.stderr

    def test_a_new_file_is_made_as_any_other(self, devreg, tmp_path):
        path = tmp_path / "new.csv"
        ok(devreg("export", "devices", "-o", str(path)))
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        assert [entry.name for entry in tmp_path.iterdir()] == ["new.csv"]

    def test_a_symbolic_link_is_written_through(self, devreg, tmp_path):
        (tmp_path / "real").mkdir()
        (tmp_path / "links").mkdir()
        (tmp_path / "links" / "out.csv").symlink_to("../real/target.csv")

        ok(devreg("export", "devices", "-o", str(tmp_path / "links" / "out.csv")))

        assert (tmp_path / "links" / "out.csv").is_symlink()
        assert (tmp_path / "real" / "target.csv").read_text() == EXPORT_HEADER + "\n"
        assert [entry.name for entry in (tmp_path / "real").iterdir()] == ["target.csv"]

    def test_a_failed_export_leaves_the_file_as_it_was(self, devreg, tmp_path):
        path = tmp_path / "keep.csv"
        path.write_text("precious\n")
        path.chmod(0o600)
        unreachable = {"DATABASE_URL": "postgresql+asyncpg://devreg@127.0.0.1:1/devreg"}

        result = devreg("export", "devices", "-o", str(path), env=unreachable)

        assert result.exit_code == 1
        assert path.read_text() == "precious\n"
        assert [entry.name for entry in tmp_path.iterdir()] == ["keep.csv"]
        ok(devreg("export", "devices", "-o", str(path)))
        assert path.read_text() == EXPORT_HEADER + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_a_statement_timeout_is_one_line_and_writes_nothing(self, devreg, tmp_path):
        ok(devreg("seed", "--devices", "20000", "--users", "10"))
        path = tmp_path / "out.csv"

        result = devreg("export", "devices", "-o", str(path), env={"STATEMENT_TIMEOUT": "0.001"})

        assert result.exit_code == 1
        assert result.stderr == "devreg: The database took too long to answer; try again shortly.\n"
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
    async def test_an_export_ended_by_a_signal_leaves_no_staged_file(
        self, committed_database_url, tmp_path, ending
    ):
        engine = create_async_engine(committed_database_url, poolclass=NullPool)
        try:
            async with engine.connect() as locker:
                # The export's COPY waits for this lock, its staged file already made.
                await locker.execute(text("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE"))
                exporting = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "devreg", "export", "devices",
                    "-o", str(tmp_path / "out.csv"),
                    env=devreg_environment(
                        DATABASE_URL=committed_database_url.render_as_string(hide_password=False)
                    ),
                )  # fmt: skip
                async with asyncio.timeout(60):
                    while not list(tmp_path.iterdir()):  # noqa: ASYNC110 - a file, no event
                        await asyncio.sleep(0.05)
                exporting.send_signal(ending)
                code = await asyncio.wait_for(exporting.wait(), 60)
        finally:
            await engine.dispose()

        assert code == 128 + ending
        assert list(tmp_path.iterdir()) == []

    def test_a_signal_the_moment_the_staged_file_appears_leaves_nothing(
        self, devreg, committed_database_url, tmp_path, monkeypatch
    ):
        """As the test above, but in the instant after the file's creation: a process preempted
        there (under load) took the signal before the `try` that removes the file. The host is
        a name, so a thread of asyncio's looked it up and lives on: another thread than the
        main one to take the signal."""
        by_name = committed_database_url.set(host="localhost")
        monkeypatch.setenv("DATABASE_URL", by_name.render_as_string(hide_password=False))
        open_file = os.open

        def opened_then_ended(path: Any, *args: Any, **kwargs: Any) -> int:
            descriptor = open_file(path, *args, **kwargs)
            if os.path.basename(path).startswith(".out.csv."):
                os.kill(os.getpid(), signal.SIGTERM)
            return descriptor

        monkeypatch.setattr(os, "open", opened_then_ended)
        with pytest.raises(Terminated):  # what main() turns into exit status 143
            devreg("export", "devices", "-o", str(tmp_path / "out.csv"))

        assert list(tmp_path.iterdir()) == []

    def test_a_full_disk_is_one_line(self, devreg, fleet):
        result = devreg("export", "devices", "-o", "/dev/full", "--format", "csv")

        assert result.exit_code == 1
        assert result.stderr == "devreg: cannot write /dev/full: No space left on device\n"

    def test_empty_database_is_the_header_only(self, devreg):
        assert output(devreg("export", "devices")) == EXPORT_HEADER + "\n"

    # The CLI's filters follow the server's rules: each of these is a 422 over HTTP.
    @pytest.mark.parametrize(
        "options",
        [
            pytest.param(["-o", "out.json"], id="unknown-extension"),
            pytest.param(["--format", "xml"], id="unknown-format"),
            pytest.param(["--status", "broken"], id="unknown-status"),
            pytest.param(["--owner-id", "0"], id="owner-zero"),
            pytest.param(["--owner-id", str(2**63)], id="owner-beyond-bigint"),
            pytest.param(["--tag", ""], id="tag-empty"),
            pytest.param(["--q", "x" * 101], id="q-101-chars"),
        ],
    )
    def test_bad_option_is_a_usage_error(self, devreg, tmp_path, monkeypatch, options):
        monkeypatch.chdir(tmp_path)

        result = devreg("export", "devices", *options)

        assert result.exit_code == 2
        assert result.stdout == ""
        assert not (tmp_path / "out.json").exists()

    def test_output_in_a_missing_directory_is_refused(self, devreg, fleet, tmp_path):
        path = tmp_path / "missing" / "out.csv"

        result = devreg("export", "devices", "-o", str(path))

        assert_refused(result, None, "out.csv")


# --- seed ----------------------------------------------------------------------------------


@pytest.fixture
def large_from_500(monkeypatch):
    """Seeds and imports of 500 devices or more count as large (db.bulk_load)."""
    monkeypatch.setattr(bulk_load, "INDEXES_BUILT_AFTER_FROM", 500)


def rebuilt(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> set[str]:
    """The indexes and keys made again (a new oid), each as it was defined before."""
    assert after.keys() == before.keys()
    assert [after[name][0] for name in after] == [before[name][0] for name in before]
    return {name for name in after if after[name][1] != before[name][1]}


SECONDARY_INDEXES = {
    "ix_devices_attributes", "ix_devices_created_at_id", "ix_devices_last_seen_at_id",
    "ix_devices_model_id", "ix_devices_name_id", "ix_devices_owner_id_created_at_id",
    "ix_devices_owner_id_id", "ix_devices_owner_id_last_seen_at_id",
    "ix_devices_owner_id_name_id", "ix_devices_search_text_trgm", "ix_devices_status_id",
    "ix_devices_tags",
}  # fmt: skip


async def device_indexes_and_keys(url: URL) -> dict[str, tuple[str, int]]:
    """The devices table's indexes and constraints by name: each one's definition and oid."""
    rows = await query(
        url,
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS definition,"
        " indexrelid::int AS oid FROM pg_index WHERE indrelid = 'devices'::regclass"
        " UNION ALL SELECT conname, pg_get_constraintdef(oid), oid::int FROM pg_constraint"
        " WHERE conrelid = 'devices'::regclass AND contype = 'f' ORDER BY name",
    )
    return {row["name"]: (row["definition"], row["oid"]) for row in rows}


# The seed's one statement (its text as pg_stat_activity keeps it: the first kilobyte).
_SEED_INSERTING = (
    "SELECT count(*) > 0 AS done FROM pg_stat_activity "
    "WHERE state = 'active' AND query LIKE '%WITH created AS (%INSERT INTO users%' "
    "AND pid <> pg_backend_pid()"
)
_DEVICES_UNLOCKED = (
    "SELECT count(*) = 0 AS done FROM pg_locks "
    "WHERE relation = 'devices'::regclass AND mode = 'AccessExclusiveLock'"
)


async def _until(url: URL, condition: str, *, within: float) -> None:
    """Once `condition` (a query of one row: `done`) holds; it must within `within` seconds."""
    deadline = time.monotonic() + within
    while not (await query(url, condition))[0]["done"]:
        assert time.monotonic() < deadline, condition
        await asyncio.sleep(0.1)


class TestSeed:
    @pytest.fixture
    def seeded(self, devreg) -> Result:
        return ok(devreg("seed", "--devices", "500", "--users", "50"))

    def test_prints_the_counts(self, seeded):
        assert seeded.stdout.startswith("seeded 50 users and 500 devices in ")

    async def test_the_planner_knows_the_rows_at_once(self, committed_database_url, seeded):
        """Until autovacuum came by, a minute or so later, the estimates were of the tables
        before the seed (`count=estimated` said 1,500 of 60,000)."""
        estimated = await query(
            committed_database_url,
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('users', 'devices')",
        )

        assert {row["relname"]: row["reltuples"] for row in estimated} == {
            "users": 50,
            "devices": 500,
        }

    def test_stores_the_counts(self, devreg, seeded):
        assert len(listed(devreg, "users")) == 50
        assert len(stored(devreg)) == 500

    def test_devices_are_consistent(self, devreg, seeded):
        devices = stored(devreg)
        user_ids = {user["id"] for user in listed(devreg, "users")}

        owners = {device["owner_id"] for device in devices} - {None}
        assert owners
        assert owners <= user_ids
        serials = [device["serial_number"] for device in devices]
        assert None not in serials
        assert len(set(serials)) == len(serials)
        assert all(device["tags"] and device["attributes"] for device in devices)
        assert {device["status"] for device in devices} == {"active", "inactive", "retired"}

    async def test_device_numbers_past_seven_digits_are_kept_whole(self, database_url):
        """A device's number was cut to 7 digits: the 10,000,000th and 10,000,001st devices
        of a run were both "...-1000000"."""
        numbers = (9_999_999, 10_000_000, 10_000_001, 123_456_789)
        rows = await query(
            database_url,
            f"SELECT {seed.NUMBER_IN_NAME} AS n FROM unnest(CAST(:numbers AS bigint[])) AS g",
            numbers=list(numbers),
        )

        assert [row["n"] for row in rows] == [str(number) for number in numbers]

    def test_seeding_again_adds_more_without_collisions(self, devreg, seeded):
        ok(devreg("seed", "--devices", "500", "--users", "50"))

        users, devices = listed(devreg, "users"), stored(devreg)
        assert len(users) == 100
        assert len(devices) == 1000
        assert len({user["email"] for user in users}) == 100
        assert len({device["serial_number"] for device in devices}) == 1000

    def test_owners_are_the_users_it_made_whatever_their_ids(self, devreg, committed_database_url):
        # As when another seed, or the API, creates users at the same time: a run's new users
        # do not have consecutive ids.
        asyncio.run(
            admin(committed_database_url, "ALTER TABLE users ALTER COLUMN id SET INCREMENT BY 3")
        )

        ok(devreg("seed", "--devices", "500", "--users", "50"))

        user_ids = {user["id"] for user in listed(devreg, "users")}
        owners = {device["owner_id"] for device in stored(devreg)} - {None}
        assert len(user_ids) == 50
        assert len(owners) == 45  # every tenth device has none
        assert owners <= user_ids

    def test_a_large_seed_into_a_smaller_registry_builds_the_indexes_after(
        self, devreg, committed_database_url, large_from_500
    ):
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        ok(devreg("seed", "--devices", "500", "--users", "50"))

        after = asyncio.run(device_indexes_and_keys(committed_database_url))
        # The secondary indexes, the primary key, the serial number's and the owner's.
        assert len(after) == len(SECONDARY_INDEXES) + 3
        # The keys stay: dropping the owner's would lock the users table too.
        assert rebuilt(before, after) == SECONDARY_INDEXES
        devices = stored(devreg)
        assert len(devices) == 500
        assert {d["owner_id"] for d in devices} - {None} <= {
            u["id"] for u in listed(devreg, "users")
        }

    def test_a_seed_smaller_than_the_registry_keeps_its_indexes(
        self, devreg, committed_database_url, seeded, large_from_500
    ):
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        ok(devreg("seed", "--devices", "500", "--users", "50"))

        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before
        assert len(stored(devreg)) == 1000

    def test_a_large_seed_into_a_database_a_migration_behind_goes_row_by_row(
        self, devreg, committed_database_url, large_from_500
    ):
        """MIGRATE_ON_START=false, the database not yet given a migration's indexes on devices
        (the owner's in each sort's order): the seed dropped the indexes the models name and
        failed on the first one missing, 'index "ix_devices_owner_id_created_at_id" does not
        exist'. Made at its end, they would have failed the migration that makes them."""
        ok(devreg("db", "downgrade", "c81d4e0b9a27"))
        before = asyncio.run(device_indexes_and_keys(committed_database_url))

        result = devreg("seed", "--devices", "500", "--users", "50", env={"MIGRATE_ON_START": "0"})

        assert result.exit_code == 0, result.stderr
        assert asyncio.run(device_indexes_and_keys(committed_database_url)) == before
        assert len(stored(devreg, MIGRATE_ON_START="0")) == 500
        ok(devreg("db", "upgrade"))

    async def test_a_large_seed_while_another_has_counted_the_devices_goes_row_by_row(
        self, committed_database_url, large_from_500
    ):
        """Two that had both counted the devices, then both asked for the table, would each wait
        for the other to let go of it: the one asking does not wait."""
        before = await device_indexes_and_keys(committed_database_url)
        another = await asyncpg_connection(committed_database_url)
        try:
            async with another.transaction():  # another seed, having counted
                await another.fetchval("SELECT count(*) FROM devices")
                async with (
                    one_connection(committed_database_url) as sessions,
                    session_scope(sessions) as work,
                ):
                    seeded = await asyncio.wait_for(seed.seed(work, users=10, devices=500), 60)
            assert seeded == seed.Seeded(users=10, devices=500)
            assert await another.fetchval("SELECT count(*) FROM devices") == 500
        finally:
            await another.close()
        assert await device_indexes_and_keys(committed_database_url) == before

    async def test_a_seed_killed_amid_its_insert_lets_go_of_the_table(self, committed_database_url):
        """Its backend ran the INSERT to its end with nobody to answer, the table locked: every
        request waited for as long (45 s after a million-device seed was killed)."""
        url = committed_database_url.render_as_string(hide_password=False)
        seeding = started_devreg("seed", "--devices", "3000000", "--users", "10", DATABASE_URL=url)
        try:
            await _until(committed_database_url, _SEED_INSERTING, within=60)
        finally:
            seeding.kill()
            seeding.communicate()
        await _until(committed_database_url, _DEVICES_UNLOCKED, within=10)

    @pytest.mark.parametrize(
        "setting",
        [
            "SET LOCAL no_such_setting = '1s'",  # PostgreSQL 13 and before
            "SET LOCAL client_connection_check_interval = '-1s'",  # a platform's refusal
        ],
        ids=["unknown", "refused"],
    )
    def test_a_server_that_cannot_look_for_the_client_seeds_all_the_same(
        self, devreg, monkeypatch, large_from_500, setting
    ):
        monkeypatch.setattr(bulk_load, "CLIENT_CHECK", setting)

        ok(devreg("seed", "--devices", "500", "--users", "50"))

        assert len(stored(devreg)) == 500

    def test_devices_without_users_have_no_owner(self, devreg):
        ok(devreg("seed", "--devices", "20", "--users", "0"))

        devices = stored(devreg)
        assert len(devices) == 20
        assert {device["owner_id"] for device in devices} == {None}


class TestPipesAndTerminals:
    """What a shell hands a command: a pipe as /dev/stdin or /dev/stdout, a terminal."""

    def test_an_export_to_dev_stdout_goes_down_its_pipe(self, committed_database_url):
        url = committed_database_url.render_as_string(hide_password=False)

        result = run_devreg(
            "export", "devices", "--format", "csv", "-o", "/dev/stdout", DATABASE_URL=url
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout == EXPORT_HEADER + "\n"

    @pytest.mark.parametrize("format_options", [[], ["--format", "ndjson"]])
    def test_an_export_to_dash_goes_to_stdout(
        self, committed_database_url, tmp_path, format_options
    ):
        """`-o -` is stdout, as for most tools: it wrote a file named `-` in the working
        directory (or, with no --format, failed: "cannot tell the format of -")."""
        url = committed_database_url.render_as_string(hide_password=False)

        result = subprocess.run(
            [sys.executable, "-m", "devreg", "export", "devices", *format_options, "-o", "-"],
            capture_output=True, text=True, cwd=tmp_path,
            env=devreg_environment(DATABASE_URL=url), timeout=120, check=False,
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        assert result.stdout == ("" if format_options else EXPORT_HEADER + "\n")
        assert list(tmp_path.iterdir()) == []

    def test_an_export_to_dev_stdout_appended_to_a_file_keeps_what_the_file_had(
        self, committed_database_url, tmp_path
    ):
        url = committed_database_url.render_as_string(hide_password=False)
        kept = tmp_path / "kept.csv"
        kept.write_text("# written before\n")

        with kept.open("a") as appended:
            result = subprocess.run(
                [sys.executable, "-m", "devreg", "export", "devices", "--format", "csv",
                 "-o", "/dev/stdout"],
                stdout=appended, stderr=subprocess.PIPE, text=True,
                env=devreg_environment(DATABASE_URL=url), timeout=120, check=False,
            )  # fmt: skip

        assert result.returncode == 0, result.stderr
        assert kept.read_text() == "# written before\n" + EXPORT_HEADER + "\n"
        assert list(tmp_path.iterdir()) == [kept]

    def test_an_export_whose_reader_goes_away_ends_quietly(self, committed_database_url):
        url = committed_database_url.render_as_string(hide_password=False)
        assert run_devreg("seed", "--devices", "3000", DATABASE_URL=url).returncode == 0

        exporting = subprocess.Popen(
            [sys.executable, "-m", "devreg", "export", "devices", "--format", "csv"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=devreg_environment(DATABASE_URL=url),
        )  # fmt: skip
        assert exporting.stdout is not None
        assert exporting.stderr is not None
        head = exporting.stdout.read(100)
        exporting.stdout.close()  # as `| head -c 100` does

        assert exporting.wait(timeout=120) == 128 + signal.SIGPIPE
        assert exporting.stderr.read() == b""
        assert EXPORT_HEADER.encode().startswith(head)

    @pytest.mark.parametrize("line", [3, 20_000])
    def test_a_pipe_not_utf8_is_refused_at_its_line_while_its_writer_goes_on(
        self, committed_database_url, line
    ):
        """The line was found by reading the file again: a pipe's rest, so a wrong line or
        none, and only once its writer closed it."""
        url = committed_database_url.render_as_string(hide_password=False)
        endings = (b"\r\n", b"\n", b"\r")  # as the import reads lines, chunks split among them
        rows = b"".join(
            (b"bad\xff" if number == line else b"n%d" % number) + b",SN-%d" % number
            + endings[number % 3]
            for number in range(2, 30_001)
        )  # fmt: skip
        importing = subprocess.Popen(
            [sys.executable, "-m", "devreg", "import", "devices", "/dev/stdin", "--format", "csv"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=devreg_environment(DATABASE_URL=url),
        )  # fmt: skip
        assert importing.stdin is not None
        # The writer sends everything and keeps the pipe open, as one with more to send does.
        writing = threading.Thread(
            target=_write_ignoring_a_reader_gone,
            args=(importing.stdin, b"name,serial_number\n" + rows),
        )
        writing.start()
        try:
            returncode = importing.wait(timeout=60)
        finally:
            importing.kill()
            importing.stdin.close()
            writing.join()
        assert importing.stderr is not None

        assert returncode == 2
        assert (
            importing.stderr.read().decode()
            == f"devreg: /dev/stdin is not UTF-8 text: line {line}\n"
        )

    def test_a_pipe_is_imported_with_a_progress_bar_on_a_terminal(self, committed_database_url):
        url = committed_database_url.render_as_string(hide_password=False)
        terminal, terminal_for_the_child = pty.openpty()
        shown = io.BytesIO()
        # Wide enough for the bar's "rows/s" whatever COLUMNS the tests were started with.
        environment = devreg_environment(DATABASE_URL=url, COLUMNS="200")
        watching = threading.Thread(target=_read_until_closed, args=(terminal, shown))
        watching.start()
        try:
            result = subprocess.run(
                [sys.executable, "-m", "devreg", "import", "devices", "/dev/stdin",
                 "--format", "ndjson"],
                input=b'{"name": "piped"}\n', stdout=subprocess.PIPE,
                stderr=terminal_for_the_child, env=environment,
                timeout=120, check=False,
            )  # fmt: skip
        finally:
            os.close(terminal_for_the_child)
            watching.join(10)
            os.close(terminal)

        assert result.returncode == 0, shown.getvalue().decode(errors="replace")
        assert result.stdout.decode().startswith("1 rows: 1 inserted")
        assert b"rows/s" in shown.getvalue()

    def test_a_file_that_fails_to_read_is_one_line(self, devreg):
        # Reading a process's own memory from its start fails with EIO, as a failing disk does.
        result = import_devices(devreg, Path("/proc/self/mem"), "--format", "csv")

        assert_refused(result, 1, "cannot be read", "Input/output error")


def _write_ignoring_a_reader_gone(pipe: IO[bytes], data: bytes) -> None:
    with suppress(BrokenPipeError, ValueError):
        pipe.write(data)
        pipe.flush()


def _read_until_closed(fd: int, into: io.BytesIO) -> None:
    with suppress(OSError):  # EIO once the child's side is closed
        while chunk := os.read(fd, 4096):
            into.write(chunk)
