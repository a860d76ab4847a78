"""Idempotency-Key: a retried POST answers as the first time and writes nothing again."""

import asyncio
import logging
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from devreg.app import create_app
from devreg.db.session import UnitOfWork
from devreg.idempotency.service import forget_expired
from tests.api import (
    DEVICES,
    USERS,
    assert_problem,
    create_device,
    create_user,
    deletes_fetching_rows,
    stored_devices,
)
from tests.auth.test_tokens import bearer, new_token
from tests.support import (
    RunningApp,
    admin,
    api_client,
    devreg_server,
    make_settings,
    query,
    running,
)


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **headers}


async def post_twice(client: AsyncClient, url: str, key: str, body: Any = None) -> tuple[Any, Any]:
    first = await client.post(url, json=body, headers=keyed(key))
    second = await client.post(url, json=body, headers=keyed(key))
    return first, second


class TestReplay:
    async def test_a_retried_create_answers_the_same_and_writes_once(self, client) -> None:
        body = {"name": "pi", "tags": ["a"], "attributes": {"z": 1.5e-7, "a": [1, 2.50]}}
        first, second = await post_twice(client, DEVICES, "k1", body)
        assert first.status_code == second.status_code == 201
        assert second.content == first.content  # byte for byte: key order and numbers too
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["Location"] == first.headers["Location"]
        assert second.headers["ETag"] == first.headers["ETag"]
        assert second.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert [device["name"] for device in await stored_devices(client)] == ["pi"]

    async def test_the_same_json_spelled_differently_is_the_same_request(self, client) -> None:
        json_body = {"Content-Type": "application/json"}
        first = await client.post(
            DEVICES, content=b'{"name": "pi", "model": "m"}', headers=keyed("k1", **json_body)
        )
        second = await client.post(
            DEVICES, content=b'{"model":"m","name":"pi"}', headers=keyed("k1", **json_body)
        )
        assert first.status_code == 201
        assert second.json() == first.json()
        assert len(await stored_devices(client)) == 1

    async def test_the_same_key_with_another_body_is_422(self, client) -> None:
        await client.post(DEVICES, json={"name": "pi"}, headers=keyed("k1"))
        other = await client.post(DEVICES, json={"name": "other"}, headers=keyed("k1"))
        problem = assert_problem(other, 422)
        assert "Idempotency-Key" in problem["detail"]
        assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
        elsewhere = await client.post(f"{DEVICES}/bulk", json=[{"name": "pi"}], headers=keyed("k1"))
        assert_problem(elsewhere, 422)
        assert len(await stored_devices(client)) == 1

    async def test_two_keys_are_422_and_nothing_is_written(self, client) -> None:
        """The first was taken, the other ignored: a retry keyed by the other wrote again."""
        headers = [("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")]
        refused = await client.post(DEVICES, json={"name": "pi"}, headers=headers)
        problem = assert_problem(refused, 422)
        assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
        assert await stored_devices(client) == []

    async def test_other_keys_and_no_key_write_again(self, client) -> None:
        await client.post(DEVICES, json={"name": "pi"}, headers=keyed("k1"))
        await client.post(DEVICES, json={"name": "pi"}, headers=keyed("k2"))
        await client.post(DEVICES, json={"name": "pi"})
        assert len(await stored_devices(client)) == 3

    async def test_bulk_create_is_replayed(self, client) -> None:
        items = [{"name": "a"}, {"name": "b"}]
        first, second = await post_twice(client, f"{DEVICES}/bulk", "k1", items)
        assert first.status_code == second.status_code == 201
        assert second.content == first.content
        assert len(first.json()["ids"]) == 2
        assert len(await stored_devices(client)) == 2

    async def test_heartbeat_is_replayed(self, client, connection: AsyncConnection) -> None:
        device = await create_device(client)
        first, second = await post_twice(client, f"{DEVICES}/{device['id']}/heartbeat", "k1")
        assert first.status_code == second.status_code == 204
        assert second.headers["Idempotent-Replayed"] == "true"
        assert second.content == b""

    async def test_a_user_created_is_replayed(self, client) -> None:
        """POST /users ignored the key: a client's retry made a second user."""
        body = {"name": "ann", "email": "ann@example.org"}
        first, second = await post_twice(client, USERS, "k1", body)
        assert first.status_code == second.status_code == 201, second.text
        assert second.content == first.content
        assert second.headers["Location"] == first.headers["Location"]
        assert second.headers["Idempotent-Replayed"] == "true"
        assert first.json() == (await client.get(first.headers["Location"])).json()
        assert [user["name"] for user in (await client.get(USERS)).json()["items"]] == ["ann"]

    async def test_a_token_created_refuses_a_key_it_cannot_keep(self, client) -> None:
        """A token's answer (its secret) is not kept, so it cannot be given again: the key was
        ignored, and a retry made a second token."""
        ann = await create_user(client, name="ann")
        admin = await new_token(client, user_id=ann["id"], admin=True)

        refused = await client.post(
            "/api/v1/tokens", json={"user_id": ann["id"]}, headers=keyed("k1", **bearer(admin))
        )

        problem = assert_problem(refused, 422)
        assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
        listed = (await client.get("/api/v1/tokens", headers=bearer(admin))).json()["items"]
        assert len(listed) == 1

    async def test_a_body_nested_too_deep_for_json_is_compared_as_bytes(self, client) -> None:
        device = await create_device(client)
        url, body = f"{DEVICES}/{device['id']}/heartbeat", "[" * 5000
        sent = [await client.post(url, content=body, headers=keyed("k1")) for _ in range(2)]
        other = await client.post(url, content=body + "[", headers=keyed("k1"))
        assert [response.status_code for response in sent] == [204, 204]
        assert sent[1].headers["Idempotent-Replayed"] == "true"
        assert_problem(other, 422)

    async def test_a_failed_write_is_not_remembered(self, client) -> None:
        await create_device(client, serial_number="S1")
        body = {"name": "pi", "serial_number": "S1"}
        first, second = await post_twice(client, DEVICES, "k1", body)
        assert_problem(first, 409)
        assert_problem(second, 409)
        assert "Idempotent-Replayed" not in second.headers

    async def test_keys_are_per_token(self, client) -> None:
        ann = await create_user(client, name="ann")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        other = await new_token(client, as_token=admin, user_id=ann["id"])
        for token in (admin, other):
            response = await client.post(
                DEVICES, json={"name": "pi"}, headers=keyed("k1", **bearer(token))
            )
            assert "Idempotent-Replayed" not in response.headers
        everyone = (await client.get(DEVICES, headers=bearer(admin))).json()["items"]
        assert len(everyone) == 2
        retried = await client.post(
            DEVICES, json={"name": "pi"}, headers=keyed("k1", **bearer(admin))
        )
        assert retried.headers["Idempotent-Replayed"] == "true"
        assert retried.json()["id"] == min(device["id"] for device in everyone)

    async def test_an_expired_key_writes_again(self, client, connection: AsyncConnection) -> None:
        await client.post(DEVICES, json={"name": "pi"}, headers=keyed("k1"))
        await connection.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        )
        again = await client.post(DEVICES, json={"name": "pi"}, headers=keyed("k1"))
        assert again.status_code == 201
        assert "Idempotent-Replayed" not in again.headers
        assert len(await stored_devices(client)) == 2

    async def test_the_sweep_deletes_only_expired_keys(
        self, client, connection: AsyncConnection, sessionmaker
    ) -> None:
        for key in ("old", "new"):
            await client.post(DEVICES, json={"name": key}, headers=keyed(key))
        await connection.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
                 " WHERE key = 'old'")
        )  # fmt: skip

        swept = await forget_expired(UnitOfWork(sessionmaker), lifetime=timedelta(hours=24))

        assert swept == 1
        left = await connection.scalars(text("SELECT key FROM idempotency_keys"))
        assert list(left) == ["new"]

    async def test_the_sweep_fetches_none_of_the_keys_it_deletes(
        self, client, connection: AsyncConnection, sessionmaker, statements
    ) -> None:
        """With RETURNING, the key of every expired row came back to each worker: a sweep of
        a million took it from 120 to 470 MB (a reviewer's measure)."""
        for key in ("a", "b"):
            await client.post(DEVICES, json={"name": key}, headers=keyed(key))
        await connection.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        )
        statements.reset()

        swept = await forget_expired(UnitOfWork(sessionmaker), lifetime=timedelta(hours=24))

        assert swept == 2
        assert deletes_fetching_rows(statements, "idempotency_keys") == []

    async def test_a_bad_key_is_422(self, client) -> None:
        for key in ("", "k" * 256):
            response = await client.post(DEVICES, json={"name": "pi"}, headers=keyed(key))
            assert_problem(response, 422)
        assert await stored_devices(client) == []


async def test_concurrent_retries_write_once(committed_database_url: URL) -> None:
    """On a real server: 20 requests with one key at once make one device, and every one of
    them gets its answer."""
    database = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=database) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post(DEVICES, json={"name": "pi"}, headers=keyed("same"))
                for _ in range(20)
            ))  # fmt: skip
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum("Idempotent-Replayed" in response.headers for response in responses) == 19
    rows = await query(committed_database_url, "SELECT count(*) AS n FROM devices")
    assert rows == [{"n": 1}]


async def test_a_client_gone_before_its_body_is_no_server_error(
    running_app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    """A keyed heartbeat reads its body itself (to fingerprint it): a client that hangs up
    first is a 400 in the request's log line, not an unhandled error and a 500."""
    path = f"{DEVICES}/1/heartbeat"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"localhost"), (b"idempotency-key", b"k1")],
        "client": ("127.0.0.1", 1), "server": ("localhost", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO):
        await running_app(scope, receive, send)

    assert sent[0]["status"] == 400
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_expired_keys_are_deleted_while_the_server_runs(committed_database_url: URL) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url, IDEMPOTENCY_KEY_LIFETIME="2") as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            created = await client.post(DEVICES, json={"name": "k"}, headers=keyed("once"))
        assert created.status_code == 201
        kept = await query(committed_database_url, "SELECT count(*) AS n FROM idempotency_keys")
        for _ in range(100):
            await asyncio.sleep(0.1)
            left = await query(committed_database_url, "SELECT count(*) AS n FROM idempotency_keys")
            if left[0]["n"] == 0:
                break
    assert kept[0]["n"] == 1
    assert left[0]["n"] == 0


async def test_a_retry_waiting_for_a_first_request_slower_than_the_lifetime_replays_it(
    committed_database_url: URL,
) -> None:
    """The key's lifetime (here 1 s) counts from the first request's answer: counted from its
    start, a first request slower than the lifetime left its key expired for the retry waiting
    on it, which wrote a second device."""
    settings = make_settings(committed_database_url, idempotency_key_lifetime="1")
    async with running(create_app(settings)) as app, api_client(app) as client:
        blocker = await asyncpg.connect(
            committed_database_url.set(drivername="postgresql").render_as_string(False)
        )
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute("LOCK TABLE devices IN SHARE MODE")

            def send() -> asyncio.Task[httpx.Response]:
                post = client.post(DEVICES, json={"name": "slow"}, headers=keyed("slow"))
                return asyncio.create_task(post)

            first = send()
            await waiting_sessions(blocker, 1)
            await asyncio.sleep(1.2)  # the first request is now older than the lifetime
            retry = send()
            await waiting_sessions(blocker, 2)
            await holding.rollback()
            answers = [await first, await retry]
        finally:
            await blocker.close()

    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert answers[1].headers["Idempotent-Replayed"] == "true"
    assert await query(committed_database_url, "SELECT count(*) AS n FROM devices") == [{"n": 1}]


async def waiting_sessions(connection: asyncpg.Connection, count: int) -> None:
    """Until `count` sessions wait for a lock."""
    for _ in range(500):
        if await connection.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted") >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} sessions waited for a lock")


async def test_the_sweep_deletes_keys_past_the_statement_timeout(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One DELETE of every expired key ran past STATEMENT_TIMEOUT once they were many (a
    million: 1.4 s) and was cancelled at start-up and every hour after, the keys never deleted;
    a batch at a time, each statement ends in time. Here each deletion takes 10 ms (a trigger):
    60 keys, 0.6 s in one statement, 0.1 s a batch of 10, against a timeout of 0.3 s."""
    url = committed_database_url
    monkeypatch.setattr("devreg.idempotency.service.SWEEP_BATCH", 10)
    await admin(
        url,
        "INSERT INTO idempotency_keys (token_id, key, fingerprint, created_at)"
        " SELECT 1, 'k' || g, '\\x00', now() - interval '2 days'"
        " FROM generate_series(1, 60) AS g",
        "CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN OLD; END $$",
        "CREATE TRIGGER slowly BEFORE DELETE ON idempotency_keys"
        " FOR EACH ROW EXECUTE FUNCTION slowly()",
    )
    app = create_app(make_settings(url, statement_timeout=0.3, idempotency_key_lifetime="1d"))

    async with running(app):
        for _ in range(100):
            left = await query(url, "SELECT count(*) AS n FROM idempotency_keys")
            if left == [{"n": 0}]:
                break
            await asyncio.sleep(0.1)

    assert left == [{"n": 0}]


async def test_a_sweep_ended_by_an_unexpected_error_is_logged_as_it_ends(
    database_url: URL, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ended silently: the server served on, its keys never deleted again."""

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr("devreg.idempotency.service.forget_all_expired", broken)
    with caplog.at_level(logging.ERROR):
        async with running(create_app(make_settings(database_url))):
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.02)

    assert [(r.getMessage(), getattr(r, "error_type", None)) for r in caplog.records] == [
        ("background task failed", "RuntimeError")
    ]
