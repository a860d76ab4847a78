"""With no database configured, devreg runs its own PostgreSQL cluster and keeps its data."""

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from devreg.db import embedded, programs, watcher
from devreg.db.embedded import EmbeddedCluster
from devreg.db.programs import EmbeddedPostgresError, find_pg_bindir
from tests.support import (
    DevregProcess,
    devreg_environment,
    devreg_process,
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
        cluster_of(settings).stop()
        shutil.rmtree(root, ignore_errors=True)


def cluster_of(settings: dict[str, str]) -> EmbeddedCluster:
    """The embedded cluster that devreg run with `settings` uses."""
    return EmbeddedCluster(
        data_dir=Path(settings["DATA_DIR"]) / "pg", port=int(settings["EMBEDDED_PG_PORT"])
    )


def test_data_survives_restarts_until_db_stop(embedded_settings: dict[str, str]) -> None:
    cluster = cluster_of(embedded_settings)
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


def test_a_crashed_cluster_is_started_again_while_serving_and_a_stopped_one_is_not(
    embedded_settings: dict[str, str],
) -> None:
    """Its server killed (by the kernel short of memory, say), the API answered 503 until
    someone ran devreg again."""
    cluster = cluster_of(embedded_settings)
    with devreg_process(**embedded_settings) as server:
        created = httpx.post(f"{server.base_url}/api/v1/devices", json={"name": "kept"})
        device = f"{server.base_url}/api/v1/devices/{created.json()['id']}"
        os.kill(int(cluster.pid_file.read_text().split()[0]), signal.SIGKILL)

        deadline = time.monotonic() + 30
        while (fetched := httpx.get(device)).status_code != 200:
            assert fetched.status_code == 503
            assert time.monotonic() < deadline, "the cluster was not started again"
            time.sleep(0.2)
        assert fetched.json()["name"] == "kept"
        # Logged once pg_ctl has seen the server ready, which may be after it first answers.
        while not (restarts := _restarts_logged(server)):
            assert time.monotonic() < deadline, "no restart logged"
            time.sleep(0.1)
        assert restarts == ["the embedded PostgreSQL had stopped without being asked to: restarted"]

        assert run_devreg("db", "stop", **embedded_settings).returncode == 0
        time.sleep(5)  # two of the server's looks
        assert httpx.get(device).status_code == 503
        assert not cluster.is_running()


def _restarts_logged(server: DevregProcess) -> list[str]:
    return [w["message"] for w in server.logged("WARNING") if "PostgreSQL" in w["message"]]


def test_a_crashed_cluster_that_cannot_start_again_is_said_and_tried_again(
    embedded_settings: dict[str, str],
) -> None:
    """The start that fails removes the postmaster.pid the crash left: nothing then said to try
    again."""
    cluster = cluster_of(embedded_settings)
    with devreg_process(**embedded_settings) as server:
        os.kill(int(cluster.pid_file.read_text().split()[0]), signal.SIGKILL)
        with _port_taken(cluster.port):  # by the time the server looks
            deadline = time.monotonic() + 30
            while not (errors := server.errors_logged()):
                assert time.monotonic() < deadline, "no failure logged"
                time.sleep(0.2)
        assert errors[0]["message"].startswith(
            "the embedded PostgreSQL has stopped, and could not start again: "
            "the embedded PostgreSQL did not start: could not bind"
        )

        deadline = time.monotonic() + 30
        while httpx.get(f"{server.base_url}/api/v1/devices").status_code != 200:
            assert time.monotonic() < deadline, "not tried again"
            time.sleep(0.2)


def test_a_server_stopping_as_it_is_looked_at_has_not_crashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server stopping removes postmaster.pid, then ends: the file read before it went named
    a process gone by the time it was looked for, and the cluster, stopped on purpose, was
    taken for crashed and started again."""
    cluster = EmbeddedCluster(data_dir=tmp_path / "pg", port=free_port())
    cluster.data_dir.mkdir()
    server = subprocess.Popen(["sleep", "60"])
    cluster.pid_file.write_text(f"{server.pid}\n")

    def its_last_moments(self: EmbeddedCluster) -> bool:  # between the two looks
        cluster.pid_file.unlink()
        server.kill()
        server.wait()
        return False

    monkeypatch.setattr(EmbeddedCluster, "_pid_file_is_stale", its_last_moments)

    assert not cluster.has_crashed()


async def test_a_crash_seen_before_a_stop_on_purpose_starts_nothing(
    embedded_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers saw the crash: one started the cluster again, and `devreg db stop` then
    stopped it, while the other waited for the lock to start it, and did."""
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    cluster.stop()
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    cluster.pid_file.write_text(f"{gone.pid}\n")  # as a crash leaves it
    monkeypatch.setattr(watcher, "_WATCH_SECONDS", 0.05)

    with cluster._alone():  # the other worker's start, then `devreg db stop`
        watching = asyncio.create_task(watcher.keep_running(cluster))
        # It has seen the crash, and waits for the lock: it has the lock's file open too.
        await asyncio.to_thread(_wait_until_it_opens, os.getpid(), cluster.lock_file, times=2)
        cluster.pid_file.unlink()
    for _ in range(30):
        if cluster.is_running():
            break
        await asyncio.sleep(0.1)
    watching.cancel()

    assert not cluster.is_running()


async def test_a_crashed_cluster_without_its_password_file_keeps_its_password_while_serving(
    embedded_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The servers connect with the password they read at start: the watcher that started the
    crashed cluster again gave it a new one, and locked every worker out until restarted."""
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    os.kill(int(cluster.pid_file.read_text().split()[0]), signal.SIGKILL)
    cluster.password_file.unlink()
    monkeypatch.setattr(watcher, "_WATCH_SECONDS", 0.05)

    watching = asyncio.create_task(watcher.keep_running(cluster))
    await asyncio.sleep(3)
    watching.cancel()

    assert not cluster.password_file.exists()
    assert not cluster.is_running()


@contextmanager
def _port_taken(port: int) -> Iterator[None]:
    """Listening on `port` as soon as the killed server that had it has let it go."""
    deadline = time.monotonic() + 5
    while True:
        try:
            listener = socket.create_server(("127.0.0.1", port))
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {port} still in use"
            time.sleep(0.01)
    with listener:
        yield


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


def _wait_until_it_opens(pid: int, path: Path, *, times: int = 1) -> None:
    """Until process `pid` has `path` open (`times` times at once): a fixed pause was too short
    on a busy machine, where the signal then came before the command had set up its handling
    of it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with suppress(OSError):  # a descriptor closed as it was listed
            fds = Path(f"/proc/{pid}/fd").iterdir()
            if sum(fd.resolve() == path.resolve() for fd in fds) >= times:
                return
        time.sleep(0.05)
    raise AssertionError(f"{path} never opened {times} time(s) by {pid}")


@pytest.mark.parametrize(
    ("ending", "exit_status"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)]
)
def test_a_command_waiting_its_turn_for_the_cluster_stops_when_told(
    embedded_settings: dict[str, str], ending: signal.Signals, exit_status: int
) -> None:
    """The lock was waited for in a thread, which neither SIGTERM nor Ctrl-C reaches, and the
    command ended only once it got its turn: never, while the process holding it was
    suspended (Ctrl-Z) or stuck."""
    lock_file = cluster_of(embedded_settings).lock_file
    with lock_file.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        command = started_devreg("db", "status", **embedded_settings)
        try:
            _wait_until_it_opens(command.pid, lock_file)  # started, and waiting for its turn
            command.send_signal(ending)
            ended: int | None = command.wait(10)
        except subprocess.TimeoutExpired:
            ended = None
        finally:
            command.kill()
            _, errors = command.communicate()

    assert ended == exit_status, errors
    assert "Traceback" not in errors
    assert not cluster_of(embedded_settings).is_initialised()


def test_a_worker_names_the_embedded_cluster_it_uses_once_at_start(
    embedded_settings: dict[str, str],
) -> None:
    with devreg_process(**embedded_settings) as server:
        logged = server.logged("INFO")

    cluster_dir = Path(embedded_settings["DATA_DIR"]) / "pg"
    port = embedded_settings["EMBEDDED_PG_PORT"]
    assert [line["message"] for line in logged if line["message"].startswith("database")] == [
        f"database: the embedded PostgreSQL in {cluster_dir}, 127.0.0.1:{port}/devreg as user "
        "'devreg'"
    ]


def test_libpq_variables_set_for_other_servers_leave_the_embedded_cluster_reachable(
    embedded_settings: dict[str, str],
) -> None:
    """asyncpg reads them as libpq does: devreg could not connect to its own cluster, which
    has no TLS and is no standby."""
    result = run_devreg(
        "users", "list", "--json",
        **embedded_settings,
        PGSSLMODE="verify-full",
        PGSSLNEGOTIATION="direct",
        PGTARGETSESSIONATTRS="read-only",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == []


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

    assert result.returncode == 2  # a setting, as the README says of them
    assert result.stderr.startswith('devreg: invalid setting: DATA_DIR may not hold $, `, " or \\ ')
    assert len(result.stderr.splitlines()) == 1


def test_password_file_is_private(embedded_settings: dict[str, str]) -> None:
    result = run_devreg("db", "status", **embedded_settings)
    assert result.returncode == 0, result.stderr
    assert "migrations pending" in result.stdout  # a new cluster, nothing migrated yet
    password_file = Path(embedded_settings["DATA_DIR"]) / "pg.password"
    assert password_file.stat().st_mode & 0o077 == 0


def test_a_lost_password_file_is_replaced_with_a_new_password_once_the_cluster_is_stopped(
    embedded_settings: dict[str, str],
) -> None:
    """A cluster whose password file was lost (deleted, left out of a copy) could not be used
    again: every run said "No such file or directory"."""
    password_file = Path(embedded_settings["DATA_DIR"]) / "pg.password"
    created = run_devreg("devices", "create", "--name", "kept", "--json", **embedded_settings)
    assert created.returncode == 0, created.stderr
    lost = password_file.read_text()
    password_file.unlink()

    running = run_devreg("db", "status", **embedded_settings)
    assert running.returncode == 1
    assert running.stderr == (
        f"devreg: the embedded PostgreSQL's password file is gone ({password_file}): stop "
        "devreg's servers and run `devreg db stop`; its next start sets a new password\n"
    )

    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    device_id = json.loads(created.stdout)["id"]
    fetched = run_devreg("devices", "get", str(device_id), "--json", **embedded_settings)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["name"] == "kept"
    assert "a new password is set" in fetched.stderr
    assert password_file.read_text() != lost
    assert password_file.stat().st_mode & 0o777 == 0o600


def test_a_password_file_a_power_cut_left_empty_is_replaced_once_the_cluster_is_stopped(
    embedded_settings: dict[str, str],
) -> None:
    """A file created but not yet written to disk when the power went (or written blank by
    hand) was taken for a password: every run then said "wrong password", for ever."""
    password_file = Path(embedded_settings["DATA_DIR"]) / "pg.password"
    created = run_devreg("devices", "create", "--name", "kept", "--json", **embedded_settings)
    assert created.returncode == 0, created.stderr
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    password_file.write_text("\n")

    device_id = json.loads(created.stdout)["id"]
    fetched = run_devreg("devices", "get", str(device_id), "--json", **embedded_settings)

    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["name"] == "kept"
    assert "a new password is set" in fetched.stderr
    assert password_file.read_text().strip()


def test_a_lost_password_file_is_replaced_after_a_crash(
    embedded_settings: dict[str, str],
) -> None:
    """A crash's postmaster.pid (here empty), which a start removes, was still there when the
    new password was set: single-user mode refused it ("lock file "postmaster.pid" is
    empty"), and the cluster could not be used."""
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    cluster.stop()
    cluster.password_file.unlink()
    cluster.pid_file.write_text("")

    assert cluster.ensure_running()
    assert cluster.password_file.exists()


def test_a_cluster_gone_under_its_servers_is_not_made_anew_for_them(
    embedded_settings: dict[str, str],
) -> None:
    """The servers' watcher, trying again a start that failed, would have run initdb: an
    empty registry served in place of the one gone, under a password the servers lack."""
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    cluster.stop()
    shutil.rmtree(cluster.data_dir)

    with pytest.raises(EmbeddedPostgresError, match="cluster is gone from"):
        cluster.start_for_servers()

    assert not cluster.data_dir.exists()


def test_a_new_password_that_cannot_be_set_is_said_without_it(
    embedded_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    cluster.stop()
    cluster.password_file.unlink()
    monkeypatch.setattr(embedded, "SUPERUSER", "no-such-role")

    with pytest.raises(EmbeddedPostgresError) as refused:
        cluster.ensure_running()

    assert str(refused.value) == (
        f"the embedded PostgreSQL's password file is gone ({cluster.password_file}), and no new "
        "password could be set"
    )
    assert not cluster.password_file.exists()


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
        (no_password, "password file is gone"),
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


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user for root")


@as_root
@pytest.mark.parametrize("umask", [0o027, 0o077, 0o000], ids=["027", "077", "000"])
def test_the_directories_it_makes_do_not_depend_on_the_umask(
    embedded_settings: dict[str, str], umask: int
) -> None:
    """As root under a strict umask, the directories devreg made for DATA_DIR were closed to
    the postgres account, and initdb failed on every run ("Permission denied"); under umask 000
    anyone could replace the password file, or hold the lock and keep devreg waiting."""
    data_dir = Path(embedded_settings["DATA_DIR"]) / "made" / "here"
    settings = {**embedded_settings, "DATA_DIR": str(data_dir)}

    status = subprocess.run(
        [sys.executable, "-m", "devreg", "db", "status"],
        env=devreg_environment(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )

    try:
        assert status.returncode == 0, status.stderr
        for made in (data_dir.parent, data_dir):
            assert made.stat().st_mode & 0o777 == 0o755
        assert (data_dir / "pg.lock").stat().st_mode & 0o777 == 0o600
    finally:
        assert run_devreg("db", "stop", **settings).returncode == 0


@contextmanager
def _mounted(volume: Path, at: Path) -> Iterator[None]:
    """`volume` bind-mounted at `at`, as a container's volume is."""
    mounted = subprocess.run(["mount", "--bind", str(volume), str(at)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(at)], check=True)


@as_root
@pytest.mark.parametrize("holding", ["nothing", "lost+found"])
def test_a_volume_mounted_where_the_cluster_goes_holds_it(
    embedded_settings: dict[str, str], holding: str
) -> None:
    """Made aside and moved onto the mount point, the cluster could not start: "Device or
    resource busy"."""
    root = Path(embedded_settings["DATA_DIR"])
    volume, data_dir = root / "volume", root / "data"
    volume.mkdir(mode=0o755)
    if holding != "nothing":
        (volume / holding).mkdir()
    (data_dir / "pg").mkdir(parents=True)
    settings = {**embedded_settings, "DATA_DIR": str(data_dir)}

    with _mounted(volume, data_dir / "pg"):
        try:
            status = run_devreg("db", "status", **settings)
        finally:
            run_devreg("db", "stop", **settings)

    if holding == "nothing":
        assert status.returncode == 0, status.stderr
        assert (volume / "PG_VERSION").exists()
    else:
        assert status.returncode == 1
        assert "initdb failed: " in status.stderr
        assert "exists but is not empty" in status.stderr


@as_root
def test_a_directory_closed_to_the_postgres_account_is_named(
    embedded_settings: dict[str, str],
) -> None:
    closed = Path(embedded_settings["DATA_DIR"]) / "private"
    closed.mkdir(mode=0o700)
    data_dir = closed / "devreg"

    result = run_devreg("db", "status", **{**embedded_settings, "DATA_DIR": str(data_dir)})

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"devreg: the `postgres` user, which runs PostgreSQL for root, cannot enter {closed} "
        f"to reach {data_dir / 'pg'}: open it to others (`chmod o+x {closed}`) or choose "
        "another DATA_DIR"
    ]


@as_root
def test_without_the_postgres_account_root_is_told_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binaries from elsewhere than Debian's packages (a container's, conda's) come without
    the account: a traceback ended the command, and an empty cluster directory stayed."""
    monkeypatch.setattr(programs, "SERVICE_ACCOUNT", "devreg-no-such-account")
    cluster = EmbeddedCluster(data_dir=tmp_path / "data" / "pg", port=free_port())

    with pytest.raises(EmbeddedPostgresError, match=r"`useradd --system devreg-no-such-account`"):
        cluster.ensure_running()

    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("linked_to", ["an-empty-directory", "nothing-yet"])
def test_a_cluster_directory_linked_elsewhere_is_made_there(
    embedded_settings: dict[str, str], linked_to: str
) -> None:
    """`DATA_DIR/pg` a link to another disk: the cluster is made where it leads (made aside and
    moved into place, it was moved over the link, which failed: "Not a directory")."""
    elsewhere = Path(embedded_settings["DATA_DIR"]) / "disk" / "devreg-pg"
    elsewhere.parent.mkdir()
    if linked_to == "an-empty-directory":
        elsewhere.mkdir()
    data_dir = Path(embedded_settings["DATA_DIR"]) / "data"
    data_dir.mkdir()
    (data_dir / "pg").symlink_to(elsewhere)
    settings = {**embedded_settings, "DATA_DIR": str(data_dir)}

    try:
        status = run_devreg("db", "status", **settings)

        assert status.returncode == 0, status.stderr
        assert (elsewhere / "PG_VERSION").is_file()
        assert (data_dir / "pg").is_symlink()
    finally:
        run_devreg("db", "stop", **settings)


def test_a_cluster_directory_holding_no_cluster_but_files_is_named_and_left_as_it_is(
    embedded_settings: dict[str, str],
) -> None:
    """A cluster was made aside and then failed to move over the files there, saying so of the
    one made aside ("Directory not empty: DATA_DIR/pg.initdb-x1y2z3/pg"), which it left behind,
    with a password file for it."""
    data_dir = Path(embedded_settings["DATA_DIR"])
    (data_dir / "pg").mkdir()
    (data_dir / "pg" / "notes.txt").write_text("kept\n")

    status = run_devreg("db", "status", **embedded_settings)

    assert status.returncode == 1
    assert status.stderr == (
        f"devreg: {data_dir / 'pg'} holds files but no PostgreSQL cluster: empty it, or "
        "choose another DATA_DIR\n"
    )
    assert sorted(path.name for path in data_dir.iterdir()) == ["pg", "pg.lock"]
    assert [path.name for path in (data_dir / "pg").iterdir()] == ["notes.txt"]


def test_a_cluster_lacking_devregs_settings_is_given_them_not_run_on_a_port_of_its_own(
    embedded_settings: dict[str, str],
) -> None:
    """A cluster made in place (on a volume mounted there) whose first start was cut short
    before devreg's settings were included in its postgresql.conf, or one made by hand, was
    started on the port its own configuration says (PostgreSQL's default 5432, and a Unix
    socket beside it), left running there, and every run said the cluster could not be
    reached."""
    cluster = cluster_of(embedded_settings)
    cluster.ensure_running()
    cluster.stop()
    conf = cluster.data_dir / "postgresql.conf"
    own_port = free_port()  # not 5432, which a server of the machine's own may listen on
    conf.write_text(
        conf.read_text().replace("include_if_exists = 'devreg.conf'", f"port = {own_port}")
    )

    status = run_devreg("db", "status", **embedded_settings)

    assert status.returncode == 0, status.stderr
    pid_file = cluster.pid_file.read_text().split("\n")
    assert pid_file[3] == embedded_settings["EMBEDDED_PG_PORT"]


def test_a_first_start_cut_short_leaves_nothing_the_next_takes_for_a_cluster(
    embedded_settings: dict[str, str],
) -> None:
    """initdb runs in a session of its own: devreg killed amid it (or a power cut), it went on
    and made a cluster without devreg's settings, which every later start ran on PostgreSQL's
    default port and then could not find."""
    data_dir = Path(embedded_settings["DATA_DIR"])
    first = started_devreg("db", "status", **embedded_settings)
    deadline = time.monotonic() + 60
    while not any(data_dir.glob("**/PG_VERSION")):
        assert time.monotonic() < deadline, "initdb did not begin"
        time.sleep(0.01)
    first.kill()
    first.communicate()

    status = run_devreg("db", "status", **embedded_settings)

    assert status.returncode == 0, status.stderr
    pid_file = (data_dir / "pg" / "postmaster.pid").read_text().split("\n")
    assert pid_file[3] == embedded_settings["EMBEDDED_PG_PORT"]


@pytest.mark.parametrize("language", ["", "de"])
def test_a_cluster_that_cannot_start_says_why_in_english(
    embedded_settings: dict[str, str], language: str
) -> None:
    """With LANGUAGE set (as desktops set it), the server logged in that language, where
    devreg looks for English: it said "no reason logged", or half the reason."""
    settings = {**embedded_settings, "LANGUAGE": language}
    assert run_devreg("db", "status", **settings).returncode == 0
    assert run_devreg("db", "stop", **settings).returncode == 0
    port = int(embedded_settings["EMBEDDED_PG_PORT"])
    with socket.create_server(("127.0.0.1", port)):
        result = run_devreg("db", "status", **settings)

    log_file = Path(embedded_settings["DATA_DIR"]) / "pg" / "server.log"
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "devreg: the embedded PostgreSQL did not start: could not bind IPv4 address "
        '"127.0.0.1": Address already in use; could not create any TCP/IP sockets; '
        f"see {log_file}"
    ]


def _without_pg_ctl_on_path() -> str:
    return os.pathsep.join(
        directory
        for directory in os.environ["PATH"].split(os.pathsep)
        if not (Path(directory) / "pg_ctl").exists()
    )


def test_a_cluster_another_postgresql_made_names_its_version(
    embedded_settings: dict[str, str], tmp_path: Path
) -> None:
    """A cluster is run by the major version that made it. Another refuses it, and devreg said
    only "database files are incompatible with server", not which versions."""
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    (Path(embedded_settings["DATA_DIR"]) / "pg" / "PG_VERSION").write_text("14\n")
    installed = find_pg_bindir()
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "pg_ctl").symlink_to(installed / "pg_ctl")
    path = _without_pg_ctl_on_path()

    not_installed = run_devreg("db", "status", **embedded_settings, PATH=path)
    another_on_path = run_devreg(
        "db", "status", **embedded_settings, PATH=f"{elsewhere}{os.pathsep}{path}"
    )

    assert not_installed.returncode == 1
    assert not_installed.stderr.splitlines() == [
        "devreg: the embedded cluster was made by PostgreSQL 14, whose server binaries are not "
        "installed: install them (`apt-get install -y postgresql-14`), or put that version's "
        "pg_ctl on PATH"
    ]
    assert another_on_path.returncode == 1
    assert re.fullmatch(
        r"devreg: the embedded PostgreSQL did not start: database files are incompatible with "
        r"server \(The data directory was initialized by PostgreSQL version 14, which is not "
        r"compatible with this version \d+\.\d+.*\); see .*server\.log\n",
        another_on_path.stderr,
    )


def test_an_existing_cluster_is_run_by_the_version_that_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's upgrades install the next major version beside the one in use: the newest was
    taken, for a cluster it cannot run, though its own version was still installed."""
    for version in ("15", "17"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "pg_ctl").touch()
    monkeypatch.setattr(programs, "PACKAGED_VERSIONS", tmp_path)
    monkeypatch.setenv("PATH", _without_pg_ctl_on_path())

    assert find_pg_bindir("15") == tmp_path / "15" / "bin"
    assert find_pg_bindir(None) == tmp_path / "17" / "bin"  # a new cluster: the newest


@pytest.mark.parametrize(
    ("returncode", "stderr", "reason"),
    [
        (
            1,
            'The files belonging to this database system will be owned by user "postgres".\n'
            'initdb: error: could not create directory "/d/pg": No space left on device\n'
            'initdb: removing data directory "/d/pg"\n',
            'initdb: error: could not create directory "/d/pg": No space left on device',
        ),
        (1, "pg_ctl: server did not start in time\n", "pg_ctl: server did not start in time"),
        (-9, "", "ended by SIGKILL"),
        (137, "", "exit status 137"),
    ],
    ids=["its-error", "its-last-line", "killed", "silent"],
)
def test_a_tool_that_failed_says_why_in_a_line(returncode: int, stderr: str, reason: str) -> None:
    """initdb's whole output was the message, several lines of it (a full disk), or nothing
    at all ("initdb failed: ") when it was killed."""
    result = subprocess.CompletedProcess(["initdb"], returncode, stdout="", stderr=stderr)
    assert programs.failure_reason(result) == reason


@as_root
def test_a_cluster_that_fails_before_it_logs_says_what_pg_ctl_said(
    embedded_settings: dict[str, str],
) -> None:
    """A cluster copied by root is root's: pg_ctl, run as the postgres account, fails before
    the server writes a line, and devreg said "no reason logged"."""
    assert run_devreg("db", "status", **embedded_settings).returncode == 0
    assert run_devreg("db", "stop", **embedded_settings).returncode == 0
    data_dir = Path(embedded_settings["DATA_DIR"]) / "pg"
    postgres = (data_dir.stat().st_uid, data_dir.stat().st_gid)
    os.chown(data_dir, 0, 0)
    try:
        result = run_devreg("db", "status", **embedded_settings)
    finally:
        os.chown(data_dir, *postgres)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "devreg: the embedded PostgreSQL did not start: pg_ctl: could not open PID file "
        f'"{data_dir}/postmaster.pid": Permission denied; see {data_dir}/server.log'
    ]
