"""With no database configured, devreg runs its own PostgreSQL cluster and keeps its data."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devreg.db.embedded import EmbeddedCluster
from tests.support import (
    devreg_environment,
    devreg_server,
    free_port,
    run_devreg,
    started_devreg,
)


@pytest.fixture
def embedded_settings() -> Iterator[dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="devreg-embedded-"))
    root.chmod(0o755)  # as root, the postgres account must reach the cluster inside
    settings = {"DATA_DIR": str(root), "EMBEDDED_PG_PORT": str(free_port())}
    try:
        yield settings
    finally:
        EmbeddedCluster(data_dir=root / "pg", port=int(settings["EMBEDDED_PG_PORT"])).stop()
        shutil.rmtree(root, ignore_errors=True)


def test_data_survives_restarts_until_db_stop(embedded_settings: dict[str, str]) -> None:
    cluster = EmbeddedCluster(
        data_dir=Path(embedded_settings["DATA_DIR"]) / "pg",
        port=int(embedded_settings["EMBEDDED_PG_PORT"]),
    )
    with devreg_server(**embedded_settings) as base_url:
        created = httpx.post(f"{base_url}/api/v1/devices", json={"name": "kept"})
        assert created.status_code == 201
    # Ctrl-C stopped the server, not the cluster: it is a daemon of its own.
    assert cluster.is_running()

    with devreg_server(**embedded_settings) as base_url:
        fetched = httpx.get(f"{base_url}/api/v1/devices/{created.json()['id']}")
        assert fetched.json()["name"] == "kept"

    stopped = run_devreg("db", "stop", **embedded_settings)
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
    assert not cluster.is_running()
    assert "not running" in run_devreg("db", "stop", **embedded_settings).stdout


def test_starters_at_once_share_one_cluster(embedded_settings: dict[str, str]) -> None:
    """Two servers, or a server and a command, starting at once on a new DATA_DIR: both ran
    initdb, and one's password overwrote the other's, leaving a cluster nothing could log in
    to; on a stopped cluster both ran pg_ctl start, and one failed."""
    for _ in ("new", "stopped"):
        starters = [started_devreg("db", "status", **embedded_settings) for _ in range(3)]
        results = [starter.communicate(timeout=120) for starter in starters]

        assert [starter.returncode for starter in starters] == [0, 0, 0], results
        assert run_devreg("db", "status", **embedded_settings).returncode == 0
        assert run_devreg("db", "stop", **embedded_settings).returncode == 0


def test_a_stale_pid_file_naming_another_process_is_not_taken_for_the_server(
    embedded_settings: dict[str, str],
) -> None:
    """After a crash, postmaster.pid may name a PID another process has since, say another
    cluster's server: pg_ctl took it for this cluster's, so devreg did not start the cluster,
    and `devreg db stop` stopped the other process."""
    data_dir = Path(embedded_settings["DATA_DIR"]) / "pg"
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    pid_file = (data_dir / "postmaster.pid").read_text()
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    # Running as PostgreSQL's account, as another cluster's server would, so pg_ctl may signal it.
    account = "postgres" if os.geteuid() == 0 else None
    other = subprocess.Popen(["sleep", "60"], cwd="/", user=account)
    try:
        (data_dir / "postmaster.pid").write_text(f"{other.pid}\n" + pid_file.split("\n", 1)[1])

        status = run_devreg("db", "status", **embedded_settings)
        stop = run_devreg("db", "stop", **embedded_settings)

        assert status.returncode == 0, status.stderr
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("left", ["empty", "garbled", "not-utf-8", "zero", "an-ended-process"])
def test_a_pid_file_a_crash_leaves_unreadable_or_naming_an_ended_process_is_cleared(
    embedded_settings: dict[str, str], left: str
) -> None:
    """A power cut can leave postmaster.pid empty or garbled, and pg_ctl then refused to start
    the cluster on every run ("is port N taken?"); a server killed where nobody reaps it (a
    container's) stays a zombie, which pg_ctl took for the running server: every run failed
    to connect."""
    data_dir = Path(embedded_settings["DATA_DIR"]) / "pg"
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    rest = (data_dir / "postmaster.pid").read_text().split("\n", 1)[1]
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    account = "postgres" if os.geteuid() == 0 else None
    ended = subprocess.Popen(["true"], user=account)  # not waited for: a zombie
    try:
        while Path(f"/proc/{ended.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        (data_dir / "postmaster.pid").write_bytes(
            {
                "empty": b"",
                "garbled": b"\0\0\0\0garbage\n",
                "not-utf-8": b"\xff\xfe\x00garbage\n",
                "zero": f"0\n{rest}".encode(),
                "an-ended-process": f"{ended.pid}\n{rest}".encode(),
            }[left]
        )

        status = run_devreg("db", "status", **embedded_settings)
    finally:
        ended.wait()

    assert status.returncode == 0, status.stderr
    stopped = run_devreg("db", "stop", **embedded_settings)
    assert stopped.stdout.startswith("embedded PostgreSQL stopped")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_data_dir_a_shell_would_read_otherwise_is_refused_by_name(
    tmp_path: Path, relative: bool
) -> None:
    """pg_ctl hands the path to a shell: under `/tmp/cost$HOME` the cluster's log went to
    /tmp/cost/var/lib/postgresql, and the start failed as if the port were taken. Only where
    the embedded cluster is used: DATABASE_URL's users need no DATA_DIR."""
    where = tmp_path / "cost$HOME"
    where.mkdir()
    data_dir = "data" if relative else str(where / "data")

    result = subprocess.run(
        [sys.executable, "-m", "devreg", "db", "status"],
        env=devreg_environment(DATA_DIR=data_dir, EMBEDDED_PG_PORT=str(free_port())),
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.startswith('devreg: DATA_DIR may not hold $, `, " or \\ ')
    assert len(result.stderr.splitlines()) == 1


def test_password_file_is_private(embedded_settings: dict[str, str]) -> None:
    result = run_devreg("db", "status", **embedded_settings)
    assert result.returncode == 0, result.stderr
    assert "migrations pending" in result.stdout  # a new cluster, nothing migrated yet
    password_file = Path(embedded_settings["DATA_DIR"]) / "pg.password"
    assert password_file.stat().st_mode & 0o077 == 0


def test_a_cluster_it_cannot_use_is_one_line(embedded_settings: dict[str, str]) -> None:
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    password_file = Path(embedded_settings["DATA_DIR"]) / "pg.password"
    password = password_file.read_text()
    moved = {**embedded_settings, "EMBEDDED_PG_PORT": str(free_port())}

    on_another_port = run_devreg("db", "status", **moved)
    password_file.write_text("not-the-password\n")
    wrong_password = run_devreg("db", "status", **embedded_settings)
    password_file.unlink()
    no_password = run_devreg("db", "status", **embedded_settings)
    password_file.write_text(password)

    for result, says in [
        (on_another_port, "is running on port"),
        (wrong_password, "wrong password"),
        (no_password, "No such file or directory"),
    ]:
        assert result.returncode == 1
        assert result.stderr.startswith("devreg: ")
        assert says in result.stderr
        assert len(result.stderr.splitlines()) == 1
    # As the message says: stopped, it starts on the port asked for.
    assert run_devreg("db", "stop", **moved).returncode == 0
    assert run_devreg("db", "status", **moved).returncode == 0


@pytest.mark.parametrize("command", ["status", "stop"])
def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path, command: str) -> None:
    """`db stop` printed a traceback."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")

    result = run_devreg("db", command, DATA_DIR=str(not_a_directory / "data"))

    assert result.returncode == 1
    assert result.stderr.startswith("devreg: cannot use the embedded PostgreSQL: ")
    assert len(result.stderr.splitlines()) == 1


def test_db_stop_on_a_data_dir_never_used_creates_nothing(tmp_path: Path) -> None:
    """A mistyped DATA_DIR was created (its directory and lock file) by `db stop`."""
    mistyped = tmp_path / "devreg-dta"

    result = run_devreg("db", "stop", DATA_DIR=str(mistyped))

    assert result.returncode == 0
    assert (
        result.stdout == f"no embedded PostgreSQL cluster in {mistyped / 'pg'}: nothing to stop\n"
    )
    assert not mistyped.exists()


def test_a_cluster_that_cannot_start_says_why(embedded_settings: dict[str, str]) -> None:
    """The reason was only in the server's log; devreg guessed "is port N taken?" whatever it
    was."""
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    port = int(embedded_settings["EMBEDDED_PG_PORT"])
    with socket.create_server(("127.0.0.1", port)):
        result = run_devreg("db", "status", **embedded_settings)

    log_file = Path(embedded_settings["DATA_DIR"]) / "pg" / "server.log"
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "devreg: the embedded PostgreSQL did not start: could not bind IPv4 address "
        '"127.0.0.1": Address already in use; could not create any TCP/IP sockets; '
        f"see {log_file}"
    ]
