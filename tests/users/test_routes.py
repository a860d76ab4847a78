"""HTTP-level tests of /api/v1/users: every use case, its errors, paging and query counts."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.users.repository import UserRepository
from tests.api import (
    BAD_IDS,
    BAD_LIMITS,
    BIGINT_MAX,
    INVALID_CURSORS,
    INVALID_JSON,
    INVALID_NAMES,
    SERVER_SET_FIELDS,
    USERS,
    WRONG_CONTENT_TYPES,
    Write,
    assert_problem,
    create_device,
    create_user,
    deletes_fetching_rows,
    fetch_user,
    items_of,
    stored_devices,
    stored_users,
    walk_pages,
)
from tests.support import (
    api_client,
    asyncpg_connection,
    devreg_server,
    make_settings,
    query,
    run_devreg,
    running,
    user_deleted_while,
    waiting_for_a_lock,
)

# --- bad input -----------------------------------------------------------------------------

# Each is merged into a valid body; every one must be refused with a 422 and nothing stored.
INVALID_FIELDS = [
    *INVALID_NAMES,
    pytest.param({"email": "not-an-email"}, id="email-no-at"),
    pytest.param({"email": ""}, id="email-empty"),
    pytest.param({"email": "ann@"}, id="email-no-domain"),
    pytest.param({"email": "@example.org"}, id="email-no-local-part"),
    pytest.param({"email": "ann@@example.org"}, id="email-two-ats"),
    pytest.param({"email": "ann @example.org"}, id="email-space"),
    pytest.param({"email": "ann\x00@example.org"}, id="email-nul"),
    pytest.param({"email": "a" * 310 + "@example.org"}, id="email-too-long"),
    pytest.param({"email": 123}, id="email-number"),
    pytest.param({"email": ["ann@example.org"]}, id="email-list"),
    *SERVER_SET_FIELDS,
]

# Raw request bodies (sent as application/json) that must be refused with a 422.
INVALID_USER_JSON = [
    *INVALID_JSON,
    pytest.param(b'{"name": "ann", "email": "\\udc00@example.org"}', id="email-lone-surrogate"),
]

ID_METHODS = [
    pytest.param("GET", "", None, id="get"),
    pytest.param("PATCH", "", {"name": "bob"}, id="patch"),
    pytest.param("DELETE", "", None, id="delete"),
    pytest.param("GET", "/devices", None, id="list-devices"),
]


# --- tests ---------------------------------------------------------------------------------


class TestRegisterUser:
    async def test_name_only_has_no_email(self, client):
        response = await client.post(USERS, json={"name": "ann"})

        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        user = response.json()
        assert set(user) == {"id", "name", "email", "created_at", "updated_at"}
        assert user["name"] == "ann"
        assert user["email"] is None
        assert isinstance(user["id"], int)
        assert user["id"] >= 1
        assert datetime.fromisoformat(user["created_at"]).tzinfo is not None
        assert user["updated_at"] == user["created_at"]

    async def test_created_has_location_of_new_user(self, client):
        response = await client.post(USERS, json={"name": "ann", "email": "ann@example.org"})

        user = response.json()
        assert response.headers["location"] == f"{USERS}/{user['id']}"
        fetched = await client.get(response.headers["location"])
        assert fetched.status_code == 200
        assert fetched.json() == user

    async def test_email_is_stored(self, client):
        user = await create_user(client, email="ann@example.org")

        assert user["email"] == "ann@example.org"
        assert await fetch_user(client, user["id"]) == user

    async def test_explicit_null_email_is_accepted(self, client):
        user = await create_user(client, email=None)

        assert user["email"] is None

    async def test_name_is_trimmed(self, client):
        user = await create_user(client, name="  ann lee \t")

        assert user["name"] == "ann lee"
        assert (await fetch_user(client, user["id"]))["name"] == "ann lee"

    async def test_100_character_name_is_accepted(self, client):
        user = await create_user(client, name="n" * 100)

        assert user["name"] == "n" * 100

    async def test_non_ascii_name_is_kept(self, client):
        user = await create_user(client, name="Zoë 山田 🙂")

        assert (await fetch_user(client, user["id"]))["name"] == "Zoë 山田 🙂"

    async def test_users_without_email_do_not_conflict(self, client):
        first = await create_user(client, name="a")
        second = await create_user(client, name="b")

        assert await stored_users(client) == [first, second]

    async def test_missing_name_is_refused(self, client):
        response = await client.post(USERS, json={"email": "ann@example.org"})

        problem = assert_problem(response, 422)
        assert problem["errors"][0]["loc"] == ["body", "name"]
        assert await stored_users(client) == []


class TestGetUser:
    async def test_existing_user_is_returned(self, client):
        user = await create_user(client, email="ann@example.org")

        response = await client.get(f"{USERS}/{user['id']}")

        assert response.status_code == 200
        assert response.json() == user

    @pytest.mark.parametrize("user_id", [1, 999_999, BIGINT_MAX])
    async def test_unknown_id_is_not_found(self, client, user_id):
        response = await client.get(f"{USERS}/{user_id}")

        assert_problem(response, 404, "User not found")


class TestBadUserId:
    @pytest.mark.parametrize(("method", "suffix", "body"), ID_METHODS)
    @pytest.mark.parametrize("user_id", BAD_IDS)
    async def test_bad_id_is_refused(self, client, method, suffix, body, user_id):
        existing = await create_user(client)

        response = await client.request(method, f"{USERS}/{user_id}{suffix}", json=body)

        assert_problem(response, 422)
        assert await stored_users(client) == [existing]

    @pytest.mark.parametrize(("method", "suffix", "body"), ID_METHODS)
    async def test_unknown_id_is_not_found(self, client, method, suffix, body):
        existing = await create_user(client)

        response = await client.request(method, f"{USERS}/{existing['id'] + 1}{suffix}", json=body)

        assert_problem(response, 404, "User not found")
        assert await stored_users(client) == [existing]


class TestListUsers:
    async def test_no_users_is_an_empty_page(self, client):
        response = await client.get(USERS)

        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}

    async def test_pages_walk_every_user_once_in_id_order(self, client):
        created = [await create_user(client, name=f"u{i}") for i in range(5)]

        pages = await walk_pages(client, USERS, limit=2)

        assert [len(page["items"]) for page in pages] == [2, 2, 1]
        assert [page["next_cursor"] is None for page in pages] == [False, False, True]
        assert items_of(pages) == created

    async def test_user_deleted_between_pages_does_not_break_the_walk(self, client):
        created = [await create_user(client, name=f"u{i}") for i in range(4)]
        first = (await client.get(USERS, params={"limit": 2})).json()
        await client.delete(f"{USERS}/{created[1]['id']}")

        rest = await client.get(USERS, params={"limit": 2, "cursor": first["next_cursor"]})

        assert rest.json() == {"items": created[2:], "next_cursor": None}

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    async def test_bad_limit_is_refused(self, client, limit):
        response = await client.get(USERS, params={"limit": limit})

        assert_problem(response, 422)

    @pytest.mark.parametrize("cursor", INVALID_CURSORS)
    async def test_invalid_cursor_is_a_bad_request(self, client, cursor):
        await create_user(client)

        response = await client.get(USERS, params={"cursor": cursor})

        assert_problem(response, 400)


class TestUpdateUser:
    async def test_name_changes_and_email_is_kept(self, client):
        user = await create_user(client, email="ann@example.org")

        response = await client.patch(f"{USERS}/{user['id']}", json={"name": " bob "})

        assert response.status_code == 200
        updated = response.json()
        assert updated == {**user, "name": "bob", "updated_at": updated["updated_at"]}
        assert await fetch_user(client, user["id"]) == updated

    async def test_a_change_free_patch_is_judged_against_if_unmodified_since(self, client):
        user = await create_user(client)
        before = {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}

        response = await client.patch(f"{USERS}/{user['id']}", json={}, headers=before)

        assert_problem(response, 412)

    async def test_email_can_be_set(self, client):
        user = await create_user(client)

        updated = (
            await client.patch(f"{USERS}/{user['id']}", json={"email": "ann@example.org"})
        ).json()

        assert updated["email"] == "ann@example.org"
        assert updated["name"] == user["name"]

    async def test_null_email_clears_it(self, client):
        user = await create_user(client, email="ann@example.org")

        updated = (await client.patch(f"{USERS}/{user['id']}", json={"email": None})).json()

        assert updated["email"] is None
        assert (await fetch_user(client, user["id"]))["email"] is None

    async def test_cleared_email_is_free_for_another_user(self, client):
        user = await create_user(client, email="ann@example.org")
        await client.patch(f"{USERS}/{user['id']}", json={"email": None})

        other = await create_user(client, name="other", email="ann@example.org")

        assert other["email"] == "ann@example.org"

    async def test_empty_body_changes_nothing(self, client):
        user = await create_user(client, email="ann@example.org")

        response = await client.patch(f"{USERS}/{user['id']}", json={})

        assert response.status_code == 200
        assert response.json() == user

    async def test_same_values_leave_updated_at_alone(self, client):
        user = await create_user(client, email="ann@example.org")

        response = await client.patch(
            f"{USERS}/{user['id']}", json={"name": " ann ", "email": "ann@example.org"}
        )

        assert response.json() == user

    async def test_own_email_in_other_case_is_not_a_conflict(self, client):
        user = await create_user(client, email="ann@example.org")

        response = await client.patch(f"{USERS}/{user['id']}", json={"email": "ANN@example.org"})

        assert response.status_code == 200
        assert response.json()["email"].lower() == "ann@example.org"


@pytest.fixture(params=["POST", "PATCH"])
async def write(request: pytest.FixtureRequest, client: AsyncClient) -> Write:
    """A POST to the empty collection, or a PATCH of one stored user."""
    if request.param == "POST":
        return Write("POST", USERS, USERS, {"name": "ann"}, [])
    user = await create_user(client, email="ann@example.org")
    return Write("PATCH", f"{USERS}/{user['id']}", USERS, {}, [user])


class TestRefusedWrite:
    """What POST and PATCH refuse, they refuse alike, and what is stored stays as it was."""

    @pytest.mark.parametrize("email", ["bob@example.org", "BOB@example.org", "Bob@Example.Org"])
    async def test_email_of_another_user_in_any_case_conflicts(self, client, write, email):
        other = await create_user(client, name="bob", email="bob@example.org")

        response = await write.send(client, {"email": email})

        assert assert_problem(response, 409)["field"] == "email"
        assert await stored_users(client) == [*write.stored, other]

    @pytest.mark.parametrize("fields", INVALID_FIELDS)
    async def test_invalid_field_is_refused(self, client, write, fields):
        response = await write.send(client, fields)

        assert_problem(response, 422)
        await write.assert_unchanged(client)

    @pytest.mark.parametrize("body", INVALID_USER_JSON)
    async def test_invalid_json_is_refused(self, client, write, body):
        response = await write.send_raw(client, body, "application/json")

        assert_problem(response, 422)
        await write.assert_unchanged(client)

    @pytest.mark.parametrize(("body", "content_type"), WRONG_CONTENT_TYPES)
    async def test_wrong_content_type_is_refused(self, client, write, body, content_type):
        response = await write.send_raw(client, body, content_type)

        assert response.status_code in {415, 422}
        assert_problem(response, response.status_code)
        await write.assert_unchanged(client)


class TestDeleteUser:
    async def test_user_without_devices_is_deleted(self, client):
        kept = await create_user(client, name="kept")
        user = await create_user(client, name="gone")

        response = await client.delete(f"{USERS}/{user['id']}")

        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await client.get(f"{USERS}/{user['id']}"), 404, "User not found")
        assert await stored_users(client) == [kept]

    async def test_email_is_free_again(self, client):
        user = await create_user(client, email="ann@example.org")
        await client.delete(f"{USERS}/{user['id']}")

        again = await create_user(client, email="ann@example.org")

        assert again["email"] == "ann@example.org"

    async def test_second_delete_is_not_found(self, client):
        user = await create_user(client)
        await client.delete(f"{USERS}/{user['id']}")

        response = await client.delete(f"{USERS}/{user['id']}")

        assert_problem(response, 404, "User not found")

    async def test_user_owning_devices_is_refused(self, client):
        user = await create_user(client)
        device = await create_device(client, owner_id=user["id"])

        response = await client.delete(f"{USERS}/{user['id']}")

        problem = assert_problem(response, 409)
        assert "cascade=devices" in problem["detail"]
        assert await stored_users(client) == [user]
        assert await stored_devices(client) == [device]

    async def test_cascade_deletes_the_users_devices_only(self, client):
        user = await create_user(client, name="gone")
        other = await create_user(client, name="kept")
        await create_device(client, name="a", owner_id=user["id"])
        await create_device(client, name="b", owner_id=user["id"])
        others_device = await create_device(client, name="c", owner_id=other["id"])
        unowned = await create_device(client, name="d")

        response = await client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"})

        assert response.status_code == 204
        assert response.content == b""
        assert await stored_users(client) == [other]
        assert await stored_devices(client) == [others_device, unowned]

    async def test_cascade_fetches_none_of_the_devices_it_deletes(self, client, statements):
        """With RETURNING, every device's id came back to the worker: 100,000 for a user
        owning as many (a reviewer's measure; 9.9 s, the worker's RSS up 18 MB)."""
        user = await create_user(client, name="gone")
        for name in ("a", "b"):
            await create_device(client, name=name, owner_id=user["id"])
        statements.reset()

        response = await client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"})

        assert response.status_code == 204
        assert await stored_devices(client) == []
        assert deletes_fetching_rows(statements, "devices") == []

    async def test_cascade_without_devices_deletes_the_user(self, client):
        user = await create_user(client)

        response = await client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"})

        assert response.status_code == 204
        assert await stored_users(client) == []

    async def test_cascade_for_unknown_user_is_not_found(self, client):
        user = await create_user(client)
        device = await create_device(client, owner_id=user["id"])

        response = await client.delete(f"{USERS}/{user['id'] + 1}", params={"cascade": "devices"})

        assert_problem(response, 404, "User not found")
        assert await stored_devices(client) == [device]

    @pytest.mark.parametrize("cascade", ["", "all", "DEVICES", "users"])
    async def test_unknown_cascade_is_refused(self, client, cascade):
        user = await create_user(client)
        device = await create_device(client, owner_id=user["id"])

        response = await client.delete(f"{USERS}/{user['id']}", params={"cascade": cascade})

        assert_problem(response, 422)
        assert await stored_users(client) == [user]
        assert await stored_devices(client) == [device]

    @pytest.mark.parametrize(
        ("query", "parameter"),
        [
            ("cascade=nope&cascade=devices", "cascade"),  # its last value was taken
            ("cascade=devices&cascade=devices", "cascade"),
            ("cascades=devices", "cascades"),
        ],
    )
    async def test_a_repeated_or_unknown_parameter_is_refused(self, client, query, parameter):
        user = await create_user(client)
        device = await create_device(client, owner_id=user["id"])

        response = await client.delete(f"{USERS}/{user['id']}?{query}")

        assert assert_problem(response, 400)["parameter"] == parameter
        assert await stored_users(client) == [user]
        assert await stored_devices(client) == [device]


class TestListUserDevices:
    async def test_only_the_users_devices_are_listed_with_owner(self, client):
        user = await create_user(client, name="ann")
        other = await create_user(client, name="bob")
        mine = [
            await create_device(client, name="a", owner_id=user["id"]),
            await create_device(client, name="b", owner_id=user["id"]),
        ]
        await create_device(client, name="c", owner_id=other["id"])
        await create_device(client, name="d")

        response = await client.get(f"{USERS}/{user['id']}/devices")

        assert response.status_code == 200
        assert response.json() == {"items": mine, "next_cursor": None}
        assert {item["owner"]["name"] for item in mine} == {"ann"}

    async def test_an_owner_filter_combines_with_the_user(self, client):
        ann = await create_user(client, name="ann")
        bob = await create_user(client, name="bob")
        anns = await create_device(client, name="a", owner_id=ann["id"])
        await create_device(client, name="b", owner_id=bob["id"])
        url = f"{USERS}/{ann['id']}/devices"

        others = await client.get(url, params={"owner_id": bob["id"], "count": "exact"})
        either = await client.get(url, params={"owner_id": [bob["id"], ann["id"]]})

        assert others.json() == {
            "items": [],
            "next_cursor": None,
            "total": 0,
            "total_is_estimate": False,
        }
        assert either.json()["items"] == [anns]

    async def test_user_without_devices_has_an_empty_page(self, client):
        user = await create_user(client)
        await create_device(client)

        response = await client.get(f"{USERS}/{user['id']}/devices")

        assert response.json() == {"items": [], "next_cursor": None}

    async def test_pages_walk_every_device_once_in_id_order(self, client):
        user = await create_user(client)
        other = await create_user(client, name="bob")
        mine = []
        for i in range(5):
            mine.append(await create_device(client, name=f"d{i}", owner_id=user["id"]))
            await create_device(client, name=f"x{i}", owner_id=other["id"])

        pages = await walk_pages(client, f"{USERS}/{user['id']}/devices", limit=2)

        assert [len(page["items"]) for page in pages] == [2, 2, 1]
        assert items_of(pages) == mine

    @pytest.mark.parametrize("count", [2, 10])
    async def test_costs_two_statements(self, client, statements, count):
        user = await create_user(client)
        for i in range(count):
            await create_device(client, name=f"d{i}", owner_id=user["id"])
        statements.clear()

        response = await client.get(f"{USERS}/{user['id']}/devices")

        assert len(response.json()["items"]) == count
        assert len(statements) == 2

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    async def test_bad_limit_is_refused(self, client, limit):
        user = await create_user(client)

        response = await client.get(f"{USERS}/{user['id']}/devices", params={"limit": limit})

        assert_problem(response, 422)

    @pytest.mark.parametrize("cursor", INVALID_CURSORS)
    async def test_invalid_cursor_is_a_bad_request(self, client, cursor):
        user = await create_user(client)

        response = await client.get(f"{USERS}/{user['id']}/devices", params={"cursor": cursor})

        assert_problem(response, 400)


class TestRouting:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("PUT", USERS),
            ("DELETE", USERS),
            ("PUT", f"{USERS}/1"),
            ("POST", f"{USERS}/1"),
            ("POST", f"{USERS}/1/devices"),
        ],
    )
    async def test_wrong_method_is_not_allowed(self, client, method, path):
        await create_user(client)

        response = await client.request(method, path, json={"name": "bob"})

        assert_problem(response, 405)
        assert "allow" in response.headers
        assert [user["name"] for user in await stored_users(client)] == ["ann"]

    @pytest.mark.parametrize("path", [f"{USERS}/1/things", "/api/v1/people", "/api/v1/users/1/x/y"])
    async def test_unknown_route_is_not_found(self, client, path):
        response = await client.get(path)

        assert_problem(response, 404)


async def answered_behind(
    url: URL, statement: str, user_id: int, request: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response:
    """The answer to `request`, sent while another transaction holds what `statement` (given
    the user's id) wrote, which lets go once the request waits for it."""
    holder = await asyncpg_connection(url)
    try:
        async with holder.transaction():
            await holder.execute(statement, user_id)
            answering = asyncio.ensure_future(request())
            await waiting_for_a_lock(holder)
        return await answering
    finally:
        await holder.close()


async def test_a_cascade_takes_the_devices_registered_while_it_waits(
    committed_database_url: URL,
) -> None:
    """A device registered for the user while the deletion runs goes with the user: it is not
    left behind to refuse the deletion with a 409 that asks for the cascade already asked."""
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            user = (await client.post(USERS, json={"name": "leaving"})).json()
            response = await answered_behind(
                committed_database_url,
                "INSERT INTO devices (name, owner_id) VALUES ('late', $1)",
                user["id"],
                lambda: client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"}),
            )

    assert response.status_code == 204, response.text
    left = "SELECT count(*) AS n FROM devices WHERE owner_id = :id"
    assert await query(committed_database_url, left, id=user["id"]) == [{"n": 0}]


async def test_a_cascade_and_a_plain_deletion_at_once_deadlock_neither(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cascade deleted the devices, then held the user; a plain deletion of the user, which
    held it meanwhile, waited for those devices in its foreign key's check: one of the two was
    aborted as a deadlock (a 409 to send again)."""
    first_pass, go_on = asyncio.Event(), asyncio.Event()
    lock = UserRepository.lock

    async def lock_once_the_other_waits(repository: UserRepository, user_id: int) -> bool:
        first_pass.set()
        await go_on.wait()
        return await lock(repository, user_id)

    async with (
        running(create_app(make_settings(committed_database_url))) as app,
        api_client(app) as client,
    ):
        user = await create_user(client, name="leaving")
        await create_device(client, owner_id=user["id"])
        monkeypatch.setattr(UserRepository, "lock", lock_once_the_other_waits)
        cascading = asyncio.create_task(
            client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"})
        )
        await first_pass.wait()
        cascaded, deleted = await user_deleted_while(
            committed_database_url, user["id"], cascading, go_on
        )

    assert cascaded.status_code == 204, cascaded.text
    assert deleted == "DELETE 0"
    assert await query(committed_database_url, "SELECT count(*) AS n FROM devices") == [{"n": 0}]


async def test_a_users_own_email_sent_back_keeps_an_admins_change_made_meanwhile(
    committed_database_url: URL,
) -> None:
    """A non-admin token may send its user's email only as it is. Checked, then written, it put
    back the old address over an admin's change committed in between (200, the change log
    naming the non-admin token as the one that changed it)."""
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            user = (await client.post(USERS, json={"name": "bob", "email": "old@x.org"})).json()
            made = run_devreg(
                "tokens", "create", "--user", str(user["id"]), "--json", DATABASE_URL=url
            )
            own = {"Authorization": f"Bearer {json.loads(made.stdout)['token']}"}
            response = await answered_behind(
                committed_database_url,
                "UPDATE users SET email = 'new@x.org' WHERE id = $1",  # an admin's change
                user["id"],
                lambda: client.patch(
                    f"{USERS}/{user['id']}",
                    json={"name": "robert", "email": "old@x.org"},
                    headers=own,
                ),
            )

    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["email"]) == ("robert", "new@x.org")
    stored = "SELECT name, email FROM users WHERE id = :id"
    assert await query(committed_database_url, stored, id=user["id"]) == [
        {"name": "robert", "email": "new@x.org"}
    ]
