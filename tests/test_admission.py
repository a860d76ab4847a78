"""A worker works on MAX_REQUESTS_IN_PROGRESS requests at once; the rest wait their turn in
arrival order, at most POOL_TIMEOUT seconds (then 503); health checks never wait."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi.responses import StreamingResponse
from httpx import AsyncClient, Response
from sqlalchemy.engine import URL

from devreg.admission import Admission
from devreg.app import create_app
from devreg.body_limit import whole_body_without
from devreg.errors import PoolExhausted
from tests.api import assert_problem
from tests.support import api_client, make_settings, running, served_under

HELD = "/api/v1/held"
DEVICES_PATH = "/api/v1/devices"
HEALTH_CHECKS = ["/livez", "/readyz", "/api/v1/health-check/db"]  # the last: the tutorial's


class Gate:
    """A route that holds its request until opened: `entered` once a request is inside."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self) -> dict[str, bool]:
        self.entered.set()
        await self.opened.wait()
        return {"held": True}

    async def stream(self) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            self.entered.set()
            await self.opened.wait()
            yield b"last\n"

        return StreamingResponse(chunks(), media_type="text/plain")


@asynccontextmanager
async def one_at_a_time(
    database_url: URL, held_route: Callable[[Gate], Any], root_path: str = "", **settings: object
) -> AsyncIterator[tuple[AsyncClient, Gate]]:
    """A client of an app that works on one request at a time, with a held route at HELD,
    served as uvicorn serves it under `root_path`."""
    limited = make_settings(
        database_url, **{"max_requests_in_progress": 1, "pool_timeout": 0.3, **settings}
    )
    app, gate = create_app(limited), Gate()
    app.add_api_route(HELD, held_route(gate))
    async with running(app) as started, api_client(served_under(root_path, started)) as client:
        yield client, gate


def sent_in_two(
    first: bytes, rest: bytes
) -> tuple[asyncio.Event, asyncio.Event, AsyncIterator[bytes]]:
    """A request body whose `rest` is sent once the second event is set; the first is set once
    the app, `first` read, asks for more."""
    rest_wanted, rest_sent = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield first
        rest_wanted.set()
        await rest_sent.wait()
        yield rest

    return rest_wanted, rest_sent, body()


async def held_request(client: AsyncClient, gate: Gate) -> "asyncio.Task[Response]":
    """A request to HELD, once it is inside the route (holding the only turn)."""
    held = asyncio.create_task(client.get(HELD))
    await gate.entered.wait()
    return held


@pytest.mark.parametrize("root_path", ["", "/devreg"])
async def test_a_request_past_its_wait_is_a_503_and_every_health_check_still_answers(
    database_url: URL, root_path: str
) -> None:
    """Under a root path, which uvicorn puts at the start of the path, health checks were
    held back as any request: 503 while another had the only turn."""
    async with one_at_a_time(database_url, lambda gate: gate.hold, root_path) as (client, gate):
        held = await held_request(client, gate)
        refused = await client.get("/api/v1/devices")
        probes = [await client.get(path) for path in HEALTH_CHECKS]
        gate.opened.set()
        assert (await held).status_code == 200
        served = await client.get("/api/v1/devices")

    body = assert_problem(refused, 503, root_path=root_path)
    assert body["detail"] == PoolExhausted.default_detail
    assert refused.headers["retry-after"].isdigit()
    assert "x-request-id" in refused.headers
    assert [probe.status_code for probe in probes] == [200] * len(HEALTH_CHECKS)
    assert served.status_code == 200


async def test_a_body_read_without_the_turn_waits_for_one_again(database_url: URL) -> None:
    """A request gives up its turn while its body arrives (a slow client would hold it), and
    waits for one again as a new request does: here none comes in time, a 503."""
    async with one_at_a_time(database_url, lambda gate: gate.hold) as (client, gate):
        rest_wanted, rest_sent, body = sent_in_two(b'{"name": ', b'"late"}')
        posting = asyncio.create_task(
            client.post(DEVICES_PATH, content=body, headers={"content-type": "application/json"})
        )
        await asyncio.wait_for(rest_wanted.wait(), 30)  # the POST is in, half its body read
        held = await held_request(client, gate)  # the only turn, given up by the POST
        rest_sent.set()
        refused = await posting
        gate.opened.set()
        await held
        listed = await client.get(DEVICES_PATH, params={"name": "late"})

    assert assert_problem(refused, 503)["detail"] == PoolExhausted.default_detail
    assert refused.headers["retry-after"].isdigit()
    assert listed.json()["items"] == []


async def test_a_streamed_response_whose_request_has_a_body_keeps_no_turn(
    database_url: URL,
) -> None:
    """Its body, arriving after the response started, took the turn back, held until the
    stream ended: every other request waited, then was refused."""
    async with one_at_a_time(database_url, lambda gate: gate.stream) as (client, gate):
        _, rest_sent, body = sent_in_two(b"x", b"y")

        async def read_stream() -> str:
            async with client.stream("GET", HELD, content=body) as response:
                return "".join([chunk async for chunk in response.aiter_text()])

        streaming = asyncio.create_task(read_stream())
        await gate.entered.wait()  # started: its first chunk is out
        rest_sent.set()
        await asyncio.sleep(0.1)  # the body whole
        meanwhile = await client.get("/api/v1/devices")
        gate.opened.set()
        streamed = await streaming

    assert meanwhile.status_code == 200
    assert streamed == "first\nlast\n"


async def test_a_browsers_preflight_needs_no_turn(database_url: URL) -> None:
    """Answered while the only turn is held, long before a turn could come (POOL_TIMEOUT)."""
    settings = {"cors_origins": "https://ui.example", "pool_timeout": 30}
    async with one_at_a_time(database_url, lambda gate: gate.hold, **settings) as (client, gate):
        held = await held_request(client, gate)
        preflight = await asyncio.wait_for(
            client.options(
                DEVICES_PATH,
                headers={"origin": "https://ui.example", "access-control-request-method": "POST"},
            ),
            timeout=5,
        )
        gate.opened.set()
        await held

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://ui.example"


async def test_a_waiting_request_is_served_when_a_turn_frees_up(database_url: URL) -> None:
    async with one_at_a_time(database_url, lambda gate: gate.hold) as (client, gate):
        held = await held_request(client, gate)
        waiting = asyncio.create_task(client.get("/api/v1/devices"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gate.opened.set()
        statuses = [(await held).status_code, (await waiting).status_code]

    assert statuses == [200, 200]


async def test_a_streamed_response_gives_up_its_turn_once_it_has_started(
    database_url: URL,
) -> None:
    async with one_at_a_time(database_url, lambda gate: gate.stream) as (client, gate):

        async def read_stream() -> str:
            async with client.stream("GET", HELD) as response:
                return "".join([chunk async for chunk in response.aiter_text()])

        streaming = asyncio.create_task(read_stream())
        await gate.entered.wait()
        meanwhile = await client.get("/api/v1/devices")
        gate.opened.set()
        streamed = await streaming

    assert meanwhile.status_code == 200
    assert streamed == "first\nlast\n"


async def test_turns_go_in_arrival_order() -> None:
    admission = Admission(1, timeout=5)
    served: list[int] = []
    first = admission.turn()
    await first.__aenter__()

    async def request(number: int) -> None:
        async with admission.turn():
            served.append(number)

    waiting = []
    for number in range(5):
        waiting.append(asyncio.create_task(request(number)))
        await asyncio.sleep(0)  # it is queued before the next arrives
    await first.__aexit__(None, None, None)
    await asyncio.gather(*waiting)

    assert served == [0, 1, 2, 3, 4]


async def test_a_turn_ended_early_is_given_back_once() -> None:
    admission = Admission(1, timeout=0.1)
    async with admission.turn() as turn:
        turn.end()
        async with admission.turn():
            pass
    async with admission.turn():
        with pytest.raises(PoolExhausted):
            async with admission.turn():
                pass


async def test_a_client_gone_amid_its_body_does_not_wait_for_a_turn_again() -> None:
    """It queued for a turn (up to POOL_TIMEOUT) to answer nobody."""
    admission = Admission(1, timeout=30)
    turn = admission.turn()
    await turn.take()
    other = admission.turn()

    async def gone() -> dict[str, Any]:
        await other.take()  # the turn given up goes to another request
        return {"type": "http.disconnect"}

    message = await asyncio.wait_for(whole_body_without(turn, gone)(), 2)

    assert message == {"type": "http.disconnect"}
    other.end()
