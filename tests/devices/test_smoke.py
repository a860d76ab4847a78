async def test_create_then_get(client):
    created = await client.post("/api/v1/devices", json={"name": "pi"})
    assert created.status_code == 201
    fetched = await client.get(created.headers["location"])
    assert fetched.json()["name"] == "pi"


async def test_isolated(client):
    listed = await client.get("/api/v1/devices")
    assert listed.json()["items"] == []
