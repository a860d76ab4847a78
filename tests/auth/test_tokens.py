"""API tokens over HTTP: who may do what, and how a token stops working."""

import asyncio
import hashlib
from datetime import datetime
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from devreg.app import create_app
from devreg.auth.authenticator import token_digest
from devreg.auth.repository import TokenRepository
from devreg.calls import SAFE_METHODS, ApiRoute
from devreg.compat.routes import router as tutorial_router
from tests.api import DEVICES, USERS, assert_problem, create_device, create_user, settle
from tests.support import (
    RunningApp,
    api_client,
    forget_authentication,
    make_settings,
    query,
    running,
    user_deleted_while,
)

TOKENS = "/api/v1/tokens"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_token(client: AsyncClient, *, as_token: str | None = None, **fields: Any) -> str:
    headers = bearer(as_token) if as_token else {}
    response = await client.post(TOKENS, json=fields, headers=headers)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def paused_after_lookup(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> tuple[asyncio.Event, asyncio.Event]:
    """Each lookup of `token` in the database, once answered, sets the first event and waits
    for the second: something may happen between a request's lookup and its going on."""
    looked_up, go_on = asyncio.Event(), asyncio.Event()
    use = TokenRepository.use

    async def use_then_wait(repository: TokenRepository, digest: bytes) -> Any:
        found = await use(repository, digest)
        if digest == token_digest(token):
            looked_up.set()
            await go_on.wait()
        return found

    monkeypatch.setattr(TokenRepository, "use", use_then_wait)
    return looked_up, go_on


@pytest.fixture
async def people(client: AsyncClient) -> dict[str, Any]:
    """Ann (an admin token) and Bob (a write and a read token), each with a device. Created
    while the API is still open; from the first token on, tokens are required."""
    ann = await create_user(client, name="ann")
    bob = await create_user(client, name="bob")
    anns_device = await create_device(client, name="ann-pi", owner_id=ann["id"])
    bobs_device = await create_device(client, name="bob-pi", owner_id=bob["id"])
    admin = await new_token(client, user_id=ann["id"], admin=True)
    writer = await new_token(client, as_token=admin, user_id=bob["id"])
    reader = await new_token(client, as_token=admin, user_id=bob["id"], scope="read")
    return {
        "ann": ann, "bob": bob, "anns_device": anns_device, "bobs_device": bobs_device,
        "admin": admin, "writer": writer, "reader": reader,
    }  # fmt: skip


class TestOpenUntilTheFirstToken:
    async def test_without_any_token_the_api_is_open(self, client: AsyncClient) -> None:
        response = await client.post(DEVICES, json={"name": "pi"})
        assert response.status_code == 201

    async def test_after_the_first_token_a_token_is_required(self, client, people) -> None:
        response = await client.get(DEVICES)
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="devreg"'

    async def test_health_stays_open(self, client, people) -> None:
        response = await client.get("/livez")
        assert response.status_code == 200

    async def test_it_stays_closed_when_every_token_is_gone(
        self, client, people, running_app: RunningApp
    ) -> None:
        admin = bearer(people["admin"])
        for user in (people["bob"], people["ann"]):  # Ann's admin token goes last, with her
            deleted = await client.delete(f"{USERS}/{user['id']}?cascade=devices", headers=admin)
            assert deleted.status_code == 204, deleted.text
        forget_authentication(running_app.app)

        assert_problem(await client.get(DEVICES), 401)
        assert_problem(await client.post(TOKENS, json={"user_id": 1, "admin": True}), 401)

    async def test_a_token_made_elsewhere_closes_token_making_at_once(
        self, client: AsyncClient, connection: AsyncConnection
    ) -> None:
        """Believed open for AUTH_CACHE_TTL after another worker (or the CLI) made the first
        token, this worker let a request without a token make a lasting admin token."""
        ann = await create_user(client, name="ann")
        assert (await client.get(DEVICES)).status_code == 200  # open, and believed so a while
        await connection.execute(
            text(
                "INSERT INTO api_tokens (user_id, prefix, token_hash, scope, admin) "
                "VALUES (:user_id, 'dvr_elsewher', 'elsewhere', 'write', true)"
            ),
            {"user_id": ann["id"]},
        )

        made = await client.post(TOKENS, json={"user_id": ann["id"], "admin": True})

        assert_problem(made, 401)
        assert await connection.scalar(text("SELECT count(*) FROM api_tokens")) == 1
        assert_problem(await client.get(DEVICES), 401)  # closed here too, from then on


class TestAuthentication:
    async def test_a_bad_token_is_401_invalid_token(self, client, people) -> None:
        response = await client.get(DEVICES, headers={"Authorization": "Bearer dvr_not-a-token"})
        assert_problem(response, 401)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    @pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "Bearer  "])
    async def test_a_bearer_without_a_token_is_400_invalid_request(
        self, client, people, authorization
    ) -> None:
        """RFC 6750, section 3.1: a malformed request is invalid_request (400), not a token
        to refresh (invalid_token, 401)."""
        response = await client.get(DEVICES, headers={"Authorization": authorization})
        assert_problem(response, 400)
        assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]

    @pytest.mark.parametrize("written", ['"{}"', "{} {}", "{},", "<{}>"])
    async def test_a_bearer_token_not_written_as_one_is_400_invalid_request(
        self, client, people, written
    ) -> None:
        """RFC 6750, section 2.1: a bearer token is one run of letters, digits and -._~+/ (and
        = at its end). A live token pasted in quotes, twice or with a stray character was a
        401 invalid_token, "unknown, expired or revoked", as if it had to be replaced."""
        authorization = "Bearer " + written.format(people["writer"], people["writer"])
        response = await client.get(DEVICES, headers={"Authorization": authorization})
        assert_problem(response, 400)
        assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]

    @pytest.mark.parametrize("authorization", ["Basic YW5uOnB3", "dvr_no-scheme"])
    async def test_another_scheme_is_401_with_a_plain_challenge(
        self, client, people, authorization
    ) -> None:
        """RFC 6750, section 3.1: no error code when the request has no bearer token at all."""
        response = await client.get(DEVICES, headers={"Authorization": authorization})
        problem = assert_problem(response, 401)
        assert problem["detail"] == "Authorization must be: Bearer <token>."
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="devreg"'

    @pytest.mark.parametrize("order", ["valid-first", "valid-last"])
    @pytest.mark.parametrize("other", ["Bearer x", "Basic YW5uOnB3"])
    async def test_two_authorization_headers_are_400_invalid_request(
        self, client, people, order, other
    ) -> None:
        """RFC 6750, section 3.1: more than one way of sending a token is invalid_request."""
        headers = [("Authorization", f"Bearer {people['writer']}"), ("Authorization", other)]
        if order == "valid-last":
            headers.reverse()
        response = await client.get(DEVICES, headers=headers)
        assert_problem(response, 400, "Send one Authorization header, not several.")
        assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]

    async def test_only_a_hash_and_a_prefix_are_stored(
        self, client, people, connection: AsyncConnection
    ) -> None:
        token = people["writer"]
        rows = (await connection.execute(text("SELECT * FROM api_tokens"))).mappings().all()
        stored = [
            row for row in rows if row["token_hash"] == hashlib.sha256(token.encode()).digest()
        ]
        assert len(stored) == 1
        assert stored[0]["prefix"] == token[:12]
        assert all(token not in str(dict(row)) for row in rows)

    async def test_an_expired_token_is_refused(
        self, client, people, connection: AsyncConnection
    ) -> None:
        await connection.execute(
            text("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
        )
        response = await client.get(DEVICES, headers=bearer(people["writer"]))
        assert_problem(response, 401)

    async def test_a_token_that_expires_later_works(self, client, people) -> None:
        token = await new_token(
            client, as_token=people["admin"], user_id=people["bob"]["id"], expires_in="90d"
        )
        response = await client.get(DEVICES, headers=bearer(token))
        assert response.status_code == 200

    async def test_a_revoked_token_stops_working_at_once(self, client, people) -> None:
        token = people["writer"]
        assert (await client.get(DEVICES, headers=bearer(token))).status_code == 200  # cached
        listed = (await client.get(TOKENS, headers=bearer(token))).json()["items"]
        own = next(item for item in listed if item["prefix"] == token[:12])
        response = await client.delete(f"{TOKENS}/{own['id']}", headers=bearer(token))
        assert response.status_code == 204
        assert_problem(await client.get(DEVICES, headers=bearer(token)), 401)

    async def test_a_token_revoked_elsewhere_makes_no_others_while_it_is_cached(
        self, client, people, connection: AsyncConnection
    ) -> None:
        """Revoked by another worker (or the CLI), a token stays trusted here for AUTH_CACHE_TTL;
        it made tokens in that time, which outlived it."""
        token = people["writer"]
        assert (await client.get(DEVICES, headers=bearer(token))).status_code == 200  # cached
        await connection.execute(
            text("UPDATE api_tokens SET revoked_at = now() WHERE prefix = :prefix"),
            {"prefix": token[:12]},
        )

        made = await client.post(TOKENS, json={}, headers=bearer(token))

        assert_problem(made, 401)
        count = await connection.scalar(text("SELECT count(*) FROM api_tokens"))
        assert count == 3  # the people's own
        # Found revoked, it is no longer trusted from the cache: it went on writing.
        assert_problem(await client.post(DEVICES, json={"name": "pi"}, headers=bearer(token)), 401)

    async def test_a_token_deleted_elsewhere_with_its_user_makes_no_others_while_cached(
        self, client, people, connection: AsyncConnection
    ) -> None:
        """Its user deleted by another worker, a token stays trusted here for AUTH_CACHE_TTL;
        making a token with it, for its own user, was a 422 naming a user_id it never sent, and
        the token stayed trusted, where one revoked is a 401 and trusted no more."""
        admin = bearer(people["admin"])
        carl = (await client.post(USERS, json={"name": "carl"}, headers=admin)).json()
        token = await new_token(client, as_token=people["admin"], user_id=carl["id"], admin=True)
        assert (await client.get(DEVICES, headers=bearer(token))).status_code == 200  # cached
        await connection.execute(text("DELETE FROM users WHERE id = :id"), {"id": carl["id"]})

        made = await client.post(TOKENS, json={}, headers=bearer(token))

        assert_problem(made, 401)
        assert made.json()["type"].endswith(":invalid-token")
        # Found gone, it is no longer trusted from the cache: it went on writing.
        assert_problem(await client.post(USERS, json={"name": "dan"}, headers=bearer(token)), 401)

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            (DEVICES, {"name": "pi"}),
            (f"{DEVICES}/bulk", [{"name": "pi"}] * 2),
            ("/api/v1/device/", {"name": "pi"}),
        ],
        ids=["create", "bulk-create", "tutorial-create"],
    )
    async def test_a_token_deleted_elsewhere_with_its_user_creates_no_device_for_it(
        self, client, people, connection: AsyncConnection, path: str, body: Any
    ) -> None:
        """Its user deleted by another worker, a plain token stays trusted here for
        AUTH_CACHE_TTL; a device it creates is its user's, who is gone: that was a 422 naming an
        owner_id the request never sent (each item's, in a bulk create). Found gone, the token
        is trusted no more, as one found revoked: it went on reading."""
        admin = bearer(people["admin"])
        carl = (await client.post(USERS, json={"name": "carl"}, headers=admin)).json()
        token = bearer(await new_token(client, as_token=people["admin"], user_id=carl["id"]))
        assert (await client.get(DEVICES, headers=token)).status_code == 200  # cached
        await connection.execute(text("DELETE FROM users WHERE id = :id"), {"id": carl["id"]})

        created = await client.post(path, json=body, headers=token)

        assert_problem(created, 401)
        assert created.json()["type"].endswith(":invalid-token")
        assert_problem(await client.get(DEVICES, headers=token), 401)

    async def test_a_lookup_answered_before_a_revocation_is_not_cached(
        self, client, people, monkeypatch
    ) -> None:
        """The database said "live" to a request, then the token was revoked before the request
        went on: the request may use the token, but the cache must not keep it (AUTH_CACHE_TTL)."""
        token = people["writer"]
        looked_up, go_on = paused_after_lookup(monkeypatch, token)
        own = await client.get(TOKENS, headers=bearer(people["admin"]), params={"limit": 100})
        token_id = next(item["id"] for item in own.json()["items"] if item["prefix"] == token[:12])
        first = asyncio.create_task(client.get(DEVICES, headers=bearer(token)))
        await looked_up.wait()
        revoked = await client.delete(f"{TOKENS}/{token_id}", headers=bearer(people["admin"]))
        go_on.set()

        assert revoked.status_code == 204
        assert (await first).status_code == 200
        assert_problem(await client.get(DEVICES, headers=bearer(token)), 401)

    async def test_a_lookup_answered_before_its_users_deletion_is_not_cached(
        self, client, people, monkeypatch
    ) -> None:
        admin = bearer(people["admin"])
        carl = (await client.post(USERS, json={"name": "carl"}, headers=admin)).json()
        token = await new_token(client, as_token=people["admin"], user_id=carl["id"])
        looked_up, go_on = paused_after_lookup(monkeypatch, token)
        first = asyncio.create_task(client.get(DEVICES, headers=bearer(token)))
        await looked_up.wait()
        deleted = await client.delete(f"{USERS}/{carl['id']}", headers=admin)
        go_on.set()

        assert deleted.status_code == 204
        assert (await first).status_code == 200
        assert_problem(await client.get(DEVICES, headers=bearer(token)), 401)

    async def test_a_cached_token_is_not_trusted_past_its_expiry(
        self, client, people, connection: AsyncConnection
    ) -> None:
        """AUTH_CACHE_TTL is 10 s; a token expiring sooner is trusted from the cache until then
        only (its expiry moved into the past here, as the clock would)."""
        token = people["writer"]
        await connection.execute(text("UPDATE api_tokens SET expires_at = now() + interval '1s'"))
        assert (await client.get(DEVICES, headers=bearer(token))).status_code == 200  # cached
        await connection.execute(text("UPDATE api_tokens SET expires_at = now() - interval '1s'"))
        await asyncio.sleep(1.5)

        assert_problem(await client.get(DEVICES, headers=bearer(token)), 401)

    async def test_the_scheme_is_read_in_any_case(self, client, people) -> None:
        """RFC 9110, 11.1: an authentication scheme is case-insensitive."""
        for scheme in ("bearer", "BEARER"):
            headers = {"Authorization": f"{scheme} {people['writer']}"}
            assert (await client.get(DEVICES, headers=headers)).status_code == 200

    async def test_a_deleted_users_tokens_stop_working_at_once(self, client, people) -> None:
        admin = bearer(people["admin"])
        carl = (await client.post(USERS, json={"name": "carl"}, headers=admin)).json()
        token = await new_token(client, as_token=people["admin"], user_id=carl["id"], admin=True)
        assert (await client.get(DEVICES, headers=bearer(token))).status_code == 200  # cached
        deleted = await client.delete(f"{USERS}/{carl['id']}", headers=admin)
        assert deleted.status_code == 204
        assert_problem(await client.get(DEVICES, headers=bearer(token)), 401)
        assert (await client.get(DEVICES, headers=admin)).status_code == 200

    async def test_use_is_recorded(self, client, people) -> None:
        await client.get(DEVICES, headers=bearer(people["reader"]))
        listed = (await client.get(TOKENS, headers=bearer(people["admin"]))).json()["items"]
        reader = next(item for item in listed if item["prefix"] == people["reader"][:12])
        assert reader["last_used_at"] is not None


class TestScopes:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("POST", DEVICES, {"name": "x"}),
            ("PATCH", "{device}", {"name": "x"}),
            ("PUT", "{device}", {"name": "x"}),
            ("DELETE", "{device}", None),
            ("POST", "{device}/heartbeat", None),
            ("POST", f"{DEVICES}/bulk", [{"name": "x"}]),
            ("PATCH", USERS + "/{bob}", {"name": "x"}),
            ("POST", TOKENS, {}),
        ],
    )
    async def test_a_read_token_cannot_write(self, client, people, method, path, body) -> None:
        url = path.format(
            device=f"{DEVICES}/{people['bobs_device']['id']}", bob=people["bob"]["id"]
        )
        response = await client.request(method, url, json=body, headers=bearer(people["reader"]))
        assert_problem(response, 403)
        assert response.headers["WWW-Authenticate"] == (  # RFC 6750, section 3.1
            'Bearer realm="devreg", error="insufficient_scope", scope="write"'
        )
        after = await client.get(
            f"{DEVICES}/{people['bobs_device']['id']}", headers=bearer(people["reader"])
        )
        assert after.json()["version"] == people["bobs_device"]["version"]

    async def test_every_route_that_writes_refuses_a_read_token(
        self, client, people, running_app: RunningApp
    ) -> None:
        """The rule is the API route's own (calls.ApiRoute), so no route can forget it: any
        method but GET, HEAD and OPTIONS needs a token that may write, before the body is read."""
        writes = [
            (method, route.path.replace("{device_id}", "1").replace("{user_id}", "1"))
            for route in [*running_app.app.routes, *tutorial_router.routes]
            if isinstance(route, ApiRoute)
            for method in sorted(route.methods - SAFE_METHODS)
        ]
        assert len(writes) == 17
        headers = {**bearer(people["reader"]), "Content-Type": "application/json"}
        for method, path in writes:
            # A body that is not even JSON: refused for the token, not parsed.
            response = await client.request(
                method, path.replace("{token_id}", "1"), content=b"{", headers=headers
            )
            assert_problem(response, 403)

    async def test_a_read_token_reads(self, client, people) -> None:
        response = await client.get(
            f"{DEVICES}/{people['bobs_device']['id']}", headers=bearer(people["reader"])
        )
        assert response.status_code == 200


class TestOwnership:
    async def test_others_devices_are_not_found(self, client, people) -> None:
        anns = f"{DEVICES}/{people['anns_device']['id']}"
        headers = bearer(people["writer"])
        for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("PUT", {"name": "x"}),
                             ("DELETE", None)):  # fmt: skip
            response = await client.request(method, anns, json=body, headers=headers)
            assert_problem(response, 404)
            assert response.json()["detail"] == "Device not found"
        assert_problem(await client.post(f"{anns}/heartbeat", headers=headers), 404)
        guarded = {**headers, "If-Match": '"1"'}
        assert_problem(await client.patch(anns, json={"name": "x"}, headers=guarded), 404)
        admin_view = await client.get(anns, headers=bearer(people["admin"]))
        assert admin_view.json()["name"] == "ann-pi"

    async def test_a_token_cannot_leave_its_device_without_an_owner(self, client, people) -> None:
        bobs = people["bobs_device"]
        headers = bearer(people["writer"])
        patched = await client.patch(
            f"{DEVICES}/{bobs['id']}", json={"owner_id": None}, headers=headers
        )
        bulk = await client.patch(
            f"{DEVICES}/bulk", json=[{"id": bobs["id"], "owner_id": None}], headers=headers
        )
        assert_problem(patched, 403)
        assert_problem(bulk, 403)
        stored = await client.get(f"{DEVICES}/{bobs['id']}", headers=headers)
        assert stored.json()["owner_id"] == people["bob"]["id"]

    async def test_lists_and_exports_hold_only_own_devices(self, client, people) -> None:
        headers = bearer(people["writer"])
        listed = (await client.get(DEVICES, headers=headers)).json()["items"]
        assert [device["name"] for device in listed] == ["bob-pi"]
        asked_for_ann = await client.get(
            DEVICES, params={"owner_id": people["ann"]["id"]}, headers=headers
        )
        assert asked_for_ann.json()["items"] == []
        exported = await client.get(f"{DEVICES}/export?format=ndjson", headers=headers)
        assert "bob-pi" in exported.text
        assert "ann-pi" not in exported.text
        everyone = (await client.get(DEVICES, headers=bearer(people["admin"]))).json()["items"]
        assert {device["name"] for device in everyone} == {"ann-pi", "bob-pi"}

    async def test_a_total_tells_nothing_of_others_devices(
        self, client, connection, people
    ) -> None:
        """`count=estimated` was the planner's estimate, which it makes from statistics of every
        user's devices: the total of Bob's two "secret" devices grew with how many Ann had."""
        admin, writer = bearer(people["admin"]), bearer(people["writer"])
        for owner, model, count in (("ann", "secret", 1500), ("bob", "plain", 1500)):
            items = [
                {"name": f"{model}-{n}", "model": model, "owner_id": people[owner]["id"]}
                for n in range(count)
            ]
            created = await client.post(f"{DEVICES}/bulk", json=items, headers=admin)
            assert created.status_code == 201
        for n in range(2):
            await client.post(DEVICES, json={"name": f"bob-{n}", "model": "secret"}, headers=writer)
        await settle(connection, "devices")

        for count in ("estimated", "exact"):
            params = {"model": "secret", "count": count, "limit": 1}
            page = (await client.get(DEVICES, params=params, headers=writer)).json()
            assert page["next_cursor"] is not None
            assert (page["total"], page["total_is_estimate"]) == (2, False)
        params = {"model": "secret", "count": "estimated", "limit": 1}
        everyones = (await client.get(DEVICES, params=params, headers=admin)).json()
        assert everyones["total_is_estimate"] is True

    async def test_new_devices_belong_to_the_token_user(self, client, people) -> None:
        headers = bearer(people["writer"])
        created = await client.post(DEVICES, json={"name": "new"}, headers=headers)
        assert created.json()["owner"]["id"] == people["bob"]["id"]
        given_away = await client.post(
            DEVICES, json={"name": "new", "owner_id": people["ann"]["id"]}, headers=headers
        )
        assert_problem(given_away, 403)
        moved = await client.patch(
            f"{DEVICES}/{people['bobs_device']['id']}",
            json={"owner_id": people["ann"]["id"]},
            headers=headers,
        )
        assert_problem(moved, 403)

    async def test_bulk_writes_touch_only_own_devices(self, client, people) -> None:
        headers = bearer(people["writer"])
        ids = [people["bobs_device"]["id"], people["anns_device"]["id"]]
        deleted = await client.request("DELETE", f"{DEVICES}/bulk", json=ids, headers=headers)
        assert_problem(deleted, 422)
        changed = await client.patch(
            f"{DEVICES}/bulk", json=[{"id": i, "name": "x"} for i in ids], headers=headers
        )
        assert_problem(changed, 422)
        admin = bearer(people["admin"])
        names = {d["name"] for d in (await client.get(DEVICES, headers=admin)).json()["items"]}
        assert names == {"ann-pi", "bob-pi"}
        created = await client.post(f"{DEVICES}/bulk", json=[{"name": "b1"}], headers=headers)
        assert created.status_code == 201
        mine = await client.get(f"{DEVICES}/{created.json()['ids'][0]}", headers=headers)
        assert mine.json()["owner"]["id"] == people["bob"]["id"]

    async def test_users_see_only_themselves(self, client, people) -> None:
        headers = bearer(people["writer"])
        listed = (await client.get(USERS, headers=headers)).json()["items"]
        assert [user["name"] for user in listed] == ["bob"]
        ann = f"{USERS}/{people['ann']['id']}"
        assert_problem(await client.get(ann, headers=headers), 404)
        assert_problem(await client.patch(ann, json={"name": "x"}, headers=headers), 404)
        assert_problem(await client.get(f"{ann}/devices", headers=headers), 404)
        renamed = await client.patch(
            f"{USERS}/{people['bob']['id']}", json={"name": "robert"}, headers=headers
        )
        assert renamed.json()["name"] == "robert"

    async def test_only_admins_change_emails(self, client, people) -> None:
        """Else a user's token could learn, from 409s, which addresses other users have."""
        admin, writer = bearer(people["admin"]), bearer(people["writer"])
        ann, bob = (f"{USERS}/{people[name]['id']}" for name in ("ann", "bob"))
        for url, email in ((ann, "ann@corp.example"), (bob, "bob@corp.example")):
            assert (await client.patch(url, json={"email": email}, headers=admin)).is_success

        taken = await client.patch(bob, json={"email": "ANN@corp.example"}, headers=writer)
        free = await client.patch(bob, json={"email": "new@corp.example"}, headers=writer)
        cleared = await client.patch(bob, json={"email": None}, headers=writer)
        recased = await client.patch(bob, json={"email": "Bob@corp.example"}, headers=writer)
        same = await client.patch(
            bob, json={"name": "robert", "email": "bob@corp.example"}, headers=writer
        )

        for refused in (taken, free, cleared, recased):
            assert "admin" in assert_problem(refused, 403)["detail"]
        assert same.status_code == 200, same.text
        assert same.json()["name"] == "robert"

    async def test_a_users_cascade_is_refused_as_any_non_admin_deletion(
        self, client, people, running_app
    ) -> None:
        """A 403, not the 428 REQUIRE_IF_MATCH gives an admin's cascade (it names no versions)."""
        settings = running_app.app.state.settings
        running_app.app.state.settings = settings.model_copy(update={"require_if_match": True})
        try:
            bob = f"{USERS}/{people['bob']['id']}?cascade=devices"
            response = await client.delete(bob, headers=bearer(people["writer"]))
        finally:
            running_app.app.state.settings = settings
        assert_problem(response, 403)

    async def test_only_admins_create_and_delete_users(self, client, people) -> None:
        headers = bearer(people["writer"])
        assert_problem(await client.post(USERS, json={"name": "eve"}, headers=headers), 403)
        bob = f"{USERS}/{people['bob']['id']}"
        assert_problem(await client.delete(bob, headers=headers), 403)
        created = await client.post(USERS, json={"name": "eve"}, headers=bearer(people["admin"]))
        assert created.status_code == 201

    async def test_the_tutorial_routes_follow_the_same_rules(self, client, people) -> None:
        headers = bearer(people["writer"])
        anns = f"/api/v1/device/{people['anns_device']['id']}"
        assert_problem(await client.get(anns, headers=headers), 404)
        assert_problem(await client.get("/api/v1/device/"), 401)
        listed = (await client.get("/api/v1/device/", headers=headers)).json()
        assert [device["name"] for device in listed] == ["bob-pi"]


class TestManagingTokens:
    async def test_a_user_lists_and_revokes_only_own_tokens(self, client, people) -> None:
        headers = bearer(people["writer"])
        listed = (await client.get(TOKENS, headers=headers)).json()["items"]
        assert {item["user_id"] for item in listed} == {people["bob"]["id"]}
        assert all("token" not in item and "token_hash" not in item for item in listed)
        everyone = (await client.get(TOKENS, headers=bearer(people["admin"]))).json()["items"]
        anns = next(item for item in everyone if item["user_id"] == people["ann"]["id"])
        assert_problem(await client.delete(f"{TOKENS}/{anns['id']}", headers=headers), 404)

    async def test_a_user_creates_plain_tokens_for_itself_only(self, client, people) -> None:
        headers = bearer(people["writer"])
        own = await client.post(TOKENS, json={"scope": "read"}, headers=headers)
        assert own.status_code == 201
        assert own.json()["user_id"] == people["bob"]["id"]
        assert own.json()["token"].startswith("dvr_")
        for body in ({"admin": True}, {"user_id": people["ann"]["id"]}):
            assert_problem(await client.post(TOKENS, json=body, headers=headers), 403)

    @pytest.mark.parametrize("content_type", [None, "application/json"])
    async def test_a_request_with_no_body_asks_for_the_defaults(
        self, client, people, content_type
    ) -> None:
        """As `tokens create --user ID` with no other option: every field has its default."""
        headers = bearer(people["writer"])
        if content_type is not None:
            headers["Content-Type"] = content_type

        created = await client.post(TOKENS, headers=headers)

        assert created.status_code == 201, created.text
        token = created.json()
        assert (token["user_id"], token["scope"], token["admin"]) == (
            people["bob"]["id"],
            "write",
            False,
        )
        assert token["expires_at"] is None

    async def test_a_new_token_is_never_stored_by_a_cache(self, client, people) -> None:
        """The response carries the secret (RFC 6749, section 5.1; RFC 9111, 5.2.2.5)."""
        created = await client.post(
            TOKENS, json={"scope": "read"}, headers=bearer(people["writer"])
        )
        assert created.status_code == 201
        assert created.headers["Cache-Control"] == "no-store"

    async def test_tokens_are_listed_a_page_at_a_time(self, client, people) -> None:
        headers = bearer(people["admin"])
        first = (await client.get(TOKENS, params={"limit": 2}, headers=headers)).json()
        rest = await client.get(
            TOKENS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers
        )
        other_filter = await client.get(
            TOKENS, params={"user_id": 1, "cursor": first["next_cursor"]}, headers=headers
        )

        ids = [item["id"] for item in first["items"] + rest.json()["items"]]
        assert len(ids) == 3
        assert ids == sorted(ids)
        assert rest.json()["next_cursor"] is None
        assert_problem(other_filter, 400)

    async def test_a_listed_token_is_the_token_as_created(self, client, people) -> None:
        headers = bearer(people["admin"])
        created = await client.post(
            TOKENS, json={"user_id": people["bob"]["id"], "expires_in": "90d"}, headers=headers
        )
        listed = await client.get(TOKENS, params={"limit": 1000}, headers=headers)

        expected = {key: value for key, value in created.json().items() if key != "token"}
        assert expected in listed.json()["items"]

    async def test_a_token_is_read_where_its_creation_says_it_is(self, client, people) -> None:
        """POST /tokens gave no Location, and there was nowhere to read one token."""
        created = await client.post(
            TOKENS, json={"scope": "read"}, headers=bearer(people["writer"])
        )
        location = created.headers["Location"]
        expected = {key: value for key, value in created.json().items() if key != "token"}

        assert location == f"{TOKENS}/{created.json()['id']}"
        for token in ("writer", "reader", "admin"):
            read = await client.get(location, headers=bearer(people[token]))
            assert read.json() == expected, token
        anns = await client.get(
            TOKENS, params={"user_id": people["ann"]["id"]}, headers=bearer(people["admin"])
        )
        anns_token = f"{TOKENS}/{anns.json()['items'][0]['id']}"
        assert_problem(await client.get(anns_token, headers=bearer(people["writer"])), 404)
        assert_problem(await client.get(f"{TOKENS}/999999", headers=bearer(people["admin"])), 404)
        await client.delete(location, headers=bearer(people["writer"]))
        revoked = await client.get(location, headers=bearer(people["writer"]))
        assert revoked.json()["revoked_at"] is not None

    async def test_an_admin_lists_one_users_tokens(self, client, people) -> None:
        headers = bearer(people["admin"])
        response = await client.get(
            TOKENS, params={"user_id": people["bob"]["id"]}, headers=headers
        )
        assert {item["user_id"] for item in response.json()["items"]} == {people["bob"]["id"]}

    async def test_user_id_repeated_means_any_of_them(self, client, people) -> None:
        """As on /changes and the devices' owner_id: it was a 400, "given only once"."""
        headers = bearer(people["admin"])
        ann, bob = people["ann"]["id"], people["bob"]["id"]

        response = await client.get(TOKENS, params={"user_id": [ann, bob]}, headers=headers)

        assert response.status_code == 200, response.text
        assert {item["user_id"] for item in response.json()["items"]} == {ann, bob}

    @pytest.mark.parametrize(
        ("query", "parameter"), [("userid=2", "userid"), ("limit=1&limit=2", "limit")]
    )
    async def test_a_listing_query_it_cannot_follow_is_refused(
        self, client, people, query, parameter
    ) -> None:
        response = await client.get(f"{TOKENS}?{query}", headers=bearer(people["admin"]))
        assert assert_problem(response, 400)["parameter"] == parameter

    async def test_bad_token_requests_are_422(self, client, people) -> None:
        headers = bearer(people["admin"])
        bodies: list[dict[str, Any]] = [
            {"scope": "root"},
            {"expires_in": "forever"},
            {"expires_in": True},
            {"user_id": True},
            {"admin": "yes"},
            {"admin": 1},
            {"user_id": 10**12},
        ]
        for body in bodies:
            assert_problem(await client.post(TOKENS, json=body, headers=headers), 422)

    @pytest.mark.parametrize("expires_in", [10**30, 1e300, "1e300", "99999999999d", "9" * 5000])
    async def test_a_lifetime_past_the_limit_is_refused_naming_the_limit(
        self, client, people, expires_in
    ) -> None:
        """Past what a timedelta holds, it was "durations may not exceed 999,999,999 days" (a
        limit no client may ask for), or for 11 digits and a unit, a list of the forms it has."""
        response = await client.post(
            TOKENS, json={"expires_in": expires_in}, headers=bearer(people["admin"])
        )

        problem = assert_problem(response, 422)
        assert [error["msg"] for error in problem["errors"]] == [
            "Value error, must be at most 36500 days"
        ]

    async def test_a_user_may_not_revoke_its_admin_token_with_a_plain_one(
        self, client, people
    ) -> None:
        admin_headers = bearer(people["admin"])
        bobs_admin = await client.post(
            TOKENS, json={"user_id": people["bob"]["id"], "admin": True}, headers=admin_headers
        )
        response = await client.delete(
            f"{TOKENS}/{bobs_admin.json()['id']}", headers=bearer(people["writer"])
        )

        assert_problem(response, 403)
        assert (
            await client.get(USERS, headers=bearer(bobs_admin.json()["token"]))
        ).status_code == 200


class TestExpiringTokens:
    async def test_a_token_may_not_mint_one_that_outlives_it(self, client, people) -> None:
        expiring = await client.post(
            TOKENS, json={"expires_in": "1d"}, headers=bearer(people["writer"])
        )
        headers = bearer(expiring.json()["token"])

        longer = await client.post(TOKENS, json={"expires_in": "2d"}, headers=headers)
        shorter = await client.post(TOKENS, json={"expires_in": "12h"}, headers=headers)

        problem = assert_problem(longer, 422)
        assert problem["field"] == "expires_in"
        assert [error["loc"] for error in problem["errors"]] == [["body", "expires_in"]]
        assert shorter.status_code == 201
        assert shorter.json()["expires_at"] < expiring.json()["expires_at"]

    async def test_asked_for_no_expiry_it_gets_its_creators(self, client, people) -> None:
        expiring = await client.post(
            TOKENS, json={"expires_in": "1d", "admin": True}, headers=bearer(people["admin"])
        )

        minted = await client.post(
            TOKENS,
            json={"user_id": people["bob"]["id"]},
            headers=bearer(expiring.json()["token"]),
        )

        assert minted.status_code == 201
        assert minted.json()["expires_at"] == expiring.json()["expires_at"]

    @pytest.mark.parametrize(("asked", "lifetime"), [("90d", 90 * 86_400), ("PT0.5S", 0.5)])
    async def test_a_token_lives_what_it_was_asked_from_its_creation(
        self, client, people, asked: str, lifetime: float
    ) -> None:
        """Its expiry was the app's clock plus the lifetime, its creation the database's: a
        token asked to live a millisecond expired before it was made."""
        created = await client.post(
            TOKENS, json={"expires_in": asked}, headers=bearer(people["writer"])
        )

        token = created.json()
        lived = datetime.fromisoformat(token["expires_at"]) - datetime.fromisoformat(
            token["created_at"]
        )
        assert lived.total_seconds() == lifetime


class TestCost:
    async def test_a_verified_token_and_the_change_log_add_no_statement(
        self, client, people, statements
    ) -> None:
        """Token, ownership, If-Match and the change record ride on the one statement of
        each request, once the token is in the cache."""
        headers = bearer(people["writer"])
        url = f"{DEVICES}/{people['bobs_device']['id']}"
        await client.get(url, headers=headers)
        statements.reset()

        fetched = await client.get(url, headers=headers)
        changed = await client.patch(
            url, json={"name": "y"}, headers={**headers, "If-Match": fetched.headers["ETag"]}
        )

        assert changed.status_code == 200
        assert len(statements) == 2, statements
        history = await client.get(f"{url}/changes", headers=headers)
        assert history.json()["items"][0]["after"] == {"name": "y"}


async def test_of_first_tokens_made_at_once_without_a_token_only_one_is_made(
    committed_database_url: URL,
) -> None:
    """Two workers both believing the API open, requests without a token each made a token:
    whichever came second outlived the open API. The database decides: one 201, the rest 401."""
    settings = make_settings(committed_database_url)
    async with (
        running(create_app(settings)) as first,
        running(create_app(settings)) as second,
        api_client(first) as one,
        api_client(second) as other,
    ):
        user = await create_user(one, name="ann")
        for client in (one, other):  # each worker now believes the API open
            assert (await client.get(DEVICES)).status_code == 200
        made = await asyncio.gather(
            *(
                client.post(TOKENS, json={"user_id": user["id"], "admin": True})
                for client in (one, other) * 5
            )
        )

    assert sorted(response.status_code for response in made) == [201] + [401] * 9
    assert await query(committed_database_url, "SELECT count(*) AS n FROM api_tokens") == [{"n": 1}]


async def test_a_token_making_another_while_its_user_is_deleted_deadlocks_neither(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creating token, held before the new one's insert, and the user's deletion, which
    holds the user and then its tokens, each waited for the other: one was aborted (40P01)."""
    checked, go_on = asyncio.Event(), asyncio.Event()
    hold_if_live = TokenRepository.hold_if_live

    async def hold_then_wait(repository: TokenRepository, token_id: int) -> bool:
        live = await hold_if_live(repository, token_id)
        checked.set()
        await go_on.wait()
        return live

    async with (
        running(create_app(make_settings(committed_database_url))) as app,
        api_client(app) as client,
    ):
        user = await create_user(client, name="leaving")
        token = await new_token(client, user_id=user["id"])
        monkeypatch.setattr(TokenRepository, "hold_if_live", hold_then_wait)
        making = asyncio.create_task(client.post(TOKENS, json={}, headers=bearer(token)))
        await checked.wait()
        made, _ = await user_deleted_while(committed_database_url, user["id"], making, go_on)

    assert made.status_code == 201, made.text
    assert await query(committed_database_url, "SELECT count(*) AS n FROM api_tokens") == [{"n": 0}]
