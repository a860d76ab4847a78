"""Helpers shared by the HTTP API tests: requests, RFC 9457 problems, and bad input to send."""

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

USERS = "/api/v1/users"
DEVICES = "/api/v1/devices"
PROBLEM_JSON = "application/problem+json"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}
BIGINT_MAX = 2**63 - 1
# What a device has in each field its creation leaves out (but its name).
DEVICE_DEFAULTS: dict[str, Any] = {
    "serial_number": None,
    "model": None,
    "status": "active",
    "owner_id": None,
    "tags": [],
    "attributes": {},
    "last_seen_at": None,
}


# --- requests ------------------------------------------------------------------------------


async def _create(client: AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def create_user(client: AsyncClient, **fields: Any) -> dict[str, Any]:
    return await _create(client, USERS, {"name": "ann", **fields})


async def create_device(client: AsyncClient, **fields: Any) -> dict[str, Any]:
    return await _create(client, DEVICES, {"name": "pi", **fields})


async def bulk_create(client: AsyncClient, items: list[dict[str, Any]]) -> list[int]:
    """The ids `POST /devices/bulk` created, in order."""
    response = await client.post(f"{DEVICES}/bulk", json=items)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    ids: list[int] = response.json()["ids"]
    return ids


async def _fetch(client: AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


async def fetch_user(client: AsyncClient, user_id: int) -> dict[str, Any]:
    return await _fetch(client, f"{USERS}/{user_id}")


async def fetch_device(client: AsyncClient, device_id: int) -> dict[str, Any]:
    return await _fetch(client, f"{DEVICES}/{device_id}")


async def stored(client: AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every item `url` lists, as the list endpoint shows them (one page is enough for a test)."""
    response = await client.get(url, params={"limit": 1000})
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def stored_users(client: AsyncClient) -> list[dict[str, Any]]:
    return await stored(client, USERS)


async def stored_devices(client: AsyncClient) -> list[dict[str, Any]]:
    return await stored(client, DEVICES)


async def walk_pages(
    client: AsyncClient, url: str, *, limit: int, cursor: str | None = None
) -> list[dict[str, Any]]:
    """Every page of `url` from `cursor` on, following next_cursor until it is null."""
    pages = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(url, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def items_of(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for page in pages for item in page["items"]]


async def send_raw(
    client: AsyncClient, method: str, url: str, body: bytes, content_type: str | None
) -> Response:
    """`body` exactly as given, with `content_type` (or no content type at all)."""
    headers = {"content-type": content_type} if content_type else {}
    return await client.request(method, url, content=body, headers=headers)


def assert_problem(
    response: Response, status: int, detail: str | None = None, *, root_path: str = ""
) -> dict[str, Any]:
    """An RFC 9457 problem with the given status (and detail, when given), about the request's
    path as sent (its escapes kept) under the `root_path` the app is served at."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_FIELDS
    assert body["status"] == status
    sent_path = response.request.url.raw_path.partition(b"?")[0].decode("ascii")
    assert body["instance"] == root_path + sent_path
    assert isinstance(body["title"], str)
    assert isinstance(body["type"], str)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if detail is not None:
        assert body["detail"] == detail
    return body


@dataclass
class Write:
    """One write a test makes: a POST to a collection, or a PUT or PATCH of a stored item.

    `valid` is a body the write accepts, which a test's own fields are merged over; `stored` is
    what `collection` lists before the write, and must still list after a refused one.
    """

    method: str
    url: str
    collection: str
    valid: dict[str, Any]
    stored: list[dict[str, Any]]

    async def send(self, client: AsyncClient, fields: dict[str, Any]) -> Response:
        return await client.request(self.method, self.url, json={**self.valid, **fields})

    async def send_raw(
        self, client: AsyncClient, body: bytes, content_type: str | None
    ) -> Response:
        return await send_raw(client, self.method, self.url, body, content_type)

    async def assert_unchanged(self, client: AsyncClient) -> None:
        assert await stored(client, self.collection) == self.stored


# --- bad input shared by users and devices -------------------------------------------------

# Each is merged into a valid body; every one must be refused with a 422 and nothing stored.
INVALID_NAMES = [
    pytest.param({"name": ""}, id="name-empty"),
    pytest.param({"name": "   "}, id="name-blank"),
    pytest.param({"name": "\t\n "}, id="name-whitespace"),
    pytest.param({"name": "x" * 101}, id="name-101-chars"),
    pytest.param({"name": "x" * 10_000}, id="name-10000-chars"),
    pytest.param({"name": "a\x00b"}, id="name-nul"),
    pytest.param({"name": None}, id="name-null"),
    pytest.param({"name": 123}, id="name-number"),
    pytest.param({"name": ["x"]}, id="name-list"),
    pytest.param({"name": {"a": 1}}, id="name-object"),
]

# Fields only the server sets, and one it does not know: refused like an invalid value.
SERVER_SET_FIELDS = [
    pytest.param({"id": 7}, id="client-id"),
    pytest.param({"created_at": "2024-01-01T00:00:00Z"}, id="client-created-at"),
    pytest.param({"updated_at": "2024-01-01T00:00:00Z"}, id="client-updated-at"),
    pytest.param({"colour": "red"}, id="unknown-field"),
]

# Raw request bodies (sent as application/json) that must be refused with a 422.
INVALID_JSON = [
    pytest.param(b'{"name": "x"', id="truncated"),
    pytest.param(b'{"name": x}', id="malformed"),
    pytest.param(b'{"name": "x",}', id="trailing-comma"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"x"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="number"),
    pytest.param(b'{"name": "\\ud800"}', id="name-lone-high-surrogate"),
    pytest.param(b'{"name": "a\\udc00b"}', id="name-lone-low-surrogate"),
    pytest.param(b'{"name": "\\u0000"}', id="name-escaped-nul"),
    pytest.param(b'{"name": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"name": "\xc3"}', id="truncated-utf8"),
    pytest.param(b'{"name": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param(b'{"name": NaN}', id="name-nan"),
]

# Bodies that are not JSON at all, by content type: refused with a 4xx problem, never a 500.
WRONG_CONTENT_TYPES = [
    pytest.param(b'{"name": "x"}', "text/plain", id="json-as-text"),
    pytest.param(b"name=x", "application/x-www-form-urlencoded", id="form"),
    pytest.param(b"<item><name>x</name></item>", "application/xml", id="xml"),
    pytest.param(b'{"name": "x"}', None, id="no-content-type"),
]

# Path ids that are not a positive 64-bit integer: refused with a 422.
BAD_IDS = [
    pytest.param("0", id="zero"),
    pytest.param("-1", id="negative"),
    pytest.param(str(2**63), id="beyond-bigint"),
    pytest.param(str(10**30), id="huge"),
    pytest.param("abc", id="word"),
    pytest.param("1.5", id="fraction"),
]

# Page sizes outside 1..1000, or not a whole number: refused with a 422.
BAD_LIMITS = ["0", "-1", "1001", "abc", "1.5", ""]

# Paging cursors the server never hands out: a 400.
INVALID_CURSORS = [
    pytest.param("garbage", id="garbage"),
    pytest.param("!!!!", id="not-base64"),
    pytest.param("eyJhZnRlciI6LTF9", id="negative-after"),  # {"after":-1}
    pytest.param("eyJhZnRlciI6IngifQ", id="string-after"),  # {"after":"x"}
    pytest.param("eyJhZnRlciI6dHJ1ZX0", id="boolean-after"),  # {"after":true}
    pytest.param("eyJiZWZvcmUiOjF9", id="wrong-key"),  # {"before":1}
    pytest.param("W10", id="json-array"),  # []
    pytest.param("eyJhZnRlciI6OTIyMzM3MjAzNjg1NDc3NTgwOH0", id="beyond-bigint"),  # 2**63
    pytest.param("A" * 1025, id="too-long"),  # was a 422, the one bad cursor not a 400
    pytest.param("", id="empty"),  # was the first page again, a loop for a client sending it
]


# --- listings: pages with filters, sort orders, cursors, query plans -----------------------

# Query values that look like SQL (or array and LIKE syntax): a listing must treat them as data.
INJECTIONS = [
    pytest.param("'; DROP TABLE devices; --", id="drop-table"),
    pytest.param("x'); DELETE FROM users; --", id="delete"),
    pytest.param("' OR '1'='1", id="or-true"),
    pytest.param("{lab,edge}", id="array-literal"),
    pytest.param("$1::text", id="placeholder"),
    pytest.param("%_\\", id="like-wildcards"),
]


async def get_page(
    client: AsyncClient, url: str, params: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def ids_of(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


async def walk_listing(
    client: AsyncClient, url: str, params: dict[str, Any], *, limit: int
) -> list[dict[str, Any]]:
    """Every page of `url` with `params` (filters, sort), following next_cursor to the end."""
    pages = [await get_page(client, url, {**params, "limit": limit})]
    while pages[-1]["next_cursor"] is not None:
        cursor = pages[-1]["next_cursor"]
        pages.append(await get_page(client, url, {**params, "limit": limit, "cursor": cursor}))
    return pages


async def cursor_after(client: AsyncClient, url: str, params: dict[str, Any], rows: int) -> str:
    """The next_cursor once the first `rows` rows of the listing have been read."""
    cursor = None
    while rows:
        limit = min(rows, 1000)
        extra = {"cursor": cursor} if cursor else {}
        cursor = (await get_page(client, url, {**params, "limit": limit, **extra}))["next_cursor"]
        assert cursor is not None
        rows -= limit
    assert cursor is not None
    return cursor


def in_sort_order(items: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """`items` as `sort` (such as "-last_seen_at") orders them: by the field, ties by id, both
    in the sort's direction; items whose field is null come last, also by id."""
    key = sort.removeprefix("-")
    descending = sort.startswith("-")

    def value(item: dict[str, Any]) -> Any:
        raw = item[key]
        return datetime.fromisoformat(raw) if key.endswith("_at") else raw

    present = [item for item in items if item[key] is not None]
    missing = [item for item in items if item[key] is None]
    return [
        *sorted(present, key=lambda item: (value(item), item["id"]), reverse=descending),
        *sorted(missing, key=lambda item: item["id"], reverse=descending),
    ]


def rewrite_cursor(cursor: str, **changes: Any) -> str:
    """`cursor` with its sort `value` or row `id` replaced, as a client tampering with it would.

    Knows the cursor format: base64url (unpadded) JSON of [fingerprint, value, id].
    """
    fingerprint, value, row_id = json.loads(
        base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    )
    fields = {"value": value, "id": row_id, **changes}
    payload = json.dumps([fingerprint, fields["value"], fields["id"]]).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


async def set_created_at(
    connection: AsyncConnection, table: str, times: dict[int, datetime]
) -> None:
    """created_at is the server's: the API cannot set it, so a test arranges it in SQL."""
    for row_id, when in times.items():
        await connection.execute(
            text(f"UPDATE {table} SET created_at = :when WHERE id = :id"),
            {"when": when, "id": row_id},
        )


async def settle(connection: AsyncConnection, table: str) -> None:
    """Leave `table` as autovacuum would after a bulk insert: pending GIN entries merged into
    their indexes (the planner shuns an index with a long pending list) and statistics fresh."""
    await connection.execute(
        text(
            "SELECT gin_clean_pending_list(i.indexrelid::regclass) FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_am AS am ON am.oid = c.relam"
            " WHERE i.indrelid = CAST(:table AS regclass) AND am.amname = 'gin'"
        ),
        {"table": table},
    )
    await connection.execute(text(f"ANALYZE {table}"))


@dataclass(frozen=True)
class Plan:
    """An EXPLAIN (FORMAT JSON) plan, as the list of its nodes."""

    nodes: list[dict[str, Any]]

    @property
    def node_types(self) -> set[str]:
        return {node["Node Type"] for node in self.nodes}

    @property
    def indexes(self) -> set[str]:
        return {node["Index Name"] for node in self.nodes if "Index Name" in node}


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(child for sub in node.get("Plans", []) for child in _plan_nodes(sub))]


async def explain_listing(
    client: AsyncClient,
    connection: AsyncConnection,
    url: str,
    params: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> list[Plan]:
    """The plan of each SELECT the app runs for GET `url` with `params` (but the check for
    API tokens, which the app runs at most once per AUTH_CACHE_TTL).

    Each statement is explained as sent, with the parameters it was sent with, and with
    sequential scans disabled: a Seq Scan then shows only where no index can serve the query.
    """
    executed: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "first_token" not in statement:
            executed.append((statement, parameters))

    event.listen(connection.sync_connection, "before_cursor_execute", record)
    try:
        await get_page(client, url, params, headers)
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", record)
    assert executed
    await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    plans = []
    for statement, parameters in executed:
        result = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        document = result.scalar_one()
        if isinstance(document, str):
            document = json.loads(document)
        plans.append(Plan(_plan_nodes(document[0]["Plan"])))
    return plans


def deletes_fetching_rows(statements: list[str], table: str) -> list[str]:
    """The DELETE statements of `table` among `statements` that send back what they deleted: a
    bulk delete that does holds every row's key in the process (db.session.UNSYNCHRONIZED)."""
    return [
        sql
        for sql in statements
        if f"DELETE FROM {table} " in sql and "RETURNING" in sql.rpartition("DELETE")[2]
    ]
