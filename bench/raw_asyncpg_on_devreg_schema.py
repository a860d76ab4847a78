"""Peer C's way (../shared/peers/bound_raw_asyncpg.py: its asyncpg pool and prepared statements,
orjson, no checks beyond a name's) on devreg's database: the same devices table, with its
indexes, version trigger and change log, the same routes, and the same device as JSON. Beside C
(a table of `id, name`), it says what devreg's data costs; beside devreg, what devreg's Python
costs (validation, problems, ETags, authentication, the request log, admission)."""

import asyncpg
import bound_raw_asyncpg as peer
import orjson
from fastapi import Request, Response

app = peer.app

# Who writes, for the change log's trigger, set inside the statement as devreg does (ACTING).
_ACTING = "(SELECT set_config('devreg.actor', $1, true)) IS NOT NULL"
_ACTOR = '{"user_id": null, "token_id": null, "request_id": null}'
_COLUMNS = (
    "d.id, d.name, d.serial_number, d.model, d.status, d.owner_id, u.name, d.tags, "
    "d.attributes::text, d.last_seen_at, d.created_at, d.updated_at, d.version"
)
_WITH_OWNER = f"SELECT {_COLUMNS} FROM d LEFT JOIN users AS u ON u.id = d.owner_id"
GET_ONE = f"WITH d AS (SELECT * FROM devices WHERE id = $1) {_WITH_OWNER}"
LIST = f"WITH d AS (SELECT * FROM devices ORDER BY id LIMIT $1) {_WITH_OWNER} ORDER BY d.id"
INSERT = (
    f"WITH d AS (INSERT INTO devices (name) SELECT $2 WHERE {_ACTING} RETURNING *) {_WITH_OWNER}"
)
UPDATE = (
    "WITH d AS (UPDATE devices SET name = $3 WHERE id = $2 AND "
    f"{_ACTING} RETURNING *) {_WITH_OWNER}"
)
HEARTBEAT = "UPDATE devices SET last_seen_at = now() WHERE id = $1 RETURNING id"
_INVALID = Response(b'{"detail":"invalid body"}', status_code=422, media_type=peer.JSON)


def _device(row: asyncpg.Record) -> dict[str, object]:
    owner = None if row[5] is None else {"id": row[5], "name": row[6]}
    return {
        "id": row[0], "name": row[1], "serial_number": row[2], "model": row[3],
        "status": row[4], "owner_id": row[5], "owner": owner, "tags": row[7],
        "attributes": orjson.Fragment(row[8]), "last_seen_at": row[9],
        "created_at": row[10], "updated_at": row[11], "version": row[12],
    }  # fmt: skip


def _found(row: asyncpg.Record | None, status_code: int = 200) -> Response:
    if row is None:
        return Response(peer.NOT_FOUND, status_code=404, media_type=peer.JSON)
    return Response(orjson.dumps(_device(row)), status_code=status_code, media_type=peer.JSON)


async def _name(request: Request) -> str | None:
    try:
        name = orjson.loads(await request.body())["name"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and 0 < len(name) <= 100 else None


@app.get("/api/v1/devices/{device_id}")
async def read_device(device_id: int) -> Response:
    return _found(await peer.pool.fetchrow(GET_ONE, device_id))


@app.get("/api/v1/devices")
async def read_devices(limit: int = 100) -> Response:
    rows = await peer.pool.fetch(LIST, max(1, min(limit, 1000)))
    items = [_device(row) for row in rows]
    return Response(orjson.dumps({"items": items, "next_cursor": None}), media_type=peer.JSON)


@app.post("/api/v1/devices")
async def create_device(request: Request) -> Response:
    name = await _name(request)
    if name is None:
        return _INVALID
    return _found(await peer.pool.fetchrow(INSERT, _ACTOR, name), status_code=201)


@app.patch("/api/v1/devices/{device_id}")
async def update_device(device_id: int, request: Request) -> Response:
    name = await _name(request)
    if name is None:
        return _INVALID
    return _found(await peer.pool.fetchrow(UPDATE, _ACTOR, device_id, name))


@app.post("/api/v1/devices/{device_id}/heartbeat")
async def heartbeat(device_id: int) -> Response:
    if await peer.pool.fetchval(HEARTBEAT, device_id) is None:
        return Response(peer.NOT_FOUND, status_code=404, media_type=peer.JSON)
    return Response(status_code=204)
