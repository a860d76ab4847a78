"""The suite's own databases: alike on whatever server TEST_DATABASE_URL names."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from devreg.db.programs import find_pg_bindir, service_account
from tests import support
from tests.support import create_database, free_port, query


@contextmanager
def icu_cluster() -> Iterator[URL]:
    """A server as PostgreSQL's container images and installers make them: template0 sorting
    by a language (ICU's en-US, where "a" comes before "A"), not by code point."""
    bindir = find_pg_bindir()
    initdb = [str(bindir / "initdb")]
    # Before PostgreSQL 15, or built without ICU, a server cannot be made so by initdb.
    usage = subprocess.run([*initdb, "--help"], capture_output=True, text=True).stdout
    if "--icu-locale" not in usage:
        pytest.skip("this PostgreSQL's initdb makes no ICU cluster")
    root = Path(tempfile.mkdtemp(prefix="devreg-test-"))  # pytest's tmp_path is root's alone
    try:
        data, port = root / "pg", free_port()
        data.mkdir()
        as_postgres = []
        if os.geteuid() == 0:  # run as PostgreSQL's own account, which must reach the cluster
            account = service_account()
            as_postgres = ["runuser", "-u", account.pw_name, "--"]
            root.chmod(0o755)
            os.chown(data, account.pw_uid, account.pw_gid)
        initdb += ["-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        icu = ["--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US"]
        subprocess.run([*as_postgres, *initdb, *icu], check=True, capture_output=True, cwd="/")
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-w"]
        start = [*pg_ctl, "-o", options, "-l", str(data / "log"), "start"]
        subprocess.run(start, check=True, cwd="/")
        try:
            yield make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=True, cwd="/")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_the_suites_databases_order_text_by_code_point_whatever_the_servers_default() -> None:
    """Run with TEST_DATABASE_URL on such a server, the model-based test failed: it expects
    Python's order, "A" before "a", of names the database had sorted "a" first."""
    with icu_cluster() as server_url:
        url = await create_database(server_url, "devreg_ordered")
        rows = await query(url, "SELECT array_agg(name ORDER BY name) AS names FROM "
                                "unnest(ARRAY['a', 'B', 'A', 'b', 'é', 'É']) AS name")  # fmt: skip
    assert rows[0]["names"] == ["A", "B", "a", "b", "É", "é"]  # as Python's sorted() has them


class _Refused(Exception):
    def __init__(self, sqlstate: str) -> None:
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "made"),
    [("42809", [{"locale": "C"}]), ("53300", [])],
    ids=["server-lacking-c-utf8", "server-out-of-connections"],
)
async def test_a_database_is_made_in_c_only_on_a_server_lacking_c_utf8(
    server_url: URL, monkeypatch: pytest.MonkeyPatch, sqlstate: str, made: list[object]
) -> None:
    """C (whose lower() folds A-Z alone) is for a server whose system lacks C.UTF-8: a database
    refused for another reason, out of connections say, was made in C all the same, and the
    suite failed later, far from why."""
    admin = support.admin

    async def refusing_c_utf8(url: URL, *statements: str) -> None:
        if any("C.UTF-8" in statement for statement in statements):
            raise DBAPIError(statements[0], None, _Refused(sqlstate))
        await admin(url, *statements)

    monkeypatch.setattr(support, "admin", refusing_c_utf8)
    try:
        with contextlib.suppress(DBAPIError):
            await create_database(server_url, "devreg_refused")
        found = await query(
            server_url,
            "SELECT datcollate AS locale FROM pg_database WHERE datname = 'devreg_refused'",
        )
    finally:
        await admin(server_url, "DROP DATABASE IF EXISTS devreg_refused WITH (FORCE)")

    assert found == made
