"""devreg's own PostgreSQL cluster, run with the system's PostgreSQL binaries.

The cluster is a separate daemon (pg_ctl puts the postmaster in its own session), so Ctrl-C on
the server never reaches it; it keeps running between devreg runs until `devreg db stop`.
PostgreSQL refuses to run as root, so as root initdb and pg_ctl run as the `postgres` user.
"""

import asyncio
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from devreg.config import ASYNC_DRIVER, Settings
from devreg.db.programs import (
    EmbeddedPostgresError,
    failure_reason,
    find_pg_bindir,
    in_english,
    service_account,
)
from devreg.db.server import (
    DatabaseConnectError,
    describe_connect_failure,
    describe_database,
    ensure_database,
)

SUPERUSER = "devreg"
_CONFIG_FILE = "devreg.conf"
# postgresql.conf's line that reads devreg's settings (port, listen_addresses...) from it.
_INCLUDE_CONFIG = f"include_if_exists = '{_CONFIG_FILE}'"
# Without TLS, to a primary: the cluster serves no other way. asyncpg reads libpq's variables
# (PGSSLMODE=verify-full, PGSSLNEGOTIATION=direct, PGTARGETSESSIONATTRS=read-only), set for
# other servers, where a connection says nothing of its own; a DATABASE_URL's server gets them.
_AS_THE_CLUSTER_SERVES = {"ssl": "disable", "direct_tls": "false", "target_session_attrs": "any"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedCluster:
    data_dir: Path
    port: int
    server_settings: dict[str, str] = field(default_factory=dict)

    @property
    def password_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".password")

    @property
    def pid_file(self) -> Path:
        """The running server's: its PID on the first line, its port on the fourth."""
        return self.data_dir / "postmaster.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def url(self, database: str) -> URL:
        return URL.create(
            ASYNC_DRIVER,
            username=SUPERUSER,
            password=self.password_file.read_text().strip(),
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _made_by(self) -> str | None:
        """The major version of PostgreSQL that made the cluster, if there is one."""
        try:
            return (self.data_dir / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            return None

    def is_running(self) -> bool:
        if not self.is_initialised() or self._pid_file_is_stale():
            return False
        status = self._pg_ctl("status", check=False)
        return status.returncode == 0

    def _require_port(self) -> None:
        """The running server listens on the port asked for (postmaster.pid's fourth line): a
        changed EMBEDDED_PG_PORT would otherwise be some other server's port, or nobody's."""
        lines = self.pid_file.read_text().split("\n")
        listening = lines[3].strip() if len(lines) > 3 else ""
        if listening.isdigit() and int(listening) != self.port:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL is running on port {listening}, not {self.port}: "
                "run `devreg db stop` first to move it"
            )

    def _pid_named(self) -> int | None:
        """The PID on postmaster.pid's first line (negated by a single-user server), 0 when the
        line is empty or garbled; None without the file (or one not ours to read)."""
        try:
            first_line = self.pid_file.read_bytes().split(b"\n", 1)[0].strip()
        except OSError:
            return None
        return int(first_line) if re.fullmatch(rb"-?[0-9]+", first_line) else 0

    def _pid_file_is_stale(self) -> bool:
        """Whether postmaster.pid is left by a server gone (a crash, a power cut) in a way
        pg_ctl cannot tell: empty or garbled, which stops it from starting the cluster; or naming
        a process that pg_ctl takes for the server: one that has ended but not yet been reaped
        (no parent waits for it: in a container, say), or one that has since taken its PID,
        perhaps another cluster's server (which `db stop` would stop)."""
        pid = self._pid_named()
        if pid is None:  # no such file: nothing left
            return False
        if pid == 0:
            return True
        if pid < 0:  # a single-user server's (PostgreSQL writes its PID negated): pg_ctl says so
            return False
        try:
            if _process_state(pid) == _ENDED_UNREAPED:
                return True
            # A server is a postgres program working in its data directory.
            program = Path(os.readlink(f"/proc/{pid}/exe")).name
            working_in = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:  # no such process (pg_ctl sees that too), or not ours to look at
            return False
        # (An upgraded binary's link reads "postgres (deleted)".)
        return not program.startswith("postgres") or working_in != self.data_dir.resolve()

    @property
    def lock_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".lock")

    @contextmanager
    def _alone(self, given_up: threading.Event | None = None) -> Iterator[None]:
        """Held while the cluster is created, started or stopped: two devreg processes starting
        at once (two servers, a server and a command) would otherwise both run initdb, one
        writing its password over the other's, or both run pg_ctl start, one failing. A file
        that cannot be used on the way (DATA_DIR a file, or not ours) is an
        EmbeddedPostgresError: one line, as every command says it. Waiting for it stops once
        `given_up` is set."""
        try:
            _make_directories(self.data_dir.parent)
            # Private: anyone who can open the lock can hold it, and so keep devreg waiting.
            descriptor = os.open(self.lock_file, os.O_RDONLY | os.O_CREAT, 0o600)
            with open(descriptor) as lock:
                _take_turn(lock, given_up or threading.Event())  # let go when the file closes
                yield
        except OSError as exc:
            raise _unusable(exc, self.data_dir) from None

    def ensure_running(self, given_up: threading.Event | None = None) -> bool:
        """Create the cluster on first use, then start it unless it is already up; True when
        this call started it. Waiting for another process's turn stops once `given_up` is
        set."""
        if os.geteuid() == 0:
            service_account()  # before anything is made for it
        with self._alone(given_up):
            return self._start_unless_running()

    def restart_if_crashed(self) -> bool:
        """Start the cluster again if its server crashed, judged holding the lock: seen crashed
        before it, the cluster may since have been started again and stopped on purpose (by
        another worker, then `devreg db stop`), and stays stopped. True when this call started
        it."""
        if os.geteuid() == 0:
            service_account()
        with self._alone():
            return self.has_crashed() and self._start_unless_running(serving=True)

    def start_for_servers(self) -> bool:
        """ensure_running for servers using the cluster (a start that failed tried again): its
        password kept, which they connect with."""
        with self._alone():
            return self._start_unless_running(serving=True)

    def _start_unless_running(self, *, serving: bool = False) -> bool:
        """ensure_running's work, the lock held; `serving`: for servers using the cluster, whose
        password a new one would lock out, and whose data a new cluster would not hold."""
        self._require_reachable()
        if not self.is_initialised():
            if serving:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL's cluster is gone from {self.data_dir}: stop "
                    "devreg's servers; their next start makes a new, empty one"
                )
            self._initdb()
        # Before a new password is set: single-user mode refuses the file as the server would.
        if self._pid_file_is_stale():
            self.pid_file.unlink(missing_ok=True)
        if not self._has_password():
            self._give_new_password(serving=serving)
        if self.is_running():
            self._require_port()
            return False
        self._write_config()
        logged_before = self._log_size()
        started = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file), check=False)
        if started.returncode != 0:
            # Failing before the server logs anything (its PID file not its to write, say),
            # pg_ctl says why itself.
            why = "; ".join(self._start_failures(logged_before)) or failure_reason(started)
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL did not start: {why}; see {self.log_file}"
            )
        return True

    def has_crashed(self) -> bool:
        """Whether its server ended without being stopped (killed, by the kernel short of memory
        say): postmaster.pid is left behind, naming no server. A server stopped by `devreg db
        stop` or pg_ctl, even in `immediate` mode, removes the file."""
        pid = self._pid_named()
        if pid is None:
            return False
        if self._pid_file_is_stale():  # garbled, too
            return True
        if Path(f"/proc/{abs(pid)}").exists():
            return False
        # A server stopping removes the file, then ends: read before it went, the file names a
        # process gone by the time it is looked for, and is gone itself.
        return self.pid_file.exists()

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _start_failures(self, logged_before: int) -> list[str]:
        """What the server logged of why it stopped since `logged_before` bytes: its FATAL
        and PANIC messages, and what it "could not" do on the way (bind its port, say), each
        with its DETAIL (which names the versions of a cluster another PostgreSQL made)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(logged_before)
                logged = log.read(_START_LOG_MAX).decode(errors="replace")
        except OSError:
            return []
        failures: list[str] = []
        kept = False  # the message a DETAIL line is of
        for found in _LOGGED.finditer(logged):
            severity, message = found.groups()
            if severity == "DETAIL":
                if kept:
                    failures[-1] += f" ({message.rstrip('.')})"
                continue
            kept = severity in ("FATAL", "PANIC") or message.startswith("could not")
            if kept:
                failures.append(message)
        return failures[:_START_FAILURES_MAX]

    def exists(self) -> bool:
        """Whether DATA_DIR holds the cluster's directory (made, if not yet initialised); a
        path that cannot be looked at (under a file, or not ours) is an EmbeddedPostgresError."""
        try:
            self.data_dir.stat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _unusable(exc, self.data_dir) from None
        return True

    def stop(self) -> bool:
        """Stop the cluster cleanly; False when it was not running. A cluster never made is
        left unmade: a mistyped DATA_DIR is not created."""
        if not self.exists():
            return False
        with self._alone():
            if not self.is_running():
                return False
            self._pg_ctl("stop", "-w", "-m", "fast")
            return True

    def _require_reachable(self) -> None:
        """As root, the service account can pass through every directory above the cluster's:
        initdb and the server, run as that account, failed on the first one closed to it
        ("Permission denied"), a parent made under a strict umask or a private home."""
        if os.geteuid() != 0:
            return
        account = service_account()
        groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
        # Those on the way to a link (`DATA_DIR/pg` linked to another disk), then beyond it.
        on_the_way = (*reversed(self.data_dir.parents), *reversed(self.data_dir.resolve().parents))
        for directory in dict.fromkeys(on_the_way):
            status = directory.stat()
            if status.st_uid == account.pw_uid:
                searchable = status.st_mode & stat.S_IXUSR
            elif status.st_gid in groups:
                searchable = status.st_mode & stat.S_IXGRP
            else:
                searchable = status.st_mode & stat.S_IXOTH
            if not searchable:
                raise EmbeddedPostgresError(
                    f"the `{account.pw_name}` user, which runs PostgreSQL for root, cannot "
                    f"enter {directory} to reach {self.data_dir}: open it to others "
                    f"(`chmod o+x {directory}`) or choose another DATA_DIR"
                )

    def _initdb(self) -> None:
        """Made beside the cluster's place, then moved there whole: a first start cut short
        (killed, a power cut) left a cluster half made, taken for one by the next start, which
        then ran it on PostgreSQL's default port for ever."""
        # Where a link (`DATA_DIR/pg` linked to another disk) leads: a directory cannot be moved
        # over the link itself, nor from one disk to another.
        place = self.data_dir.resolve()
        # A volume mounted there (a container's) cannot be replaced: the cluster is made in it,
        # and initdb refuses one that holds anything (lost+found, say) in words of its own.
        in_place = _is_mount_point(place)
        if not in_place and _holds_anything(place):
            raise EmbeddedPostgresError(
                f"{self.data_dir} holds files but no PostgreSQL cluster: empty it, or choose "
                "another DATA_DIR"
            )
        for leftover in place.parent.glob(f"{place.name}{_MAKING}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        making = Path(tempfile.mkdtemp(prefix=f"{place.name}{_MAKING}", dir=place.parent))
        self._hand_to_service_account(making)
        password = secrets.token_urlsafe(24)
        # initdb reads a copy of the password, which goes with what a cut-short start leaves.
        password_copy = making / "password"
        password_copy.touch(mode=0o600)
        password_copy.write_text(password + "\n")
        self._hand_to_service_account(password_copy)
        cluster = place if in_place else making / "pg"
        if in_place:
            self._hand_to_service_account(place)
        self._run(
            "initdb",
            "-D",
            str(cluster),
            "-U",
            SUPERUSER,
            f"--pwfile={password_copy}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        _include_config(cluster)
        self._keep_password(password)
        if not in_place:
            cluster.rename(place)  # over an empty directory, if one is there
        shutil.rmtree(making)

    def _has_password(self) -> bool:
        """Whether the password file holds a password: one left empty (created, but not yet
        written to disk when the power went) is as lost as a file deleted."""
        try:
            return bool(self.password_file.read_text().strip())
        except FileNotFoundError:
            return False

    def _keep_password(self, password: str) -> None:
        # For devreg (its owner) alone.
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(password + "\n")

    def _give_new_password(self, *, serving: bool = False) -> None:
        """The password file lost (deleted, or left out of a copy of DATA_DIR): its superuser is
        given a new password, set by PostgreSQL in single-user mode, which asks for none. Not
        while the cluster runs, nor for the servers starting it again (`serving`): those using
        it would then be refused."""
        if serving or self.is_running():
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL's password file is gone ({self.password_file}): stop "
                "devreg's servers and run `devreg db stop`; its next start sets a new password"
            )
        password = secrets.token_urlsafe(24)  # of letters, digits, - and _: no quote to escape
        altered = self._run(
            "postgres",
            "--single",
            "-D",
            str(self.data_dir),
            "postgres",
            stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'\n",
        )
        # A statement that fails ends single-user mode with 0 all the same, its error logged
        # with the statement, password and all: not to be repeated.
        if " ERROR: " in altered.stderr:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL's password file is gone ({self.password_file}), and "
                "no new password could be set"
            )
        self._keep_password(password)
        logger.warning("the embedded PostgreSQL's password file was gone: a new password is set")

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            # Room for the default workers' pools (4 x 30) and the CLI beside them.
            "max_connections": "200",
            # devreg reads why the server did not start from its log (_start_failures).
            "lc_messages": "'C'",
            **self.server_settings,
        }
        path = self.data_dir / _CONFIG_FILE
        path.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
        self._hand_to_service_account(path)
        # A cluster made in place whose first start was cut short before it was included (or
        # one made by hand) ran on a port of its own, where devreg never found it.
        _include_config(self.data_dir)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "-D", str(self.data_dir), *args, check=check)

    def _run(
        self, tool: str, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [str(find_pg_bindir(self._made_by()) / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", service_account().pw_name, "--", *command]
        result = subprocess.run(  # noqa: S603 - fixed binaries, arguments built here
            command,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
            cwd="/",
            env=in_english(os.environ),
        )
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(f"{tool} failed: {failure_reason(result)}")
        return result

    @staticmethod
    def _hand_to_service_account(path: Path) -> None:
        if os.geteuid() == 0:
            account = service_account()
            os.chown(path, account.pw_uid, account.pw_gid)


# How often a process waiting for the cluster's lock looks whether it is its turn.
_TURN_SECONDS = 0.05


def _take_turn(lock: IO[str], given_up: threading.Event) -> None:
    """Take the lock when it is free, or raise once `given_up` is set: waited for in a thread
    (asyncio.to_thread), the lock held the process after SIGTERM or Ctrl-C, which do not reach
    that thread, for as long as another process held it (suspended with Ctrl-Z: for ever)."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if given_up.wait(_TURN_SECONDS):
                raise EmbeddedPostgresError("stopped waiting for the embedded PostgreSQL") from None


def _include_config(cluster: Path) -> None:
    """Have the cluster's postgresql.conf read devreg's settings, unless it already does."""
    conf = cluster / "postgresql.conf"
    if _INCLUDE_CONFIG not in conf.read_text().splitlines():
        with conf.open("a") as appended:
            appended.write(f"\n{_INCLUDE_CONFIG}\n")


def _make_directories(path: Path) -> None:
    """`path` and its missing parents, open to all to pass through (as root, the service
    account must reach the cluster inside), whatever the umask: 027 closed them to it, 000 let
    anyone replace the password file."""
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)


# A server log line, after its prefix (log_line_prefix): its severity and its message.
_LOGGED = re.compile(r"\b(LOG|FATAL|PANIC|DETAIL):  (.*)")
_START_LOG_MAX = 64 * 1024
_START_FAILURES_MAX = 3

_ENDED_UNREAPED = "Z"  # a zombie, in /proc's words
# What a cluster being made is called, beside where it goes.
_MAKING = ".initdb-"


def _is_mount_point(path: Path) -> bool:
    """Whether a file system is mounted at `path` (an absolute path without links): a volume
    bind-mounted from the same disk too, which `os.path.ismount` does not see."""
    try:
        with open("/proc/self/mountinfo") as mounts:
            # The fifth field, with space, tab, newline and backslash escaped in octal.
            points = {_OCTAL_ESCAPE.sub(_unescaped, line.split()[4]) for line in mounts}
    except OSError:
        return path.is_mount()
    return str(path) in points


def _holds_anything(path: Path) -> bool:
    """Whether something is at `path` but an empty directory (which a cluster is moved over)."""
    try:
        return any(path.iterdir())
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescaped(escape: re.Match[str]) -> str:
    return chr(int(escape[1], 8))


def _process_state(pid: int) -> str:
    """The process's state letter from /proc/PID/stat, after its name (which may hold spaces
    and parentheses, so the last ")" ends it)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _unusable(exc: OSError, data_dir: Path) -> EmbeddedPostgresError:
    return EmbeddedPostgresError(
        f"cannot use the embedded PostgreSQL: {exc.strerror or exc}: {exc.filename or data_dir}"
    )


def embedded_cluster(settings: Settings) -> EmbeddedCluster:
    return EmbeddedCluster(data_dir=settings.embedded_cluster_dir, port=settings.embedded_pg_port)


def describe_database_in_use(settings: Settings, url: URL) -> str:
    """The database devreg uses at `url`, without the password: the embedded cluster named by
    its data directory too."""
    described = describe_database(url)
    if settings.uses_embedded_cluster:
        return f"the embedded PostgreSQL in {settings.embedded_cluster_dir}, {described}"
    return f"PostgreSQL at {described}"


async def resolve_database_url(settings: Settings) -> URL:
    """The external server's URL when one is configured; else the embedded cluster's, started."""
    external = settings.external_database_url()
    if external is not None:
        return external
    cluster = embedded_cluster(settings)
    given_up = threading.Event()
    try:
        await asyncio.to_thread(cluster.ensure_running, given_up)
        url = cluster.url(settings.embedded_db_name).update_query_dict(_AS_THE_CLUSTER_SERVES)
    except OSError as exc:  # its password file is gone, say
        raise _unusable(exc, cluster.data_dir) from None
    except asyncio.CancelledError:
        given_up.set()  # the thread stops waiting, and the process can end
        raise
    try:
        await ensure_database(url)
    except (OSError, TimeoutError, SQLAlchemyError) as exc:  # refused, a wrong password, ...
        raise DatabaseConnectError(describe_connect_failure(exc, url)) from None
    return url
