"""One app served in-process, for instructions.py to count under valgrind: its lifespan, then
WARM_UP + COUNT requests of one route, one after another, as plain ASGI calls (no HTTP server).

    python serve_in_process.py MODULE METHOD PATH BODY COUNT [AUTHORIZATION]

MODULE's `app` is served, or devreg's create_app() for "devreg". Only the standard library and the
app's own packages are imported: the peers run in their own virtual environment.
"""

import asyncio
import importlib
import logging
import logging.config
import os
import random
import sys
from typing import Any

WARM_UP = 30
Message = dict[str, Any]


def load(module: str) -> Any:
    if module != "devreg":
        return importlib.import_module(module).app
    from devreg.app import create_app
    from devreg.config import Settings
    from devreg.logs import logging_config

    settings = Settings()
    logging.config.dictConfig(logging_config(settings.log_level))
    # The request log line is part of the cost; the terminal it would go to is not.
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the life of the process
    return create_app(settings)


async def call(app: Any, state: dict[str, Any], method: str, path: str, body: bytes) -> int:
    path, _, query = path.partition("?")
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]
    if len(sys.argv) > 6:
        headers.append((b"authorization", sys.argv[6].encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80), "state": dict(state),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def main() -> None:
    module, method, path, body, count = sys.argv[1:6]
    app = load(module)
    random.seed(1)
    async with app.router.lifespan_context(app) as state:
        for _ in range(WARM_UP + int(count)):
            status = await call(
                app, state or {}, method, path.replace("{id}", str(random.randint(1, 10_000))),
                body.encode(),
            )  # fmt: skip
            if status >= 300:
                raise SystemExit(f"{method} {path} answered {status}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
