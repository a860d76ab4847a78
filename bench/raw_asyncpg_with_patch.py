"""Peer C (../shared/peers/bound_raw_asyncpg.py) plus the one route it lacks for this benchmark,
written the same way: PATCH a device's name with one prepared UPDATE ... RETURNING."""

import bound_raw_asyncpg as peer
import orjson
from fastapi import Request, Response

app = peer.app
UPDATE = "UPDATE device SET name = $2 WHERE id = $1 RETURNING id, name"


@app.patch("/api/v1/device/{device_id}")
async def update_device(device_id: int, request: Request) -> Response:
    try:
        name = orjson.loads(await request.body())["name"]
        if not isinstance(name, str) or len(name) > 100:
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return Response(b'{"detail":"invalid body"}', status_code=422, media_type=peer.JSON)
    row = await peer.pool.fetchrow(UPDATE, device_id, name)
    if row is None:
        return Response(peer.NOT_FOUND, status_code=404, media_type=peer.JSON)
    return Response(orjson.dumps({"id": row[0], "name": row[1]}), media_type=peer.JSON)
