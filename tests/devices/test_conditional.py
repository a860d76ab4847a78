"""Safe concurrent edits: every device response carries its version as ETag; If-Match guards
PUT, PATCH, DELETE and GET (412 when the version moved on), If-None-Match spares a GET (304)
and refuses a write (412) when it matches."""

import asyncio
import itertools
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import asyncpg
import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.conditional import IfMatch, http_date, not_modified
from tests.api import DEVICES, assert_problem, create_device, fetch_device
from tests.support import RunningApp, api_client, devreg_server, make_settings, running

TUTORIAL_DEVICES = "/api/v1/device"


def etag_of(device: dict[str, object]) -> str:
    return f'"{device["version"]}"'


async def test_every_device_response_carries_its_version_as_etag(client: AsyncClient) -> None:
    created = await client.post(DEVICES, json={"name": "probe"})
    url = f"{DEVICES}/{created.json()['id']}"
    read = await client.get(url)
    patched = await client.patch(url, json={"model": "m1"})
    replaced = await client.put(url, json={"name": "probe"})

    assert [r.headers["etag"] for r in (created, read, patched, replaced)] == [
        '"1"',
        '"1"',
        '"2"',
        '"3"',
    ]


@pytest.mark.parametrize("header", ['"1"', 'W/"1"', '"7", "1"', "*"])
async def test_if_none_match_naming_the_version_is_a_304(client: AsyncClient, header: str) -> None:
    device = await create_device(client)
    response = await client.get(f"{DEVICES}/{device['id']}", headers={"If-None-Match": header})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"1"'


@pytest.mark.parametrize("header", ['"2"', 'W/"2"', '""', '"01"', '"4294967297"'])
async def test_if_none_match_naming_another_version_reads(client: AsyncClient, header: str) -> None:
    device = await create_device(client)
    response = await client.get(f"{DEVICES}/{device['id']}", headers={"If-None-Match": header})
    assert response.status_code == 200
    assert response.json() == device


@pytest.mark.parametrize("header", ['"1"', '"5", "1"', "*"])
async def test_a_write_with_a_matching_if_match_applies(client: AsyncClient, header: str) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    response = await client.patch(url, json={"model": "m1"}, headers={"If-Match": header})
    assert response.status_code == 200
    assert response.json()["model"] == "m1"


@pytest.mark.parametrize(
    "header", ['"2"', 'W/"1"', '"99999999999999999999"', '"2147483648"', '"01"', '"abc"']
)
@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"model": "m1"}), ("PATCH", {}), ("PUT", {"name": "other"}), ("DELETE", None)],
)
async def test_a_write_with_a_stale_if_match_is_a_412_and_changes_nothing(
    client: AsyncClient, method: str, body: object, header: str
) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    response = await client.request(method, url, json=body, headers={"If-Match": header})
    problem = assert_problem(response, 412)
    assert problem["current_version"] == 1
    assert response.headers["etag"] == '"1"'
    assert await fetch_device(client, device["id"]) == device


WRITES = [("PATCH", {"model": "m1"}), ("PATCH", {}), ("PUT", {"name": "other"}), ("DELETE", None)]


@pytest.mark.parametrize(
    "value", ["1", "garbage", 'xyz"1"xyz', 'garbage "1"', '"1"x', '"1" "2"', "W/1", "", " , "]
)
@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize(("method", "body"), [*WRITES, ("GET", None)])
async def test_a_precondition_that_is_no_list_of_entity_tags_is_a_400(
    client: AsyncClient, method: str, body: object, header: str, value: str
) -> None:
    """`If-Match: 1` (the version without its quotes) was a 412 saying the version had changed
    to 1, the very version sent: a client re-reading and retrying met it forever. An
    `If-None-Match: 1` guarded nothing: the write applied."""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    response = await client.request(method, url, json=body, headers={header: value})
    assert_problem(
        response,
        400,
        f'{header} must be "*" or entity tags in double quotes, as the ETag header writes them: '
        '"2" for version 2.',
    )
    assert await fetch_device(client, device["id"]) == device


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"model": "m1"}), ("DELETE", None)])
async def test_if_match_on_a_missing_device_is_a_404(
    client: AsyncClient, method: str, body: object
) -> None:
    response = await client.request(
        method, f"{DEVICES}/999999", json=body, headers={"If-Match": '"1"'}
    )
    assert_problem(response, 404, "Device not found")


@pytest.mark.parametrize("header", ["*", '"1"', 'W/"1"', '"7", "1"'])
@pytest.mark.parametrize(("method", "body"), WRITES)
async def test_a_write_whose_if_none_match_matches_is_a_412_and_changes_nothing(
    client: AsyncClient, method: str, body: object, header: str
) -> None:
    """RFC 9110, section 13.1.2: a write is refused when If-None-Match matches (weakly) the
    current version; `*` matches any device that exists."""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    response = await client.request(method, url, json=body, headers={"If-None-Match": header})
    problem = assert_problem(
        response, 412, "If-None-Match matches the device's current version, 1."
    )
    assert problem["current_version"] == 1
    assert response.headers["etag"] == '"1"'
    assert await fetch_device(client, device["id"]) == device


@pytest.mark.parametrize(("method", "body"), WRITES)
async def test_a_write_whose_if_none_match_names_other_versions_applies(
    client: AsyncClient, method: str, body: object
) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    response = await client.request(
        method, url, json=body, headers={"If-None-Match": '"7", W/"8"', "If-Match": '"1"'}
    )
    assert response.is_success, response.text
    assert (await client.get(url)).status_code == (404 if method == "DELETE" else 200)


async def test_if_match_is_judged_before_if_none_match(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    headers = {"If-Match": '"2"', "If-None-Match": '"1"'}
    response = await client.patch(url, json={"model": "m1"}, headers=headers)
    assert_problem(
        response, 412, 'The resource is at version 1 (ETag "1"), which If-Match does not name.'
    )


async def test_if_none_match_on_a_missing_device_is_a_404(client: AsyncClient) -> None:
    response = await client.put(
        f"{DEVICES}/999999", json={"name": "x"}, headers={"If-None-Match": "*"}
    )
    assert_problem(response, 404, "Device not found")


async def test_the_tutorial_routes_honour_if_none_match(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{TUTORIAL_DEVICES}/{device['id']}"
    assert_problem(await client.put(url, json={"name": "x"}, headers={"If-None-Match": "*"}), 412)
    assert_problem(await client.delete(url, headers={"If-None-Match": '"1"'}), 412)
    assert await fetch_device(client, device["id"]) == device


@pytest.mark.parametrize(("header", "status"), [('"1"', 200), ('"2", "1"', 200), ("*", 200),
                                                 ('"2"', 412), ('W/"1"', 412)])  # fmt: skip
async def test_a_read_honours_if_match(client: AsyncClient, header: str, status: int) -> None:
    """RFC 9110, section 13.1.1: a GET whose If-Match (compared strongly) fails is a 412."""
    device = await create_device(client)
    response = await client.get(f"{DEVICES}/{device['id']}", headers={"If-Match": header})
    assert response.status_code == status
    if status == 412:
        assert assert_problem(response, 412)["current_version"] == 1
    else:
        assert response.json() == device


async def test_delete_with_the_current_version_deletes(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    assert (await client.delete(url, headers={"If-Match": '"1"'})).status_code == 204
    assert (await client.get(url)).status_code == 404


@pytest.fixture
def if_match_required(running_app: RunningApp) -> Iterator[None]:
    settings = running_app.app.state.settings
    running_app.app.state.settings = settings.model_copy(update={"require_if_match": True})
    try:
        yield
    finally:
        running_app.app.state.settings = settings


@pytest.mark.usefixtures("if_match_required")
@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        (DEVICES, "PATCH", {"model": "m1"}),
        (DEVICES, "PUT", {"name": "x"}),
        (DEVICES, "DELETE", None),
        (TUTORIAL_DEVICES, "PUT", {"name": "x"}),
        (TUTORIAL_DEVICES, "DELETE", None),
    ],
)
async def test_writes_without_if_match_are_a_428_when_it_is_required(
    client: AsyncClient, path: str, method: str, body: object
) -> None:
    device = await create_device(client)
    url = f"{path}/{device['id']}"
    assert_problem(await client.request(method, url, json=body), 428)
    # `*` holds for any version: it met the rule and guarded nothing.
    assert_problem(await client.request(method, url, json=body, headers={"If-Match": "*"}), 428)
    assert await fetch_device(client, device["id"]) == device
    guarded = await client.request(method, url, json=body, headers={"If-Match": '"1"'})
    assert guarded.is_success


@pytest.mark.usefixtures("if_match_required")
@pytest.mark.parametrize(("method", "item"), [("PATCH", {"model": "m1"}), ("DELETE", None)])
async def test_bulk_writes_are_a_428_when_if_match_is_required(
    client: AsyncClient, method: str, item: dict[str, object] | None
) -> None:
    device = await create_device(client)
    body = [{"id": device["id"], **item}] if item else [device["id"]]
    assert_problem(await client.request(method, f"{DEVICES}/bulk", json=body), 428)
    assert await fetch_device(client, device["id"]) == device


@pytest.mark.usefixtures("if_match_required")
async def test_deleting_a_user_with_devices_is_a_428_when_if_match_is_required(
    client: AsyncClient,
) -> None:
    owner = (await client.post("/api/v1/users", json={"name": "ann"})).json()
    device = await create_device(client, owner_id=owner["id"])
    url = f"/api/v1/users/{owner['id']}"
    assert_problem(await client.delete(url, params={"cascade": "devices"}), 428)
    assert await fetch_device(client, device["id"]) == device
    schema = (await client.get("/openapi.json")).json()
    assert "428" in schema["paths"]["/api/v1/users/{user_id}"]["delete"]["responses"]


async def test_the_tutorial_routes_honour_if_match(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{TUTORIAL_DEVICES}/{device['id']}"
    stale = await client.put(url, json={"name": "x"}, headers={"If-Match": '"2"'})
    assert_problem(stale, 412)
    assert await fetch_device(client, device["id"]) == device
    # Its GET judges the same tags its writes do: it was a 412 for a resource "without an ETag".
    assert (await client.get(url, headers={"If-Match": '"1"'})).status_code == 200
    assert_problem(await client.get(url, headers={"If-Match": '"2"'}), 412)


@pytest.mark.parametrize(
    ("header", "accepted", "refused"),
    [
        ("*", [1, 2, 99], []),
        ('"3"', [3], [1, 30]),
        (' "1" , "2",W/"3"', [1, 2], [3]),
        ('"a1", "", W/"1"', [], [1]),
        ('"01", "2147483648"', [], [1, 2147483648]),
        (', "4",, ', [4], [1]),
        ('"a,b", "3"', [3], [4]),  # a comma inside a tag does not end it
        ('"\xe9", "5"', [5], [1]),  # obs-text (RFC 9110, 8.8.3): a tag, not a malformed header
    ],
)
def test_if_match_parsing(header: str, accepted: list[int], refused: list[int]) -> None:
    condition = IfMatch.parse(header)
    assert all(condition.accepts(version) for version in accepted)
    assert not any(condition.accepts(version) for version in refused)


@pytest.mark.parametrize("header", ['"4", x"5"', '"a1", 1', "W/", '"1" "2"', "", ", ,"])
def test_if_match_that_is_no_list_of_entity_tags_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(header)}$"):
        IfMatch.parse(header)


BEFORE_ANY_DEVICE = "Mon, 01 Jan 2001 00:00:00 GMT"
LATER = "Fri, 31 Dec 9999 23:59:59 GMT"


def http_date_of(timestamp: str) -> str:
    """The HTTP-date of an ISO 8601 time a response gave (`updated_at`), cut to the second."""
    return format_datetime(datetime.fromisoformat(timestamp), usegmt=True)


@pytest.mark.parametrize(("method", "body"), WRITES)
async def test_a_write_if_unmodified_since_to_a_missing_device_is_a_404(
    client: AsyncClient, method: str, body: object
) -> None:
    """RFC 9110, section 13.2.1: the precondition is judged only where the write would succeed
    without it: a device that is not there is a 404, not a 412."""
    response = await client.request(
        method, f"{DEVICES}/999999", json=body, headers={"If-Unmodified-Since": LATER}
    )
    assert_problem(response, 404, "Device not found")


@pytest.mark.parametrize(("method", "body"), WRITES)
async def test_a_write_if_unmodified_since_before_the_last_change_is_a_412_and_changes_nothing(
    client: AsyncClient, method: str, body: object
) -> None:
    """RFC 9110, section 13.1.4: it was ignored, and a write the client guarded applied."""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"

    response = await client.request(
        method, url, json=body, headers={"If-Unmodified-Since": BEFORE_ANY_DEVICE}
    )

    problem = assert_problem(response, 412)
    assert problem["current_version"] == 1
    assert "changed after If-Unmodified-Since" in problem["detail"]
    assert await fetch_device(client, device["id"]) == device


async def test_a_write_if_unmodified_since_the_last_change_applies(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    since = http_date_of(device["updated_at"])

    changed = await client.patch(url, json={"model": "m1"}, headers={"If-Unmodified-Since": since})
    again = await client.patch(url, json={"model": "m2"}, headers={"If-Unmodified-Since": since})

    assert changed.status_code == 200, changed.text
    assert changed.json()["model"] == "m1"
    if http_date_of(changed.json()["updated_at"]) != since:  # not within the same second
        assert_problem(again, 412)


async def test_device_and_user_responses_tell_their_last_change(client: AsyncClient) -> None:
    """RFC 9110, 8.8.2: Last-Modified, the value for If-Unmodified-Since. Without it a client
    took the response's Date, a second after a change at times, and its guarded write applied
    over a change made in that second."""
    key = {"Idempotency-Key": "last-modified"}
    created = await client.post(DEVICES, json={"name": "probe"}, headers=key)
    replayed = await client.post(DEVICES, json={"name": "probe"}, headers=key)
    url = f"{DEVICES}/{created.json()['id']}"
    read = await client.get(url)
    patched = await client.patch(url, json={"model": "m1"})
    replaced = await client.put(url, json={"name": "probe"})
    user = await client.post("/api/v1/users", json={"name": "ann", "email": "ann@example.org"})
    user_url = f"/api/v1/users/{user.json()['id']}"
    user_read = await client.get(user_url)
    renamed = await client.patch(user_url, json={"name": "bob"})

    for response in (created, replayed, read, patched, replaced, user, user_read, renamed):
        assert response.is_success, response.text
        assert response.headers["last-modified"] == http_date_of(response.json()["updated_at"])
    guarded = await client.patch(
        url,
        json={"model": "m2"},
        headers={"If-Unmodified-Since": replaced.headers["last-modified"]},
    )
    assert guarded.status_code == 200, guarded.text
    since = {"If-Unmodified-Since": renamed.headers["last-modified"]}
    user_guarded = await client.patch(user_url, json={"name": "cy"}, headers=since)
    assert user_guarded.status_code == 200, user_guarded.text
    since = {"If-Unmodified-Since": user_guarded.headers["last-modified"]}
    assert (await client.delete(user_url, headers=since)).status_code == 204


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-Unmodified-Since": BEFORE_ANY_DEVICE}, 412),
        ({"If-Unmodified-Since": "Fri, 31 Dec 9999 23:59:59 GMT"}, 200),
        ({"If-Unmodified-Since": BEFORE_ANY_DEVICE, "If-Match": '"1"'}, 200),  # If-Match wins
        ({"If-Unmodified-Since": "yesterday"}, 200),  # not an HTTP-date: ignored
    ],
)
async def test_if_unmodified_since_judges_a_read_too(
    client: AsyncClient, headers: dict[str, str], status: int
) -> None:
    device = await create_device(client)
    for url in (f"{DEVICES}/{device['id']}", f"{TUTORIAL_DEVICES}/{device['id']}"):
        response = await client.get(url, headers=headers)
        assert response.status_code == status, (url, response.text)
        patched = await client.patch(
            f"{DEVICES}/{device['id']}", json={"status": "active"}, headers=headers
        )
        assert patched.status_code == status, (url, patched.text)


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),
        ("Sunday, 06-Nov-94 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),
        ("Sun Nov  6 08:49:37 1994", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),
        ("Mon, 01 Jan 0001 00:00:00 GMT", datetime(1, 1, 1, tzinfo=UTC)),  # was 2001
        # A leap second, which RFC 9110's time-of-day allows: no change comes within it.
        ("Sat, 31 Dec 2016 23:59:60 GMT", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("Saturday, 31-Dec-16 23:59:60 GMT", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("Sat Dec 31 23:59:60 2016", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("Sat, 31 Dec 2016 12:30:60 GMT", None),  # not a leap second's time
        ("Sat, 31 Dec 2016 23:59:61 GMT", None),
        ("Sat, 05 Dec 2026 02:00:00 +0500", None),  # not GMT
        ("Sat, 05 Dec 2026 02:00:00 EST", None),
        ("Sat, 05 Dec 2026 01:00:00 GMT, Sat, 05 Dec 2099 01:00:00 GMT", None),  # a list
        ("1 Jan 9999999999999999999 0:0", None),  # was an OverflowError: a 500
        ("Sat, 31 Feb 2026 01:00:00 GMT", None),
        ("yesterday", None),
    ],
)
def test_only_an_http_date_is_read_as_one(sent: str, read: datetime | None) -> None:
    """RFC 9110, 5.6.7 and 13.1.4: anything else is ignored; an email's date parser read other
    zones, lists (by their first date) and years beyond any a date holds (a 500)."""
    assert http_date(sent) == read


async def test_a_write_if_unmodified_since_a_leap_second_before_the_last_change_is_a_412(
    client: AsyncClient,
) -> None:
    """RFC 9110 (5.6.7) has 23:59:60 for a leap second: taken for no HTTP-date, it was ignored,
    and a write the client guarded applied over a change made since."""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"

    response = await client.patch(
        url, json={"model": "m1"}, headers={"If-Unmodified-Since": "Sat, 31 Dec 2016 23:59:60 GMT"}
    )

    assert_problem(response, 412)
    assert await fetch_device(client, device["id"]) == device


@pytest.mark.parametrize(("ahead", "back"), [(timedelta(days=-40), 0), (timedelta(days=40), 100)])
def test_a_two_digit_year_is_no_more_than_50_years_ahead(ahead: timedelta, back: int) -> None:
    """RFC 9110, 5.6.7: a date more than 50 years ahead is in the most recent past year with
    those digits, judged by the date: judged by its year alone, 31-Dec-76 read on 2026-12-05
    was 2076."""
    fifty_years = datetime.now(UTC).replace(microsecond=0) + timedelta(days=50 * 365.25) + ahead
    sent = fifty_years.strftime("Monday, %d-%b-%y %H:%M:%S GMT")

    assert http_date(sent) == fifty_years.replace(year=fifty_years.year - back)


def test_a_two_digit_year_is_judged_by_its_date_not_its_year() -> None:
    """Judged by its year alone, 31-Dec-76 read on 2026-12-05 was 2076, more than 50 years
    ahead."""
    now = datetime.now(UTC)
    year_end = datetime(now.year + 50, 12, 31, 23, 59, 59, tzinfo=UTC)
    beyond = year_end - now > timedelta(days=50 * 365.25)  # all but the year's last day or so
    sent = year_end.strftime("Monday, %d-%b-%y %H:%M:%S GMT")

    assert http_date(sent) == (year_end.replace(year=now.year - 50) if beyond else year_end)


async def test_if_unmodified_since_on_several_lines_is_a_list_and_ignored(
    client: AsyncClient,
) -> None:
    device = await create_device(client)
    lines = [("If-Unmodified-Since", BEFORE_ANY_DEVICE), ("If-Unmodified-Since", BEFORE_ANY_DEVICE)]
    huge = {"If-Unmodified-Since": "1 Jan 9999999999999999999 0:0"}

    assert (await client.get(f"{DEVICES}/{device['id']}", headers=lines)).status_code == 200
    assert (await client.get(f"{DEVICES}/{device['id']}", headers=huge)).status_code == 200


async def test_a_tag_with_bytes_beyond_ascii_is_a_tag_that_matches_no_version(
    client: AsyncClient,
) -> None:
    """It was a 400, "malformed", though RFC 9110 (8.8.3) lets a tag hold them."""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    tag = '"caf\xc3\xa9"'.encode("latin-1")  # sent as UTF-8 bytes

    assert (await client.get(url, headers={"If-None-Match": tag})).status_code == 200
    assert_problem(await client.patch(url, json={"model": "m"}, headers={"If-Match": tag}), 412)


class TestResourcesWithoutETag:
    """Only a device has an entity tag. A precondition sent anywhere else is judged as RFC 9110
    judges one on a resource without a tag: If-Match naming tags fails (412) and writes
    nothing; ignored, it let a write the client meant to guard through unguarded."""

    @pytest.fixture
    async def targets(self, client: AsyncClient) -> dict[str, Any]:
        user = (await client.post("/api/v1/users", json={"name": "ann"})).json()
        device = await create_device(client, name="before", owner_id=user["id"])
        return {"user": user, "device": device}

    def writes(self, targets: dict[str, Any]) -> list[tuple[str, str, object]]:
        user, device = targets["user"], targets["device"]
        return [
            ("PATCH", f"/api/v1/users/{user['id']}", {"name": "after"}),
            ("DELETE", f"/api/v1/users/{user['id']}?cascade=devices", None),
            ("POST", DEVICES, {"name": "new"}),
            ("POST", f"{DEVICES}/bulk", [{"name": "new"}]),
            ("PATCH", f"{DEVICES}/bulk", [{"id": device["id"], "name": "after"}]),
            ("DELETE", f"{DEVICES}/bulk", [device["id"]]),
            ("POST", f"{DEVICES}/{device['id']}/heartbeat", None),
        ]

    @pytest.mark.parametrize("header", [("If-Match", '"1"'), ("If-None-Match", "*")])
    async def test_a_write_guarded_by_a_precondition_is_a_412_and_writes_nothing(
        self, client: AsyncClient, targets: dict[str, Any], header: tuple[str, str]
    ) -> None:
        before = (await client.get(DEVICES)).json()["items"]
        changes = (await client.get("/api/v1/changes")).json()["items"]
        for method, url, body in self.writes(targets):
            response = await client.request(method, url, json=body, headers=[header])
            assert_problem(response, 412)
        assert (await client.get(DEVICES)).json()["items"] == before
        assert (await client.get("/api/v1/changes")).json()["items"] == changes
        user = (await client.get(f"/api/v1/users/{targets['user']['id']}")).json()
        assert user["name"] == "ann"

    @pytest.mark.parametrize(
        ("method", "url", "body", "header", "status"),
        [
            ("GET", "/api/v1/users/999", None, ("If-Match", '"1"'), 404),
            ("PATCH", "/api/v1/users/999", {"name": "x"}, ("If-Match", '"1"'), 404),
            ("DELETE", "/api/v1/users/999", None, ("If-None-Match", "*"), 404),
            ("POST", f"{DEVICES}/999/heartbeat", None, ("If-None-Match", "*"), 404),
            ("GET", f"{DEVICES}?bogus=1", None, ("If-Match", '"1"'), 400),
            ("POST", DEVICES, {"name": ""}, ("If-Match", '"1"'), 422),
        ],
    )
    async def test_a_precondition_does_not_change_an_answer_that_is_no_success(
        self,
        client: AsyncClient,
        method: str,
        url: str,
        body: object,
        header: tuple[str, str],
        status: int,
    ) -> None:
        """RFC 9110, section 13.2.1: preconditions are judged only where the request would
        succeed without them. These were 412s, the last two saying the missing resource
        existed."""
        response = await client.request(method, url, json=body, headers=[header])

        assert_problem(response, status)

    async def test_a_refused_write_is_undone_outside_a_test_transaction_too(
        self, committed_database_url: URL
    ) -> None:
        """A refused write is served first (see above) and rolled back: a heartbeat, which the
        server runs on its own in autocommit, must run in the transaction that is undone."""
        app = create_app(make_settings(committed_database_url, auth="off"))
        async with running(app) as started, api_client(started) as client:
            device = await create_device(client)
            beat = f"{DEVICES}/{device['id']}/heartbeat"
            refused = await client.post(beat, headers={"If-Match": '"1"'})
            after = await fetch_device(client, device["id"])

        assert_problem(refused, 412)
        assert after == device

    async def test_a_user_is_judged_by_if_unmodified_since(
        self, client: AsyncClient, targets: dict[str, Any]
    ) -> None:
        """A user tells when it last changed (`updated_at`): it was refused on a write whatever
        the date (RFC 9110, 13.1.4: judged where the date is known) and ignored on a read."""
        url = f"/api/v1/users/{targets['user']['id']}"
        before, after = {"If-Unmodified-Since": BEFORE_ANY_DEVICE}, {"If-Unmodified-Since": LATER}

        assert_problem(await client.get(url, headers=before), 412)
        assert_problem(await client.patch(url, json={"name": "bob"}, headers=before), 412)
        assert_problem(await client.delete(f"{url}?cascade=devices", headers=before), 412)
        assert (await client.get(url)).json() == targets["user"]
        assert (await client.get(url, headers=after)).status_code == 200
        renamed = await client.patch(url, json={"name": "bob"}, headers=after)
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["name"] == "bob"

    async def test_if_unmodified_since_is_ignored_where_nothing_tells_the_time_of_a_change(
        self, client: AsyncClient, targets: dict[str, Any]
    ) -> None:
        """RFC 9110, 13.1.4: a collection, a bulk write or a heartbeat has no time of change to
        judge it by. It was a 412 whatever the date."""
        device = targets["device"]
        header = {"If-Unmodified-Since": BEFORE_ANY_DEVICE}
        for method, url, body in [
            ("POST", DEVICES, {"name": "new"}),
            ("POST", f"{DEVICES}/bulk", [{"name": "new"}]),
            ("PATCH", f"{DEVICES}/bulk", [{"id": device["id"], "name": "after"}]),
            ("POST", f"{DEVICES}/{device['id']}/heartbeat", None),
        ]:
            response = await client.request(method, url, json=body, headers=header)
            assert response.is_success, (method, url, response.text)

    async def test_a_refused_token_leaves_the_api_open(self, committed_database_url: URL) -> None:
        """A refused write is served first and rolled back: the token it made was undone, but
        the worker went on believing tokens existed, and asked every request for one (401)."""
        app = create_app(make_settings(committed_database_url, auth="auto"))
        async with running(app) as started, api_client(started) as client:
            user = (await client.post("/api/v1/users", json={"name": "ann"})).json()
            refused = await client.post(
                "/api/v1/tokens", json={"user_id": user["id"]}, headers={"If-Match": '"1"'}
            )
            after = await client.get("/api/v1/users")

        assert_problem(refused, 412)
        assert after.status_code == 200, after.text

    async def test_a_read_with_if_match_naming_a_tag_is_a_412(
        self, client: AsyncClient, targets: dict[str, Any]
    ) -> None:
        for url in (DEVICES, f"/api/v1/users/{targets['user']['id']}", "/api/v1/changes"):
            assert_problem(await client.get(url, headers={"If-Match": '"1"'}), 412)
            assert (await client.get(url, headers={"If-None-Match": '"1"'})).status_code == 200
            assert (await client.get(url, headers={"If-None-Match": "*"})).status_code == 200

    async def test_preconditions_that_hold_let_the_write_through(
        self, client: AsyncClient, targets: dict[str, Any]
    ) -> None:
        """`If-Match: *` holds for a resource that exists; If-None-Match naming tags holds for
        one without any."""
        user_url = f"/api/v1/users/{targets['user']['id']}"
        renamed = await client.patch(user_url, json={"name": "bob"}, headers={"If-Match": "*"})
        assert renamed.status_code == 200, renamed.text
        created = await client.post(DEVICES, json={"name": "n"}, headers={"If-None-Match": '"1"'})
        assert created.status_code == 201, created.text

    async def test_a_malformed_precondition_is_still_a_400(
        self, client: AsyncClient, targets: dict[str, Any]
    ) -> None:
        response = await client.post(DEVICES, json={"name": "n"}, headers={"If-Match": "1"})
        assert_problem(response, 400)


async def test_tags_on_several_lines_are_one_list(client: AsyncClient) -> None:
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"

    read = await client.get(url, headers=[("If-None-Match", '"7"'), ("If-None-Match", '"1"')])
    written = await client.patch(
        url, json={"model": "m"}, headers=[("If-Match", '"7"'), ("If-Match", '"1"')]
    )

    assert read.status_code == 304
    assert written.status_code == 200, written.text


async def test_a_long_run_of_separators_is_read_at_once(client: AsyncClient) -> None:
    """Read with one regular expression, 50,000 commas before a stray character took about 14
    seconds of a worker's only thread per header; read tag by tag, milliseconds."""
    device = await create_device(client)
    header = "," * 50_000 + "x"
    started = time.perf_counter()

    read = await client.get(f"{DEVICES}/{device['id']}", headers={"If-None-Match": header})
    written = await client.patch(
        f"{DEVICES}/{device['id']}", json={"model": "m"}, headers={"If-Match": header}
    )

    assert time.perf_counter() - started < 3
    assert_problem(read, 400)
    assert_problem(written, 400)


def test_if_none_match_compares_weakly() -> None:
    assert not_modified('W/"4"', 4)
    assert not not_modified('W/"4" W/"5"', 4)  # not a list of entity tags
    assert not not_modified(None, 4)
    assert not not_modified('"40"', 4)


RACERS = 100


async def race(
    base_url: str, send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
) -> Counter[int]:
    """The statuses of RACERS copies of one request, all sent at once."""
    limits = httpx.Limits(max_connections=RACERS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(*(send(client) for _ in range(RACERS)))
    return Counter(response.status_code for response in responses)


async def test_races_are_decided_by_the_database(committed_database_url: URL) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            device = (await client.post(DEVICES, json={"name": "contended"})).json()
        device_url = f"{DEVICES}/{device['id']}"

        same_version = await race(
            base_url,
            lambda c: c.patch(device_url, json={"model": "m"}, headers={"If-Match": '"1"'}),
        )
        same_serial = await race(
            base_url, lambda c: c.post(DEVICES, json={"name": "twin", "serial_number": "SN-RACE"})
        )
        async with httpx.AsyncClient(base_url=base_url) as client:
            final = (await client.get(device_url)).json()

    assert same_version == Counter({200: 1, 412: RACERS - 1})
    assert same_serial == Counter({201: 1, 409: RACERS - 1})
    assert final["version"] == 2


async def test_writes_whose_if_none_match_names_an_old_version_all_apply(
    committed_database_url: URL,
) -> None:
    """Each write read the version, judged it, and was then guarded by it: another write landing
    between had it judged again, five times at most, then answer 412 for a tag that matched no
    version it saw (7-9 in 40 such PATCHes at once, in a helper's runs)."""
    url = committed_database_url.render_as_string(hide_password=False)
    numbers = itertools.count()
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            device = (await client.post(DEVICES, json={"name": "judged"})).json()
            device_url = f"{DEVICES}/{device['id']}"
            await client.patch(device_url, json={"model": "moved on"})

        outcome = await race(
            base_url,
            lambda c: c.patch(
                device_url, json={"model": f"m{next(numbers)}"}, headers={"If-None-Match": '"1"'}
            ),
        )
        async with httpx.AsyncClient(base_url=base_url) as client:
            final = (await client.get(device_url)).json()

    assert outcome == Counter({200: RACERS})
    assert final["version"] == 2 + RACERS


INCREMENTERS = 10
INCREMENTS = 5


async def increment(client: httpx.AsyncClient, url: str) -> int:
    """Add one to the device's `count` attribute: read, write back under If-Match, and start
    over when another writer got there first. The 412s it met."""
    conflicts = 0
    while True:
        read = await client.get(url)
        count = read.json()["attributes"]["count"]
        written = await client.patch(
            url,
            json={"attributes": {"count": count + 1}},
            headers={"If-Match": read.headers["etag"]},
        )
        if written.status_code == 200:
            return conflicts
        assert written.status_code == 412, written.text
        conflicts += 1


async def test_concurrent_increments_under_if_match_lose_nothing(
    committed_database_url: URL,
) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            created = await client.post(
                DEVICES, json={"name": "counter", "attributes": {"count": 0}}
            )
            device_url = f"{DEVICES}/{created.json()['id']}"

            async def incrementer() -> int:
                return sum([await increment(client, device_url) for _ in range(INCREMENTS)])

            conflicts = await asyncio.gather(*(incrementer() for _ in range(INCREMENTERS)))
            final = (await client.get(device_url)).json()

    assert final["attributes"]["count"] == INCREMENTERS * INCREMENTS
    assert final["version"] == 1 + INCREMENTERS * INCREMENTS
    assert sum(conflicts) > 0  # the writers did collide, and If-Match turned them away


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize(
    ("if_none_match", "applies"),
    [('"999"', True), ('"2"', False)],
    ids=["names-neither-version", "names-the-version-made-meanwhile"],
)
async def test_a_write_under_if_none_match_is_judged_at_the_version_it_writes_over(
    committed_database_url: URL, method: str, if_none_match: str, applies: bool
) -> None:
    """Another write holds the device (an open transaction) when this one comes, and moves it
    on to version 2: the condition is judged at that version, once the other commits. A tag
    that matched neither version was a 412 when the version was judged before the write."""
    settings = make_settings(committed_database_url)
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = await create_device(client, name="judged")
        other = await asyncpg.connect(
            committed_database_url.set(drivername="postgresql").render_as_string(False)
        )
        try:
            writing = other.transaction()
            await writing.start()
            await other.execute(
                "UPDATE devices SET model = 'meanwhile' WHERE id = $1", device["id"]
            )
            request = asyncio.create_task(
                client.request(
                    method,
                    f"{DEVICES}/{device['id']}",
                    json={"name": "mine"} if method == "PATCH" else None,
                    headers={"If-None-Match": if_none_match},
                )
            )
            await wait_for_a_lock_wait(other)
            await writing.commit()
            response = await request
        finally:
            await other.close()
        after = await client.get(f"{DEVICES}/{device['id']}")

    if not applies:
        assert_problem(response, 412, "If-None-Match matches the device's current version, 2.")
        assert (after.json()["name"], after.json()["version"]) == ("judged", 2)
    elif method == "PATCH":
        assert response.status_code == 200, response.text
        assert (after.json()["name"], after.json()["model"]) == ("mine", "meanwhile")
        assert after.json()["version"] == 3
    else:
        assert response.status_code == 204, response.text
        assert_problem(after, 404)


async def wait_for_a_lock_wait(connection: asyncpg.Connection) -> None:
    """Until some other session waits for a lock this connection's transaction holds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no session waited for the lock")
