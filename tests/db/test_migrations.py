import asyncio
import logging
import re
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from httpx import AsyncClient, Response
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.db import migrations
from devreg.db.base import Base
from devreg.db.programs import find_pg_bindir
from devreg.db.session import ANSWER_GRACE_SECONDS, create_engine
from tests.auth.test_tokens import bearer, new_token
from tests.support import (
    CHECKOUT,
    admin,
    api_client,
    asyncpg_connection,
    create_database,
    devreg_environment,
    make_settings,
    migrate,
    query,
    running,
    set_revision,
    waiting_for_a_lock,
)


async def _fresh_engine(server_url: URL, name: str):  # type: ignore[no-untyped-def]
    url = await create_database(server_url, name)
    return create_engine(url, make_settings(url))


async def _models_against(url: URL) -> list[Any]:
    """What autogenerate would write to make the database at `url` the models' (as env.py)."""
    engine = create_engine(url, make_settings(url))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": migrations.compared}),
                    Base.metadata,
                )
            )
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(database_url: URL) -> None:
    assert await _models_against(database_url) == []


@pytest.mark.parametrize("index", ["ix_changes_reader_id", "uq_users_email_lower"])
async def test_an_index_on_an_expression_that_no_migration_made_is_found(
    committed_database_url: URL, index: str
) -> None:
    """Autogenerate leaves out the comparison of an index on an expression (PostgreSQL writes it
    back in its own words), not the index: one the migrations lack is still proposed."""
    await admin(committed_database_url, f"DROP INDEX {index}")

    diff = await _models_against(committed_database_url)

    assert [(operation, made.name) for operation, made in diff] == [("add_index", index)]


async def test_downgrade_to_base_then_upgrade_again(server_url: URL) -> None:
    engine = await _fresh_engine(server_url, "devreg_roundtrip")
    try:
        await migrations.upgrade(engine)
        assert await migrations.current_revision(engine) == migrations.head_revision()

        await migrations.downgrade(engine, "base")
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert set(tables) <= {"alembic_version"}
        assert await migrations.current_revision(engine) is None

        await migrations.upgrade(engine)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert {"users", "devices"} <= set(tables)
    finally:
        await engine.dispose()


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_dump_restores_into_an_empty_database(
    committed_database_url: URL, server_url: URL, tmp_path: Path
) -> None:
    """What an operator backs up with pg_dump restores whole (pg_upgrade restores the schema
    the same way): the version trigger's condition read a generated column, refused when the
    dump re-created it, and the restored devices' versions then never changed."""
    await admin(
        committed_database_url,
        "INSERT INTO devices (name, serial_number) VALUES ('probe', 'SN-DUMP')",
    )
    bin_dir = find_pg_bindir()
    dump = tmp_path / "devreg.dump"
    restored = await create_database(server_url, "devreg_restored")
    for tool, *arguments in (
        ("pg_dump", "--format=custom", f"--file={dump}", _libpq(committed_database_url)),
        ("pg_restore", "--exit-on-error", f"--dbname={_libpq(restored)}", str(dump)),
    ):
        done = await asyncio.to_thread(
            subprocess.run, [bin_dir / tool, *arguments], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

    renamed = "UPDATE devices SET name = :name WHERE serial_number = 'SN-DUMP' RETURNING version"
    assert await query(restored, renamed, name="probe") == [{"version": 1}]
    assert await query(restored, renamed, name="renamed") == [{"version": 2}]
    versions = await query(restored, "SELECT version_num FROM alembic_version")
    assert versions == [{"version_num": migrations.head_revision()}]


async def test_a_database_restored_without_its_version_trigger_gets_it_back(
    committed_database_url: URL,
) -> None:
    """A dump taken before the trigger could be restored restores without it (pg_restore says
    so and goes on): migrating the restored database makes it again."""
    # Back to the trigger's own migration for real: the revision set below would otherwise
    # have the later migrations make their indexes a second time.
    await migrate(committed_database_url, down_to="c81d4e0b9a27")
    await admin(committed_database_url, "DROP TRIGGER devices_bump_version ON devices")
    await set_revision(committed_database_url, "a2eb37244a61")
    await migrate(committed_database_url)

    await admin(committed_database_url, "INSERT INTO devices (name) VALUES ('probe')")
    renamed = "UPDATE devices SET name = 'renamed' RETURNING version"
    assert await query(committed_database_url, renamed) == [{"version": 2}]


async def test_the_version_trigger_compares_every_column_a_write_sets(database_url: URL) -> None:
    """Its condition names the columns (it may not read the generated one): a column added to
    devices must be added to it, or a change of that column alone would keep the version."""
    columns = await query(
        database_url,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'devices'::regclass "
        "AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
    )
    [trigger] = await query(
        database_url,
        "SELECT pg_get_triggerdef(oid) AS definition FROM pg_trigger "
        "WHERE tgname = 'devices_bump_version'",
    )
    compared = set(re.findall(r"\bnew\.(\w+)", trigger["definition"]))
    assert compared == {column["attname"] for column in columns}


async def test_concurrent_starters_migrate_exactly_once(server_url: URL) -> None:
    engines = [await _fresh_engine(server_url, "devreg_race")]
    url = engines[0].url
    engines += [create_engine(url, make_settings(url)) for _ in range(3)]
    try:
        await asyncio.gather(*(migrations.upgrade(engine) for engine in engines))
        async with engines[0].connect() as connection:
            versions = (await connection.execute(text("SELECT * FROM alembic_version"))).all()
        assert [row[0] for row in versions] == [migrations.head_revision()]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_starter_waits_for_anothers_migration_past_statement_timeout(
    server_url: URL,
) -> None:
    """STATEMENT_TIMEOUT is for requests: a worker waiting for the lock while another migrates
    a big table must not fail to start once the wait passes it."""
    url = await create_database(server_url, "devreg_lock_wait")
    holder = create_engine(url, make_settings(url))
    starter = create_engine(url, make_settings(url, statement_timeout=0.2))
    try:
        async with holder.connect() as migrating:
            await migrating.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": migrations.MIGRATION_LOCK_KEY}
            )
            started = asyncio.create_task(migrations.upgrade(starter))
            await waiting_for_a_lock((await migrating.get_raw_connection()).driver_connection)
            # Past STATEMENT_TIMEOUT, and past the time devreg waits for an answer after it.
            await asyncio.sleep(0.2 + ANSWER_GRACE_SECONDS + 0.5)
            assert not started.done()
            await migrating.commit()
        await started
        assert await migrations.current_revision(starter) == migrations.head_revision()
    finally:
        await holder.dispose()
        await starter.dispose()


async def test_an_upgrade_beside_an_older_releases_keyed_write_does_not_deadlock(
    server_url: URL,
) -> None:
    """An older release serving while the new one migrates: its keyed heartbeat writes the key,
    then the device. The upgrade, one transaction, held devices from an early migration (its
    triggers) while a later one waited for the keys: PostgreSQL ended one of the two, a 500 or
    a failed upgrade, and every request for a device waited for the whole upgrade. Each
    migration now commits, and lets go of what it locked, before the next begins."""
    url = await create_database(server_url, "devreg_rolling_upgrade")
    engine = create_engine(url, make_settings(url))
    request = await asyncpg_connection(url)
    try:
        await migrations.upgrade(engine, "5d1a8f3c9e42")  # as 5f13a69 left it
        await request.execute("INSERT INTO devices (name) VALUES ('pi')")
        async with request.transaction():
            await request.execute(
                "INSERT INTO idempotency_keys (token_id, key, fingerprint) VALUES (1, 'k', '')"
            )
            upgrading = asyncio.create_task(migrations.upgrade(engine))
            await waiting_for_a_lock(request)  # the keys' migration waits for this request
            beat = request.execute("UPDATE devices SET last_seen_at = now() WHERE name = 'pi'")
            assert await asyncio.wait_for(beat, 10) == "UPDATE 1"
        await asyncio.wait_for(upgrading, 30)
        assert await migrations.current_revision(engine) == migrations.head_revision()
    finally:
        await request.close()
        await engine.dispose()


def test_autogenerate_proposes_nothing(tmp_path, database_url: URL, monkeypatch) -> None:
    """`alembic check`: the models and the newest migration describe the same schema."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    from devreg.config import get_settings

    get_settings.cache_clear()
    try:
        command.check(migrations.alembic_config())
    finally:
        get_settings.cache_clear()


async def _upgraded_across(
    server_url: URL, name: str, revision: str, *statements: str, then: str
) -> list[tuple[Any, ...]]:
    """The rows `then` reads after the database, at `revision` with what `statements` wrote,
    is upgraded to the newest revision."""
    engine = await _fresh_engine(server_url, name)
    try:
        await migrations.upgrade(engine, revision)
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
        await migrations.upgrade(engine)
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(then))]
    finally:
        await engine.dispose()


async def test_idempotent_answers_kept_before_the_upgrade_replay_as_they_were(
    server_url: URL,
) -> None:
    rows = await _upgraded_across(
        server_url,
        "devreg_answers",
        "8a3f6d2e4b71",  # answers kept as jsonb
        "INSERT INTO idempotency_keys (token_id, key, fingerprint, status, body) "
        "VALUES (0, 'heartbeat', '', 204, 'null'), (0, 'failed', '', NULL, NULL), "
        """(0, 'create', '', 201, '{"id": 7}')""",
        then="SELECT key, body FROM idempotency_keys",
    )
    assert dict(rows) == {"heartbeat": None, "failed": None, "create": b'{"id": 7}'}


async def test_records_written_before_owners_were_kept_get_the_devices_owner(
    server_url: URL,
) -> None:
    records = await _upgraded_across(
        server_url,
        "devreg_owners",
        "3b9e5c7a2d14",  # records without their owner
        "INSERT INTO users (name) VALUES ('ann'), ('bob')",
        "INSERT INTO devices (name, owner_id) VALUES ('kept', 1), ('gone', 2), ('x', NULL)",
        "UPDATE devices SET model = 'm' WHERE name = 'kept'",
        "DELETE FROM devices WHERE name = 'gone'",
        "UPDATE devices SET owner_id = 2 WHERE name = 'kept'",  # given to bob
        "UPDATE devices SET model = 'n' WHERE name = 'kept'",
        "UPDATE devices SET owner_id = NULL WHERE name = 'kept'",
        "UPDATE devices SET model = 'o' WHERE name = 'kept'",
        then="SELECT object_type, object_id, action, owner_id FROM changes ORDER BY id",
    )
    assert records == [
        ("user", 1, "create", None),
        ("user", 2, "create", None),
        ("device", 1, "create", 1),
        ("device", 2, "create", 2),
        ("device", 3, "create", None),
        ("device", 1, "update", 1),  # ann's time with it stays hers
        ("device", 2, "delete", 2),
        ("device", 1, "update", 2),
        ("device", 1, "update", 2),
        ("device", 1, "update", None),
        ("device", 1, "update", None),
    ]


async def test_records_whose_create_was_pruned_keep_the_owner_of_their_time(
    server_url: URL,
) -> None:
    """They got the device's owner now: ann's changes went to bob, whom an admin gave the
    device later (and to nobody, for a device deleted since)."""
    records = await _upgraded_across(
        server_url,
        "devreg_pruned_owners",
        "3b9e5c7a2d14",  # records without their owner
        "INSERT INTO users (name) VALUES ('ann'), ('bob')",
        "INSERT INTO devices (name, owner_id) VALUES ('given', 1), ('gone', 2), ('kept', 2)",
        "UPDATE devices SET model = 'secret' WHERE name IN ('given', 'gone', 'kept')",
        "DELETE FROM changes WHERE action = 'create'",  # pruned
        "UPDATE devices SET owner_id = 2 WHERE name = 'given'",  # given to bob
        "DELETE FROM devices WHERE name = 'gone'",
        then="SELECT object_id, action, owner_id FROM changes ORDER BY id",
    )
    assert records == [
        (1, "update", 1),  # ann's time with it stays hers
        (2, "update", 2),
        (3, "update", 2),  # never moved: its owner now
        (1, "update", 2),  # the handover
        (2, "delete", 2),
    ]


async def test_plain_alembic_waits_for_the_migration_lock(server_url: URL) -> None:
    """`alembic upgrade head` (a deploy step) beside a starting devreg: alembic migrated at the
    same time, and one of the two failed on a duplicate type."""
    url = await create_database(server_url, "devreg_alembic_lock")
    holder = create_engine(url, make_settings(url))
    environment = devreg_environment(DATABASE_URL=url.render_as_string(hide_password=False))
    try:
        async with holder.connect() as migrating:
            await migrating.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": migrations.MIGRATION_LOCK_KEY}
            )
            alembic = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "alembic", "upgrade", "head",
                cwd=migrations.ALEMBIC_HOME, env=environment,
            )  # fmt: skip
            await waiting_for_a_lock((await migrating.get_raw_connection()).driver_connection)
            assert alembic.returncode is None  # still waiting for the lock
            await migrating.commit()
        assert await asyncio.wait_for(alembic.wait(), 60) == 0
        assert await migrations.current_revision(holder) == migrations.head_revision()
    finally:
        await holder.dispose()


async def test_an_installed_wheel_migrates_a_database_with_its_own_files(
    server_url: URL, tmp_path: Path
) -> None:
    """A wheel (what pip installs) carries alembic.ini and the migrations: built from this
    checkout and run from elsewhere, its devreg migrated nothing ("Path doesn't exist")."""
    url = await create_database(server_url, "devreg_from_a_wheel")
    built = await _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "--quiet", "--wheel-dir", str(tmp_path / "dist"),
        str(CHECKOUT),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("devreg-*.whl")
    installed = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(installed)
    environment = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PYTHONPATH": str(installed),  # before the checkout's editable install
    }

    upgraded = await _run(
        sys.executable, "-m", "devreg", "db", "upgrade", cwd=tmp_path, **environment
    )
    where = await _run(sys.executable, "-c", "import devreg; print(devreg.__file__)", **environment)

    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database at revision {migrations.head_revision()}"
    assert Path(where.stdout.strip()).is_relative_to(installed)


async def test_plain_alembic_takes_asyncpg_numbers_in_the_url(server_url: URL) -> None:
    """`alembic upgrade head` with asyncpg's options in the URL (a statement cache of "0", a
    connection timeout) compared their text with numbers, as devreg itself did."""
    url = await create_database(server_url, "devreg_alembic_options")
    with_options = url.set(query={"statement_cache_size": "0", "timeout": "5"})

    upgraded = await _run(
        sys.executable, "-m", "alembic", "upgrade", "head",
        cwd=migrations.ALEMBIC_HOME,
        DATABASE_URL=with_options.render_as_string(hide_password=False),
    )  # fmt: skip

    assert upgraded.returncode == 0, upgraded.stderr
    engine = create_engine(url, make_settings(url))
    try:
        assert await migrations.current_revision(engine) == migrations.head_revision()
    finally:
        await engine.dispose()


async def _run(
    *command: str, cwd: Path | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`command` run to its end (a thread's wait: the event loop serves other tests' tasks)."""
    return await asyncio.to_thread(
        subprocess.run, command, cwd=cwd, env=devreg_environment(**settings),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_the_first_token_is_remembered_across_a_downgrade_with_every_token_gone(
    server_url: URL,
) -> None:
    """Every token deleted with its user, then down below the first token's table and up
    again: the table was filled from the tokens left, none, and the API was open again."""
    remembered = await _upgraded_across(
        server_url,
        "devreg_first_token",
        "7e2b9d4c1f58",  # before the first token was remembered
        "INSERT INTO users (name) VALUES ('ann')",
        "INSERT INTO api_tokens (user_id, prefix, token_hash, scope) "
        "VALUES (1, 'dvr_x', '\\x00', 'write')",
        "DELETE FROM api_tokens",
        then="SELECT id FROM first_token",
    )
    never = await _upgraded_across(
        server_url, "devreg_no_token", "7e2b9d4c1f58", then="SELECT id FROM first_token"
    )

    assert (remembered, never) == ([(1,)], [])


async def test_a_database_at_a_revision_this_release_does_not_know_is_named_at_start(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """After rolling the code back past an upgrade: the server exited having logged only
    "error: CommandError (ResolutionError)"."""
    await set_revision(committed_database_url, "a1b2c3d4")
    app = create_app(make_settings(committed_database_url, migrate_on_start=True))

    with caplog.at_level(logging.ERROR), pytest.raises(CommandError):
        async with running(app):
            pass

    said = [r.getMessage() for r in caplog.records if r.name.startswith("devreg")]
    assert said == [
        "migrations: the database is at revision a1b2c3d4, which this release does not know (a "
        "newer release migrated it): use that release, or set MIGRATE_ON_START=false to use the "
        "database as it is"
    ]


@asynccontextmanager
async def database_holding(server_url: URL, *statements: str) -> AsyncIterator[URL]:
    """A database of its own, as `statements` leave it, dropped afterwards."""
    url = await create_database(server_url, f"devreg_{uuid.uuid4().hex[:12]}")
    await admin(url, *statements)
    try:
        yield url
    finally:
        await admin(server_url, f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")


async def migration_refused(url: URL, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What a start-up that refused to migrate the database at `url` said of it."""
    with caplog.at_level(logging.ERROR), pytest.raises(CommandError):
        async with running(create_app(make_settings(url, migrate_on_start=True))):
            pass
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("migrations")]


async def test_another_applications_database_is_named_as_such_and_not_ready(
    server_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """The first tutorial's own Alembic leaves a `device` table at a revision of its own:
    devreg said a newer release had migrated it, to use MIGRATE_ON_START=false, and then its
    readiness said ready while every request was a 503."""
    async with database_holding(
        server_url,
        "CREATE TABLE device (id serial PRIMARY KEY, name text)",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('453bfe4a0810')",
    ) as url:
        said = await migration_refused(url, caplog)
        app = create_app(make_settings(url, migrate_on_start=False, auth="off"))
        async with running(app) as started, api_client(started) as client:
            ready = await client.get("/readyz")

    assert said == [
        "migrations: the database is at revision 453bfe4a0810, which this release does not "
        "know, and holds no devices table: it is another application's (a tutorial's, say); "
        "give devreg a database of its own"
    ]
    assert ready.status_code == 503


async def test_tables_another_application_made_are_named_as_its(
    server_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """The second and third tutorials make a `users` table without Alembic: devreg's start-up
    stopped on PostgreSQL's 'relation "users" already exists', as if devreg had a fault."""
    users = "CREATE TABLE users (id serial PRIMARY KEY, name text)"
    async with database_holding(server_url, users) as url:
        said = await migration_refused(url, caplog)

    assert said == [
        "migrations: the database already holds tables devreg did not make (users): it is "
        "another application's (a tutorial's, say); give devreg a database of its own"
    ]


async def test_an_unmigrated_database_is_a_503_that_says_to_migrate(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """MIGRATE_ON_START=false and no `devreg db upgrade`: every request was a 500, logged as an
    unhandled error."""
    await migrate(committed_database_url, down_to="base")
    app = create_app(make_settings(committed_database_url, migrate_on_start=False, auth="off"))

    with caplog.at_level(logging.WARNING):
        async with running(app) as started, api_client(started) as client:
            answers = [
                await client.get("/api/v1/devices/1"),  # straight on asyncpg
                await client.post("/api/v1/devices", json={"name": "pi"}),
                await client.get("/api/v1/users"),  # through a session
            ]

    assert [answer.status_code for answer in answers] == [503, 503, 503]
    errors = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
    assert errors == {"database not migrated: run devreg db upgrade"}


async def _keyed_create(client: AsyncClient) -> Response:
    return await client.post(
        "/api/v1/devices", json={"name": "pi"}, headers={"Idempotency-Key": "once"}
    )


async def _users_own_changes(client: AsyncClient) -> Response:
    ann = (await client.post("/api/v1/users", json={"name": "ann"})).json()
    admin_token = await new_token(client, user_id=ann["id"], admin=True)
    reader = await new_token(client, as_token=admin_token, user_id=ann["id"], scope="read")
    return await client.get("/api/v1/changes", headers=bearer(reader))


@pytest.mark.parametrize(
    ("revision", "auth", "request_of"),
    [
        # Answers kept as jsonb, not the bytes sent (and no first_token table, which AUTH=auto
        # reads first).
        ("5d1a8f3c9e42", "off", _keyed_create),
        ("3b9e5c7a2d14", "auto", _users_own_changes),  # records without their owner
    ],
)
async def test_a_database_behind_this_release_is_a_503_that_says_to_migrate(
    committed_database_url: URL,
    caplog: pytest.LogCaptureFixture,
    revision: str,
    auth: str,
    request_of: Callable[[AsyncClient], Awaitable[Response]],
) -> None:
    """MIGRATE_ON_START=false, the database still at the release before's revision (a rolling
    deploy's new servers, before `devreg db upgrade`): its tables are there, some in an older
    shape, and a request for one (a column missing, or of another type) was a 500, logged as
    an unhandled error."""
    await migrate(committed_database_url, down_to=revision)
    app = create_app(make_settings(committed_database_url, migrate_on_start=False, auth=auth))

    with caplog.at_level(logging.WARNING):
        async with running(app) as started, api_client(started) as client:
            answer = await request_of(client)

    assert answer.status_code == 503
    errors = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
    assert errors == {"database not migrated: run devreg db upgrade"}


async def test_a_start_without_migrating_says_the_database_is_behind(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy's new servers, MIGRATE_ON_START=false, before `devreg db upgrade`: they
    started without a word, then answered /readyz with 503s."""
    await migrate(committed_database_url, down_to="3b9e5c7a2d14")
    app = create_app(make_settings(committed_database_url, migrate_on_start=False, auth="off"))

    with caplog.at_level(logging.WARNING):
        async with running(app):
            pass

    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MIGRATE")]
    assert said == [
        "MIGRATE_ON_START=false, and the database is at revision 3b9e5c7a2d14, behind this "
        f"release's {migrations.head_revision()}: /readyz answers 503, as do requests its "
        "schema cannot serve, until devreg db upgrade"
    ]
