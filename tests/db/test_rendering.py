"""Listings' items, and a device read by id, are written as JSON by PostgreSQL
(db/rendering.py): each must be exactly what the item's Pydantic model writes for the same row,
whatever the row holds."""

import json
from typing import Any

import pytest
from httpx import AsyncClient
from pydantic import BaseModel
from sqlalchemy import Enum, column, select, text, values
from sqlalchemy.ext.asyncio import AsyncConnection

from devreg.changes.schemas import ChangeRead
from devreg.db.driver import DIALECT
from devreg.db.rendering import JsonShape, json_text
from tests.api import DEVICES, USERS, create_device, create_user, fetch_device, fetch_user, get_page


def exactly(value: Any) -> str:
    """JSON data as text: tells 1 from 1.0 and from True, which == does not."""
    return json.dumps(value)


AWKWARD_TEXT = 'quote " backslash \\ tab \t bell \x07 del \x7f é 中文 עברית 🚀 \u2028'

DEVICES_OF_EVERY_SHAPE: list[dict[str, Any]] = [
    {"name": "bare"},
    {"name": "whole second", "last_seen_at": "2026-01-01T00:00:00Z"},
    {"name": "half second", "last_seen_at": "2026-01-01T00:00:00.5Z"},
    {"name": "one microsecond", "last_seen_at": "2026-01-01T00:00:00.000001+02:00"},
    {"name": "early year", "last_seen_at": "0005-03-01T12:00:00Z"},
    {
        "name": AWKWARD_TEXT,
        "serial_number": AWKWARD_TEXT,
        "model": "m",
        "status": "retired",
        "tags": ["a", AWKWARD_TEXT],
        "attributes": {
            AWKWARD_TEXT: AWKWARD_TEXT,
            "float": 1.5,
            "whole float": 2.0,
            "small": 1e-7,
            "large": 1.5e300,
            "int": 9007199254740993,
            "negative": -3,
            "flags": [True, False, None],
            "nested": {"deeper": {"list": [1, "two", {"three": 3.25}]}},
            "empty": {},
        },
    },
]


async def test_devices_listed_as_read_one_by_one(client: AsyncClient) -> None:
    owner = await create_user(client, name=AWKWARD_TEXT)
    created = [await create_device(client, **fields) for fields in DEVICES_OF_EVERY_SHAPE]
    created.append(await create_device(client, name="owned", owner_id=owner["id"]))
    listed = (await get_page(client, DEVICES, {"limit": 100, "sort": "id"}))["items"]
    fetched = [await fetch_device(client, device["id"]) for device in created]
    # A listing and a GET are written by PostgreSQL; a create's answer by the model.
    assert exactly(listed) == exactly(created)
    assert exactly(fetched) == exactly(created)
    assert listed[1]["last_seen_at"] == "2026-01-01T00:00:00Z"
    assert listed[2]["last_seen_at"] == "2026-01-01T00:00:00.500000Z"
    assert listed[3]["last_seen_at"] == "2025-12-31T22:00:00.000001Z"
    assert listed[4]["last_seen_at"] == "0005-03-01T12:00:00Z"
    assert listed[-1]["owner"] == {"id": owner["id"], "name": owner["name"]}


async def test_users_listed_as_read_one_by_one(client: AsyncClient) -> None:
    created = [
        await create_user(client, name=AWKWARD_TEXT, email="a@example.org"),
        await create_user(client, name="no email"),
    ]
    listed = (await get_page(client, USERS, {"limit": 100, "sort": "id"}))["items"]
    assert exactly(listed) == exactly([await fetch_user(client, user["id"]) for user in created])


async def test_changes_listed_as_their_model_writes_them(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    device = await create_device(client, **DEVICES_OF_EVERY_SHAPE[-1])
    await client.patch(f"{DEVICES}/{device['id']}", json={"attributes": {"x": 0.1}})
    await client.delete(f"{DEVICES}/{device['id']}")
    listed = (await get_page(client, "/api/v1/changes", {"limit": 100, "sort": "id"}))["items"]
    rows = (await connection.execute(text("SELECT * FROM changes ORDER BY id"))).mappings()
    expected = [ChangeRead.model_validate(dict(row)).model_dump(mode="json") for row in rows]
    assert [change["action"] for change in listed] == ["create", "update", "delete"]
    assert exactly(listed) == exactly(expected)


@pytest.mark.parametrize(
    ("members", "constrained", "quoted"),
    [
        (("active", "retired"), True, True),
        (("active", "retired"), False, False),  # nothing keeps other text out of the column
        (('say "hi"', "back\\slash", "tab\t"), True, False),
    ],
)
async def test_an_enums_values_are_json_strings(
    connection: AsyncConnection, members: tuple[str, ...], constrained: bool, quoted: bool
) -> None:
    """Quoted as they are (cheaper than to_json) only when none needs escaping and the database
    holds the column to them."""
    kind = Enum(*members, name="kind", native_enum=False, create_constraint=constrained)
    rows = values(column("kind", kind), name="rows").data([(member,) for member in members])
    written = json_text(rows.c.kind)
    assert ("to_json" not in str(written.compile(dialect=DIALECT))) is quoted
    assert [json.loads(each) for each in await connection.scalars(select(written))] == list(members)


@pytest.mark.parametrize("fields", ["id", "name,id", "owner,last_seen_at,attributes"])
async def test_sparse_fields_keep_the_models_order(client: AsyncClient, fields: str) -> None:
    device = await create_device(client, last_seen_at="2026-01-01T00:00:00.25Z")
    [item] = (await get_page(client, DEVICES, {"fields": fields}))["items"]
    full = await fetch_device(client, device["id"])
    assert list(item) == [name for name in full if name in fields.split(",")]
    assert exactly(item) == exactly({name: full[name] for name in item})


def test_a_shape_must_name_every_field_of_its_model_in_order() -> None:
    class Item(BaseModel):
        id: int
        name: str

    with pytest.raises(TypeError, match="Item's fields"):
        JsonShape(Item, {"name": text("name"), "id": text("id")}, id_column=text("id"))


def test_a_shape_refuses_fields_its_model_lacks() -> None:
    class Item(BaseModel):
        id: int

    shape = JsonShape(Item, {"id": text("id")}, id_column=text("id"))
    with pytest.raises(ValueError, match="nope"):
        shape.select(frozenset({"id", "nope"}))
