"""The fast lane: a warm `GET /v1/signature` answered below aiohttp's web layer.

A page asks for its signature once per page view; that one request is most of the traffic, and
aiohttp's request and response objects, router and header machinery cost more than the signing.
So every connection is read first by the fast lane, a small asyncio protocol: a chunk that is
exactly one complete, plain `GET /v1/signature?...` HTTP/1.1 request, for an account and page that
may be signed with a ticket held in memory, is answered here, with the same body, headers (request
id, CORS, `Cache-Control`) and metrics as the web layer gives. Anything else (another route, a
body, a request split over reads or pipelined, an unusual header, an error to report, a cold
ticket, a draining process, access logging) goes to aiohttp's handler for the connection, which
answers it, errors included, exactly as without the lane; a connection may go back and forth.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from email.utils import formatdate
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from yarl._parse import query_to_pairs  # what `URL.query` parses with: yarl is pinned for it

from jssdk_service.config import Account
from jssdk_service.endpoint import NO_STORE, cors_headers
from jssdk_service.errors import JssdkError
from jssdk_service.keys import CLOCK, LIFECYCLE, NONCES, SETTINGS, STORE
from jssdk_service.logs import request_id_for
from jssdk_service.metrics import route_stats
from jssdk_service.pageurl import PageURL, host_allowed, parse_page_url
from jssdk_service.public import signed_config
from jssdk_service.shapes import encode

ROUTE = "/v1/signature"
_PREFIX = b"GET /v1/signature?"
_END = b"\r\n\r\n"
# The longest request the lane reads, and the most header fields: aiohttp's limits for one line and
# for the fields (anything larger goes to aiohttp, which applies them).
_MAX_REQUEST = 8190
_MAX_HEADERS = 128
# A header line: a token, a colon, the value without the white space around it.
_FIELD = re.compile(r"(?:^|\r\n)([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\t\x20-\x7e]*[\x21-\x7e])?)[ \t]*(?=\r\n|$)")
# Headers after which the lane cannot be sure it answers as aiohttp would.
_FOREIGN = frozenset({"content-length", "transfer-encoding", "upgrade", "expect"})
# How many request targets the lane keeps parsed (past it, it starts afresh), and the longest kept:
# with the parsed page (about twice the target again), a few MiB however the targets vary.
_PAGES_KEPT = 1024
_TARGET_KEPT = 2048
_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
# The headers of every answer: the web layer's for a signature (`NO_STORE`), and aiohttp's Server.
_FIXED = "".join(f"{name}: {value}\r\n" for name, value in {**NO_STORE, "Server": SERVER_SOFTWARE}.items()).encode()


class FastLane:
    """What the fast lane needs of the application, read once, and the connections it holds."""

    def __init__(self, app: web.Application, server: web.Server, *, keepalive_timeout: float) -> None:
        self.settings = app[SETTINGS]
        self.store = app[STORE]
        self.clock = app[CLOCK]
        self.lifecycle = app[LIFECYCLE]
        self.nonces = app[NONCES]
        self.server = server
        self.keepalive_timeout = keepalive_timeout
        self.count = route_stats(ROUTE).count
        self.connections: set[FastConnection] = set()
        # Request targets lately signed: the account and the page, parsed and found on its domains.
        self._pages: dict[str, tuple[Account, PageURL]] = {}
        # Requests answered here (the web layer's answers are counted by its route stats).
        self.answered = 0
        self._date_second = -1
        self._date = b""
        # With an access log, every request goes through the web layer, which writes it.
        self.open = not self.settings.access_log

    def __repr__(self) -> str:
        return f"FastLane(connections={len(self.connections)})"

    def __call__(self) -> FastConnection:
        return FastConnection(self)

    def date(self) -> bytes:
        """The `Date` header line, made once a second."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = f"Date: {formatdate(second, usegmt=True)}\r\n".encode()
        return self._date

    def answer(self, data: bytes) -> tuple[bytes, bool] | None:
        """The response to `data`, and whether to close after it; None when the web layer must answer."""
        started = time.perf_counter()
        if self.lifecycle.draining or len(data) > _MAX_REQUEST or data.find(_END) != len(data) - 4:
            return None
        try:
            head = data[: len(data) - 4].decode("ascii")
        except UnicodeDecodeError:
            return None
        first, _, rest = head.partition("\r\n")
        request_line = first.split(" ")  # the method is GET: the caller saw the prefix
        if len(request_line) != 3 or request_line[2] != "HTTP/1.1" or "#" in first or not first.isprintable():
            return None
        target = request_line[1]
        fields = _FIELD.findall(rest)
        headers = {name.lower(): value for name, value in fields}
        # Every line a plain field, none twice, a Host (HTTP/1.1 requires it), none that gives the
        # request a body or another protocol, no more than aiohttp reads.
        if (
            len(headers) != len(fields)
            or len(fields) != rest.count("\r\n") + bool(rest)
            or len(fields) > _MAX_HEADERS
            or "host" not in headers
            or not _FOREIGN.isdisjoint(headers)
        ):
            return None
        connection = headers.get("connection", "keep-alive").lower()
        if connection not in ("keep-alive", "close"):
            return None
        signing = self._pages.get(target) or self._page(target)
        if signing is None:
            return None
        account, page = signing
        request_id = request_id_for(headers.get("x-request-id"))  # before the ticket: a refresh it starts logs it
        now = self.clock()
        creds = self.store.get(account.key)
        if creds is None or creds.account is not account:  # an authorizer removed (or added again) since
            self._pages.pop(target, None)
            return None
        ticket = creds.usable_ticket(now)
        if ticket is None:
            return None
        body = encode(signed_config(account, page, ticket, now=now, nonce=self.nonces()))
        extra = ""
        origin = headers.get("origin")
        if origin is not None:
            cors = cors_headers(origin, account.allowed_hosts, "GET")
            extra = "".join(f"{name}: {value}\r\n" for name, value in cors.items())
        close = connection == "close"
        if close:
            extra += "Connection: close\r\n"
        tail = f"X-Request-Id: {request_id}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        response = b"".join((_STATUS_LINE, _FIXED, self.date(), tail, body))
        self.answered += 1
        self.count(200, time.perf_counter() - started)
        return response, close

    def _page(self, target: str) -> tuple[Account, PageURL] | None:
        """The account and page a request target names, when they may be signed (kept for the next time)."""
        key, url = signing_query(target[len(ROUTE) + 1 :])
        account = self.settings.account(key) or self.store.authorizer(key)
        if account is None or url is None or "\ufffd" in url:
            return None
        try:
            page = parse_page_url(url)
        except JssdkError:
            return None
        if not host_allowed(page.host, account.allowed_hosts):
            return None
        if len(target) <= _TARGET_KEPT:
            if len(self._pages) >= _PAGES_KEPT:
                self._pages.clear()
            self._pages[target] = (account, page)
        return account, page


def signing_query(query_string: str) -> tuple[str | None, str | None]:
    """The `app` and `url` parameters of a query as aiohttp's `request.query` gives them: yarl's
    decoding, the first of a repeated parameter, bad UTF-8 as U+FFFD (without building a URL and
    a MultiDict: half the cost of a target the lane has not seen)."""
    app = url = None
    for name, value in query_to_pairs(query_string):
        if name == "app":
            app = value if app is None else app
        elif name == "url":
            url = value if url is None else url
    return app, url


class FastConnection(asyncio.Protocol):
    """One connection: its warm signatures answered here, the rest passed to aiohttp's handler.

    aiohttp's handler is made at the first request the lane does not answer and then sees every
    byte the lane does not answer. The lane answers only while that handler waits for a request
    with none queued (so answers keep their order), and then moves the handler's keep-alive
    deadline on, as its own answer would have.
    """

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._transport: asyncio.Transport | None = None
        self._inner: RequestHandler | None = None
        # Whether all aiohttp was given ended a request head: only then may the lane answer between.
        self._clean = True
        self._paused = False
        self._last = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"FastConnection(open={self._transport is not None}, web_layer={self._inner is not None})"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio's in all but their class.
        self._transport = cast(asyncio.Transport, transport)
        self._lane.connections.add(self)
        if not self._lane.open:
            self._web_layer()
            return
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._idle = loop.call_later(self._lane.keepalive_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        transport, inner = self._transport, self._inner
        if transport is None:
            return
        lane_may = inner is None or (self._clean and waiting(inner))
        if lane_may and not self._paused and data.startswith(_PREFIX):
            answer = self._lane.answer(data)
            if answer is not None:
                response, close = answer
                transport.write(response)
                self._last = now = asyncio.get_running_loop().time()
                if inner is None:
                    if close:
                        self.close()
                elif close:
                    inner.force_close()
                else:
                    keep_alive_from(inner, now)
                return
        self._clean = data.endswith(_END)
        (inner or self._web_layer()).data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        else:
            self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._forget()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._flow(paused=True)

    def resume_writing(self) -> None:
        self._flow(paused=False)

    def _flow(self, *, paused: bool) -> None:
        """The client reads slower than it is answered (or again as fast): aiohttp waits for it, and
        the lane stops reading (or reads again)."""
        self._paused = paused
        if self._inner is not None:
            (self._inner.pause_writing if paused else self._inner.resume_writing)()
        elif self._transport is not None:
            (self._transport.pause_reading if paused else self._transport.resume_reading)()

    def close(self) -> None:
        """Close the connection, if only the lane has served it (between requests: nothing is in flight);
        once aiohttp serves it too, aiohttp closes it."""
        if self._transport is not None and self._inner is None:
            self._transport.close()
            self._forget()

    def _web_layer(self) -> RequestHandler:
        """aiohttp's handler for this connection, made now: it keeps the connection alive from here on."""
        assert self._transport is not None
        self._forget()
        inner = self._inner = self._lane.server()
        inner.connection_made(self._transport)
        if self._paused:
            self._transport.resume_reading()
            inner.pause_writing()
        return inner

    def _check_idle(self) -> None:
        """Close a keep-alive connection idle for the keep-alive timeout, as aiohttp would."""
        loop = asyncio.get_running_loop()
        idle_until = self._last + self._lane.keepalive_timeout
        if loop.time() >= idle_until:
            self.close()
        else:
            self._idle = loop.call_at(idle_until, self._check_idle)

    def _forget(self) -> None:
        self._lane.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


# What the lane reads and moves of aiohttp's connection handler: two of its slots read, one moved.
# aiohttp is pinned to the release they were read from; tests/test_fastlane.py proves them.


def waiting(handler: RequestHandler) -> bool:
    """Whether the handler waits for a request with none queued: an answer now keeps its place."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done() and not handler._messages


def keep_alive_from(handler: RequestHandler, now: float) -> None:
    """Move the handler's keep-alive deadline on after an answer the lane gave for it."""
    handler._next_keepalive_close_time = now + handler.keepalive_timeout


class FastLaneListener:
    """The service's listening socket, its connections starting in the fast lane.

    `start` after the runner's `setup`; `stop` stops listening; `close_connections` closes the
    lane's connections (between requests, all of them), those handed to aiohttp close with the
    runner's `cleanup`.
    """

    def __init__(self, runner: web.AppRunner, sock: socket.socket, *, keepalive_timeout: float) -> None:
        assert runner.server is not None, "runner.setup() first"
        self.lane = FastLane(runner.app, runner.server, keepalive_timeout=keepalive_timeout)
        self._sock = sock
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"FastLaneListener({self._sock.getsockname()!r})"

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self.lane, sock=self._sock)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_connections(self) -> None:
        """Close the connections only the lane has served; aiohttp's runner closes the others."""
        for connection in list(self.lane.connections):
            connection.close()
