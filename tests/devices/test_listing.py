"""Listing devices: GET /api/v1/devices (and /users/{id}/devices) with filters, search, sort
orders, cursors, counts and sparse fields; and the query plans behind each of them."""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from tests.api import (
    BIGINT_MAX,
    DEVICES,
    INJECTIONS,
    INVALID_CURSORS,
    USERS,
    assert_problem,
    create_device,
    create_user,
    cursor_after,
    explain_listing,
    get_page,
    ids_of,
    in_sort_order,
    items_of,
    rewrite_cursor,
    set_created_at,
    settle,
    stored_devices,
    walk_listing,
)
from tests.auth.test_tokens import bearer, new_token

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["items"]]


# --- the catalog: a few devices every filter case picks from ------------------------------


@dataclass(frozen=True)
class Owner:
    """A catalog user in a query parameter: sent as that user's id."""

    name: str


# (device, owner, created_at). Names are unique; listed here in id order.
CATALOG: list[tuple[dict[str, Any], str | None, datetime]] = [
    (
        {
            "name": "Alpha Sensor",
            "serial_number": "SN-001",
            "model": "pi4",
            "status": "active",
            "tags": ["lab", "edge"],
            "attributes": {"rack": 4, "on": True, "loc": "lab 1"},
            "last_seen_at": at(1).isoformat(),
        },
        "ann",
        at(0),
    ),
    (
        {
            "name": "alpha relay",
            "serial_number": "SN-002",
            "model": "pi4",
            "status": "inactive",
            "tags": ["lab"],
            "attributes": {"rack": "4", "on": "true"},
            "last_seen_at": at(2).isoformat(),
        },
        "bob",
        at(1),
    ),
    (
        {
            "name": "Beta Sensor",
            "serial_number": "SN-003",
            "model": "nano",
            "status": "retired",
            "tags": ["edge"],
            "attributes": {"rack": 5, "on": False},
        },
        None,
        at(2),
    ),
    (
        {
            "name": "rack_1",
            "model": "nano",
            "tags": ["lab", "edge", "spare"],
            "attributes": {"rack": 4, "on": None},
            "last_seen_at": at(3).isoformat(),
        },
        "ann",
        at(3),
    ),
    (
        {
            "name": "rackx1",
            "serial_number": "SN-005",
            "attributes": {"loc": "lab 1", "rack": 6},
        },
        None,
        at(4),
    ),
    (
        {
            "name": "50% off",
            "serial_number": "SN-006",
            "model": "uno",
            "status": "inactive",
            "tags": ["spare"],
            "attributes": {"rack": 5},
            "last_seen_at": at(4).isoformat(),
        },
        "bob",
        at(5),
    ),
    (
        {
            "name": "50 off",
            "serial_number": "SN-007",
            "model": "uno",
            "status": "inactive",
            "tags": ["lab"],
            "last_seen_at": at(5).isoformat(),
        },
        "ann",
        at(6),
    ),
]


def with_owners(params: dict[str, Any], owners: dict[str, int]) -> dict[str, Any]:
    """`params` with each Owner replaced by that user's id."""

    def value(raw: Any) -> Any:
        if isinstance(raw, list):
            return [value(item) for item in raw]
        return owners[raw.name] if isinstance(raw, Owner) else raw

    return {name: value(raw) for name, raw in params.items()}


@dataclass
class Catalog:
    owners: dict[str, int]
    devices: dict[str, dict[str, Any]]  # by name, in id order, as listed

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return with_owners(params, self.owners)


@pytest.fixture
async def catalog(client, connection) -> Catalog:
    owners = {name: (await create_user(client, name=name))["id"] for name in ("ann", "bob")}
    created_at = {}
    for fields, owner, created in CATALOG:
        owner_id = owners[owner] if owner else None
        device = await create_device(client, **fields, owner_id=owner_id)
        created_at[device["id"]] = created
    await set_created_at(connection, "devices", created_at)
    return Catalog(owners, {device["name"]: device for device in await stored_devices(client)})


# (query parameters, the catalog devices listed, by name in id order)
FILTER_CASES = [
    pytest.param({"status": "active"}, ["Alpha Sensor", "rack_1", "rackx1"], id="status"),
    pytest.param(
        {"status": ["inactive", "retired"]},
        ["alpha relay", "Beta Sensor", "50% off", "50 off"],
        id="status-repeated-is-or",
    ),
    pytest.param({"owner_id": Owner("ann")}, ["Alpha Sensor", "rack_1", "50 off"], id="owner"),
    pytest.param(
        {"owner_id": [Owner("ann"), Owner("bob")]},
        ["Alpha Sensor", "alpha relay", "rack_1", "50% off", "50 off"],
        id="owner-repeated-is-or",
    ),
    pytest.param({"owner_id": str(BIGINT_MAX)}, [], id="owner-unknown"),
    pytest.param({"model": "nano"}, ["Beta Sensor", "rack_1"], id="model"),
    pytest.param(
        {"model": ["pi4", "uno"]},
        ["Alpha Sensor", "alpha relay", "50% off", "50 off"],
        id="model-repeated-is-or",
    ),
    pytest.param({"name": "alpha relay"}, ["alpha relay"], id="name"),
    pytest.param({"name": ["alpha relay", "rack_1"]}, ["alpha relay", "rack_1"], id="name-or"),
    pytest.param({"name": "alpha"}, [], id="name-is-not-partial"),
    pytest.param({"name": "ALPHA RELAY"}, [], id="name-is-exact-case"),
    pytest.param({"name__ic": "SENSOR"}, ["Alpha Sensor", "Beta Sensor"], id="ic-any-case"),
    pytest.param({"name__ic": "k_1"}, ["rack_1"], id="ic-underscore-is-literal"),
    pytest.param({"name__ic": "_"}, ["rack_1"], id="ic-lone-underscore"),
    pytest.param({"name__ic": "0% o"}, ["50% off"], id="ic-percent-is-literal"),
    pytest.param({"name__ic": "%"}, ["50% off"], id="ic-lone-percent"),
    pytest.param({"name__ic": "/"}, [], id="ic-escape-character"),
    pytest.param({"name__ic": "sensor "}, [], id="ic-spaces-are-part-of-it"),
    pytest.param({"name__isw": "50 "}, ["50 off"], id="isw-spaces-are-part-of-it"),
    pytest.param(
        {"name__ic": ["relay", "beta"]}, ["alpha relay", "Beta Sensor"], id="ic-repeated-is-or"
    ),
    pytest.param({"name__ic": "SN-00"}, [], id="ic-not-serial"),
    pytest.param({"name__ic": "pi4"}, [], id="ic-not-model"),
    pytest.param({"name__ic": "sensor sn"}, [], id="ic-not-across-name-and-serial"),
    pytest.param({"name__isw": "ALPHA"}, ["Alpha Sensor", "alpha relay"], id="isw-any-case"),
    pytest.param({"name__isw": "sensor"}, [], id="isw-not-contains"),
    pytest.param({"name__isw": "50%"}, ["50% off"], id="isw-percent-is-literal"),
    pytest.param({"name__isw": "rack_"}, ["rack_1"], id="isw-underscore-is-literal"),
    pytest.param({"name__isw": "_ack"}, [], id="isw-leading-underscore"),
    pytest.param(
        {"name__isw": ["beta", "RACKX"]}, ["Beta Sensor", "rackx1"], id="isw-repeated-is-or"
    ),
    pytest.param({"serial_number": "SN-003"}, ["Beta Sensor"], id="serial"),
    pytest.param(
        {"serial_number": ["SN-001", "SN-007"]}, ["Alpha Sensor", "50 off"], id="serial-or"
    ),
    pytest.param({"serial_number": "SN-00"}, [], id="serial-is-exact"),
    pytest.param(
        {"created_after": at(2).isoformat()},
        ["rack_1", "rackx1", "50% off", "50 off"],
        id="created-after-is-exclusive",
    ),
    pytest.param(
        {"created_after": "2024-01-01T04:00:00+02:00"},
        ["rack_1", "rackx1", "50% off", "50 off"],
        id="created-after-other-offset",
    ),
    pytest.param(
        {"created_before": at(2).isoformat()},
        ["Alpha Sensor", "alpha relay"],
        id="created-before-is-exclusive",
    ),
    pytest.param(
        {"created_after": at(1).isoformat(), "created_before": at(4).isoformat()},
        ["Beta Sensor", "rack_1"],
        id="created-between",
    ),
    pytest.param(
        {"last_seen_after": at(3).isoformat()},
        ["50% off", "50 off"],
        id="last-seen-after-is-exclusive",
    ),
    pytest.param(
        {"last_seen_before": at(3).isoformat()},
        ["Alpha Sensor", "alpha relay"],
        id="last-seen-before-skips-never-seen",
    ),
    pytest.param(
        {"last_seen_after": at(1).isoformat(), "last_seen_before": at(4).isoformat()},
        ["alpha relay", "rack_1"],
        id="last-seen-between",
    ),
    pytest.param({"tag": "lab"}, ["Alpha Sensor", "alpha relay", "rack_1", "50 off"], id="tag"),
    pytest.param({"tag": ["lab", "edge"]}, ["Alpha Sensor", "rack_1"], id="tags-are-and"),
    pytest.param({"tag": ["edge", "spare", "lab"]}, ["rack_1"], id="three-tags"),
    pytest.param({"tag": "LAB"}, [], id="tag-is-exact-case"),
    pytest.param(
        {"has_owner": "true"},
        ["Alpha Sensor", "alpha relay", "rack_1", "50% off", "50 off"],
        id="has-owner",
    ),
    pytest.param({"has_owner": "false"}, ["Beta Sensor", "rackx1"], id="has-no-owner"),
    pytest.param({"attr.rack": "4"}, ["Alpha Sensor", "rack_1"], id="attr-number"),
    pytest.param({"attr.rack": '"4"'}, ["alpha relay"], id="attr-quoted-is-string"),
    pytest.param({"attr.on": "true"}, ["Alpha Sensor"], id="attr-true"),
    pytest.param({"attr.on": '"true"'}, ["alpha relay"], id="attr-quoted-true"),
    pytest.param({"attr.on": "false"}, ["Beta Sensor"], id="attr-false"),
    pytest.param({"attr.on": "null"}, ["rack_1"], id="attr-null"),
    pytest.param({"attr.loc": "lab 1"}, ["Alpha Sensor", "rackx1"], id="attr-text-not-json"),
    pytest.param(
        {"attr.rack": ["5", "6"]}, ["Beta Sensor", "rackx1", "50% off"], id="attr-same-key-or"
    ),
    pytest.param({"attr.rack": "4", "attr.on": "true"}, ["Alpha Sensor"], id="attr-keys-and"),
    pytest.param({"attr.colour": "4"}, [], id="attr-missing-key"),
    pytest.param(
        {"status": "active", "tag": "lab"}, ["Alpha Sensor", "rack_1"], id="status-and-tag"
    ),
    pytest.param({"status": "active", "has_owner": "false"}, ["rackx1"], id="status-and-owner"),
    pytest.param({"model": "nano", "owner_id": Owner("ann")}, ["rack_1"], id="model-and-owner"),
    pytest.param(
        {"name__ic": "sensor", "status": "retired"}, ["Beta Sensor"], id="contains-and-status"
    ),
    pytest.param({"q": "sensor", "status": "active"}, ["Alpha Sensor"], id="search-and-status"),
    pytest.param(
        {
            "status": ["active", "inactive"],
            "owner_id": [Owner("ann"), Owner("bob")],
            "tag": "lab",
            "attr.rack": ["4", '"4"'],
            "created_before": at(6).isoformat(),
        },
        ["Alpha Sensor", "alpha relay", "rack_1"],
        id="ors-within-ands",
    ),
]


class TestFilters:
    @pytest.mark.parametrize(("params", "expected"), FILTER_CASES)
    async def test_filter_lists_matching_devices(self, client, catalog, params, expected):
        page = await get_page(client, DEVICES, catalog.params(params))

        assert names(page) == expected
        assert page["next_cursor"] is None

    async def test_no_filter_lists_every_device(self, client, catalog):
        page = await get_page(client, DEVICES)

        assert names(page) == [fields["name"] for fields, _, _ in CATALOG]

    async def test_items_are_whole_devices(self, client, catalog):
        page = await get_page(client, DEVICES, {"name": "alpha relay"})

        assert page["items"] == [catalog.devices["alpha relay"]]


# --- q: search --------------------------------------------------------------------------

SEARCHABLE = [
    {"name": "Raspberry Pi 4", "serial_number": "RPI-7731-AX", "model": "BCM2711"},
    {"name": "Jetson Nano", "serial_number": "JTN-0042-QZ", "model": "P3450"},
    {"name": "Arduino Uno", "serial_number": "ARD-5519-KM", "model": "ATmega328P"},
]


class TestSearch:
    @pytest.mark.parametrize(
        ("q", "expected"),
        [
            pytest.param("rasberry", ["Raspberry Pi 4"], id="typo-missing-letter"),
            pytest.param("jetsn", ["Jetson Nano"], id="typo-short-word"),
            pytest.param("ardiuno", ["Arduino Uno"], id="typo-swapped-letters"),
            pytest.param("RASPB", ["Raspberry Pi 4"], id="partial-word-any-case"),
            pytest.param("jetson nano", ["Jetson Nano"], id="two-words"),
            pytest.param("7731", ["Raspberry Pi 4"], id="serial-fragment"),
            pytest.param("JTN-0042", ["Jetson Nano"], id="serial-prefix"),
            pytest.param("atmega", ["Arduino Uno"], id="model"),
            pytest.param("xylophone", [], id="nothing-similar"),
        ],
    )
    async def test_search_finds_similar_devices(self, client, q, expected):
        for fields in SEARCHABLE:
            await create_device(client, **fields)

        page = await get_page(client, DEVICES, {"q": q})

        assert names(page) == expected

    @pytest.fixture
    async def ranked(self, client) -> list[dict[str, Any]]:
        """Devices similar to "raspberry pi 4" in an order neither relevance nor id gives (the
        best match twice, first and last), and one not similar at all."""
        first = await create_device(client, name="Raspberry Pi 4")
        raspberry = await create_device(client, name="Raspberry")
        await create_device(client, name="Arduino Uno")
        zero = await create_device(client, name="Raspberry Pi Zero")
        second = await create_device(client, name="Raspberry Pi 4")
        return [second, first, zero, raspberry]

    async def test_results_are_most_similar_first_ties_by_id_descending(self, client, ranked):
        page = await get_page(client, DEVICES, {"q": "raspberry pi 4"})

        assert ids_of(page["items"]) == ids_of(ranked)

    @pytest.mark.parametrize("limit", [1, 2, 3])
    async def test_pages_walk_the_results_in_relevance_order(self, client, ranked, limit):
        pages = await walk_listing(client, DEVICES, {"q": "raspberry pi 4"}, limit=limit)

        assert ids_of(items_of(pages)) == ids_of(ranked)
        assert len(pages) == math.ceil(len(ranked) / limit)

    @pytest.mark.parametrize("sort", ["name", "-id", "-last_seen_at"])
    async def test_sort_replaces_relevance(self, client, ranked, sort):
        pages = await walk_listing(client, DEVICES, {"q": "raspberry pi 4", "sort": sort}, limit=2)

        assert ids_of(items_of(pages)) == ids_of(in_sort_order(ranked, sort))

    @pytest.mark.parametrize("relevance", [5.0, -1, 1e308])
    async def test_a_relevance_no_match_can_have_is_a_tampered_cursor(
        self, client, ranked, relevance
    ):
        cursor = (await get_page(client, DEVICES, {"q": "raspberry pi 4", "limit": 1}))[
            "next_cursor"
        ]

        response = await client.get(
            DEVICES,
            params={"q": "raspberry pi 4", "cursor": rewrite_cursor(cursor, value=relevance)},
        )

        assert assert_problem(response, 400)["parameter"] == "cursor"

    async def test_count_totals_every_match(self, client, ranked):
        page = await get_page(
            client, DEVICES, {"q": "raspberry pi 4", "count": "exact", "limit": 1}
        )

        assert page["total"] == len(ranked)


# --- sort ----------------------------------------------------------------------------------

SORTS = ["name", "-name", "created_at", "-created_at", "last_seen_at", "-last_seen_at", "id", "-id"]

# (name, last_seen_at, created_at): ties in each; None for created_at keeps the transaction's
# now(), the same for every device of the test.
SORTABLE = [
    ("delta", at(2), at(2)),
    ("alpha", None, at(0)),
    ("charlie", at(1), at(1)),
    ("alpha", at(2), at(2)),
    ("bravo", None, None),
    ("delta", at(1), at(0)),
    ("alpha", at(3), None),
]


@pytest.fixture
async def sortable(client, connection) -> list[dict[str, Any]]:
    """The SORTABLE devices as listed, in id order."""
    created_at = {}
    for name, last_seen_at, created in SORTABLE:
        seen = last_seen_at.isoformat() if last_seen_at else None
        device = await create_device(client, name=name, last_seen_at=seen)
        if created is not None:
            created_at[device["id"]] = created
    await set_created_at(connection, "devices", created_at)
    return await stored_devices(client)


class TestSort:
    @pytest.mark.parametrize("sort", SORTS)
    async def test_one_page_is_in_sort_order(self, client, sortable, sort):
        page = await get_page(client, DEVICES, {"sort": sort})

        assert ids_of(page["items"]) == ids_of(in_sort_order(sortable, sort))

    @pytest.mark.parametrize("limit", [1, 2, 5])
    @pytest.mark.parametrize("sort", SORTS)
    async def test_pages_walk_every_device_once_in_sort_order(self, client, sortable, sort, limit):
        pages = await walk_listing(client, DEVICES, {"sort": sort}, limit=limit)

        assert ids_of(items_of(pages)) == ids_of(in_sort_order(sortable, sort))
        # No empty page at the end, even when the rows fill the last page exactly.
        assert len(pages) == math.ceil(len(sortable) / limit)

    @pytest.mark.parametrize("sort", ["last_seen_at", "-last_seen_at"])
    async def test_never_seen_devices_come_last_in_both_directions(self, client, sortable, sort):
        page = await get_page(client, DEVICES, {"sort": sort})

        seen = [item["last_seen_at"] for item in page["items"]]
        assert seen[-2:] == [None, None]
        assert None not in seen[:-2]

    @pytest.mark.parametrize("sort", SORTS)
    async def test_sort_applies_within_filters(self, client, sortable, sort):
        matching = [item for item in sortable if item["name"] != "alpha"]

        pages = await walk_listing(
            client, DEVICES, {"sort": sort, "name": ["bravo", "charlie", "delta"]}, limit=2
        )

        assert ids_of(items_of(pages)) == ids_of(in_sort_order(matching, sort))

    @pytest.mark.parametrize(
        "sort", ["serial_number", "foo", "-foo", "Name", "--name", "name,id", "relevance", ""]
    )
    async def test_unsortable_field_is_refused(self, client, sort):
        response = await client.get(DEVICES, params={"sort": sort})

        assert assert_problem(response, 400)["parameter"] == "sort"


# --- cursors -------------------------------------------------------------------------------

# (the listing a cursor was made for, the listing it is then sent with)
OTHER_LISTINGS = [
    pytest.param({"status": "active"}, {"status": "inactive"}, id="other-filter-value"),
    pytest.param({}, {"status": "active"}, id="filter-added"),
    pytest.param({"status": "active"}, {}, id="filter-dropped"),
    pytest.param({"tag": "lab"}, {"tag": ["lab", "edge"]}, id="value-added"),
    pytest.param({"name__ic": "a"}, {"name__isw": "a"}, id="other-operator"),
    pytest.param({"attr.rack": "4"}, {"attr.rack": '"4"'}, id="attr-other-type"),
    pytest.param(
        {"created_after": at(0).isoformat()}, {"created_after": at(1).isoformat()}, id="other-time"
    ),
    pytest.param({"q": "alpha"}, {"q": "beta"}, id="other-search"),
    pytest.param({"q": "alpha"}, {"q": "alpha", "sort": "name"}, id="relevance-to-sort"),
    pytest.param({"sort": "name"}, {"sort": "-name"}, id="other-direction"),
    pytest.param({"sort": "name"}, {"sort": "created_at"}, id="other-sort"),
    pytest.param({"sort": "-id"}, {}, id="default-sort"),
]

# (sort, what a tampered cursor changes): refused, never read as some other position.
TAMPERED_CURSORS = [
    pytest.param("created_at", {"value": "not-a-date"}, id="date-garbage"),
    pytest.param("created_at", {"value": "2024-01-01T00:00:00"}, id="date-naive"),
    pytest.param("created_at", {"value": 5}, id="date-number"),
    pytest.param("created_at", {"value": None}, id="date-null"),
    pytest.param("last_seen_at", {"value": [1]}, id="last-seen-list"),
    pytest.param("name", {"value": 5}, id="name-number"),
    pytest.param("name", {"value": None}, id="name-null"),
    pytest.param("id", {"value": "7"}, id="id-value-string"),
    pytest.param("id", {"value": True}, id="id-value-boolean"),
    pytest.param("id", {"value": None}, id="id-value-null"),
    pytest.param("id", {"value": -1}, id="id-value-negative"),
    pytest.param("id", {"value": BIGINT_MAX + 1}, id="id-value-beyond-bigint"),
    pytest.param("name", {"id": -1}, id="negative-id"),
    pytest.param("name", {"id": BIGINT_MAX + 1}, id="id-beyond-bigint"),
    pytest.param("name", {"id": "7"}, id="id-string"),
    pytest.param("created_at", {"value": "9999-12-31T23:59:59-14:00"}, id="date-beyond-9999-utc"),
    pytest.param("-created_at", {"value": "0001-01-01T00:00:00+14:00"}, id="date-before-year-1"),
    pytest.param("name", {"value": "\ud800"}, id="name-lone-surrogate"),
    pytest.param("name", {"value": "a\x00b"}, id="name-nul"),
]


class TestCursors:
    async def test_a_cursor_is_read_only_to_its_limit(self, client, catalog):
        """A well-formed cursor past 1,024 characters (a name longer than any a device has) is
        refused like any other that long, before it is decoded."""
        cursor = (await get_page(client, DEVICES, {"sort": "name", "limit": 1}))["next_cursor"]
        longest, too_long = (rewrite_cursor(cursor, value="n" * size) for size in (700, 800))
        assert len(longest) <= 1024 < len(too_long)

        listed = await client.get(DEVICES, params={"sort": "name", "cursor": longest})
        assert listed.status_code == 200
        refused = await client.get(DEVICES, params={"sort": "name", "cursor": too_long})
        assert assert_problem(refused, 400)["parameter"] == "cursor"

    async def test_empty_result_has_no_cursor(self, client, catalog):
        page = await get_page(client, DEVICES, {"name": "nothing", "limit": 1})

        assert page == {"items": [], "next_cursor": None}

    @pytest.mark.parametrize("sort", ["name", "-last_seen_at", "created_at"])
    async def test_exactly_full_last_page_has_no_next_cursor(self, client, catalog, sort):
        params = {"sort": sort, "status": ["inactive", "retired"]}

        pages = await walk_listing(client, DEVICES, params, limit=2)

        assert [len(page["items"]) for page in pages] == [2, 2]
        assert [page["next_cursor"] is None for page in pages] == [False, True]

    @pytest.mark.parametrize(
        "sort", ["name", "-created_at", "last_seen_at", "-last_seen_at", "-id"]
    )
    async def test_device_deleted_between_pages_does_not_break_the_walk(
        self, client, sortable, sort
    ):
        expected = in_sort_order(sortable, sort)
        first = await get_page(client, DEVICES, {"sort": sort, "limit": 2})
        for gone in expected[1:3]:  # the cursor's own row, then the next page's first row
            assert (await client.delete(f"{DEVICES}/{gone['id']}")).status_code == 204

        rest = await walk_listing(
            client, DEVICES, {"sort": sort, "cursor": first["next_cursor"]}, limit=2
        )

        assert ids_of(first["items"]) == ids_of(expected[:2])
        assert ids_of(items_of(rest)) == ids_of(expected[3:])

    @pytest.mark.parametrize("url", [DEVICES, USERS])
    async def test_a_walk_by_name_passes_the_longest_names(self, client, url):
        """Characters beyond the Basic Multilingual Plane, 4 bytes of UTF-8, were 12 characters
        of a cursor's JSON each: a name of 100 made a cursor the API refused as too long."""
        names = ["\U0001d400" * 99 + str(i) for i in range(3)]
        create = create_device if url == DEVICES else create_user
        for name in names:
            await create(client, name=name)

        pages = await walk_listing(client, url, {"sort": "name", "name": names}, limit=1)

        assert [item["name"] for item in items_of(pages)] == names

    @pytest.mark.parametrize(("made_for", "sent_with"), OTHER_LISTINGS)
    async def test_cursor_of_another_listing_is_refused(self, client, catalog, made_for, sent_with):
        cursor = (await get_page(client, DEVICES, {**made_for, "limit": 1}))["next_cursor"]
        assert cursor is not None

        response = await client.get(DEVICES, params={**sent_with, "cursor": cursor})

        assert assert_problem(response, 400)["parameter"] == "cursor"

    @pytest.mark.parametrize(
        "repeated",
        [{"status": ["active", "active"]}, {"tag": ["lab", "lab"]}, {"attr.rack": ["4", "4"]}],
    )
    async def test_a_repeated_value_is_the_same_listing(self, client, catalog, repeated):
        once = {name: values[0] for name, values in repeated.items()}
        first = await get_page(client, DEVICES, {**once, "limit": 1})
        assert first["next_cursor"] is not None
        after_first = {"limit": 1, "cursor": first["next_cursor"]}

        response = await client.get(DEVICES, params={**repeated, **after_first})

        assert response.status_code == 200, response.text
        second = await get_page(client, DEVICES, {**once, **after_first})
        assert response.json() == second
        assert ids_of(second["items"]) != ids_of(first["items"])

    @pytest.mark.parametrize(
        "values",
        [
            {"status": ["active", "retired"]},
            {"tag": ["lab", "edge"]},
            {"attr.rack": ["4", "5"]},
            {"name__ic": ["a", "e"]},
        ],
    )
    async def test_values_in_another_order_are_the_same_listing(self, client, catalog, values):
        """A client building its query from a set sends the same values in any order."""
        reordered = {name: options[::-1] for name, options in values.items()}
        first = await get_page(client, DEVICES, {**values, "limit": 1})
        assert first["next_cursor"] is not None
        after_first = {"limit": 1, "cursor": first["next_cursor"]}

        response = await client.get(DEVICES, params={**reordered, **after_first})

        assert response.status_code == 200, response.text
        assert response.json() == await get_page(client, DEVICES, {**values, **after_first})

    @pytest.mark.parametrize("sort", [None, "name"])
    async def test_cursor_of_the_users_listing_is_refused(self, client, catalog, sort):
        params = {"sort": sort} if sort else {}
        cursor = (await get_page(client, USERS, {**params, "limit": 1}))["next_cursor"]
        assert cursor is not None

        response = await client.get(DEVICES, params={**params, "cursor": cursor})

        assert assert_problem(response, 400)["parameter"] == "cursor"

    async def test_cursor_of_all_devices_is_refused_for_a_users_devices(self, client, catalog):
        cursor = (await get_page(client, DEVICES, {"limit": 1}))["next_cursor"]

        response = await client.get(
            f"{USERS}/{catalog.owners['ann']}/devices", params={"cursor": cursor}
        )

        assert assert_problem(response, 400)["parameter"] == "cursor"

    @pytest.mark.parametrize("sort", [None, "name", "-last_seen_at"])
    @pytest.mark.parametrize("cursor", INVALID_CURSORS)
    async def test_garbage_cursor_is_refused(self, client, catalog, cursor, sort):
        params = {"cursor": cursor, **({"sort": sort} if sort else {})}

        response = await client.get(DEVICES, params=params)

        assert assert_problem(response, 400)["parameter"] == "cursor"

    async def test_a_cursor_holds_for_the_same_instant_written_with_another_offset(
        self, client, catalog
    ):
        first = await get_page(
            client, DEVICES, {"created_after": "2024-01-01T02:00:00+02:00", "limit": 1}
        )

        response = await client.get(
            DEVICES,
            params={
                "created_after": "2024-01-01T00:00:00Z",
                "limit": 1,
                "cursor": first["next_cursor"],
            },
        )

        assert response.status_code == 200, response.text
        assert ids_of(response.json()["items"]) != ids_of(first["items"])

    @pytest.mark.parametrize(("sort", "changes"), TAMPERED_CURSORS)
    async def test_tampered_cursor_is_refused(self, client, catalog, sort, changes):
        cursor = (await get_page(client, DEVICES, {"sort": sort, "limit": 1}))["next_cursor"]

        response = await client.get(
            DEVICES, params={"sort": sort, "cursor": rewrite_cursor(cursor, **changes)}
        )

        assert assert_problem(response, 400)["parameter"] == "cursor"


# --- count -----------------------------------------------------------------------------------


class TestCount:
    @pytest.mark.parametrize(
        ("params", "total"),
        [
            pytest.param({}, len(CATALOG), id="all"),
            pytest.param({"status": ["inactive", "retired"]}, 4, id="filtered"),
            pytest.param({"tag": "lab", "sort": "-last_seen_at"}, 4, id="sorted"),
            pytest.param({"name": "nothing"}, 0, id="none"),
        ],
    )
    async def test_exact_count_totals_every_match_on_every_page(
        self, client, catalog, params, total
    ):
        pages = await walk_listing(client, DEVICES, {**params, "count": "exact"}, limit=1)

        assert {page["total"] for page in pages} == {total}
        assert {page["total_is_estimate"] for page in pages} == {False}
        assert len(items_of(pages)) == total

    async def test_estimated_count_is_an_integer_marked_estimate(self, client, catalog):
        params = {"count": "estimated", "status": "active", "limit": 1}
        page = await get_page(client, DEVICES, params)

        assert type(page["total"]) is int
        assert page["total"] >= 0
        assert page["total_is_estimate"] is True
        assert len(page["items"]) == 1

    @pytest.mark.parametrize("count", ["exact", "estimated"])
    @pytest.mark.parametrize(
        ("params", "total"), [({"status": "active"}, 3), ({"name": "nothing"}, 0)]
    )
    async def test_a_first_page_with_no_next_one_counts_itself(
        self, client, catalog, count, params, total
    ):
        """The planner estimates at least one row: an empty result said "total": 1."""
        page = await get_page(client, DEVICES, {**params, "count": count})

        assert (page["total"], page["total_is_estimate"]) == (total, False)
        assert len(page["items"]) == total

    async def test_an_estimate_is_at_least_the_rows_a_page_has_seen(self, client):
        """The planner's estimate for a rare tag said `"total": 1` beside a page of 3 with a
        next one."""
        for number in range(5):
            await create_device(client, name=f"rare-{number}", tags=["rare"])

        page = await get_page(client, DEVICES, {"count": "estimated", "tag": "rare", "limit": 3})

        assert len(page["items"]) == 3
        assert page["next_cursor"] is not None
        assert page["total"] >= 4
        assert page["total_is_estimate"] is True

    @pytest.mark.parametrize("params", [{}, {"count": "none"}], ids=["no-count", "count-none"])
    async def test_without_count_page_has_no_total(self, client, catalog, params):
        page = await get_page(client, DEVICES, params)

        assert page.keys() == {"items", "next_cursor"}

    @pytest.mark.parametrize("count", ["bogus", "EXACT", "1", ""])
    async def test_unknown_count_mode_is_refused(self, client, count):
        response = await client.get(DEVICES, params={"count": count})

        assert assert_problem(response, 422)["errors"][0]["loc"] == ["query", "count"]


# --- fields ----------------------------------------------------------------------------------


class TestFields:
    @pytest.mark.parametrize(
        ("fields", "keys"),
        [
            pytest.param("id,name,status", {"id", "name", "status"}, id="three"),
            pytest.param(" id , owner ", {"id", "owner"}, id="spaces-and-nested"),
            pytest.param("attributes", {"attributes"}, id="one"),
            pytest.param("id,,name,", {"id", "name"}, id="empty-entries"),
        ],
    )
    async def test_items_have_exactly_the_fields_asked_for(self, client, catalog, fields, keys):
        page = await get_page(client, DEVICES, {"fields": fields, "count": "exact"})

        full = list(catalog.devices.values())
        assert page["items"] == [{key: item[key] for key in keys} for item in full]
        assert page["total"] == len(full)

    async def test_pages_of_some_fields_walk_every_device(self, client, catalog):
        pages = await walk_listing(
            client, DEVICES, {"fields": "id", "sort": "-created_at"}, limit=3
        )

        expected = in_sort_order(list(catalog.devices.values()), "-created_at")
        assert items_of(pages) == [{"id": item["id"]} for item in expected]

    @pytest.mark.parametrize("fields", ["nonexistent", "id,nonexistent", "", ",", "search_text"])
    async def test_unknown_field_is_refused(self, client, fields):
        response = await client.get(DEVICES, params={"fields": fields})

        assert assert_problem(response, 400)["parameter"] == "fields"


# --- bad query strings -------------------------------------------------------------------------


class TestBadQuery:
    @pytest.mark.parametrize(
        "parameter", ["stauts", "Status", "owner", "attr", "attrs.rack", "page", "offset", "search"]
    )
    async def test_unknown_parameter_is_refused_by_name(self, client, parameter):
        response = await client.get(DEVICES, params={parameter: "active"})

        assert assert_problem(response, 400)["parameter"] == parameter

    @pytest.mark.parametrize(
        ("parameter", "value"),
        [
            ("status", "broken"),
            ("status", "ACTIVE"),
            ("owner_id", "abc"),
            ("owner_id", "0"),
            ("owner_id", str(BIGINT_MAX + 1)),
            ("created_after", "not-a-date"),
            ("created_after", "2024-01-01T00:00:00"),
            ("created_before", "2024-13-01T00:00:00Z"),
            ("last_seen_after", "yesterday"),
            ("last_seen_before", "2024-01-01T00:00:00"),
            ("has_owner", "maybe"),
            ("limit", "0"),
            ("q", ""),
            ("q", "_"),  # no letter or digit: a full scan to find nothing
            ("q", "%% !"),
            ("q", "x" * 101),
            ("q", "x\x00"),
            ("name", ""),
            ("name__ic", "x" * 101),
            ("name__isw", ""),
            ("model", "m\x00"),
            ("serial_number", ""),
            ("tag", "t" * 65),
        ],
    )
    async def test_bad_value_is_refused(self, client, parameter, value):
        response = await client.get(DEVICES, params={parameter: value})

        assert assert_problem(response, 422)["errors"][0]["loc"][:2] == ["query", parameter]

    async def test_unusable_attribute_key_is_refused(self, client):
        response = await client.get(DEVICES, params={"attr.x\x00": "1"})

        assert assert_problem(response, 400)["parameter"] == "attr.x\x00"

    @pytest.mark.parametrize("key", ["", "k" * 300], ids=["empty", "long"])
    async def test_any_attribute_key_a_device_may_have_is_a_filter(self, client, key):
        device = await create_device(client, attributes={key: 1})
        await create_device(client, attributes={"other": 1})

        page = await get_page(client, DEVICES, {f"attr.{key}": "1"})

        assert ids_of(page["items"]) == [device["id"]]

    async def test_an_attribute_value_of_json_object_or_array_is_text(self, client):
        """Only a JSON scalar is read as JSON: `{"a": 1}` is text, not containment of an object."""
        await create_device(client, attributes={"rack": {"a": 1, "b": 2}, "slots": [1, 2]})
        text_rack = await create_device(client, attributes={"rack": '{"a": 1}'})

        by_object = await get_page(client, DEVICES, {"attr.rack": '{"a": 1}'})
        by_array = await get_page(client, DEVICES, {"attr.slots": "[1]"})

        assert ids_of(by_object["items"]) == [text_rack["id"]]
        assert by_array["items"] == []

    @pytest.mark.parametrize("value", ["4\x00", '"\\u0000"', '"\\ud800"'])
    @pytest.mark.parametrize("path", [DEVICES, f"{DEVICES}/export"])
    async def test_attribute_value_no_row_could_hold_is_refused(self, client, path, value):
        response = await client.get(path, params={"attr.rack": value})

        assert assert_problem(response, 400)["parameter"] == "attr.rack"

    @pytest.mark.parametrize(
        "path", ["/api/v1/devices", "/api/v1/devices/export", "/api/v1/users/{user_id}/devices"]
    )
    async def test_the_attribute_filters_are_in_the_openapi_schema(self, client, path):
        """They were nowhere in it: OpenAPI cannot name a parameter by its prefix."""
        schema = (await client.get("/openapi.json")).json()

        assert "`attr.<key>=<value>`" in schema["paths"][path]["get"]["description"]


# --- injection -------------------------------------------------------------------------------


class TestInjection:
    @pytest.fixture
    async def decoy(self, client) -> dict[str, Any]:
        """A device with ordinary values, which no injected filter may bring back."""
        return await create_device(
            client,
            name="decoy",
            serial_number="SN-1",
            model="m",
            tags=["lab", "edge"],
            attributes={"note": "x"},
        )

    @pytest.mark.parametrize(
        "parameter", ["name", "name__ic", "name__isw", "model", "serial_number", "tag", "attr.note"]
    )
    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_value_is_matched_as_data(self, client, decoy, parameter, value):
        device = await create_device(
            client,
            name=value,
            serial_number=value,
            model=value,
            tags=[value],
            attributes={"note": value},
        )

        page = await get_page(client, DEVICES, {parameter: value})

        assert ids_of(page["items"]) == [device["id"]]
        assert ids_of(await stored_devices(client)) == [decoy["id"], device["id"]]

    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_attribute_key_is_matched_as_data(self, client, decoy, value):
        device = await create_device(client, attributes={value: 1})

        page = await get_page(client, DEVICES, {f"attr.{value}": "1"})

        assert ids_of(page["items"]) == [device["id"]]

    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_search_is_just_data(self, client, decoy, value):
        page = await get_page(client, DEVICES, {"q": f"{value} x", "count": "exact"})

        assert page["total"] == len(page["items"])
        assert ids_of(await stored_devices(client)) == [decoy["id"]]


# --- a user's devices ------------------------------------------------------------------------


class TestUserDevices:
    @pytest.mark.parametrize(
        ("owner", "params", "expected"),
        [
            pytest.param("ann", {"status": "active"}, ["Alpha Sensor", "rack_1"], id="status"),
            pytest.param("bob", {"status": "active"}, [], id="status-none"),
            pytest.param("ann", {"tag": ["lab", "edge"]}, ["Alpha Sensor", "rack_1"], id="tags"),
            pytest.param("ann", {"name__ic": "SENSOR"}, ["Alpha Sensor"], id="name-contains"),
            pytest.param("bob", {"attr.rack": '"4"'}, ["alpha relay"], id="attr"),
            pytest.param("ann", {"has_owner": "false"}, [], id="has-no-owner"),
            pytest.param("ann", {"q": "alpha"}, ["Alpha Sensor"], id="search"),
            pytest.param(
                "ann", {"sort": "-last_seen_at"}, ["50 off", "rack_1", "Alpha Sensor"], id="sort"
            ),
        ],
    )
    async def test_filters_apply_to_the_users_devices_only(
        self, client, catalog, owner, params, expected
    ):
        url = f"{USERS}/{catalog.owners[owner]}/devices"

        page = await get_page(client, url, {**params, "count": "exact"})

        assert names(page) == expected
        assert page["total"] == len(expected)

    async def test_pages_walk_the_users_devices_in_sort_order(self, client, catalog):
        url = f"{USERS}/{catalog.owners['ann']}/devices"

        pages = await walk_listing(client, url, {"sort": "-name", "fields": "name"}, limit=1)

        assert items_of(pages) == [{"name": "rack_1"}, {"name": "Alpha Sensor"}, {"name": "50 off"}]

    async def test_unknown_parameter_is_refused(self, client, catalog):
        url = f"{USERS}/{catalog.owners['ann']}/devices"

        response = await client.get(url, params={"stauts": "active"})

        assert assert_problem(response, 400)["parameter"] == "stauts"


# --- query plans -------------------------------------------------------------------------------

MANY_DEVICES = """
INSERT INTO devices (
    name, serial_number, model, status, owner_id, tags, attributes, last_seen_at, created_at
)
SELECT
    (ARRAY['sensor', 'gateway', 'camera', 'meter'])[1 + g % 4] || ' ' || left(md5(g::text), 8),
    'SN-' || lpad(g::text, 6, '0'),
    'M' || g % 150,
    CASE g % 100 WHEN 0 THEN 'retired' WHEN 1 THEN 'inactive' ELSE 'active' END,
    CASE WHEN g % 100 <> 50 THEN :first_owner + g % 100 END,
    ARRAY['t' || g % 100, 'u' || g % 7],
    jsonb_build_object('rack', g % 300),
    CASE WHEN g % 3 <> 0 THEN timestamptz '2024-01-01 00:00Z' + g * interval '1 minute' END,
    timestamptz '2024-01-01 00:00Z' + g * interval '1 minute'
FROM generate_series(1, 3000) AS g
"""
MANY_OWNERS = """
INSERT INTO users (name, email)
SELECT 'owner ' || g, 'owner' || g || '@example.org' FROM generate_series(1, 100) AS g
RETURNING id
"""
# 3,000 devices: a third never seen; 1% each retired, inactive, without an owner.
MANY = 3000

SORT_INDEXES = {
    "name": "ix_devices_name_id",
    "created_at": "ix_devices_created_at_id",
    "last_seen_at": "ix_devices_last_seen_at_id",
    "id": "pk_devices",
}
TRIGRAMS = "ix_devices_search_text_trgm"


# The index that serves a listing of one owner's devices in each sort's order.
OWNER_SORT_INDEXES = {
    "name": "ix_devices_owner_id_name_id",
    "created_at": "ix_devices_owner_id_created_at_id",
    "last_seen_at": "ix_devices_owner_id_last_seen_at_id",
    "id": "ix_devices_owner_id_id",
}
LATE_DEVICES = """
INSERT INTO devices (name, serial_number, model, owner_id, last_seen_at, created_at)
SELECT 'late ' || g, 'LATE-' || g, 'M1', :owner,
       CASE WHEN g % 3 <> 0 THEN timestamptz '2024-02-01 00:00Z' + g * interval '1 minute' END,
       timestamptz '2024-02-01 00:00Z' + g * interval '1 minute'
FROM generate_series(1, 1000) AS g
"""


@pytest.fixture
async def many_devices(connection) -> int:
    """3,000 devices with statistics, for the planner to choose as it would at scale; returns
    the id of a user owning 30 of them."""
    owners = (await connection.execute(text(MANY_OWNERS))).scalars().all()
    await connection.execute(text(MANY_DEVICES), {"first_owner": min(owners)})
    await settle(connection, "users")
    await settle(connection, "devices")
    return min(owners) + 7


class TestQueryPlans:
    """No listing reads the whole table: each filter narrows through its index, each sort reads
    an index in order. A dropped index makes the planner fall back on a Seq Scan (or a Sort)."""

    @pytest.mark.parametrize(
        ("params", "index"),
        [
            pytest.param({"status": "retired"}, "ix_devices_status_id", id="status"),
            pytest.param(
                {"status": ["retired", "inactive"]}, "ix_devices_status_id", id="statuses"
            ),
            pytest.param({"owner_id": Owner("many")}, "ix_devices_owner_id_id", id="owner"),
            pytest.param({"model": "M7"}, "ix_devices_model_id", id="model"),
            pytest.param({"name": "gateway c4ca4238"}, "ix_devices_name_id", id="name"),
            pytest.param({"name__ic": "c4ca42"}, TRIGRAMS, id="name-contains"),
            pytest.param({"name__isw": "GATEWAY C4"}, TRIGRAMS, id="name-starts-with"),
            pytest.param({"serial_number": "SN-000042"}, "uq_devices_serial_number", id="serial"),
            pytest.param(
                {"created_after": "2024-01-03T01:00:00Z"},
                "ix_devices_created_at_id",
                id="created-after",
            ),
            pytest.param(
                {"created_before": "2024-01-01T01:00:00Z"},
                "ix_devices_created_at_id",
                id="created-before",
            ),
            pytest.param(
                {"last_seen_after": "2024-01-03T01:00:00Z"},
                "ix_devices_last_seen_at_id",
                id="last-seen-after",
            ),
            pytest.param(
                {"last_seen_before": "2024-01-01T01:00:00Z"},
                "ix_devices_last_seen_at_id",
                id="last-seen-before",
            ),
            pytest.param({"tag": ["t7", "u3"]}, "ix_devices_tags", id="tags"),
            pytest.param({"has_owner": "false"}, "ix_devices_owner_id_", id="has-no-owner"),
            pytest.param({"has_owner": "true"}, "ix_devices_owner_id_", id="has-owner"),
            pytest.param({"attr.rack": "42"}, "ix_devices_attributes", id="attr"),
            pytest.param({"attr.rack": ["42", "43"]}, "ix_devices_attributes", id="attr-or"),
            pytest.param({"q": "gatewy c4ca4238"}, TRIGRAMS, id="search"),
            pytest.param({"q": "sensor", "sort": "name"}, TRIGRAMS, id="search-sorted"),
        ],
    )
    async def test_filter_is_served_by_its_index(
        self, client, connection, many_devices, params, index
    ):
        params = with_owners(params, {"many": many_devices})

        params = {**params, "count": "exact", "limit": 1}
        total = (await get_page(client, DEVICES, params))["total"]
        plans = await explain_listing(client, connection, DEVICES, params)

        # The page, and the count unless the page is every match (one row: it counts itself).
        assert len(plans) == (1 if total <= 1 else 2)
        for plan in plans:
            assert "Seq Scan" not in plan.node_types
        # (`index`, or the start of the names of the indexes that serve it.)
        assert any(name.startswith(index) for plan in plans for name in plan.indexes)

    @pytest.mark.parametrize("position", [0, 500, 2500], ids=["first", "middle", "late"])
    @pytest.mark.parametrize("sort", SORTS)
    async def test_sort_reads_its_index_in_order(
        self, client, connection, many_devices, sort, position
    ):
        params = {"sort": sort}
        if position:
            params["cursor"] = await cursor_after(client, DEVICES, params, position)

        plans = await explain_listing(client, connection, DEVICES, params)

        key = sort.removeprefix("-")
        for plan in plans:
            assert not plan.node_types & {"Seq Scan", "Sort", "Incremental Sort"}
            assert SORT_INDEXES[key] in plan.indexes

    @pytest.mark.parametrize("position", [0, 100], ids=["first", "later"])
    async def test_search_in_relevance_order_does_not_scan_the_table(
        self, client, connection, many_devices, position
    ):
        params = {"q": "sensor"}
        if position:
            params["cursor"] = await cursor_after(client, DEVICES, params, position)

        plans = await explain_listing(client, connection, DEVICES, {**params, "count": "exact"})

        for plan in plans:
            assert "Seq Scan" not in plan.node_types
        assert TRIGRAMS in set().union(*(plan.indexes for plan in plans))

    @pytest.fixture
    async def late_owner(self, connection, many_devices) -> int:
        """A user owning a quarter of 4,000 devices, all added after the 3,000 others (created
        last, with the highest ids), as an import for a new customer would leave them."""
        owner = (
            await connection.execute(
                text("INSERT INTO users (name, email) VALUES ('late', 'late@x.org') RETURNING id")
            )
        ).scalar_one()
        await connection.execute(text(LATE_DEVICES), {"owner": owner})
        await settle(connection, "users")
        await settle(connection, "devices")
        return int(owner)

    @pytest.mark.parametrize("reader", ["owner_id", "token"])
    @pytest.mark.parametrize("sort", SORTS)
    async def test_one_owners_devices_are_read_from_the_owners_index(
        self, client, connection, many_devices, late_owner, sort, reader
    ):
        """Listed with `owner_id=N`, or by the owner's own token, an owner's devices are read
        from the index that begins with the owner, in the sort's order, not from the sort's
        own index, filtering out every device before the owner's (at a million devices, 0.15
        s for an owner whose devices came last, against 0.2 ms)."""
        params: dict[str, Any] = {"sort": sort}
        headers = None
        if reader == "owner_id":
            params["owner_id"] = late_owner
        else:
            admin = await new_token(client, user_id=many_devices, admin=True)
            headers = bearer(await new_token(client, as_token=admin, user_id=late_owner))

        plans = await explain_listing(client, connection, DEVICES, params, headers)

        key = sort.removeprefix("-")
        for plan in plans:
            assert not plan.node_types & {"Seq Scan", "Sort", "Incremental Sort"}
            assert not plan.indexes & set(SORT_INDEXES.values())
            # The owner found by its id, not in a pass over the users below it (a Merge Join).
            users = [node for node in plan.nodes if node.get("Index Name") == "pk_users"]
            assert all("Index Cond" in node for node in users)
        assert OWNER_SORT_INDEXES[key] in set().union(*(plan.indexes for plan in plans))

    @pytest.fixture
    async def late_unowned(self, connection, many_devices) -> None:
        """1,000 devices without an owner, all added after the 3,000 others (of which 30 have
        none), as a batch of stock not yet given to anyone would leave them."""
        await connection.execute(text(LATE_DEVICES), {"owner": None})
        await settle(connection, "devices")

    @pytest.mark.parametrize("sort", SORTS)
    async def test_devices_without_an_owner_are_read_from_the_owners_index(
        self, client, connection, late_unowned, sort
    ):
        """With `has_owner=false`, devices are read from the index that begins with the owner
        (owner_id IS NULL), in the sort's order, not from the sort's own index, filtering out
        every owned device before the first unowned one (0.16-0.23 s a page at a million
        devices for 10,000 unowned ones added last, against 1-2 ms)."""
        plans = await explain_listing(
            client, connection, DEVICES, {"sort": sort, "has_owner": "false"}
        )

        key = sort.removeprefix("-")
        for plan in plans:
            assert not plan.node_types & {"Seq Scan", "Sort", "Incremental Sort"}
            assert not plan.indexes & set(SORT_INDEXES.values())
        assert OWNER_SORT_INDEXES[key] in set().union(*(plan.indexes for plan in plans))


def finer_than_stored(instant: str) -> str:
    """The instant 0.1 µs later, written with 7 digits of a second: after the stored one."""
    moment = datetime.fromisoformat(instant)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "1Z"


@pytest.mark.parametrize(
    ("url", "field", "parameter"),
    [
        (DEVICES, "created_at", "created_before"),
        (DEVICES, "last_seen_at", "last_seen_before"),
        (USERS, "created_at", "created_before"),
    ],
)
async def test_a_bound_finer_than_a_microsecond_keeps_what_it_is_after(
    client, url, field, parameter
):
    """pydantic cut `.1185331` to `.118533`: a device stored at `.118533` was not before it."""
    if url == DEVICES:
        row = await create_device(client, last_seen_at="2026-01-02T03:04:05.118533Z")
    else:
        row = await create_user(client, email="fine@example.org")

    page = await get_page(client, url, {parameter: finer_than_stored(row[field])})

    assert [item["id"] for item in page["items"]] == [row["id"]]


@pytest.mark.parametrize(
    ("url", "parameter", "finds_a_row_of_now"),
    [
        (DEVICES, "last_seen_after", True),
        (DEVICES, "last_seen_before", False),
        (DEVICES, "created_after", True),
        (DEVICES, "created_before", False),
        (USERS, "created_after", True),
        (USERS, "created_before", False),
        ("/api/v1/changes", "since", True),
        ("/api/v1/changes", "until", False),
    ],
)
async def test_a_bound_whose_offset_plus_is_sent_unescaped_is_read_with_it(
    client, url, parameter, finds_a_row_of_now
):
    """`?since=2026-12-01T00:00:00+01:00` typed into curl as it is arrives with a space for its
    `+` (a query string's form encoding): it was a 422 about "unexpected extra characters at
    the end of the input"."""
    await create_user(client)
    await create_device(client, last_seen_at=datetime.now(UTC).isoformat())
    a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
    bound = a_minute_ago.astimezone(timezone(timedelta(hours=14))).replace(microsecond=0)

    response = await client.get(f"{url}?{parameter}={bound.isoformat()}")  # `+14:00` as is

    assert response.status_code == 200, response.text
    assert bool(response.json()["items"]) is finds_a_row_of_now


async def test_a_bound_written_with_trailing_zeros_is_the_instant_itself(client):
    """`.1234560` is `.123456`: a device stored then is not before it (rounding it up as a finer
    instant would take it in)."""
    device = await create_device(client, last_seen_at="2026-01-02T03:04:05.123456Z")

    before = await get_page(client, DEVICES, {"last_seen_before": "2026-01-02T03:04:05.1234560Z"})

    assert device["id"] not in [item["id"] for item in before["items"]]


async def test_a_bound_at_a_leap_second_keeps_what_comes_before_it(client):
    """23:59:60 (RFC 3339's leap second) was a 422; it is read as PostgreSQL reads it, the next
    day's start."""
    before = await create_device(client, last_seen_at="2016-12-31T23:59:59.999999Z")
    await create_device(client, last_seen_at="2017-01-01T00:00:00Z")

    earlier = await get_page(client, DEVICES, {"last_seen_before": "2016-12-31T23:59:60Z"})

    assert [item["id"] for item in earlier["items"]] == [before["id"]]


async def test_the_change_log_bounds_finer_than_a_microsecond(client):
    device = await create_device(client)
    [record] = (await get_page(client, f"{DEVICES}/{device['id']}/changes", {}))["items"]
    after = finer_than_stored(record["at"])

    until = await get_page(client, "/api/v1/changes", {"until": after})
    since = await get_page(client, "/api/v1/changes", {"since": after})

    assert [item["id"] for item in until["items"]] == [record["id"]]
    assert since["items"] == []
