"""The suite's own databases: alike on whatever server TEST_DATABASE_URL names."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from devreg.db.programs import find_pg_bindir, service_account
from tests.support import create_database, free_port, query


@contextmanager
def icu_cluster() -> Iterator[URL]:
    """A server as PostgreSQL's container images and installers make them: template0 sorting
    by a language (ICU's en-US, where "a" comes before "A"), not by code point."""
    root = Path(tempfile.mkdtemp(prefix="devreg-test-"))  # pytest's tmp_path is root's alone
    data, port = root / "pg", free_port()
    data.mkdir()
    as_postgres = []
    if os.geteuid() == 0:  # run as PostgreSQL's own account, which must reach the cluster
        account = service_account()
        as_postgres = ["runuser", "-u", account.pw_name, "--"]
        root.chmod(0o755)
        os.chown(data, account.pw_uid, account.pw_gid)
    bindir = find_pg_bindir()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    icu = ["--encoding=UTF8", "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US"]
    subprocess.run([*as_postgres, *initdb, *icu], check=True, capture_output=True, cwd="/")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run([*pg_ctl, "-o", options, "-l", str(data / "log"), "start"], check=True, cwd="/")
    try:
        yield make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=True, cwd="/")
        shutil.rmtree(root, ignore_errors=True)


async def test_the_suites_databases_order_text_by_code_point_whatever_the_servers_default() -> None:
    """Run with TEST_DATABASE_URL on such a server, the model-based test failed: it expects
    Python's order, "A" before "a", of names the database had sorted "a" first."""
    with icu_cluster() as server_url:
        url = await create_database(server_url, "devreg_ordered")
        rows = await query(url, "SELECT array_agg(name ORDER BY name) AS names FROM "
                                "unnest(ARRAY['a', 'B', 'A', 'b', 'é', 'É']) AS name")  # fmt: skip
    assert rows[0]["names"] == ["A", "B", "a", "b", "É", "é"]  # as Python's sorted() has them
