"""Listing users: GET /api/v1/users with filters, sort orders, cursors, counts and sparse
fields; and the query plans behind each of them."""

import math
from datetime import UTC, datetime, timedelta
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
    stored_users,
    walk_listing,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["items"]]


# --- the catalog: a few users every filter case picks from --------------------------------

# (user, created_at). Names are unique; listed here in id order.
CATALOG: list[tuple[dict[str, Any], datetime]] = [
    ({"name": "Ann Smith", "email": "Ann@Example.org"}, at(0)),
    ({"name": "ann-marie", "email": "annmarie@example.org"}, at(1)),
    ({"name": "Bob"}, at(2)),
    ({"name": "100% real", "email": "real@example.org"}, at(3)),
    ({"name": "100 real", "email": "r100@example.org"}, at(4)),
    ({"name": "a_b", "email": "ab@Example.org"}, at(5)),
    ({"name": "axb", "email": "AXB@EXAMPLE.ORG"}, at(6)),
]


@pytest.fixture
async def catalog(client, connection) -> list[dict[str, Any]]:
    """The CATALOG users as listed, in id order."""
    created_at = {}
    for fields, created in CATALOG:
        created_at[(await create_user(client, **fields))["id"]] = created
    await set_created_at(connection, "users", created_at)
    return await stored_users(client)


# (query parameters, the catalog users listed, by name in id order)
FILTER_CASES = [
    pytest.param({"name": "Bob"}, ["Bob"], id="name"),
    pytest.param({"name": ["Bob", "axb"]}, ["Bob", "axb"], id="name-repeated-is-or"),
    pytest.param({"name": "bob"}, [], id="name-is-exact-case"),
    pytest.param({"name": "Ann"}, [], id="name-is-not-partial"),
    pytest.param({"name__ic": "ANN"}, ["Ann Smith", "ann-marie"], id="ic-any-case"),
    pytest.param({"name__ic": "_"}, ["a_b"], id="ic-underscore-is-literal"),
    pytest.param({"name__ic": "0% r"}, ["100% real"], id="ic-percent-is-literal"),
    pytest.param({"name__ic": "%"}, ["100% real"], id="ic-lone-percent"),
    pytest.param({"name__ic": "/"}, [], id="ic-escape-character"),
    pytest.param({"name__ic": "ann "}, ["Ann Smith"], id="ic-spaces-are-part-of-it"),
    pytest.param({"name__ic": ["smith", "BOB"]}, ["Ann Smith", "Bob"], id="ic-repeated-is-or"),
    pytest.param({"name__ic": "example"}, [], id="ic-not-email"),
    pytest.param({"name__isw": "ann"}, ["Ann Smith", "ann-marie"], id="isw-any-case"),
    pytest.param({"name__isw": "smith"}, [], id="isw-not-contains"),
    pytest.param({"name__isw": "a_"}, ["a_b"], id="isw-underscore-is-literal"),
    pytest.param({"name__isw": "_b"}, [], id="isw-leading-underscore"),
    pytest.param({"name__isw": "100%"}, ["100% real"], id="isw-percent-is-literal"),
    pytest.param({"name__isw": ["bo", "AX"]}, ["Bob", "axb"], id="isw-repeated-is-or"),
    pytest.param({"email": "ann@example.org"}, ["Ann Smith"], id="email-any-case"),
    pytest.param({"email": "AB@EXAMPLE.ORG"}, ["a_b"], id="email-upper-case"),
    pytest.param({"email": "axb@example.org"}, ["axb"], id="email-stored-upper-case"),
    pytest.param(
        {"email": ["REAL@example.org", "r100@example.org"]},
        ["100% real", "100 real"],
        id="email-repeated-is-or",
    ),
    pytest.param({"email": "ann"}, [], id="email-is-exact"),
    pytest.param({"email": "nobody@example.org"}, [], id="email-unknown"),
    pytest.param(
        {"created_after": at(2).isoformat()},
        ["100% real", "100 real", "a_b", "axb"],
        id="created-after-is-exclusive",
    ),
    pytest.param(
        {"created_after": "2024-01-01T04:00:00+02:00"},
        ["100% real", "100 real", "a_b", "axb"],
        id="created-after-other-offset",
    ),
    pytest.param(
        {"created_before": at(2).isoformat()},
        ["Ann Smith", "ann-marie"],
        id="created-before-is-exclusive",
    ),
    pytest.param(
        {"created_after": at(1).isoformat(), "created_before": at(4).isoformat()},
        ["Bob", "100% real"],
        id="created-between",
    ),
    pytest.param(
        {"name__ic": "ann", "created_after": at(0).isoformat()}, ["ann-marie"], id="ic-and-created"
    ),
    pytest.param({"name__isw": "a", "email": "ab@example.org"}, ["a_b"], id="isw-and-email"),
    pytest.param(
        {"name__ic": ["real", "ann"], "name__isw": ["1", "a"], "created_before": at(4).isoformat()},
        ["Ann Smith", "ann-marie", "100% real"],
        id="ors-within-ands",
    ),
]


class TestFilters:
    @pytest.mark.parametrize(("params", "expected"), FILTER_CASES)
    async def test_filter_lists_matching_users(self, client, catalog, params, expected):
        page = await get_page(client, USERS, params)

        assert names(page) == expected
        assert page["next_cursor"] is None

    @pytest.mark.parametrize(
        ("registered", "asked"),
        [
            ("y@xn--exmple-cua.org", "y@xn--exmple-cua.org"),  # stored as y@exämple.org
            ("y@exämple.org", "Y@XN--EXMPLE-CUA.ORG"),
            ("zoe\u0308@nfd.org", "zoe\u0308@nfd.org"),  # stored composed (NFC): zoë
            ("zo\u00eb@nfd.org", "zoe\u0308@nfd.org"),
        ],
    )
    async def test_email_finds_the_user_written_as_registered(self, client, registered, asked):
        """The filter took the text as sent, while a write stores the email normalised: the
        address a user registered with found nothing, and registering it again was a 409."""
        user = await create_user(client, name="idn", email=registered)

        page = await get_page(client, USERS, {"email": asked})

        assert ids_of(page["items"]) == [user["id"]]

    async def test_no_filter_lists_every_user(self, client, catalog):
        page = await get_page(client, USERS)

        assert names(page) == [fields["name"] for fields, _ in CATALOG]

    async def test_items_are_whole_users(self, client, catalog):
        page = await get_page(client, USERS, {"name": "Bob"})

        assert page["items"] == [user for user in catalog if user["name"] == "Bob"]


# --- sort ----------------------------------------------------------------------------------

SORTS = ["name", "-name", "created_at", "-created_at", "id", "-id"]

# (name, created_at): ties in each; None keeps the transaction's now(), the same for every
# user of the test.
SORTABLE = [
    ("delta", at(2)),
    ("alpha", at(0)),
    ("charlie", None),
    ("alpha", at(2)),
    ("bravo", at(1)),
    ("delta", None),
    ("alpha", at(0)),
]


@pytest.fixture
async def sortable(client, connection) -> list[dict[str, Any]]:
    """The SORTABLE users as listed, in id order."""
    created_at = {}
    for name, created in SORTABLE:
        user = await create_user(client, name=name)
        if created is not None:
            created_at[user["id"]] = created
    await set_created_at(connection, "users", created_at)
    return await stored_users(client)


class TestSort:
    @pytest.mark.parametrize("sort", SORTS)
    async def test_one_page_is_in_sort_order(self, client, sortable, sort):
        page = await get_page(client, USERS, {"sort": sort})

        assert ids_of(page["items"]) == ids_of(in_sort_order(sortable, sort))

    @pytest.mark.parametrize("limit", [1, 2, 3])
    @pytest.mark.parametrize("sort", SORTS)
    async def test_pages_walk_every_user_once_in_sort_order(self, client, sortable, sort, limit):
        pages = await walk_listing(client, USERS, {"sort": sort}, limit=limit)

        assert ids_of(items_of(pages)) == ids_of(in_sort_order(sortable, sort))
        # No empty page at the end, even when the rows fill the last page exactly.
        assert len(pages) == math.ceil(len(sortable) / limit)

    @pytest.mark.parametrize("sort", SORTS)
    async def test_sort_applies_within_filters(self, client, sortable, sort):
        matching = [user for user in sortable if user["name"] != "bravo"]

        pages = await walk_listing(client, USERS, {"sort": sort, "name__ic": "L"}, limit=2)

        assert ids_of(items_of(pages)) == ids_of(in_sort_order(matching, sort))

    @pytest.mark.parametrize(
        "sort", ["email", "last_seen_at", "updated_at", "foo", "-foo", "Name", "--name", ""]
    )
    async def test_unsortable_field_is_refused(self, client, sort):
        response = await client.get(USERS, params={"sort": sort})

        assert assert_problem(response, 400)["parameter"] == "sort"


# --- cursors -------------------------------------------------------------------------------

# (the listing a cursor was made for, the listing it is then sent with)
OTHER_LISTINGS = [
    pytest.param({"name__ic": "a"}, {"name__ic": "b"}, id="other-filter-value"),
    pytest.param({}, {"email": "real@example.org"}, id="filter-added"),
    pytest.param({"created_after": at(0).isoformat()}, {}, id="filter-dropped"),
    pytest.param({"name__ic": "a"}, {"name__isw": "a"}, id="other-operator"),
    pytest.param({"sort": "name"}, {"sort": "-name"}, id="other-direction"),
    pytest.param({"sort": "created_at"}, {"sort": "id"}, id="other-sort"),
    pytest.param({"sort": "-id"}, {}, id="default-sort"),
]

# (sort, what a tampered cursor changes): refused, never read as some other position.
TAMPERED_CURSORS = [
    pytest.param("created_at", {"value": "not-a-date"}, id="date-garbage"),
    pytest.param("created_at", {"value": "2024-01-01T00:00:00"}, id="date-naive"),
    pytest.param("created_at", {"value": None}, id="date-null"),
    pytest.param("name", {"value": 5}, id="name-number"),
    pytest.param("name", {"value": None}, id="name-null"),
    pytest.param("id", {"value": "7"}, id="id-value-string"),
    pytest.param("id", {"value": None}, id="id-value-null"),
    pytest.param("name", {"id": -1}, id="negative-id"),
    pytest.param("name", {"id": BIGINT_MAX + 1}, id="id-beyond-bigint"),
]


class TestCursors:
    async def test_empty_result_has_no_cursor(self, client, catalog):
        page = await get_page(client, USERS, {"name": "nobody", "limit": 1})

        assert page == {"items": [], "next_cursor": None}

    @pytest.mark.parametrize("sort", ["name", "-created_at"])
    async def test_exactly_full_last_page_has_no_next_cursor(self, client, catalog, sort):
        params = {"sort": sort, "created_after": at(2).isoformat()}

        pages = await walk_listing(client, USERS, params, limit=2)

        assert [len(page["items"]) for page in pages] == [2, 2]
        assert [page["next_cursor"] is None for page in pages] == [False, True]

    @pytest.mark.parametrize("sort", ["name", "-name", "-created_at", "id"])
    async def test_user_deleted_between_pages_does_not_break_the_walk(self, client, sortable, sort):
        expected = in_sort_order(sortable, sort)
        first = await get_page(client, USERS, {"sort": sort, "limit": 2})
        for gone in expected[1:3]:  # the cursor's own row, then the next page's first row
            assert (await client.delete(f"{USERS}/{gone['id']}")).status_code == 204

        rest = await walk_listing(
            client, USERS, {"sort": sort, "cursor": first["next_cursor"]}, limit=2
        )

        assert ids_of(first["items"]) == ids_of(expected[:2])
        assert ids_of(items_of(rest)) == ids_of(expected[3:])

    @pytest.mark.parametrize(("made_for", "sent_with"), OTHER_LISTINGS)
    async def test_cursor_of_another_listing_is_refused(self, client, catalog, made_for, sent_with):
        cursor = (await get_page(client, USERS, {**made_for, "limit": 1}))["next_cursor"]
        assert cursor is not None

        response = await client.get(USERS, params={**sent_with, "cursor": cursor})

        assert assert_problem(response, 400)["parameter"] == "cursor"

    @pytest.mark.parametrize("sort", [None, "name", "-created_at"])
    async def test_cursor_of_the_devices_listing_is_refused(self, client, sort):
        for name in ("a", "b"):
            await create_user(client, name=name)
            await create_device(client, name=name)
        params = {"sort": sort} if sort else {}
        cursor = (await get_page(client, DEVICES, {**params, "limit": 1}))["next_cursor"]

        response = await client.get(USERS, params={**params, "cursor": cursor})

        assert assert_problem(response, 400)["parameter"] == "cursor"

    @pytest.mark.parametrize("sort", [None, "name", "-created_at"])
    @pytest.mark.parametrize("cursor", INVALID_CURSORS)
    async def test_garbage_cursor_is_refused(self, client, catalog, cursor, sort):
        params = {"cursor": cursor, **({"sort": sort} if sort else {})}

        response = await client.get(USERS, params=params)

        assert assert_problem(response, 400)["parameter"] == "cursor"

    @pytest.mark.parametrize(("sort", "changes"), TAMPERED_CURSORS)
    async def test_tampered_cursor_is_refused(self, client, catalog, sort, changes):
        cursor = (await get_page(client, USERS, {"sort": sort, "limit": 1}))["next_cursor"]

        response = await client.get(
            USERS, params={"sort": sort, "cursor": rewrite_cursor(cursor, **changes)}
        )

        assert assert_problem(response, 400)["parameter"] == "cursor"


# --- count and fields --------------------------------------------------------------------


class TestCount:
    @pytest.mark.parametrize(
        ("params", "total"),
        [
            pytest.param({}, len(CATALOG), id="all"),
            pytest.param({"name__ic": "R"}, 3, id="filtered"),
            pytest.param({"created_after": at(2).isoformat(), "sort": "-name"}, 4, id="sorted"),
            pytest.param({"email": "nobody@example.org"}, 0, id="none"),
        ],
    )
    async def test_exact_count_totals_every_match_on_every_page(
        self, client, catalog, params, total
    ):
        pages = await walk_listing(client, USERS, {**params, "count": "exact"}, limit=1)

        assert {page["total"] for page in pages} == {total}
        assert {page["total_is_estimate"] for page in pages} == {False}
        assert len(items_of(pages)) == total

    async def test_estimated_count_is_an_integer_marked_estimate(self, client, catalog):
        params = {"count": "estimated", "name__isw": "ann", "limit": 1}
        page = await get_page(client, USERS, params)

        assert type(page["total"]) is int
        assert page["total"] >= 0
        assert page["total_is_estimate"] is True
        assert names(page) == ["Ann Smith"]

    @pytest.mark.parametrize("params", [{}, {"count": "none"}], ids=["no-count", "count-none"])
    async def test_without_count_page_has_no_total(self, client, catalog, params):
        page = await get_page(client, USERS, params)

        assert page.keys() == {"items", "next_cursor"}

    @pytest.mark.parametrize("count", ["bogus", "EXACT", ""])
    async def test_unknown_count_mode_is_refused(self, client, count):
        response = await client.get(USERS, params={"count": count})

        assert assert_problem(response, 422)["errors"][0]["loc"] == ["query", "count"]


class TestFields:
    @pytest.mark.parametrize(
        ("fields", "keys"),
        [
            pytest.param("id,name", {"id", "name"}, id="two"),
            pytest.param(" email , created_at ", {"email", "created_at"}, id="spaces"),
        ],
    )
    async def test_items_have_exactly_the_fields_asked_for(self, client, catalog, fields, keys):
        page = await get_page(client, USERS, {"fields": fields, "count": "exact"})

        assert page["items"] == [{key: user[key] for key in keys} for user in catalog]
        assert page["total"] == len(catalog)

    async def test_pages_of_some_fields_walk_every_user(self, client, catalog):
        pages = await walk_listing(client, USERS, {"fields": "id", "sort": "-created_at"}, limit=3)

        assert items_of(pages) == [{"id": user["id"]} for user in catalog[::-1]]

    @pytest.mark.parametrize("fields", ["nonexistent", "id,nonexistent", "status", "", ","])
    async def test_unknown_field_is_refused(self, client, fields):
        response = await client.get(USERS, params={"fields": fields})

        assert assert_problem(response, 400)["parameter"] == "fields"


# --- bad query strings and injection -------------------------------------------------------


class TestBadQuery:
    @pytest.mark.parametrize(
        "parameter", ["emial", "Name", "status", "q", "has_owner", "attr.rack", "page"]
    )
    async def test_unknown_parameter_is_refused_by_name(self, client, parameter):
        response = await client.get(USERS, params={parameter: "1"})

        assert assert_problem(response, 400)["parameter"] == parameter

    @pytest.mark.parametrize(
        ("parameter", "value"),
        [
            ("created_after", "not-a-date"),
            ("created_after", "2024-01-01T00:00:00"),
            ("created_before", "2024-02-30T00:00:00Z"),
            ("limit", "0"),
            ("name", ""),
            ("name__ic", "x" * 101),
            ("name__isw", ""),
            ("email", "a\x00@example.org"),
        ],
    )
    async def test_bad_value_is_refused(self, client, parameter, value):
        response = await client.get(USERS, params={parameter: value})

        assert assert_problem(response, 422)["errors"][0]["loc"][:2] == ["query", parameter]


class TestInjection:
    @pytest.mark.parametrize("parameter", ["name", "name__ic", "name__isw"])
    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_value_is_matched_as_data(self, client, parameter, value):
        decoy = await create_user(client, name="decoy")
        user = await create_user(client, name=value)

        page = await get_page(client, USERS, {parameter: value})

        assert ids_of(page["items"]) == [user["id"]]
        assert ids_of(await stored_users(client)) == [decoy["id"], user["id"]]

    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_email_is_matched_as_data(self, client, value):
        user = await create_user(client, email="ann@example.org")

        page = await get_page(client, USERS, {"email": value})

        assert page["items"] == []
        assert await stored_users(client) == [user]


# --- query plans -------------------------------------------------------------------------------

MANY_USERS = """
INSERT INTO users (name, email, created_at)
SELECT
    (ARRAY['ada', 'alan', 'grace', 'linus'])[1 + g % 4] || ' ' || left(md5(g::text), 8),
    'user' || g || '@example.org',
    timestamptz '2024-01-01 00:00Z' + g * interval '1 minute'
FROM generate_series(1, 3000) AS g
"""

SORT_INDEXES = {
    "name": "ix_users_name_id",
    "created_at": "ix_users_created_at_id",
    "id": "pk_users",
}
TRIGRAMS = "ix_users_name_trgm"


@pytest.fixture
async def many_users(connection) -> None:
    """3,000 users with statistics, for the planner to choose as it would at scale."""
    await connection.execute(text(MANY_USERS))
    await settle(connection, "users")


class TestQueryPlans:
    """No listing reads the whole table: each filter narrows through its index, each sort reads
    an index in order. A dropped index makes the planner fall back on a Seq Scan (or a Sort)."""

    @pytest.mark.parametrize(
        ("params", "index"),
        [
            pytest.param({"name": "alan c4ca4238"}, "ix_users_name_id", id="name"),
            pytest.param({"name__ic": "c4ca42"}, TRIGRAMS, id="name-contains"),
            pytest.param({"name__isw": "ALAN C4"}, TRIGRAMS, id="name-starts-with"),
            pytest.param({"email": "USER42@example.org"}, "uq_users_email_lower", id="email"),
            pytest.param(
                {"created_after": "2024-01-03T01:00:00Z"},
                "ix_users_created_at_id",
                id="created-after",
            ),
            pytest.param(
                {"created_before": "2024-01-01T01:00:00Z"},
                "ix_users_created_at_id",
                id="created-before",
            ),
        ],
    )
    async def test_filter_is_served_by_its_index(
        self, client, connection, many_users, params, index
    ):
        params = {**params, "count": "exact", "limit": 1}
        total = (await get_page(client, USERS, params))["total"]
        plans = await explain_listing(client, connection, USERS, params)

        # The page, and the count unless the page is every match (one row: it counts itself).
        assert len(plans) == (1 if total <= 1 else 2)
        for plan in plans:
            assert "Seq Scan" not in plan.node_types
        assert index in set().union(*(plan.indexes for plan in plans))

    @pytest.mark.parametrize("position", [0, 500, 2500], ids=["first", "middle", "late"])
    @pytest.mark.parametrize("sort", SORTS)
    async def test_sort_reads_its_index_in_order(
        self, client, connection, many_users, sort, position
    ):
        params = {"sort": sort}
        if position:
            params["cursor"] = await cursor_after(client, USERS, params, position)

        (plan,) = await explain_listing(client, connection, USERS, params)

        assert not plan.node_types & {"Seq Scan", "Sort", "Incremental Sort"}
        assert SORT_INDEXES[sort.removeprefix("-")] in plan.indexes
