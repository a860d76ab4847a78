"""The HTTP/1.1 protocol devreg's server speaks: uvicorn's, on httptools, with a bound on the
size of a request's head (its request line and headers).

httptools takes a head of any size, and gathers a header's value by joining its pieces one at
a time, at a cost that grows with the square of its length: one 48 MB header held a worker's
event loop for 6-12 s, health checks and every other request waiting, before any of devreg's
checks (a token's included) could run. Past HEAD_MAX bytes the request is refused with a 431
and its connection closed, as uvicorn refuses a request it cannot parse (400).

devreg switches to no other protocol (no WebSocket, no h2c): a request asking for one is read
as any other, its body included.
"""

import asyncio
import functools
import json
import logging
import time
from array import array
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from wsgiref.handlers import format_date_time

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from devreg.body_limit import declares_body
from devreg.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from devreg.headers import DEFAULT_CACHE_CONTROL, SECURITY_HEADERS

# As nginx's and Node's bounds, with room for a listing's query string of a hundred filters.
HEAD_MAX = 64 * 1024
# How long a refused client may go on sending (its bytes dropped) before its connection ends.
_LINGER_SECONDS = 5

logger = logging.getLogger("devreg.request")

_STATUS = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
_DETAIL = f"The request line and headers may be at most {HEAD_MAX} bytes"
_BODY = json.dumps(
    {
        "type": PROBLEM_TYPE_PREFIX + "head-too-large",
        "title": _STATUS.phrase,
        "status": _STATUS.value,
        "detail": _DETAIL,
    }
).encode()
_HEAD = (
    f"HTTP/1.1 {_STATUS.value} {_STATUS.phrase}\r\n"
    f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
    f"content-length: {len(_BODY)}\r\n"
    "connection: close\r\n"
).encode() + b"".join(
    name + b": " + value + b"\r\n" for name, value in (*SECURITY_HEADERS, DEFAULT_CACHE_CONTROL)
)


def _answer(*, to_head: bool) -> bytes:
    """The 431, dated now (RFC 9110, 6.6.1), with the headers every response carries; without
    its problem when it answers a HEAD request (RFC 9110, 9.3.2)."""
    dated = _HEAD + f"date: {format_date_time(time.time())}\r\n\r\n".encode()
    return dated if to_head else dated + _BODY


_Headers = list[tuple[bytes, bytes]]


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> bytes:
    return format_date_time(second).encode()


class _DatedWhenSent(_Headers):
    """A response's default headers (uvicorn's), their Date read from the clock as the response
    starts. uvicorn's is its clock as it last read it (once a second) before the request's head
    arrived: earlier than a change the request made, whose Last-Modified it then preceded, which
    RFC 9110 (8.8.2.1) forbids."""

    def __add__(self, other: _Headers) -> _Headers:  # type: ignore[override]
        date = _http_date(int(time.time()))
        return [(name, date if name == b"date" else value) for name, value in self] + other


class _ParserOfPlainHttp(httptools.HttpRequestParser):
    """httptools' parser (with uvicorn's leniency), for a server that switches to no other
    protocol. At the head of a request asking for one (`Connection: upgrade`: `curl --http2`
    asks for h2c), llhttp ends the request, its body unread, and stops, leaving what follows to
    the new protocol, which uvicorn then dropped: a POST's JSON was lost (422 "Field
    required"), taken for a request of its own when it came in a later piece, and the requests
    after it in the same piece went unanswered. Here what follows is read on as HTTP, by the
    parser the protocol has for it (BoundedHeadProtocol.parser_after_upgrade)."""

    def __init__(self, protocol: "BoundedHeadProtocol") -> None:
        super().__init__(protocol)
        self.set_dangerous_leniencies(lenient_data_after_close=True)
        self._protocol = protocol

    def feed_data(self, data: "bytes | bytearray | memoryview | array[int]") -> None:
        parser: httptools.HttpRequestParser = self
        while True:
            try:
                httptools.HttpRequestParser.feed_data(parser, data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                data = data[upgrade.args[0] :]
                following = self._protocol.parser_after_upgrade()
                if following is None or not data:
                    return
                parser = following


# The head llhttp is given for the body of a request that asked for an upgrade.
_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, measuring each request's head: as it comes, in the pieces
    read while no head has ended, and whole once it has (its line and headers); and reading a
    request that asks for an upgrade as any other (_ParserOfPlainHttp)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _ParserOfPlainHttp(self)
        # The framing of the body of the request being read that asked for an upgrade, until
        # a parser is given it; and whether the head a parser reads is that framing's.
        self._upgrade_body: bytes | None = None
        self._reading_framing = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # of the head being read, as far as it has come
        self._reading_head = True
        self._heads_ended = 0
        self._refused = False  # what the client sends is read no more
        self._head_too_large = False
        self._refused_head = False  # the request refused is a HEAD
        self._served: RequestResponseCycle | None = None  # the request last given to the app
        # The connection's last answer, until the requests before it are answered.
        self._last_answer: Callable[[], None] | None = None

    def parser_after_upgrade(self) -> httptools.HttpRequestParser | None:
        """A parser of its own for what follows a request that asked for an upgrade: llhttp,
        having ended it, takes no more after a `Connection: close`. Given the head of the
        request's body's framing first, when it has a body, whose end then ends the request.
        As any head, that one resets uvicorn's state of the request being read, which the
        request already made keeps a copy of. None when the request was refused (its head too
        large): what follows is dropped, not read as requests (a 400 in place of the 431)."""
        if self._refused:
            return None
        self.parser = _ParserOfPlainHttp(self)
        framing, self._upgrade_body = self._upgrade_body, None
        if framing is not None:
            self._reading_framing = True
            self.parser.feed_data(framing)
        return self.parser

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the rest of what the client sends is dropped unread
            return
        # A piece counts only if it is all head: a head was being read before it, none ended in
        # it, and one is still being read after it (not a body's last bytes, or the start of
        # the next request after them). A piece is at most as large as one read of the socket,
        # so the cost of one is bounded; that of many is not. A head that ends in a piece is
        # measured whole (on_headers_complete).
        all_head = self._reading_head
        heads_ended = self._heads_ended
        super().data_received(data)
        if self._refused:  # a head too large (on_headers_complete), or one not HTTP (a 400)
            if self._head_too_large:
                self._refuse()
            return
        if not (all_head and self._reading_head and heads_ended == self._heads_ended):
            return
        if self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > HEAD_MAX:
            self._stop_reading()
            self._refuse()

    def _refuse(self) -> None:
        """Answer 431, the connection's last answer."""
        logger.warning("request head too large", extra={"status": _STATUS.value})
        self._answer_last(functools.partial(self._send_431, _answer(to_head=self._refused_head)))

    def _stop_reading(self) -> None:
        """Make no request of the head being read, which is too large, or of what follows it,
        which is dropped; its method is kept for the answer, as the parser may read on (past
        HEAD_MAX, the request line has been read)."""
        self._refused = self._head_too_large = True
        self._refused_head = self.parser.get_method() == b"HEAD"

    def _send_431(self, answer: bytes) -> None:
        """The 431, then the end of the connection after a grace for the client to stop sending:
        closed with its bytes still coming, the connection would be reset, and the client could
        lose the answer before reading it."""
        self.transport.write(answer)
        self.transport.write_eof()  # the client reads the answer, then the end
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        refused = self.cycle
        if refused is not None and refused.more_body:
            # What is not HTTP is the body of the request being read (a chunk's size, say).
            if not self.pipeline:
                # Being served, it is the request refused, whose answer would otherwise wait
                # for the rest of its body.
                super().send_400_response(msg)
                return
            # Queued behind others (the newest, uvicorn's appendleft), it is never served: its
            # 400 comes after their answers, not in place of the one being served.
            self.pipeline.popleft()
        self._answer_last(functools.partial(super().send_400_response, msg))

    def _answer_last(self, answer: Callable[[], None]) -> None:
        """Give `answer`, which ends the connection, once the requests before it on the
        connection are answered; what the client sends meanwhile is dropped. Written at once,
        it came before their answers, and the connection ended without them: a request still
        being served (a write, done all the same) was never answered."""
        self._refused = True
        self._last_answer = answer
        if not self._answering():
            self._give_last_answer()

    def _answering(self) -> bool:
        """Whether a request before the refused one is still to be answered."""
        served = self._served
        return bool(self.pipeline) or (served is not None and not served.response_complete)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._served = cycle  # the newest request read may be queued behind it, or refused
        super()._start_asgi_task(cycle, app)

    def _give_last_answer(self) -> None:
        answer, self._last_answer = self._last_answer, None
        if answer is not None and not self.transport.is_closing():
            answer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._last_answer is not None and not self._answering():
            self._give_last_answer()

    def on_headers_complete(self) -> None:
        if self._refused:  # a request sent after the refused one, in the same piece
            return
        if self._reading_framing:  # the request it frames the body of was made of its own head
            self._reading_framing = False
            return
        self._reading_head = False
        self._heads_ended += 1
        self._head_bytes = 0
        # The request line and each header line, as sent but for spaces around the values.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > HEAD_MAX:
            self._stop_reading()  # answered in data_received
            return
        if self.parser.should_upgrade() and declares_body(self.headers):
            self._upgrade_body = b"".join(
                [b"PUT / HTTP/1.1\r\n"]
                + [
                    name + b": " + value + b"\r\n"
                    for name, value in self.headers
                    if name in _FRAMING_HEADERS
                ]
                + [b"\r\n"]
            )
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.default_headers = _DatedWhenSent(self.cycle.default_headers)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        # llhttp ends a request asking for an upgrade at its head: its body is still to come.
        if self._refused or self._upgrade_body is not None:
            return
        super().on_message_complete()
        self._reading_head = True
