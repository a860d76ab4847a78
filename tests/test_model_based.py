"""Model-based (stateful) tests: Hypothesis drives the HTTP API with random sequences of writes
and reads, and a plain-Python model says what the registry should hold after each.

The state machine runs in a thread of its own (Hypothesis is synchronous); each request is sent
to the test's event loop, where the app serves it inside the test's transaction. Each example
runs in a savepoint of that transaction, rolled back when the example ends.
"""

import asyncio
import itertools
import json
import os
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from httpx import AsyncClient, Response
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.api import DEVICE_DEFAULTS, DEVICES, PROBLEM_JSON, USERS
from tests.support import RunningApp, forget_authentication

T = TypeVar("T")

CHANGES = "/api/v1/changes"
TOKENS = "/api/v1/tokens"
FIELDS = ("name", *DEVICE_DEFAULTS)
STATUSES = ("active", "inactive", "retired")
# Heartbeats set last_seen_at to the transaction's start: one instant for the whole test.
HEARTBEAT = "heartbeat"
EARLY, LATE = "2001-02-03T04:05:06Z", "2099-02-03T04:05:06Z"
SEEN_ORDER = {EARLY: 0, HEARTBEAT: 1, LATE: 2}

# Small enough for the suite (a few seconds), and the same examples every run. To hunt, set
# MODEL_EXAMPLES (random examples then, `--hypothesis-seed` to pick them), MODEL_STEPS, and
# MODEL_NOSHRINK=1 to see a failure at once rather than after minutes of shrinking.
STEPS = int(os.environ.get("MODEL_STEPS", "30"))
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "25"))
HUNTING = "MODEL_EXAMPLES" in os.environ
SORTS = ["id", "-id", "name", "-name", "created_at", "-created_at", "last_seen_at", "-last_seen_at"]

names = st.sampled_from(["a", "b", "A", "ab", "b a", "Ba", "pi", " pi ", "a b"])
serials = st.none() | st.sampled_from(["S1", "S2", "S3", "S4"])
models = st.none() | st.sampled_from(["m1", "m2"])
statuses = st.sampled_from(STATUSES)
tag_lists = st.lists(st.sampled_from(["lab", "edge", "x", " lab"]), max_size=3)
attribute_maps = st.dictionaries(
    st.sampled_from(["k", "rack"]),
    st.sampled_from([1, 1.0, 2, "1", True, None, "a"]),
    max_size=2,
)
# EARLY again, in another offset: the same instant.
seen_times = st.none() | st.sampled_from([EARLY, LATE, "2001-02-03T05:05:06+01:00"])


def _problem_or_fail(response: Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM_JSON), response.text


def _tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tag.strip() for tag in tags))


def _normal(field: str, value: Any) -> Any:
    """A field's value as the registry stores it."""
    if field in ("name", "serial_number", "model") and isinstance(value, str):
        return value.strip()
    if field == "tags":
        return _tags(value)
    if field == "last_seen_at" and value not in (None, HEARTBEAT):
        return _seen(value)
    return value


def _jsonb(value: Any) -> Any:
    """A JSON value as PostgreSQL's jsonb compares it: numbers by value (`1.0` is `1`), and
    `true` is not `1`."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, dict):
        return ("object", sorted((k, _jsonb(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", [_jsonb(v) for v in value])
    return ("string", value)


def _same(field: str, old: Any, new: Any) -> bool:
    return _jsonb(old) == _jsonb(new) if field == "attributes" else _json(old) == _json(new)


def _json(value: Any) -> str:
    """A value as JSON compares it: `1` is not `true`, as it is in Python."""
    return json.dumps(value, sort_keys=True)


def _by_request(records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Change records in log order, but sorted within each request: a bulk update's records
    come in the order PostgreSQL updated its rows, which nothing documents."""
    groups = [sorted(group) for _, group in itertools.groupby(records, key=lambda r: r[3])]
    return [record for group in groups for record in group]


def _seen(value: str | None) -> Any:
    """The API's last_seen_at in the model's terms."""
    if value is None:
        return None
    instant = datetime.fromisoformat(value)
    for known in (EARLY, LATE):
        if instant == datetime.fromisoformat(known):
            return known
    return HEARTBEAT


class ApiMachine(RuleBasedStateMachine):
    """A machine sending its requests to the test's event loop, each example in a savepoint."""

    client: ClassVar[AsyncClient]
    connection: ClassVar[AsyncConnection]
    loop: ClassVar[asyncio.AbstractEventLoop]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def savepoint(self) -> Any:
        async def begin_nested() -> Any:
            return await self.connection.begin_nested()

        return self.run(begin_nested())


class Registry(ApiMachine):
    """The open API (no tokens), every write and read checked against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[int, str] = {}
        self.devices: dict[int, dict[str, Any]] = {}
        self.gone_devices: set[int] = set()
        self.changes: list[tuple[str, int, str, str, dict[str, Any] | None]] = []
        self.keys: dict[str, tuple[str, Any, Response]] = {}
        self.requests = itertools.count()
        self.example: Any = None
        self.all_ids: list[int] = []

    # --- plumbing ----------------------------------------------------------------------------

    def send(self, method: str, url: str, **kwargs: Any) -> Response:
        request_id = f"req-{next(self.requests)}"
        headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
        response = self.run(self.client.request(method, url, headers=headers, **kwargs))
        _problem_or_fail(response)
        response.request_id = request_id  # type: ignore[attr-defined]
        return response

    @initialize(data=st.data(), names=st.lists(names, min_size=2, max_size=2))
    def begin(self, data: st.DataObject, names: list[str]) -> None:
        """In a savepoint, a registry to start from: two users and a few devices (listings of
        an empty registry, most of them otherwise, tried no order)."""
        self.example = self.savepoint()
        for name in names:
            self.create_user(name)
        for _ in range(3):
            self.bulk_create(data, bad_owner=False, key=None)

    def teardown(self) -> None:
        if self.example is not None:
            self.run(self.example.rollback())

    def record(
        self,
        response: Response,
        kind: str,
        object_id: int,
        action: str,
        after: dict[str, Any] | None = None,
    ) -> None:
        self.changes.append((kind, object_id, action, response.request_id, after))  # type: ignore[attr-defined]

    def expected_view(self, device_id: int) -> dict[str, Any]:
        device = self.devices[device_id]
        owner = device["owner_id"]
        return {
            **{field: device[field] for field in FIELDS},
            "owner": None if owner is None else {"id": owner, "name": self.users[owner]},
            "version": device["version"],
            "id": device_id,
        }

    def check_device(self, body: dict[str, Any], device_id: int) -> None:
        actual = {**body, "last_seen_at": _seen(body["last_seen_at"])}
        actual = {key: actual[key] for key in (*FIELDS, "owner", "version", "id")}
        assert _json(actual) == _json(self.expected_view(device_id)), (actual, device_id)

    def serial_taken(self, serial: str | None, but: int | None = None) -> bool:
        return serial is not None and any(
            device["serial_number"] == serial for i, device in self.devices.items() if i != but
        )

    def device_ids(self) -> st.SearchStrategy[int]:
        return st.sampled_from(sorted(self.devices))

    def apply(self, response: Response, device_id: int, new: dict[str, Any]) -> None:
        """A write of `new` to the device answered `response`; the model follows."""
        device = self.devices[device_id]
        changed = {f: new[f] for f in FIELDS if not _same(f, device[f], new[f])}
        if changed:
            device.update(changed)
            device["version"] += 1
        if set(changed) - {"last_seen_at"}:
            self.record(response, "device", device_id, "update", changed)

    def replayed(self, key: str | None, url: str, body: Any, response: Response) -> bool:
        """Whether `response` answers a key used before: the first answer again, or a 422 for
        another request."""
        if key is None or key not in self.keys:
            return False
        first_url, first_body, first = self.keys[key]
        if (first_url, _json(first_body)) == (url, _json(body)):
            assert response.status_code == first.status_code
            assert response.content == first.content
            assert response.headers.get("Idempotent-Replayed") == "true"
            for header in ("location", "etag"):
                assert response.headers.get(header) == first.headers.get(header)
        else:
            assert response.status_code == 422, response.text
        return True

    # --- users -------------------------------------------------------------------------------

    @precondition(lambda self: self.users)
    @rule(data=st.data(), name=names)
    def rename_user(self, data: st.DataObject, name: str) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        response = self.send("PATCH", f"{USERS}/{user_id}", json={"name": name})
        assert response.status_code == 200, response.text
        assert response.json()["name"] == name.strip()
        if self.users[user_id] != name.strip():
            self.users[user_id] = name.strip()
            self.record(response, "user", user_id, "update")

    @rule(name=names, key=st.sampled_from(["k1", "k3"]))
    def create_user_once(self, name: str, key: str) -> None:
        response = self.send("POST", USERS, json={"name": name}, headers={"Idempotency-Key": key})
        if self.replayed(key, USERS, {"name": name}, response):
            return
        assert response.status_code == 201, response.text
        self.users[response.json()["id"]] = name.strip()
        self.record(response, "user", response.json()["id"], "create")
        self.keys[key] = (USERS, {"name": name}, response)

    @rule(name=names)
    def create_user(self, name: str) -> None:
        response = self.send("POST", USERS, json={"name": name})
        assert response.status_code == 201, response.text
        user = response.json()
        assert user["name"] == name.strip()
        self.users[user["id"]] = name.strip()
        self.record(response, "user", user["id"], "create")

    @precondition(lambda self: self.users)
    @rule(data=st.data(), cascade=st.booleans())
    def delete_user(self, data: st.DataObject, cascade: bool) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        params = {"cascade": "devices"} if cascade else {}
        response = self.send("DELETE", f"{USERS}/{user_id}", params=params)
        owned = sorted(i for i, d in self.devices.items() if d["owner_id"] == user_id)
        if owned and not cascade:
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 204, response.text
        for device_id in owned:
            del self.devices[device_id]
            self.gone_devices.add(device_id)
            self.record(response, "device", device_id, "delete")
        del self.users[user_id]
        self.record(response, "user", user_id, "delete")

    # --- single devices ----------------------------------------------------------------------

    def device_body(self, data: st.DataObject) -> dict[str, Any]:
        body: dict[str, Any] = {"name": data.draw(names)}
        for field, values in (
            ("serial_number", serials),
            ("model", models),
            ("status", statuses),
            ("tags", tag_lists),
            ("attributes", attribute_maps),
            ("last_seen_at", seen_times),
        ):
            if data.draw(st.booleans()):
                body[field] = data.draw(values)
        if bool(self.users) and data.draw(st.booleans()):
            body["owner_id"] = data.draw(st.sampled_from(sorted(self.users)))
        return body

    @staticmethod
    def full(body: dict[str, Any]) -> dict[str, Any]:
        """A create's or a PUT's body with the defaults of the fields it leaves out."""
        return {f: _normal(f, body.get(f, DEVICE_DEFAULTS.get(f))) for f in FIELDS}

    @rule(data=st.data(), key=st.none() | st.sampled_from(["k1", "k2"]))
    def create_device(self, data: st.DataObject, key: str | None) -> None:
        body = self.device_body(data)
        if key is not None and key in self.keys and data.draw(st.booleans()):
            body = self.keys[key][1]  # a retry
        headers = {"Idempotency-Key": key} if key else {}
        response = self.send("POST", DEVICES, json=body, headers=headers)
        if self.replayed(key, DEVICES, body, response):
            return
        new = self.full(body)
        if self.serial_taken(new["serial_number"]):
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 201, response.text
        device = response.json()
        self.devices[device["id"]] = {**new, "version": 1}
        self.all_ids.append(device["id"])
        self.check_device(device, device["id"])
        assert response.headers["etag"] == '"1"'
        self.record(response, "device", device["id"], "create")
        if key is not None:
            self.keys[key] = (DEVICES, body, response)

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data())
    def get_device(self, data: st.DataObject) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        response = self.send("GET", f"{DEVICES}/{device_id}")
        if device_id not in self.devices:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        self.check_device(response.json(), device_id)
        version = self.devices[device_id]["version"]
        assert response.headers["etag"] == f'"{version}"'
        tag = data.draw(st.sampled_from([version, version - 1]))
        again = self.send("GET", f"{DEVICES}/{device_id}", headers={"If-None-Match": f'"{tag}"'})
        assert again.status_code == (304 if tag == version else 200), again.text
        assert again.headers["etag"] == f'"{version}"'

    def guard(self, data: st.DataObject, device_id: int) -> tuple[dict[str, str], bool]:
        """An If-Match to send (or none), and whether it matches."""
        choice = data.draw(st.sampled_from(["none", "current", "stale", "star"]))
        version = self.devices[device_id]["version"]
        if choice == "none":
            return {}, True
        if choice == "star":
            return {"If-Match": "*"}, True
        if choice == "current":
            return {"If-Match": f'"{version}"'}, True
        return {"If-Match": f'"{version + 1}"'}, False

    def refused_412(self, response: Response, device_id: int) -> None:
        version = self.devices[device_id]["version"]
        assert response.status_code == 412, response.text
        assert response.json()["current_version"] == version
        assert response.headers["etag"] == f'"{version}"'

    def rewritten(
        self, response: Response, device_id: int, new: dict[str, Any], *, matches: bool
    ) -> None:
        """A PATCH or PUT of the device to `new`, its If-Match matching or not, answered
        `response`: refused (412, or 409 for a serial taken), or done; the model follows."""
        if not matches:
            self.refused_412(response, device_id)
            return
        if self.serial_taken(new["serial_number"], but=device_id):
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text
        self.apply(response, device_id, new)
        self.check_device(response.json(), device_id)

    @precondition(lambda self: self.devices)
    @rule(data=st.data())
    def patch_device(self, data: st.DataObject) -> None:
        device_id = data.draw(self.device_ids())
        body = {k: v for k, v in self.device_body(data).items() if data.draw(st.booleans())}
        if "owner_id" not in body and data.draw(st.booleans()):
            body["owner_id"] = None
        headers, matches = self.guard(data, device_id)
        response = self.send("PATCH", f"{DEVICES}/{device_id}", json=body, headers=headers)
        new = {**self.devices[device_id], **{f: _normal(f, v) for f, v in body.items()}}
        self.rewritten(response, device_id, new, matches=matches)

    @precondition(lambda self: self.devices)
    @rule(data=st.data())
    def put_device(self, data: st.DataObject) -> None:
        device_id = data.draw(self.device_ids())
        body = self.device_body(data)
        headers, matches = self.guard(data, device_id)
        response = self.send("PUT", f"{DEVICES}/{device_id}", json=body, headers=headers)
        self.rewritten(response, device_id, self.full(body), matches=matches)

    @precondition(lambda self: self.devices)
    @rule(data=st.data())
    def delete_device(self, data: st.DataObject) -> None:
        device_id = data.draw(self.device_ids())
        headers, matches = self.guard(data, device_id)
        response = self.send("DELETE", f"{DEVICES}/{device_id}", headers=headers)
        if not matches:
            self.refused_412(response, device_id)
            return
        assert response.status_code == 204, response.text
        del self.devices[device_id]
        self.gone_devices.add(device_id)
        self.record(response, "device", device_id, "delete")

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        key = data.draw(st.none() | st.sampled_from(["k1", "k4"]))
        url = f"{DEVICES}/{device_id}/heartbeat"
        headers = {"Idempotency-Key": key} if key else {}
        response = self.send("POST", url, headers=headers)
        if self.replayed(key, url, None, response):
            return
        if key is not None and response.status_code == 204:
            self.keys[key] = (url, None, response)
        if device_id not in self.devices:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 204, response.text
        self.apply(response, device_id, {**self.devices[device_id], "last_seen_at": HEARTBEAT})

    # --- bulk --------------------------------------------------------------------------------

    @rule(data=st.data(), bad_owner=st.booleans(), key=st.none() | st.sampled_from(["k1", "k5"]))
    def bulk_create(self, data: st.DataObject, bad_owner: bool, key: str | None) -> None:
        bodies = [self.device_body(data) for _ in range(data.draw(st.integers(1, 3)))]
        if bad_owner:
            bodies[data.draw(st.integers(0, len(bodies) - 1))]["owner_id"] = 10**12
        if key is not None and key in self.keys and data.draw(st.booleans()):
            bodies = self.keys[key][1]  # a retry
        headers = {"Idempotency-Key": key} if key else {}
        url = f"{DEVICES}/bulk"
        response = self.send("POST", url, json=bodies, headers=headers)
        if self.replayed(key, url, bodies, response):
            return
        news = [self.full(body) for body in bodies]
        serials_sent = [n["serial_number"] for n in news if n["serial_number"] is not None]
        taken = any(self.serial_taken(serial) for serial in serials_sent)
        if len(set(serials_sent)) < len(serials_sent):
            assert response.status_code == 422, response.text
            return
        if bad_owner:
            # Which of an unknown owner and a registered serial number answers first is the
            # order PostgreSQL checks them in (the README orders only the 422s).
            assert response.status_code in ((409, 422) if taken else (422,)), response.text
            return
        if taken:
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 201, response.text
        ids = response.json()["ids"]
        assert len(ids) == len(news)
        assert ids == sorted(ids)
        for device_id, new in zip(ids, news, strict=True):
            self.devices[device_id] = {**new, "version": 1}
            self.all_ids.append(device_id)
            self.record(response, "device", device_id, "create")
        if key is not None:
            self.keys[key] = (url, bodies, response)

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data())
    def bulk_update(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.all_ids), min_size=1, max_size=3))
        items = []
        for device_id in ids:
            body = {k: v for k, v in self.device_body(data).items() if data.draw(st.booleans())}
            items.append({"id": device_id, **body})
        response = self.send("PATCH", f"{DEVICES}/bulk", json=items)
        news = {}
        serials_sent = [
            _normal("serial_number", item["serial_number"])
            for item in items
            if item.get("serial_number") is not None
        ]
        if len(set(ids)) < len(ids) or len(set(serials_sent)) < len(serials_sent):
            assert response.status_code == 422, response.text
            return
        if any(i not in self.devices for i in ids):
            # The update statement meets a registered serial number before it can tell which
            # ids it did not find.
            taken = any(
                self.serial_taken(_normal("serial_number", item.get("serial_number")), but=i)
                for item in items
                if (i := item["id"]) in self.devices
            )
            assert response.status_code in ((409, 422) if taken else (422,)), response.text
            return
        for item in items:
            fields = {f: _normal(f, v) for f, v in item.items() if f != "id"}
            news[item["id"]] = {**self.devices[item["id"]], **fields}
        final = {i: d["serial_number"] for i, d in self.devices.items()}
        final.update({i: n["serial_number"] for i, n in news.items()})
        held = [s for s in final.values() if s is not None]
        if len(set(held)) < len(held):
            assert response.status_code == 409, response.text
            return
        # A serial number moving between devices of the batch: row by row, either may be
        # refused (a swap is documented as 409).
        moved = any(
            n["serial_number"] is not None and self.serial_taken(n["serial_number"], but=i)
            for i, n in news.items()
        )
        if moved and response.status_code == 409:
            return
        assert response.status_code == 200, response.text
        assert response.json()["ids"] == ids
        for device_id in sorted(news):
            self.apply(response, device_id, news[device_id])

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data())
    def bulk_delete(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.all_ids), min_size=1, max_size=3))
        response = self.send("DELETE", f"{DEVICES}/bulk", json=ids)
        if len(set(ids)) < len(ids) or any(i not in self.devices for i in ids):
            assert response.status_code == 422, response.text
            return
        assert response.status_code == 204, response.text
        for device_id in sorted(ids):
            del self.devices[device_id]
            self.gone_devices.add(device_id)
            self.record(response, "device", device_id, "delete")

    # --- listings ----------------------------------------------------------------------------

    def matches(self, device: dict[str, Any], query: dict[str, Any]) -> bool:
        if "status" in query and device["status"] not in query["status"]:
            return False
        if "owner_id" in query and device["owner_id"] not in query["owner_id"]:
            return False
        if "tag" in query and not set(query["tag"]) <= set(device["tags"]):
            return False
        if "name__ic" in query and query["name__ic"].lower() not in device["name"].lower():
            return False
        if "has_owner" in query and (device["owner_id"] is not None) != query["has_owner"]:
            return False
        for key, value in query.get("attr", {}).items():
            if key not in device["attributes"]:
                return False
            if _jsonb(device["attributes"][key]) != _jsonb(value):
                return False
        return True

    def ordered(self, ids: list[int], sort: str) -> list[int]:
        key = sort.removeprefix("-")
        descending = sort.startswith("-")
        if key in ("id", "created_at"):
            return sorted(ids, reverse=descending)
        if key == "name":
            return sorted(ids, key=lambda i: (self.devices[i]["name"], i), reverse=descending)
        present = [i for i in ids if self.devices[i]["last_seen_at"] is not None]
        missing = [i for i in ids if self.devices[i]["last_seen_at"] is None]
        return [
            *sorted(
                present,
                key=lambda i: (SEEN_ORDER[self.devices[i]["last_seen_at"]], i),
                reverse=descending,
            ),
            *sorted(missing, reverse=descending),
        ]

    @rule(
        data=st.data(),
        sort=st.sampled_from(SORTS),
        limit=st.integers(1, 4),
        of_user=st.booleans(),
    )
    def list_devices(self, data: st.DataObject, sort: str, limit: int, of_user: bool) -> None:
        query: dict[str, Any] = {}
        params: list[tuple[str, Any]] = [("sort", sort), ("limit", limit), ("count", "exact")]
        if data.draw(st.booleans()):
            query["status"] = data.draw(st.lists(statuses, min_size=1, max_size=2))
            params += [("status", s) for s in query["status"]]
        if bool(self.users) and data.draw(st.booleans()):
            query["owner_id"] = data.draw(
                st.lists(st.sampled_from(sorted(self.users)), min_size=1, max_size=2)
            )
            params += [("owner_id", o) for o in query["owner_id"]]
        if data.draw(st.booleans()):
            query["tag"] = data.draw(st.lists(st.sampled_from(["lab", "edge", "x"]), max_size=2))
            params += [("tag", t) for t in query["tag"]]
        if data.draw(st.booleans()):
            query["name__ic"] = data.draw(st.sampled_from(["a", "B", "b a", "pi", " "]))
            params.append(("name__ic", query["name__ic"]))
        if data.draw(st.booleans()):
            query["has_owner"] = data.draw(st.booleans())
            params.append(("has_owner", str(query["has_owner"]).lower()))
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(["k", "rack"]))
            value = data.draw(st.sampled_from([1, 1.0, 2, "1", True, None, "a"]))
            query["attr"] = {key: value}
            encoded = json.dumps(value) if value == "1" or not isinstance(value, str) else value
            params.append((f"attr.{key}", encoded))
        url = DEVICES
        if of_user:
            if not self.users:
                return
            user_id = data.draw(st.sampled_from(sorted(self.users)))
            url = f"{USERS}/{user_id}/devices"
            query.setdefault("owner_id", [user_id])
            query["owner_id"] = [o for o in query["owner_id"] if o == user_id]
        expected = self.ordered(
            [i for i, d in self.devices.items() if self.matches(d, query)], sort
        )
        self.walk_listing(url, params, expected, limit)

    @rule(limit=st.integers(1, 3))
    def list_all_in_every_order(self, limit: int) -> None:
        for sort in SORTS:
            params: list[tuple[str, Any]] = [("sort", sort), ("limit", limit), ("count", "exact")]
            self.walk_listing(DEVICES, params, self.ordered(list(self.devices), sort), limit)

    def walk_listing(
        self, url: str, params: list[tuple[str, Any]], expected: list[int], limit: int
    ) -> None:
        """Every page of the listing, by cursor: the devices `expected`, in that order."""
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            page_params = [*params, ("cursor", cursor)] if cursor else params
            response = self.send("GET", url, params=page_params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= limit
            for item in page["items"]:
                self.check_device(item, item["id"])
            seen += [item["id"] for item in page["items"]]
            assert page["total"] == len(expected), (page, expected, params)
            cursor = page["next_cursor"]
            pages += 1
            assert pages <= len(expected) + 2, "cursor loop"
            if cursor is None:
                break
        assert seen == expected, (params, url)

    # --- change log --------------------------------------------------------------------------

    @rule()
    def change_log(self) -> None:
        records = self.walk(CHANGES, [("sort", "id"), ("limit", 7)])
        actual = [(r["object_type"], r["object_id"], r["action"], r["request_id"]) for r in records]
        assert _by_request(actual) == _by_request([c[:4] for c in self.changes])
        afters = {c[:4]: c[4] for c in self.changes}
        for record, key in zip(records, actual, strict=True):
            after = afters[key]
            if key[2] == "update" and after is not None:
                assert set(record["after"]) == set(after), (record, after)
                for field, value in after.items():
                    if field != "last_seen_at":
                        assert _json(record["after"][field]) == _json(value), (record, after)

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data())
    def device_history(self, data: st.DataObject) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        records = self.walk(f"{DEVICES}/{device_id}/changes", [("limit", 3)])
        expected = [
            (kind, object_id, action, request_id)
            for kind, object_id, action, request_id, _ in reversed(self.changes)
            if kind == "device" and object_id == device_id
        ]
        assert [
            (r["object_type"], r["object_id"], r["action"], r["request_id"]) for r in records
        ] == expected

    def walk(self, url: str, params: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page_params = [*params, ("cursor", cursor)] if cursor else params
            response = self.send("GET", url, params=page_params)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    @invariant()
    def counted(self) -> None:
        if self.example is None:
            return
        response = self.send("GET", DEVICES, params={"count": "exact", "limit": 1})
        assert response.status_code == 200, response.text
        assert response.json()["total"] == len(self.devices)


MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=not HUNTING,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate]
    if os.environ.get("MODEL_NOSHRINK")
    else [Phase.explicit, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)


async def test_the_registry_behaves_as_its_model(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    Registry.client = client
    Registry.connection = connection
    Registry.loop = asyncio.get_running_loop()
    await asyncio.to_thread(run_state_machine_as_test, Registry, settings=MACHINE_SETTINGS)


class TwoUsers(ApiMachine):
    """AUTH with tokens: two users' non-admin write tokens, and an admin's. A user never sees
    or changes the other's devices (404, left out of lists)."""

    app: ClassVar[Any]

    def __init__(self) -> None:
        super().__init__()
        self.devices: dict[int, dict[str, Any]] = {}  # id -> {"owner", "name", "version"}
        self.all_ids: list[int] = []
        self.tokens: dict[str, str] = {}
        self.user_ids: dict[str, int] = {}
        self.history: dict[int, list[tuple[str, str]]] = {}  # device -> [(action, reader)]
        self.example: Any = None

    def send(self, who: str, method: str, url: str, **kwargs: Any) -> Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kwargs.pop("headers", {})}
        response = self.run(self.client.request(method, url, headers=headers, **kwargs))
        _problem_or_fail(response)
        return response

    @initialize()
    def begin(self) -> None:
        forget_authentication(self.app)
        self.example = self.savepoint()
        for who in ("admin", "ann", "bob"):
            response = self.run(self.client.post(USERS, json={"name": who}))
            assert response.status_code == 201, response.text
            self.user_ids[who] = response.json()["id"]
        response = self.run(
            self.client.post(TOKENS, json={"user_id": self.user_ids["admin"], "admin": True})
        )
        assert response.status_code == 201, response.text
        self.tokens["admin"] = response.json()["token"]
        for who in ("ann", "bob"):
            response = self.send("admin", "POST", TOKENS, json={"user_id": self.user_ids[who]})
            assert response.status_code == 201, response.text
            self.tokens[who] = response.json()["token"]

    def teardown(self) -> None:
        if self.example is not None:
            self.run(self.example.rollback())
        forget_authentication(self.app)

    people = st.sampled_from(["ann", "bob"])

    def visible(self, who: str, device_id: int) -> bool:
        return device_id in self.devices and (
            who == "admin" or self.devices[device_id]["owner"] == who
        )

    @rule(who=people, name=names, give=st.sampled_from([None, "ann", "bob"]))
    def create_device(self, who: str, name: str, give: str | None) -> None:
        body: dict[str, Any] = {"name": name}
        if give is not None:
            body["owner_id"] = self.user_ids[give]
        response = self.send(who, "POST", DEVICES, json=body)
        if give not in (None, who):
            assert response.status_code == 403, response.text
            return
        assert response.status_code == 201, response.text
        device = response.json()
        assert device["owner_id"] == self.user_ids[who]
        self.devices[device["id"]] = {"owner": who, "name": name.strip(), "version": 1}
        self.all_ids.append(device["id"])
        self.history[device["id"]] = [("create", who)]

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data(), who=st.sampled_from(["ann", "bob", "admin"]))
    def get_device(self, data: st.DataObject, who: str) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        response = self.send(who, "GET", f"{DEVICES}/{device_id}")
        if not self.visible(who, device_id):
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        device = self.devices[device_id]
        assert response.json()["name"] == device["name"]
        assert response.json()["owner_id"] == self.user_ids[device["owner"]]
        assert response.headers["etag"] == f'"{device["version"]}"'

    @precondition(lambda self: self.all_ids)
    @rule(
        data=st.data(),
        who=people,
        name=names,
        method=st.sampled_from(["PATCH", "PUT"]),
        guarded=st.booleans(),
    )
    def rename_device(
        self, data: st.DataObject, who: str, name: str, method: str, guarded: bool
    ) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        headers = {}
        if guarded and device_id in self.devices:
            headers["If-Match"] = f'"{self.devices[device_id]["version"]}"'
        response = self.send(
            who, method, f"{DEVICES}/{device_id}", json={"name": name}, headers=headers
        )
        if not self.visible(who, device_id):
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        assert response.json()["owner_id"] == self.user_ids[who]
        device = self.devices[device_id]
        # A PUT sends back to their defaults the model and last_seen_at it leaves out.
        cleared = {"model", "seen"} if method == "PUT" else set()
        changed = {f for f in cleared if device.get(f)}
        if name.strip() != device["name"]:
            changed.add("name")
        device.update({"name": name.strip(), **dict.fromkeys(cleared, False)})
        if changed:
            device["version"] += 1
        if changed - {"seen"}:
            self.history[device_id].append(("update", who))

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data(), to=people)
    def admin_gives(self, data: st.DataObject, to: str) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        response = self.send(
            "admin", "PATCH", f"{DEVICES}/{device_id}", json={"owner_id": self.user_ids[to]}
        )
        if device_id not in self.devices:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        device = self.devices[device_id]
        if device["owner"] != to:
            device["owner"] = to
            device["version"] += 1
            self.history[device_id].append(("update", to))

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data(), who=people, how=st.sampled_from(["one", "bulk", "heartbeat"]))
    def delete_or_beat(self, data: st.DataObject, who: str, how: str) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        if how == "one":
            response = self.send(who, "DELETE", f"{DEVICES}/{device_id}")
        elif how == "bulk":
            response = self.send(who, "DELETE", f"{DEVICES}/bulk", json=[device_id])
        else:
            response = self.send(who, "POST", f"{DEVICES}/{device_id}/heartbeat")
        if not self.visible(who, device_id):
            assert response.status_code == (422 if how == "bulk" else 404), response.text
            return
        assert response.status_code == 204, response.text
        if how == "heartbeat":
            device = self.devices[device_id]
            if not device.get("seen"):
                device["seen"] = True
                device["version"] += 1
            return
        owner = self.devices.pop(device_id)["owner"]
        self.history[device_id].append(("delete", owner))

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data(), who=people)
    def bulk_update(self, data: st.DataObject, who: str) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.all_ids), min_size=1, max_size=2, unique=True)
        )
        response = self.send(
            who, "PATCH", f"{DEVICES}/bulk", json=[{"id": i, "model": "m"} for i in ids]
        )
        if not all(self.visible(who, i) for i in ids):
            assert response.status_code == 422, response.text
            return
        assert response.status_code == 200, response.text
        for device_id in ids:
            device = self.devices[device_id]
            if not device.get("model"):
                device["model"] = True
                device["version"] += 1
                self.history[device_id].append(("update", who))

    @rule(who=st.sampled_from(["ann", "bob", "admin"]), limit=st.integers(1, 3))
    def list_devices(self, who: str, limit: int) -> None:
        expected = sorted(i for i in self.devices if self.visible(who, i))
        seen: list[int] = []
        params: dict[str, Any] = {"limit": limit, "count": "exact", "sort": "id"}
        while True:
            response = self.send(who, "GET", DEVICES, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert page["total"] == len(expected)
            seen += [item["id"] for item in page["items"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == expected

    @precondition(lambda self: self.all_ids)
    @rule(data=st.data(), who=people)
    def read_history(self, data: st.DataObject, who: str) -> None:
        device_id = data.draw(st.sampled_from(self.all_ids))
        expected = [action for action, reader in self.history[device_id] if reader == who]
        response = self.send(
            who, "GET", f"{DEVICES}/{device_id}/changes", params={"sort": "id", "limit": 1000}
        )
        if not expected:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        assert [r["action"] for r in response.json()["items"]] == expected

    @rule(who=people)
    def read_change_log(self, who: str) -> None:
        response = self.send(
            who, "GET", CHANGES, params={"sort": "id", "limit": 1000, "object_type": "device"}
        )
        assert response.status_code == 200, response.text
        actual = [(r["object_id"], r["action"]) for r in response.json()["items"]]
        expected = sorted(
            (device_id, action)
            for device_id, entries in self.history.items()
            for action, reader in entries
            if reader == who
        )
        assert sorted(actual) == expected


async def test_two_users_never_see_each_others_devices(
    app_in_test_transaction: RunningApp, client: AsyncClient, connection: AsyncConnection
) -> None:
    TwoUsers.client = client
    TwoUsers.connection = connection
    TwoUsers.loop = asyncio.get_running_loop()
    TwoUsers.app = app_in_test_transaction.app
    await asyncio.to_thread(run_state_machine_as_test, TwoUsers, settings=MACHINE_SETTINGS)
