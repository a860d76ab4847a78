"""Secure by default: open on loopback until a token exists, never open elsewhere by accident."""

import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.auth.authenticator import UnsafeBinding, is_loopback, names_this_machine
from tests.api import DEVICES, assert_problem, create_device, create_user
from tests.auth.test_tokens import bearer, new_token
from tests.support import (
    api_client,
    devreg_process,
    devreg_server,
    make_settings,
    run_devreg,
    running,
)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LocalHost", "localhost.", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "192.168.1.10", "devreg.example.org", "localhost.example.org"],  # noqa: S104
)
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    "authority",
    ["localhost", "localhost:8000", "LOCALHOST.", "app.localhost:3000", "127.0.0.1:8000",
     "127.5.6.7", "[::1]:8000", "[::1]"],
)  # fmt: skip
def test_authorities_naming_this_machine(authority: str) -> None:
    assert names_this_machine(authority)


@pytest.mark.parametrize(
    "authority",
    ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
     "192.168.1.10:8000", "[::1", "", "localhost@evil.example"],
)  # fmt: skip
def test_authorities_naming_other_machines(authority: str) -> None:
    assert not names_this_machine(authority)


class TestOpenOnlyToThisMachine:
    """The open API (no token yet, on loopback) trusts whoever reaches loopback; a browser on
    this machine reaches it for any web page. A page of another site must not use it: neither
    under its own name rebound to 127.0.0.1 (DNS rebinding, where the browser would let it read
    the answers) nor by a cross-site request (such as a heartbeat, which needs no body)."""

    @pytest.mark.parametrize(
        "headers",
        [{"Host": "rebound.evil.example"}, {"Host": "rebound.evil.example:8000"},
         {"Origin": "https://evil.example"}, {"Origin": "null"},
         {"Host": "localhost", "Origin": "http://localhost.evil.example"},
         {"Origin": "http://[::1"}, {"Origin": "https://["}],  # unreadable: were a 500
    )  # fmt: skip
    async def test_a_request_from_elsewhere_is_refused(
        self, client: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        device = await create_device(client)
        for method, path in [
            ("GET", f"{DEVICES}/{device['id']}"),
            ("POST", f"{DEVICES}/{device['id']}/heartbeat"),
            ("DELETE", f"{DEVICES}/{device['id']}"),
            ("GET", "/api/v1/users"),
        ]:
            refused = await client.request(method, path, headers=headers)
            body = assert_problem(refused, 403)
            assert body["type"].endswith("not-a-local-request")
        untouched = await client.get(f"{DEVICES}/{device['id']}")
        assert untouched.json()["last_seen_at"] is None

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Host": "127.0.0.1:8000"}, {"Host": "[::1]:8000"}, {"Host": "ui.localhost"},
         {"Origin": "http://localhost:3000"}, {"Origin": "http://127.0.0.1:8000"}],
    )  # fmt: skip
    async def test_a_request_from_this_machine_is_served(
        self, client: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        device = await create_device(client)
        beat = await client.post(f"{DEVICES}/{device['id']}/heartbeat", headers=headers)
        assert beat.status_code == 204
        assert (await client.get(DEVICES, headers=headers)).json()["items"][0]["id"] == device["id"]

    async def test_origins_of_cors_origins_are_trusted(self, database_url: URL) -> None:
        settings = make_settings(database_url, cors_origins=["https://ui.example"])
        async with running(create_app(settings)) as app, api_client(app) as client:
            allowed = await client.get(DEVICES, headers={"Origin": "https://ui.example"})
            assert allowed.status_code == 200
            other = await client.get(DEVICES, headers={"Origin": "https://evil.example"})
            assert_problem(other, 403)

    async def test_a_request_from_another_machine_is_refused(self, database_url: URL) -> None:
        """Reaching loopback through a proxy on this machine, which says (X-Forwarded-For) whom
        it forwards for: the request comes from elsewhere, whatever its Host."""
        async with running(create_app(make_settings(database_url))) as app:
            async with api_client(app, peer=("203.0.113.5", 4711)) as remote:
                assert_problem(await remote.get(DEVICES), 403)
            async with api_client(app, peer=("::1", 4711)) as local:
                assert (await local.get(DEVICES)).status_code == 200

    async def test_a_token_is_served_under_any_name(self, client: httpx.AsyncClient) -> None:
        """A page elsewhere has no token to send; a client that sends one may use any name
        (a proxy's, a container's)."""
        token = await new_token(client, user_id=(await create_user(client))["id"])
        headers = {**bearer(token), "Host": "devreg.internal", "Origin": "https://ui.example"}
        assert (await client.get(DEVICES, headers=headers)).status_code == 200

    async def test_auth_off_is_served_under_any_name(self, committed_database_url: URL) -> None:
        """AUTH=off waives authentication for whoever reaches the server, by any name."""
        settings = make_settings(committed_database_url, auth="off")
        async with running(create_app(settings)) as app, api_client(app) as client:
            headers = {"Host": "devreg.example.org", "Origin": "https://ui.example"}
            assert (await client.get(DEVICES, headers=headers)).status_code == 200


async def test_app_refuses_a_public_address_without_a_decision(database_url: URL) -> None:
    settings = make_settings(database_url, host="0.0.0.0")  # noqa: S104
    with pytest.raises(UnsafeBinding, match="AUTH=required"):
        async with running(create_app(settings)):
            pass


def test_serve_refuses_a_public_address_without_a_decision() -> None:
    result = run_devreg("serve", "--host", "0.0.0.0", AUTH="auto")  # noqa: S104
    assert result.returncode == 2
    assert "AUTH=required" in result.stderr
    assert "AUTH=off" in result.stderr


async def test_auth_required_needs_a_token_even_before_any_exists(database_url: URL) -> None:
    settings = make_settings(database_url, host="0.0.0.0", auth="required")  # noqa: S104
    async with running(create_app(settings)) as app, api_client(app) as client:
        assert_problem(await client.get(DEVICES), 401)


async def test_auth_off_serves_without_tokens_and_warns(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """In a database of its own: the token it creates would close the others' API."""
    settings = make_settings(committed_database_url, host="0.0.0.0", auth="off")  # noqa: S104
    with caplog.at_level(logging.WARNING, logger="devreg.auth"):
        async with running(create_app(settings)) as app, api_client(app) as client:
            assert (await client.get(DEVICES)).status_code == 200
            # No authentication: a token sent (stale, or a proxy's) is not looked at.
            stale = {"Authorization": "Bearer dvr_stale"}
            assert (await client.get(DEVICES, headers=stale)).status_code == 200
            twice = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
            assert (await client.get(DEVICES, headers=twice)).status_code == 200
            # A live token of another user does not narrow the answer to its user's devices.
            ann = await create_user(client, name="ann")
            bobs = await create_device(client, owner_id=(await create_user(client))["id"])
            anns_token = await new_token(client, user_id=ann["id"])
            seen = await client.get(f"{DEVICES}/{bobs['id']}", headers=bearer(anns_token))
            assert seen.status_code == 200
    assert any("AUTH=off" in record.getMessage() for record in caplog.records)


def _status_within(url: str, expected: int, headers: dict[str, str], seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        status = httpx.get(url, headers=headers, timeout=5).status_code
        if status == expected or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_tokens_from_the_cli_reach_a_running_server(committed_database_url: URL) -> None:
    """A real server: the first token (made by another process) closes the open API, and a
    revocation from the CLI stops the token, both within AUTH_CACHE_TTL."""
    database = {"DATABASE_URL": committed_database_url.render_as_string(hide_password=False)}
    with devreg_server(**database, AUTH_CACHE_TTL="1") as base_url:
        devices = f"{base_url}{DEVICES}"
        user = httpx.post(f"{base_url}/api/v1/users", json={"name": "ann"}).json()
        assert httpx.get(devices).status_code == 200

        created = run_devreg("tokens", "create", "--user", str(user["id"]), "--json", **database)
        assert created.returncode == 0, created.stderr
        token = httpx.Response(200, content=created.stdout).json()
        assert _status_within(devices, 401, {}, seconds=5) == 401
        bearer = {"Authorization": f"Bearer {token['token']}"}
        assert httpx.get(devices, headers=bearer).status_code == 200

        revoked = run_devreg("tokens", "revoke", str(token["id"]), **database)
        assert revoked.returncode == 0, revoked.stderr
        assert _status_within(devices, 401, bearer, seconds=5) == 401

        listed = run_devreg("tokens", "list", **database)
        assert token["prefix"] in listed.stdout
        assert token["token"] not in listed.stdout + listed.stderr


def test_the_open_api_refuses_what_a_local_proxy_forwards_for_others(
    committed_database_url: URL, tmp_path: Path
) -> None:
    """A proxy on this machine passing requests on as 127.0.0.1 (nginx's default Host) would
    open the API to everyone it serves; one that says whom it forwards for is refused."""
    database = {"DATABASE_URL": committed_database_url.render_as_string(hide_password=False)}
    with devreg_server(**database) as base_url:
        devices = f"{base_url}{DEVICES}"
        forwarded = httpx.get(devices, headers={"X-Forwarded-For": "203.0.113.5"})
        assert forwarded.status_code == 403
        assert forwarded.json()["type"].endswith("not-a-local-request")
        assert httpx.get(devices, headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
        assert httpx.get(devices).status_code == 200
    # Believed only from the proxies named (here, in a .env): not from this machine.
    (tmp_path / ".env").write_text("FORWARDED_ALLOW_IPS=192.0.2.1\n")
    with devreg_server(tmp_path, **database) as base_url:
        devices = f"{base_url}{DEVICES}"
        assert httpx.get(devices, headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 200


def test_auth_off_warns_of_the_address_served(committed_database_url: URL) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_process(DATABASE_URL=url, AUTH="off", WORKERS="2") as server:
        port = server.base_url.rsplit(":", 1)[1]
        deadline = time.monotonic() + 20  # the second worker may still be starting
        while len(warnings := _lines_with("AUTH=off", server.log())) < 2:
            assert time.monotonic() < deadline, warnings
            time.sleep(0.1)
    # One per worker, as a JSON log line (`serve` printed one more as plain text, before them).
    assert [json.loads(line)["level"] for line in warnings] == ["WARNING", "WARNING"]
    assert all(f"127.0.0.1:{port} " in line for line in warnings)


def _lines_with(text: str, log: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]
