"""The CLI as a user runs it: arguments in, a table or JSON out, errors on stderr."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy.engine import URL
from typer.core import TyperGroup
from typer.testing import CliRunner, Result

from devreg.cli import app
from devreg.cli.common import Terminated, run_async
from devreg.db import migrations
from tests.cli.conftest import Invoke
from tests.support import EXPORT_HEADER, admin, devreg_environment, query, run_devreg


def json_of(result: Result) -> dict:  # type: ignore[type-arg]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class TestUsers:
    def test_create_prints_the_user_as_json(self, devreg: Invoke) -> None:
        user = json_of(
            devreg("users", "create", "--name", " Ann ", "--email", "ann@x.org", "--json")
        )
        assert user["name"] == "Ann"
        assert user["email"] == "ann@x.org"
        assert isinstance(user["id"], int)

    def test_list_shows_a_table(self, devreg: Invoke) -> None:
        devreg("users", "create", "--name", "Ann")
        devreg("users", "create", "--name", "Bob")
        result = devreg("users", "list")
        assert result.exit_code == 0
        assert "Ann" in result.stdout
        assert "Bob" in result.stdout

    def test_list_pages_with_the_printed_cursor(self, devreg: Invoke) -> None:
        for name in ("a", "b", "c"):
            devreg("users", "create", "--name", name)
        first = json_of(devreg("users", "list", "--limit", "2", "--json"))
        second = json_of(devreg("users", "list", "--cursor", first["next_cursor"], "--json"))
        names = [user["name"] for user in first["items"] + second["items"]]
        assert names == ["a", "b", "c"]
        assert second["next_cursor"] is None

    def test_duplicate_email_fails_on_stderr(self, devreg: Invoke) -> None:
        devreg("users", "create", "--name", "Ann", "--email", "ann@x.org")
        result = devreg("users", "create", "--name", "Ann", "--email", "ANN@x.org")
        assert result.exit_code != 0
        assert "email is already registered" in result.stderr
        assert result.stdout == ""

    def test_invalid_email_is_a_usage_error(self, devreg: Invoke) -> None:
        result = devreg("users", "create", "--name", "Ann", "--email", "not-an-email")
        assert result.exit_code == 2
        assert "email" in result.stderr


class TestDevices:
    def test_create_get_list_delete(self, devreg: Invoke) -> None:
        owner = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        device = json_of(
            devreg(
                "devices",
                "create",
                "--name",
                "pi",
                "--serial",
                "SN-1",
                "--model",
                "rpi4",
                "--status",
                "inactive",
                "--owner-id",
                str(owner["id"]),
                "--tag",
                "lab",
                "--tag",
                "eu",
                "--json",
            )
        )
        assert device["owner"] == {"id": owner["id"], "name": "Ann"}
        assert device["tags"] == ["lab", "eu"]
        assert device["status"] == "inactive"

        fetched = json_of(devreg("devices", "get", str(device["id"]), "--json"))
        assert fetched == device

        table = devreg("devices", "list")
        assert "SN-1" in table.stdout

        deleted = devreg("devices", "delete", str(device["id"]))
        assert deleted.exit_code == 0
        missing = devreg("devices", "get", str(device["id"]))
        assert missing.exit_code == 1
        assert "Device not found" in missing.stderr

    def test_db_echo_shows_each_statement_on_stderr(self, devreg: Invoke) -> None:
        echoed = devreg(
            "devices", "create", "--name", "pi", "--serial", "SN-7f3a", "--json",
            env={"DB_ECHO": "true"},
        )  # fmt: skip

        device = json_of(echoed)  # stdout still holds the device alone
        assert "INSERT INTO devices (name, serial_number" in echoed.stderr
        assert "SN-7f3a" not in echoed.stderr  # the values stay hidden, as in the server's log
        unechoed = devreg("devices", "get", str(device["id"]), "--json")
        assert unechoed.exit_code == 0
        assert unechoed.stderr == ""

    def test_get_shows_fields_as_a_table(self, devreg: Invoke) -> None:
        device = json_of(devreg("devices", "create", "--name", "pi", "--json"))
        result = devreg("devices", "get", str(device["id"]))
        assert result.exit_code == 0
        assert "serial_number" in result.stdout
        assert "pi" in result.stdout
        assert "None" not in result.stdout  # no owner: an empty cell
        owner_row = next(line for line in result.stdout.splitlines() if " owner_id " in line)
        assert owner_row.split() == ["owner_id"]

    @pytest.mark.parametrize("limit", ["0", "1001"])
    def test_a_limit_out_of_range_is_a_usage_error(self, devreg: Invoke, limit: str) -> None:
        """A page of none would still have given a cursor, after a row never shown."""
        result = devreg("devices", "list", "--limit", limit, "--json")
        assert result.exit_code == 2
        assert "--limit" in result.stderr

    @pytest.mark.parametrize("name", ["[/]", "sensor [b]rack[/b] [red]A"])
    def test_names_are_shown_as_they_are(self, devreg: Invoke, name: str) -> None:
        created = devreg("devices", "create", "--name", name)
        listed = devreg("devices", "list")
        assert created.exit_code == listed.exit_code == 0, created.output
        assert name in created.stdout
        assert name in listed.stdout

    def test_stored_control_characters_never_reach_the_terminal(self, devreg: Invoke) -> None:
        """Any token that may write could store ESC sequences (clear the screen, set the window's
        title, fake a prompt) that `devices get` and `list` wrote raw to the operator's
        terminal; C1 controls and a right-to-left override too."""
        name = "a\x1b[2J\x1b]0;owned\x07\u009b31m\u202eb"
        device = json_of(devreg("devices", "create", "--name", name, "--model", name, "--json"))
        outputs = [
            devreg("devices", "get", str(device["id"])).stdout,
            devreg("devices", "list").stdout,
            devreg("devices", "get", str(device["id"]), "--json").stdout,
        ]

        shown = "a\\u001b[2J\\u001b]0;owned\\u0007\\u009b31m\\u202eb"
        for output in outputs[:2]:
            assert not {"\x1b", "\x07", "\u009b", "\u202e"} & set(output), output
            assert shown in output
        assert outputs[2].isascii()
        assert json.loads(outputs[2])["name"] == name

    def test_a_table_written_to_a_pipe_keeps_each_value_on_one_line(self, devreg: Invoke) -> None:
        """Read by grep or awk, a value folded at 80 columns was not found whole."""
        name, serial = "gateway-" + "x" * 92, "SN-" + "9" * 60
        device = json_of(devreg("devices", "create", "--name", name, "--serial", serial, "--json"))
        user = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        devreg("tokens", "create", "--user", str(user["id"]))
        listed, shown = devreg("devices", "list"), devreg("devices", "get", str(device["id"]))
        tokens = devreg("tokens", "list")

        row = next(line for line in listed.stdout.splitlines() if name in line)
        assert serial in row
        assert any(name in line for line in shown.stdout.splitlines())
        assert "last_used_at" in tokens.stdout

    @pytest.mark.parametrize("forcing", ["FORCE_COLOR", "TTY_COMPATIBLE"])
    def test_a_table_piped_in_colour_keeps_each_value_on_one_line(
        self, devreg: Invoke, committed_database_url: URL, forcing: str
    ) -> None:
        """Rich takes a pipe for a terminal under FORCE_COLOR (or TTY_COMPATIBLE), which folded
        the table at 80 columns."""
        name, serial = "gateway-" + "x" * 92, "SN-" + "9" * 60
        devreg("devices", "create", "--name", name, "--serial", serial)
        url = committed_database_url.render_as_string(hide_password=False)
        listed = run_devreg("devices", "list", DATABASE_URL=url, **{forcing: "1"})

        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if name in line)
        assert serial in row

    @pytest.mark.parametrize(
        "command",
        [
            ("devices", "create", "--name", "pi"),
            ("import", "devices", "/dev/stdin", "--format", "csv"),
        ],
        ids=["create", "import"],
    )
    @pytest.mark.parametrize(
        ("errcode", "postgresql_said", "said"),
        [
            (
                "disk_full",
                'could not extend file "base/16384/16559": wrote only 4096 of 8192 bytes',
                "The database is out of connections, memory or disk; try again shortly.",
            ),
            (
                "admin_shutdown",
                "terminating connection due to administrator command",
                "The database is unavailable; try again shortly.",
            ),
        ],
        ids=["disk-full", "connection-ended"],
    )
    def test_a_database_refusal_is_said_as_the_api_says_it(
        self,
        devreg: Invoke,
        committed_database_url: URL,
        command: tuple[str, ...],
        errcode: str,
        postgresql_said: str,
        said: str,
    ) -> None:
        """PostgreSQL's own words were printed: a file inside its cluster, without the hint to
        check free disk space; its words for a connection it ended."""
        asyncio.run(
            admin(
                committed_database_url,
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"RAISE EXCEPTION '{postgresql_said}' USING ERRCODE = '{errcode}'; END $$",
                "CREATE TRIGGER refuse BEFORE INSERT ON devices "
                "FOR EACH ROW EXECUTE FUNCTION refuse()",
            )
        )
        url = committed_database_url.render_as_string(hide_password=False)
        result = subprocess.run(
            [sys.executable, "-m", "devreg", *command],
            env=devreg_environment(DATABASE_URL=url),
            input="name\npi\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert result.returncode == 1
        assert result.stderr == f"devreg: {said}\n"

    def test_duplicate_serial_fails(self, devreg: Invoke) -> None:
        devreg("devices", "create", "--name", "a", "--serial", "SN-1")
        result = devreg("devices", "create", "--name", "b", "--serial", "SN-1")
        assert result.exit_code == 1
        assert "serial_number is already registered" in result.stderr

    def test_unknown_owner_fails(self, devreg: Invoke) -> None:
        result = devreg("devices", "create", "--name", "a", "--owner-id", "999")
        assert result.exit_code == 1
        assert "owner_id" in result.stderr

    @pytest.mark.parametrize("name", ["", "   ", "x" * 101])
    def test_bad_name_is_a_usage_error(self, devreg: Invoke, name: str) -> None:
        result = devreg("devices", "create", "--name", name)
        assert result.exit_code == 2
        assert result.stderr.startswith("devreg: --name: ")
        assert json_of(devreg("devices", "list", "--json"))["items"] == []

    def test_a_bad_tag_names_the_option_and_which(self, devreg: Invoke) -> None:
        result = devreg("devices", "create", "--name", "pi", "--tag", "ok", "--tag", "t" * 65)
        assert result.exit_code == 2
        assert result.stderr.startswith("devreg: --tag [1]: ")

    def test_id_out_of_range_is_a_usage_error(self, devreg: Invoke) -> None:
        result = devreg("devices", "get", str(2**63))
        assert result.exit_code == 2

    def test_bad_cursor_is_a_usage_error(self, devreg: Invoke) -> None:
        result = devreg("devices", "list", "--cursor", "garbage")
        assert result.exit_code == 2
        assert "cursor" in result.stderr

    @pytest.mark.parametrize("written", ["0_{}", "+{}", " {}"])
    def test_an_id_not_in_the_digits_alone_is_a_usage_error(
        self, devreg: Invoke, written: str
    ) -> None:
        """As the API refuses it: typer's int read `0_1`, `+1` and ` 1` as 1, so that a typo
        deleted device 1 (`devices delete 0_1`), gave a device to user 1 or exported user 1's."""
        owner = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        device = json_of(devreg("devices", "create", "--name", "pi", "--json"))
        owner_id = written.format(owner["id"])

        deleted = devreg("devices", "delete", written.format(device["id"]))
        given = devreg("devices", "create", "--name", "pi-2", "--owner-id", owner_id)
        exported = devreg("export", "devices", "--owner-id", owner_id)

        assert [deleted.exit_code, given.exit_code, exported.exit_code] == [2, 2, 2]
        assert exported.stdout == ""
        listed = json_of(devreg("devices", "list", "--json"))["items"]
        assert [(item["id"], item["owner_id"]) for item in listed] == [(device["id"], None)]


def devreg_writing_to(
    url: URL, stdout: Any, *args: str, close_stdout: bool = False
) -> subprocess.CompletedProcess[str]:
    """`devreg ARGS...` as a shell runs it with its stdout sent to `stdout` (or closed: `>&-`)."""
    return subprocess.run(
        [sys.executable, "-m", "devreg", *args],
        env=devreg_environment(DATABASE_URL=url.render_as_string(hide_password=False)),
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.close(1)) if close_stdout else None,
        text=True,
        timeout=120,
        check=False,
    )


class TestOutputThatCannotBeWritten:
    """A command's output goes to stdout after its work is done: a write committed, its output
    lost. The command says so in one line, not a traceback; a reader gone away (`| head`) ends
    it quietly, as Unix tools end."""

    def test_a_full_disk_is_one_line_and_the_work_stands(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        user = json_of(devreg("users", "create", "--name", "ann", "--json"))
        with open("/dev/full", "w") as full:
            result = devreg_writing_to(
                committed_database_url, full, "tokens", "create", "--user", str(user["id"])
            )

        assert result.returncode == 1
        assert result.stderr == "devreg: cannot write to stdout: No space left on device\n"
        assert len(json_of(devreg("tokens", "list", "--json"))["items"]) == 1

    @pytest.mark.parametrize(
        "command", [("devices", "list", "--json"), ("export", "devices")], ids=["list", "export"]
    )
    def test_a_closed_stdout_is_one_line(
        self, committed_database_url: URL, command: tuple[str, ...]
    ) -> None:
        result = devreg_writing_to(committed_database_url, None, *command, close_stdout=True)

        assert result.returncode == 1
        assert result.stderr == "devreg: cannot write to stdout: it is closed\n"

    @pytest.mark.parametrize("as_json", [(), ("--json",)], ids=["table", "json"])
    @pytest.mark.parametrize("read_first", [0, 10], ids=["unread", "gone-partway"])
    def test_a_reader_gone_ends_the_command_quietly(
        self, committed_database_url: URL, as_json: tuple[str, ...], read_first: int
    ) -> None:
        """With stdout unbuffered (PYTHONUNBUFFERED, as containers often set it), a reader
        gone amid a write larger than a pipe holds cut it short without an error: exit 0, the
        output silently incomplete."""
        url = committed_database_url.render_as_string(hide_password=False)
        assert run_devreg("seed", "--devices", "1000", DATABASE_URL=url).returncode == 0
        listing = subprocess.Popen(
            [sys.executable, "-m", "devreg", "devices", "list", "--limit", "1000", *as_json],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=devreg_environment(DATABASE_URL=url, PYTHONUNBUFFERED="1"),
        )
        assert listing.stdout is not None
        assert listing.stderr is not None
        listing.stdout.read(read_first)  # once data comes, the listing is amid its write
        listing.stdout.close()  # as `| head -c 10` does: more than a pipe holds is left unread

        assert listing.wait(timeout=120) == 128 + signal.SIGPIPE
        assert listing.stderr.read() == b""

    @pytest.mark.parametrize(
        "command",
        [("--help",), (), ("devices", "list", "--help")],
        ids=["help", "no-arguments", "a-command's-help"],
    )
    def test_a_help_whose_reader_is_gone_ends_as_a_command_does(
        self, committed_database_url: URL, command: tuple[str, ...]
    ) -> None:
        """`devreg --help | head -1`: click took the broken pipe for an error of its own and
        ended with exit 1."""
        reader, writer = os.pipe()
        os.close(reader)  # as a `head` that has ended before the help is written
        try:
            result = devreg_writing_to(committed_database_url, writer, *command)
        finally:
            os.close(writer)

        assert result.returncode == 128 + signal.SIGPIPE
        assert result.stderr == ""

    @pytest.mark.parametrize(
        ("file_name", "by_its_own_name"),
        [("kept.csv", False), ("kept.ndjson", True)],
        ids=["dev-stdout-is-csv", "its-own-name-keeps-its-format"],
    )
    def test_an_export_to_stdout_by_a_name_goes_where_the_shell_sent_it(
        self,
        devreg: Invoke,
        committed_database_url: URL,
        tmp_path: Path,
        file_name: str,
        by_its_own_name: bool,
    ) -> None:
        """`-o /dev/stdout >> kept.csv` is CSV unless --format says otherwise (it asked for
        --format); `-o kept.ndjson >> kept.ndjson` is NDJSON, as the name says (it was CSV)."""
        devreg("devices", "create", "--name", "pi")
        kept = tmp_path / file_name
        kept.write_text("# written before\n")
        named = str(kept) if by_its_own_name else "/dev/stdout"
        with kept.open("a") as appended:
            result = devreg_writing_to(
                committed_database_url, appended, "export", "devices", "-o", named
            )

        assert result.returncode == 0, result.stderr
        before, first = kept.read_text().splitlines()[:2]
        assert before == "# written before"
        if by_its_own_name:
            assert json.loads(first)["name"] == "pi"
        else:
            assert first == EXPORT_HEADER

    def test_an_export_to_a_file_needs_no_stdout(
        self, devreg: Invoke, committed_database_url: URL, tmp_path: Path
    ) -> None:
        """With stdout closed, telling whether the file was stdout was an AttributeError."""
        devreg("devices", "create", "--name", "pi")
        existing = tmp_path / "devices.csv"
        existing.write_text("old\n")
        result = devreg_writing_to(
            committed_database_url, None, "export", "devices", "-o", str(existing),
            close_stdout=True,
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        assert existing.read_text().splitlines()[0] == EXPORT_HEADER


NAMED_BEYOND_ASCII = "Žluťoučký 🚀"
# The encodings a stdout may have that lack characters of it, and how each is asked for.
ENCODINGS_LACKING_ITS_CHARACTERS = [
    pytest.param("ascii", {"PYTHONIOENCODING": "ascii"}, id="ascii"),
    pytest.param("latin-1", {"PYTHONIOENCODING": "latin-1"}, id="latin-1"),
    pytest.param("ascii", {"LC_ALL": "C", "PYTHONUTF8": "0"}, id="c-locale"),
]
# A page (users list takes the same way) and a single record.
LISTINGS_OF_IT = [("devices", "list"), ("devices", "get", "1")]


def devreg_output_in(
    encoding: str, url: str, *args: str, **environment: str
) -> subprocess.CompletedProcess[str]:
    """`devreg ARGS...` with its stdout in `encoding`, read back in it."""
    return subprocess.run(
        [sys.executable, "-m", "devreg", *args],
        env=devreg_environment(DATABASE_URL=url, **environment),
        capture_output=True,
        encoding=encoding,
        timeout=120,
        check=False,
    )


class TestOutputInAnyEncoding:
    """A name with a character stdout's encoding lacks ended the listing with a
    UnicodeEncodeError's traceback, as a table and as JSON alike."""

    @pytest.fixture
    def url(self, devreg: Invoke, committed_database_url: URL) -> str:
        devreg("devices", "create", "--name", NAMED_BEYOND_ASCII, "--tag", NAMED_BEYOND_ASCII)
        return committed_database_url.render_as_string(hide_password=False)

    @pytest.mark.parametrize("command", LISTINGS_OF_IT, ids=" ".join)
    @pytest.mark.parametrize(("encoding", "environment"), ENCODINGS_LACKING_ITS_CHARACTERS)
    def test_json_is_ascii_and_reads_back_the_name(
        self, url: str, command: tuple[str, ...], encoding: str, environment: dict[str, str]
    ) -> None:
        result = devreg_output_in(encoding, url, *command, "--json", **environment)

        assert result.returncode == 0, result.stderr
        assert result.stdout.isascii()
        document = json.loads(result.stdout)
        shown = document["items"][0] if "items" in document else document
        assert (shown["name"], shown["tags"]) == (NAMED_BEYOND_ASCII, [NAMED_BEYOND_ASCII])

    @pytest.mark.parametrize("command", LISTINGS_OF_IT, ids=" ".join)
    @pytest.mark.parametrize(("encoding", "environment"), ENCODINGS_LACKING_ITS_CHARACTERS)
    def test_a_table_shows_the_characters_lacking_as_escapes_in_line(
        self, url: str, command: tuple[str, ...], encoding: str, environment: dict[str, str]
    ) -> None:
        result = devreg_output_in(encoding, url, *command, **environment)

        assert (result.returncode, result.stderr) == (0, "")
        escaped = NAMED_BEYOND_ASCII.encode(encoding, "backslashreplace").decode(encoding)
        assert escaped in result.stdout
        assert len({len(line) for line in result.stdout.splitlines()}) == 1, result.stdout


class TestDatabase:
    def test_status_downgrade_upgrade(self, devreg: Invoke) -> None:
        assert "up to date" in devreg("db", "status").stdout

        assert devreg("db", "downgrade", "base").exit_code == 0
        assert "current: empty" in devreg("db", "status").stdout

        assert devreg("db", "upgrade").exit_code == 0
        assert "up to date" in devreg("db", "status").stdout

    def test_migrations_in_a_directory_named_with_a_percent_sign(
        self, devreg: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A checkout or virtual environment in such a directory (a CI workspace named after the
        branch `fix/x`, `fix%2Fx`): every command that reads the migrations, the server's start
        too, ended in configparser's "invalid interpolation syntax" traceback."""
        home = tmp_path / "devreg_fix%2Fx"
        shutil.copytree(
            migrations.ALEMBIC_HOME / "migrations",
            home / "migrations",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy(migrations.ALEMBIC_HOME / "alembic.ini", home)
        head = migrations.head_revision()
        monkeypatch.setattr(migrations, "ALEMBIC_HOME", home)

        down = devreg("db", "downgrade")
        up = devreg("db", "upgrade")

        assert (down.exit_code, down.stderr) == (0, "")
        assert up.stdout == f"database at revision {head}\n"

    def test_status_tells_a_revision_this_release_does_not_know(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        """It said "migrations pending", which `devreg db upgrade` cannot do."""
        unknown = "UPDATE alembic_version SET version_num = 'a1b2c3d4'"
        asyncio.run(admin(committed_database_url, unknown))

        result = devreg("db", "status")
        status = result.stdout

        assert "current: a1b2c3d4" in status, (result.stderr, result.exception)
        assert "(unknown to this release: a newer one's?)" in status

    def test_status_without_the_migrations_says_so_in_a_line(
        self, devreg: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An install without its migrations: `db status` ended in Alembic's traceback."""
        monkeypatch.setattr(migrations, "ALEMBIC_HOME", tmp_path)

        result = devreg("db", "status")

        assert result.exit_code == 2
        assert result.stderr.startswith("devreg: migrations: Path doesn't exist"), result.stderr
        assert "Traceback" not in result.output

    def test_a_status_line_is_never_folded(self, committed_database_url: URL) -> None:
        """Written to a pipe, a line longer than 80 columns was folded in two."""
        unknown = f"UPDATE alembic_version SET version_num = '{'a1b2' * 8}'"
        asyncio.run(admin(committed_database_url, unknown))
        url = committed_database_url.render_as_string(hide_password=False)

        result = run_devreg("db", "status", DATABASE_URL=url)

        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        assert line.endswith("(unknown to this release: a newer one's?)")

    @pytest.mark.parametrize(
        ("command", "remedy"),
        [
            (
                ("users", "list"),
                "use that release, or set MIGRATE_ON_START=false to use the database as it is",
            ),
            # MIGRATE_ON_START=false would change nothing: the migration is what was asked for.
            (("db", "upgrade"), "migrate it with that release's devreg db"),
            (("db", "downgrade"), "migrate it with that release's devreg db"),
        ],
    )
    def test_a_database_from_a_newer_release_is_said_to_be_one(
        self, devreg: Invoke, committed_database_url: URL, command: tuple[str, ...], remedy: str
    ) -> None:
        """It was `migrations: Can't locate revision ...` and the exit status of a usage error,
        which the user had not made."""
        unknown = "UPDATE alembic_version SET version_num = 'a1b2c3d4'"
        asyncio.run(admin(committed_database_url, unknown))

        result = devreg(*command)

        assert result.exit_code == 1
        assert result.stderr == (
            "devreg: the database is at revision a1b2c3d4, which this release does not know (a "
            f"newer release migrated it): {remedy}\n"
        )
        assert devreg("users", "list", env={"MIGRATE_ON_START": "false"}).exit_code == 0

    def test_another_applications_database_is_said_to_be_one(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        """`db upgrade` exited 2, a usage error's status, and `db status` guessed a newer
        release."""
        unknown = "UPDATE alembic_version SET version_num = 'a1b2c3d4'"
        asyncio.run(admin(committed_database_url, unknown, "DROP TABLE devices CASCADE"))

        upgrade = devreg("db", "upgrade")
        status = devreg("db", "status")

        assert upgrade.exit_code == 1
        assert "it is another application's" in upgrade.stderr
        assert status.stdout.rstrip().endswith("no devices table: another application's)")

    def test_downgrade_and_upgrade_name_the_revision_reached(self, devreg: Invoke) -> None:
        head = migrations.head_revision()
        down = devreg("db", "downgrade")
        assert down.exit_code == 0
        assert head not in down.stdout
        assert "database downgraded to " in down.stdout
        assert devreg("db", "upgrade").stdout == f"database at revision {head}\n"

    def test_a_relative_revision_is_a_revision_not_an_option(self, devreg: Invoke) -> None:
        head = migrations.head_revision()

        down = devreg("db", "downgrade", "-2")
        up = devreg("db", "upgrade", "+2")

        assert down.exit_code == 0, down.stderr
        assert head not in down.stdout
        assert up.stdout == f"database at revision {head}\n"

    def test_a_step_past_either_end_names_the_end_and_where_the_database_is(
        self, devreg: Invoke
    ) -> None:
        """Alembic's word was "Relative revision -1 didn't produce 1 migrations"."""
        up = devreg("db", "upgrade", "+1")
        assert devreg("db", "downgrade", "base").exit_code == 0
        down = devreg("db", "downgrade")

        assert (up.exit_code, up.stderr) == (
            2,
            f"devreg: migrations: +1 leads past the newest migration: the database is at "
            f"{migrations.head_revision()}\n",
        )
        assert (down.exit_code, down.stderr) == (
            2,
            "devreg: migrations: -1 leads past the first migration: the database is at base "
            "(empty)\n",
        )

    @pytest.mark.parametrize(
        "args",
        [
            ("upgrade", "bogus"),
            ("downgrade", "bogus"),
            ("downgrade", "+1"),
            ("upgrade", "head+1"),  # Alembic's own AssertionError and traceback
            ("upgrade", "heads+2"),
            ("upgrade", ""),
            ("upgrade", "@"),
            ("downgrade", ""),
            ("downgrade", "@"),
            ("downgrade", "x@-1"),
        ],
    )
    def test_an_unknown_revision_is_one_line(self, devreg: Invoke, args: tuple[str, str]) -> None:
        result = devreg("db", *args)
        assert result.exit_code == 2
        assert result.stderr.startswith("devreg: migrations: ")
        assert result.stderr.count("\n") == 1

    @pytest.mark.parametrize(
        "command", [("users", "list"), ("export", "devices")], ids=["session", "copy"]
    )
    def test_an_unmigrated_database_says_to_migrate_it(
        self, devreg: Invoke, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
    ) -> None:
        """An export (by COPY) said the database was unavailable, as the API says it."""
        assert devreg("db", "downgrade", "base").exit_code == 0
        monkeypatch.setenv("MIGRATE_ON_START", "false")

        result = devreg(*command)

        assert result.exit_code == 1
        assert result.stderr.startswith("devreg: the database is not migrated (")
        assert result.stderr.endswith(": run devreg db upgrade\n")

    def test_a_revision_against_a_database_behind_is_one_line_and_writes_nothing(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        versions = Path(migrations.__file__).parents[3] / "migrations" / "versions"
        before = sorted(versions.glob("*.py"))  # not __pycache__, which loading them may write
        assert devreg("db", "downgrade").exit_code == 0

        # In a process of its own: Alembic's command sets up logging from alembic.ini.
        result = run_devreg(
            "db", "revision", "-m", "probe",
            DATABASE_URL=committed_database_url.render_as_string(hide_password=False),
        )  # fmt: skip

        assert result.returncode == 2
        assert result.stderr.endswith("\ndevreg: migrations: Target database is not up to date.\n")
        assert "Traceback" not in result.stderr
        assert sorted(versions.glob("*.py")) == before

    def test_a_revision_without_a_database_is_one_line(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from tests.support import free_port

        closed = committed_database_url.set(port=free_port())
        monkeypatch.setenv("DATABASE_URL", closed.render_as_string(hide_password=False))

        result = devreg("db", "revision", "-m", "probe")

        assert result.exit_code == 1
        assert result.stderr.startswith("devreg: ")
        assert result.stderr.count("\n") == 1


class TestStartupErrors:
    def test_invalid_setting_is_named(
        self, devreg: Invoke, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("POOL_SIZE", "many")
        result = devreg("users", "list")
        assert result.exit_code == 2
        assert "POOL_SIZE" in result.stderr

    def test_a_database_url_set_but_empty_starts_no_embedded_cluster(
        self, devreg: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "")
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))

        result = devreg("users", "list")

        assert result.exit_code == 2
        assert result.stderr.startswith("devreg: invalid setting DATABASE_URL: ")
        assert "set but empty" in result.stderr
        assert not (tmp_path / "data").exists()

    @pytest.mark.parametrize("command", [("db", "stop"), ("serve",)], ids=["db-stop", "serve"])
    def test_a_relative_data_dir_in_a_working_directory_gone_is_one_line(
        self,
        devreg: Invoke,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        command: tuple[str, ...],
    ) -> None:
        """It was a FileNotFoundError's traceback, from looking for the working directory."""
        from tests.support import free_port

        gone = tmp_path / "gone"
        gone.mkdir()
        monkeypatch.chdir(gone)
        gone.rmdir()
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("DATA_DIR", "data")
        monkeypatch.setenv("PORT", str(free_port()))

        result = devreg(*command)

        assert result.exit_code == 2
        assert result.stderr == (
            "devreg: invalid setting DATA_DIR: 'data' is relative and the working "
            "directory it is in is gone: give a whole path, or run devreg from a directory that "
            "exists\n"
        )

    def test_a_dotenv_that_is_not_utf8_is_named(
        self, devreg: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / ".env").write_bytes(b"POOL_SIZE=5\nNOTE=\xff\xfe\n")
        monkeypatch.chdir(tmp_path)
        result = devreg("users", "list")
        assert result.exit_code == 2
        assert result.stderr == "devreg: the .env file is not UTF-8 text\n"

    @pytest.mark.parametrize(
        ("line", "hint", "number"),
        [
            ('DATABASE_URL="postgresql://u:p@h/db', "an unclosed quote?", 2),
            ("DATABASE_URL", "no `=`?", 2),
            ("\n\nDATABASE_URL", "no `=`?", 4),  # it said line 2: the blank lines' first
        ],
        ids=["unclosed-quote", "no-equals-sign", "after-blank-lines"],
    )
    def test_a_dotenv_line_that_cannot_be_parsed_is_refused(
        self,
        devreg: Invoke,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        line: str,
        hint: str,
        number: int,
    ) -> None:
        """python-dotenv skips such a line (with a warning, or none for a name alone): devreg
        went on without the setting, here its DATABASE_URL, and started the embedded cluster in
        its stead."""
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        (tmp_path / ".env").write_text(f"POOL_SIZE=5\n{line}\n")
        monkeypatch.chdir(tmp_path)
        result = devreg("users", "list")
        assert result.exit_code == 2
        assert result.stderr == (
            f"devreg: line {number} of the .env file is not NAME=value ({hint})\n"
        )
        assert not (tmp_path / "data").exists()

    def test_a_dotenv_that_cannot_be_read_is_named(
        self, devreg: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / ".env").mkdir()  # unreadable as a file, even by root
        monkeypatch.chdir(tmp_path)
        result = devreg("users", "list")
        assert result.exit_code == 2
        assert result.stderr == "devreg: the .env file cannot be read: Is a directory\n"

    def test_wrong_password_is_one_line_without_the_password(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wrong = committed_database_url.set(password="not-the-password-42")
        monkeypatch.setenv("DATABASE_URL", wrong.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "wrong password" in result.stderr
        assert "not-the-password-42" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize(
        ("change", "named"),
        [
            ({"port": 99999}, "port"),
            ({"query": {"sslmode": "bogus"}}, "sslmode"),
            (
                {"query": {"prepared_statement_cache_size": "many"}},
                "prepared_statement_cache_size must be a whole number",
            ),
            ({"query": {"host": "127.0.0.1", "port": "many"}}, "option"),
        ],
    )
    def test_an_unusable_url_is_a_usage_error(
        self,
        devreg: Invoke,
        committed_database_url: URL,
        monkeypatch: pytest.MonkeyPatch,
        change: dict[str, Any],
        named: str,
    ) -> None:
        unusable = committed_database_url.set(password="secret-42", **change)
        monkeypatch.setenv("DATABASE_URL", unusable.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 2
        # Refused as it is read (a setting), or as the driver is given it.
        assert result.stderr.startswith(
            ("devreg: invalid setting DATABASE_URL: ", "devreg: invalid database URL: ")
        )
        assert named in result.stderr
        assert "secret-42" not in result.output

    def test_an_option_nobody_knows_is_a_usage_error(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither asyncpg nor libpq knows it, so it goes to the server as a setting, which the
        server refuses by name."""
        unknown = committed_database_url.set(query={"no_such_option": "1"})
        monkeypatch.setenv("DATABASE_URL", unknown.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 2
        assert result.stderr == (
            'devreg: invalid database URL: unrecognized configuration parameter "no_such_option"\n'
        )

    def test_a_refused_ssl_upgrade_is_named(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with_ssl = committed_database_url.set(query={"ssl": "require"})
        monkeypatch.setenv("DATABASE_URL", with_ssl.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "rejected SSL upgrade" in result.stderr

    def test_an_external_server_is_reached_as_libpq_variables_say(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PGSSLMODE asks TLS of the server devreg is given, as of the embedded one it does not."""
        as_given = committed_database_url.set(query={})
        monkeypatch.setenv("DATABASE_URL", as_given.render_as_string(hide_password=False))
        monkeypatch.setenv("PGSSLMODE", "require")
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "rejected SSL upgrade" in result.stderr

    def test_missing_database_is_named(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        missing = committed_database_url.set(database="no_such_db")
        monkeypatch.setenv("DATABASE_URL", missing.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "missing database" in result.stderr
        assert "no_such_db" in result.stderr

    def test_a_missing_database_given_in_the_query_is_the_one_named(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`?database=` overrides the path's name, as the driver reads it: the message named
        the path's database, which exists."""
        missing = committed_database_url.update_query_dict({"database": "no_such_db"})
        monkeypatch.setenv("DATABASE_URL", missing.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "has no database 'no_such_db'" in result.stderr, result.stderr

    def test_unreachable_host_is_named(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from tests.support import free_port

        closed = committed_database_url.set(port=free_port())
        monkeypatch.setenv("DATABASE_URL", closed.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert "unreachable host" in result.stderr

    def test_the_port_named_is_the_one_tried(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from tests.support import free_port

        closed = str(free_port())
        # The query's port is the one asyncpg connects to, whatever the URL's authority says.
        overridden = committed_database_url.set(query={"host": "127.0.0.1", "port": closed})
        monkeypatch.setenv("DATABASE_URL", overridden.render_as_string(hide_password=False))
        result = devreg("users", "list")
        assert result.exit_code == 1
        assert f"PostgreSQL at 127.0.0.1:{closed} " in result.stderr


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["devices", "get", "abc"], "see devreg devices get --help"),
        (["devices", "list", "--colour", "red"], "No such option: --colour"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_a_usage_error_is_one_line(arguments: list[str], says: str) -> None:
    result = run_devreg(*arguments)

    assert result.returncode == 2
    assert result.stderr.startswith("devreg: ")
    assert says in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_help_is_no_error() -> None:
    result = run_devreg("--help")

    assert result.returncode == 0
    assert "Usage" in result.stdout


def _command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if isinstance(command, TyperGroup):
        for name, subcommand in command.commands.items():
            paths += _command_paths(subcommand, (*path, name))
    return paths


@pytest.mark.parametrize("path", _command_paths(typer.main.get_command(app)), ids=" ".join)
def test_help_text_is_filled_to_the_width(path: tuple[str, ...]) -> None:
    """A help paragraph is reflowed to the terminal, not broken where its docstring's source
    lines were (short lines mid-sentence)."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output

    lines = result.output.splitlines()
    prose = [line.strip() for line in lines if not line.startswith(_BOX)]
    for paragraph in "\n".join(prose).split("\n\n"):
        _assert_filled(paragraph.strip("\n").splitlines(), paragraph)
    for description in _command_descriptions(lines):
        _assert_filled(description, "\n".join(description))


_BOX = ("\u256d", "\u2502", "\u2570")  # a panel's corners and sides


def _assert_filled(lines: list[str], shown: str) -> None:
    assert all(len(line) > 40 for line in lines[:-1]), shown


def _command_descriptions(lines: list[str]) -> list[list[str]]:
    """The description of each command in a group's Commands panel, line by line."""
    descriptions: list[list[str]] = []
    start = None
    in_panel = False
    for line in lines:
        if line.startswith("\u256d"):
            in_panel = "Commands" in line
        elif in_panel and line.startswith("\u2502"):
            cells = line[1:-1]
            if cells[1] != " ":  # a command's name: its first line
                name, rest = cells[1:].split(" ", 1)
                start = 1 + len(name) + len(rest) - len(rest.lstrip(" "))
                descriptions.append([])
            assert start is not None
            descriptions[-1].append(cells[start:].strip())
    return descriptions


def test_revision_writes_a_dated_migration(
    devreg: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of the project's migrations: a probe revision in the real ones would be the head,
    # for a moment, to the test workers migrating beside this one.
    shutil.copy(migrations.ALEMBIC_HOME / "alembic.ini", tmp_path)
    shutil.copytree(
        migrations.ALEMBIC_HOME / "migrations",
        tmp_path / "migrations",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setattr(migrations, "ALEMBIC_HOME", tmp_path)
    versions = tmp_path / "migrations" / "versions"
    before = set(versions.glob("*.py"))  # not __pycache__, which loading them may write

    result = devreg("db", "revision", "-m", "probe for the test", "--no-autogenerate")

    assert result.exit_code == 0, result.output
    (path,) = set(versions.glob("*.py")) - before
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_probe_for_the_test\.py", path.name)


class TestTokens:
    def test_create_list_revoke(self, devreg: Invoke) -> None:
        user = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        result = devreg("tokens", "create", "--user", str(user["id"]), "--scope", "read",
                        "--expires", "90d")  # fmt: skip
        assert result.exit_code == 0, result.output
        token = result.stdout.strip().splitlines()[-1]
        assert token.startswith("dvr_")
        assert "shown once" in result.stdout
        assert result.stdout.count(token) == 1
        listed = devreg("tokens", "list", "--json")
        [item] = json.loads(listed.stdout)["items"]
        assert item["prefix"] == token[:12]
        assert item["scope"] == "read"
        assert item["expires_at"] is not None
        assert token not in listed.stdout
        assert devreg("tokens", "revoke", str(item["id"])).exit_code == 0
        [revoked] = json.loads(devreg("tokens", "list", "--json").stdout)["items"]
        assert revoked["revoked_at"] is not None

    @pytest.mark.parametrize("written", ["0_{}", "+{}", " {}"])
    def test_an_id_not_in_the_digits_alone_is_a_usage_error(
        self, devreg: Invoke, written: str
    ) -> None:
        """typer's int read `0_1` as 1: a typo revoked token 1, or made a token for user 1."""
        user = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        token = json_of(devreg("tokens", "create", "--user", str(user["id"]), "--json"))

        made = devreg("tokens", "create", "--user", written.format(user["id"]))
        listed = devreg("tokens", "list", "--user", written.format(user["id"]))
        revoked = devreg("tokens", "revoke", written.format(token["id"]))

        assert [made.exit_code, listed.exit_code, revoked.exit_code] == [2, 2, 2]
        [item] = json_of(devreg("tokens", "list", "--json"))["items"]
        assert item["revoked_at"] is None

    @pytest.mark.parametrize(
        ("expires", "lifetime"),
        [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("2d", timedelta(days=2))],
    )
    def test_a_token_lives_as_long_as_asked(
        self, devreg: Invoke, expires: str, lifetime: timedelta
    ) -> None:
        user = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        created = json_of(
            devreg("tokens", "create", "--user", str(user["id"]), "--expires", expires, "--json")
        )
        expires_at = datetime.fromisoformat(created["expires_at"])
        assert expires_at - datetime.fromisoformat(created["created_at"]) == lifetime

    def test_tokens_are_listed_a_page_at_a_time(self, devreg: Invoke) -> None:
        user = json_of(devreg("users", "create", "--name", "Ann", "--json"))
        for _ in range(3):
            assert devreg("tokens", "create", "--user", str(user["id"])).exit_code == 0
        first = json_of(devreg("tokens", "list", "--limit", "2", "--json"))
        rest = json_of(devreg("tokens", "list", "--limit", "2", "--cursor", first["next_cursor"],
                              "--json"))  # fmt: skip
        table = devreg("tokens", "list", "--limit", "2")

        ids = [item["id"] for item in first["items"] + rest["items"]]
        assert ids == sorted(ids)
        assert len(ids) == 3
        assert rest["next_cursor"] is None
        assert all(item["prefix"] in table.stdout for item in first["items"])
        # Sent as the hint reads, without the command's own filters, it was refused.
        assert f"next page: the same command with --cursor {first['next_cursor']}" in table.stdout

    def test_unknown_user_and_bad_expiry_fail(self, devreg: Invoke) -> None:
        unknown = devreg("tokens", "create", "--user", "999")
        assert unknown.exit_code == 1
        assert "user_id does not name an existing user" in unknown.stderr
        bad = devreg("tokens", "create", "--user", "1", "--expires", "soon")
        assert bad.exit_code == 2
        assert bad.stderr.startswith("devreg: --expires: ")  # the option as typed

    def test_revoking_an_unknown_token_fails(self, devreg: Invoke) -> None:
        result = devreg("tokens", "revoke", "42")
        assert result.exit_code == 1
        assert "Token not found" in result.stderr


class TestChanges:
    def test_cli_writes_and_imports_are_recorded_seeds_are_not(
        self, devreg: Invoke, committed_database_url: URL, tmp_path
    ) -> None:
        json_of(devreg("devices", "create", "--name", "pi", "--json"))
        source = tmp_path / "devices.ndjson"
        source.write_text('{"name": "a"}\n{"name": "b"}\n')
        assert devreg("import", "devices", str(source)).exit_code == 0
        assert devreg("seed", "--devices", "5", "--users", "2").exit_code == 0
        recorded = asyncio.run(
            query(
                committed_database_url,
                "SELECT object_type, action, user_id, after->>'name' AS name FROM changes "
                "ORDER BY id",
            )
        )
        assert recorded == [
            {"object_type": "device", "action": "create", "user_id": None, "name": name}
            for name in ("pi", "a", "b")
        ]

    def test_prune_deletes_only_older_records(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        for name in ("old", "new"):
            devreg("devices", "create", "--name", name)
        asyncio.run(
            admin(
                committed_database_url,
                "UPDATE changes SET at = now() - interval '91 days' WHERE after->>'name' = 'old'",
            )
        )
        result = devreg("changes", "prune", "--older-than", "90d")
        assert result.exit_code == 0, result.output
        assert "1 change records deleted" in result.stdout
        left = asyncio.run(
            query(committed_database_url, "SELECT after->>'name' AS name FROM changes")
        )
        assert left == [{"name": "new"}]

    def test_prune_reads_the_age_by_the_databases_clock(
        self, devreg: Invoke, committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The records' `at` is the database's clock: with devreg's host ten days ahead of it,
        `--older-than 90d` deleted records 85 days old."""
        devreg("devices", "create", "--name", "pi")
        asyncio.run(
            admin(committed_database_url, "UPDATE changes SET at = now() - interval '85 days'")
        )

        class TenDaysAhead(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> "TenDaysAhead":
                return cls.fromtimestamp(time.time() + 10 * 86400, tz)

        monkeypatch.setattr("devreg.changes.service.datetime", TenDaysAhead, raising=False)
        result = devreg("changes", "prune", "--older-than", "90d")
        assert result.exit_code == 0, result.output
        assert "0 change records deleted" in result.stdout
        assert asyncio.run(query(committed_database_url, "SELECT count(*) AS n FROM changes")) == [
            {"n": 1}
        ]

    def test_a_statement_past_the_timeout_is_said_as_the_api_says_it(
        self, devreg: Invoke, committed_database_url: URL
    ) -> None:
        asyncio.run(
            admin(
                committed_database_url,
                "INSERT INTO changes (at, object_type, object_id, action) "
                "SELECT now() - interval '91 days', 'device', g, 'create' "
                "FROM generate_series(1, 100000) AS g",
            )
        )
        result = devreg(
            "changes", "prune", "--older-than", "90d", env={"STATEMENT_TIMEOUT": "0.001"}
        )
        assert result.exit_code == 1
        assert result.stderr == "devreg: The database took too long to answer; try again shortly.\n"

    @pytest.mark.parametrize(
        ("age", "says"),
        [
            ("soon", "--older-than: "),
            ("0d", "--older-than: must be longer than zero"),
            ("36501d", "--older-than: must be at most 36500 days"),
            ("1000000000d", "--older-than: must be at most 36500 days"),
            # Not a list of the forms, which it has.
            ("99999999999d", "--older-than: must be at most 36500 days"),
            # Not "needs a unit: -90d, ...", which would be refused too.
            ("-90", "--older-than: must be longer than zero"),
        ],
    )
    def test_prune_needs_a_valid_age(self, devreg: Invoke, age: str, says: str) -> None:
        result = devreg("changes", "prune", "--older-than", age)
        assert result.exit_code == 2
        assert says in result.stderr

    @pytest.mark.parametrize("age", ["3600s", "60m", "1h", "PT1H", "p90d", "36500d"])
    def test_an_age_is_read_in_any_unit(self, devreg: Invoke, age: str) -> None:
        assert devreg("changes", "prune", "--older-than", age).exit_code == 0

    @pytest.mark.parametrize(
        ("command", "option"),
        [
            (["changes", "prune"], "--older-than"),
            (["tokens", "create", "--user", "1"], "--expires"),
        ],
    )
    def test_a_number_without_its_unit_is_refused_not_read_as_seconds(
        self, devreg: Invoke, committed_database_url: URL, command: list[str], option: str
    ) -> None:
        """`prune --older-than 90` deleted every record older than 90 seconds."""
        devreg("users", "create", "--name", "Ann")
        asyncio.run(admin(committed_database_url, "UPDATE changes SET at = now() - interval '1h'"))
        result = devreg(*command, option, " 90 ")
        assert result.exit_code == 2
        assert f"{option}: needs a unit: 90d, 90h, 90m or 90s" in result.stderr
        kept = asyncio.run(query(committed_database_url, "SELECT count(*) AS n FROM changes"))
        tokens = asyncio.run(query(committed_database_url, "SELECT count(*) AS n FROM api_tokens"))
        assert (kept, tokens) == ([{"n": 1}], [{"n": 0}])

    @pytest.mark.parametrize("age", ["1.5", "+90", "1e3", ".5"])
    def test_any_number_without_its_unit_is_refused(
        self, devreg: Invoke, committed_database_url: URL, age: str
    ) -> None:
        """Read as seconds, `1.5` pruned every record older than a second and a half."""
        devreg("users", "create", "--name", "Ann")
        asyncio.run(admin(committed_database_url, "UPDATE changes SET at = now() - interval '1h'"))
        result = devreg("changes", "prune", "--older-than", age)
        assert result.exit_code == 2
        # Not "needs a unit: 1.5d, ...": a unit takes a whole number.
        assert "needs a whole number with its unit (90d, 12h, 30m, 45s)" in result.stderr
        kept = asyncio.run(query(committed_database_url, "SELECT count(*) AS n FROM changes"))
        assert kept == [{"n": 1}]

    @pytest.mark.parametrize(
        ("command", "option"),
        [
            (["changes", "prune"], "--older-than"),
            (["tokens", "create", "--user", "1"], "--expires"),
        ],
    )
    @pytest.mark.parametrize("span", ["soon", "1.5d", "90 days"])
    def test_a_span_in_no_form_is_told_the_forms_an_option_takes(
        self, devreg: Invoke, command: list[str], option: str, span: str
    ) -> None:
        """It was told the API's forms, "a number of seconds" among them, which the option
        refuses: a user who then wrote one was told it needs a unit."""
        result = devreg(*command, option, span)

        assert result.exit_code == 2
        assert result.stderr == (
            f"devreg: {option}: must be a whole number with its unit "
            "(90d, 12h, 30m, 45s), HH:MM:SS or ISO 8601 (P90D)\n"
        )


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_amid_the_loops_own_work_ends_the_command(ending: signal.Signals) -> None:
    """SIGTERM raised Terminated inside whatever the event loop was running: in a callback that
    was to resolve the future the command awaited, the future stayed pending and the command
    hung (an import with its transaction open); in a socket read, the connection was taken for
    broken (a traceback, then "database unavailable", exit 1)."""
    cleaned_up = []

    async def awaiting_a_callback_the_signal_lands_in() -> str:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def answered_amid_a_signal() -> None:
            os.kill(os.getpid(), ending)
            answer.set_result("answered")

        loop.call_soon(answered_amid_a_signal)
        try:
            await asyncio.wait_for(answer, 10)
            await asyncio.sleep(10)  # the command's further work, which the signal cuts short
            return "finished"
        finally:
            cleaned_up.append(True)

    started = time.monotonic()
    inherited = signal.signal(ending, signal.SIG_DFL)  # as at a terminal, even under nohup
    try:
        with pytest.raises(Terminated) as ended:
            run_async(awaiting_a_callback_the_signal_lands_in())
        after = signal.getsignal(ending)
    finally:
        signal.signal(ending, inherited)

    assert ended.value.signal_number == ending
    assert cleaned_up == [True]
    assert time.monotonic() - started < 5
    assert after is signal.SIG_DFL  # as before the command


def test_a_signal_the_command_was_started_ignoring_stays_ignored() -> None:
    """`nohup devreg import ...`: the SIGHUP of the terminal closing ended the import."""

    async def work_through_a_hangup() -> str:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        return "finished"

    inherited = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        outcome = run_async(work_through_a_hangup())
        after = signal.getsignal(signal.SIGHUP)
    finally:
        signal.signal(signal.SIGHUP, inherited)

    assert outcome == "finished"
    assert after is signal.SIG_IGN


def test_ctrl_c_while_the_command_loads_ends_it_quietly() -> None:
    """Loading the CLI takes a good part of a second: a Ctrl-C then was the interpreter's
    traceback of the import it cut short, and death by SIGINT."""
    # -X importtime reports each module as it finishes loading: typer's are among the CLI's first,
    # SQLAlchemy and the rest take most of a second more. (A fixed sleep was sometimes before the
    # entry point or after the loading, on a busy machine.)
    # A server that never answers: on a busy machine the command could otherwise finish loading,
    # fail to connect and end (exit 1) before the signal came.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        command = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "devreg", "users", "list"],
            env=devreg_environment(
                DATABASE_URL=f"postgresql://devreg@127.0.0.1:{silent.getsockname()[1]}/x"
            ),
            stderr=subprocess.PIPE, text=True,
            # Ctrl-C as a terminal sends it, even to a suite started where SIGINT is ignored (in
            # the background of a shell script), which its processes would inherit.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert command.stderr is not None
        for line in command.stderr:
            if line.rpartition("|")[2].strip().startswith("typer"):
                break
        command.send_signal(signal.SIGINT)
        stderr = command.stderr.read()
        command.wait(timeout=30)

    assert command.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
