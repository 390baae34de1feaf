"""The fast lane: warm GET /v1/signature answered below aiohttp, as the web layer would answer it."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from jssdk_service.config import Secret
from jssdk_service.fastlane import signing_query
from jssdk_service.sandbox import WeChatSandbox

from .helpers import (
    PAGE,
    RunningService,
    ServiceFactory,
    sign,
    verifies,
)

Answer = tuple[int, dict[str, str], bytes]


class Connection:
    """One raw keep-alive connection to the service: what it sends is exactly what the lane reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *chunks: bytes, answers: int = 1) -> list[Answer]:
        """Write each chunk as its own write (a pause between), then read `answers` responses."""
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.05)
            self.writer.write(chunk)
            await self.writer.drain()
        return [await self.read() for _ in range(answers)]

    async def read(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split(" ")[1]), headers, body

    async def closed(self, within: float) -> bool:
        """Whether the service closes the connection within `within` seconds."""
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except TimeoutError:
            return False


@pytest.fixture
async def connect(service: RunningService) -> AsyncIterator[Connection]:
    host, port = service.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    yield Connection(reader, writer)
    writer.close()


def signature_request(page: str = PAGE, *headers: str) -> bytes:
    lines = [f"GET /v1/signature?url={quote(page, safe='')} HTTP/1.1", "Host: localhost", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def warm(http: aiohttp.ClientSession, service: RunningService) -> None:
    status, _ = await sign(http, service.url)
    assert status == 200


async def served_by_both(http: aiohttp.ClientSession, service: RunningService, connect: Connection) -> int:
    """Warm the account and have aiohttp serve `connect` once; the lane's count of answers then."""
    await warm(http, service)
    await connect.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return service.lane.answered


async def test_a_warm_signature_comes_from_the_lane_as_the_web_layer_gives_it(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """The lane's answer has the web layer's status, headers and body shape, and the sandbox verifies it."""
    await warm(http, service)
    before = service.lane.answered
    [(status, headers, body)] = await connect.send(signature_request())
    assert service.lane.answered == before + 1
    # The same request in two writes is the web layer's.
    request = signature_request()
    [(web_status, web_headers, web_body)] = await connect.send(request[:20], request[20:])
    assert service.lane.answered == before + 1
    assert status == web_status == 200
    same = {"content-type", "cache-control", "server"}
    assert {k: headers[k] for k in same} == {k: web_headers[k] for k in same}
    assert set(headers) == set(web_headers) >= {"x-request-id", "date", "content-length"} | same
    config, web_config = json.loads(body), json.loads(web_body)
    assert set(config) == set(web_config) and config["appId"] == web_config["appId"]
    assert verifies(sandbox, config, PAGE) and verifies(sandbox, web_config, PAGE)


async def test_one_connection_goes_between_the_lane_and_the_web_layer(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """On one keep-alive connection, answers keep their order whoever gives them."""
    await warm(http, service)
    before = service.lane.answered
    health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    for request, lane in ((signature_request(), 1), (health, 0), (signature_request(), 1), (health, 0)):
        [(status, _, body)] = await connect.send(request)
        assert status == 200
        assert ("signature" in json.loads(body)) == bool(lane)
        before += lane
        assert service.lane.answered == before
    # Two requests in one write are the web layer's, answered in order.
    answers = await connect.send(signature_request() + health, answers=2)
    assert [json.loads(body).keys() >= {"signature"} for _, _, body in answers] == [True, False]
    assert service.lane.answered == before


async def test_request_ids_and_cors_in_the_lane(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """The lane echoes a usable X-Request-Id, makes one otherwise, and allows only the account's origins."""
    await warm(http, service)
    before = service.lane.answered
    [(_, headers, _)] = await connect.send(
        signature_request(PAGE, "X-Request-Id: abc-123", "Origin: https://example.com")
    )
    assert headers["x-request-id"] == "abc-123"
    assert headers["access-control-allow-origin"] == "https://example.com" and headers["vary"] == "Origin"
    [(_, headers, _)] = await connect.send(
        signature_request(PAGE, "X-Request-Id: no spaces!", "Origin: https://evil.com")
    )
    assert headers["x-request-id"] != "no spaces!" and "access-control-allow-origin" not in headers
    assert service.lane.answered == before + 2


@pytest.mark.parametrize(
    ("page", "status", "code"),
    [("https://evil.com/", 403, "host_not_allowed"), ("ftp://example.com/", 400, "invalid_url")],
)
async def test_errors_are_the_web_layers(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection, page: str, status: int, code: str
) -> None:
    """What the lane would refuse is passed on: the web layer answers with its JSON error."""
    await warm(http, service)
    before = service.lane.answered
    [(got, headers, body)] = await connect.send(signature_request(page))
    assert (got, json.loads(body)["error"]["code"]) == (status, code)
    assert "x-request-id" in headers and service.lane.answered == before


async def test_connection_close_is_honoured(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """`Connection: close` gets its answer with `Connection: close`, then the connection closes."""
    await warm(http, service)
    [(status, headers, _)] = await connect.send(signature_request(PAGE, "Connection: close"))
    assert (status, headers["connection"]) == (200, "close")
    assert await connect.closed(within=2)


async def test_keep_alive_counts_the_lanes_answers(start_service: ServiceFactory, http: aiohttp.ClientSession) -> None:
    """An idle connection closes after the keep-alive timeout, and the lane's answers keep a connection
    the web layer has served alive past it."""
    service = await start_service(keepalive_timeout=0.6)
    await warm(http, service)
    host, port = service.url.removeprefix("http://").split(":")
    for web_first in (False, True):
        connection = Connection(*await asyncio.open_connection(host, int(port)))
        if web_first:
            await connection.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for _ in range(5):  # 1.5 s of answers from the lane, each within the timeout of the last
            [(status, _, _)] = await connection.send(signature_request())
            assert status == 200
            await asyncio.sleep(0.3)
        assert await connection.closed(within=2)
        connection.writer.close()


async def test_the_lane_waits_its_turn_behind_the_web_layer(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A warm signature sent while the web layer is still answering the connection's previous request
    is answered after it, not before."""
    service = await start_service(admin_token=Secret("admin-token-for-the-lane"))
    await warm(http, service)
    sandbox.faults.delay = 0.5  # the forced refresh below takes that long
    host, port = service.url.removeprefix("http://").split(":")
    connection = Connection(*await asyncio.open_connection(host, int(port)))
    refresh = (b"POST /admin/apps/main/refresh HTTP/1.1\r\nHost: localhost\r\n"
               b"Authorization: Bearer admin-token-for-the-lane\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    before = service.lane.answered
    answers = await connection.send(refresh, signature_request(), answers=2)
    assert ["ticket" in json.loads(body) for _, _, body in answers] == [True, False]
    assert "signature" in json.loads(answers[1][2]) and service.lane.answered == before
    connection.writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        signature_request().replace(b"Host: localhost\r\n", b""),  # HTTP/1.1 needs a Host
        signature_request().replace(b"?url=", b"?z=a\tb&url="),  # a control character in the target
        signature_request().replace(b"HTTP/1.1", b"HTTP/1.0"),
        signature_request(PAGE, "Content-Length: 0"),
        signature_request(PAGE, "Transfer-Encoding: chunked"),
    ],
)
async def test_what_aiohttp_may_refuse_is_aiohttps(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection, request_bytes: bytes
) -> None:
    """A request the lane cannot be sure aiohttp would accept is aiohttp's to answer."""
    await warm(http, service)
    before = service.lane.answered
    connect.writer.write(request_bytes)
    await connect.writer.drain()
    await connect.reader.read(1)  # whatever aiohttp answers (or closes), it answered
    assert service.lane.answered == before


async def test_the_lane_never_answers_inside_a_request_aiohttp_is_reading(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """Bytes that arrive while aiohttp holds an unfinished request head are that request's."""
    before = await served_by_both(http, service, connect)
    [(status, _, body)] = await connect.send(b"GET /healthz HTTP/1.1\r\nX-Note: ", signature_request())
    assert (status, json.loads(body), service.lane.answered) == (200, {"status": "ok"}, before)


async def test_connection_close_is_honoured_after_the_web_layer(
    service: RunningService, http: aiohttp.ClientSession, connect: Connection
) -> None:
    """`Connection: close` answered by the lane closes a connection aiohttp has served too."""
    before = await served_by_both(http, service, connect)
    [(status, headers, _)] = await connect.send(signature_request(PAGE, "Connection: close"))
    assert (status, headers["connection"], service.lane.answered) == (200, "close", before + 1)
    assert await connect.closed(within=2)


class RecordingTransport(asyncio.Transport):
    """A transport that notes what the connection asks of it (flow control is not observable over loopback
    in a test's time: the kernel's buffers take megabytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.written = b""

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def test_a_client_that_does_not_read_stops_the_lane_reading(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """While the transport's buffer is over its limit the lane reads nothing more and answers nothing."""
    await warm(http, service)
    connection, transport = service.lane(), RecordingTransport()
    connection.connection_made(transport)
    connection.data_received(signature_request())
    assert transport.written.startswith(b"HTTP/1.1 200 OK")
    connection.pause_writing()
    assert transport.calls == ["pause_reading"]
    answered = service.lane.answered
    connection.resume_writing()
    assert transport.calls == ["pause_reading", "resume_reading"]
    connection.data_received(signature_request())
    assert service.lane.answered == answered + 1
    connection.connection_lost(None)


QUERIES = [
    "app=wx1&url=https%3A%2F%2Fexample.com%2Fp",
    "url=https://example.com/p?a=1&app=wx1",
    "app=wx1&app=wx2&url=a&url=b",
    "%61pp=wx1&u%72l=x",
    "app=w+x&url=a+b%2Bc",
    "app=&url",
    "&&app=wx1&&url=%zz%4&",
    "url=%E4%BD%A0%E5%A5%BD&app=%FF%FEwx",
    "url=%E4%BD&app=%C3",
    "app=wx1;url=x",
    "app=wx1=2&url==",
    "",
]


def random_queries(count: int) -> list[str]:
    """Seeded random queries over the characters that matter to decoding."""
    rng = random.Random(20261203)
    pieces = ["app", "url", "=", "&", "+", "%", "%2", "%41", "%E4%BD%A0", "%C3", "%FF", "a", ";", "%26", "%3D", "é"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(count)]


@pytest.mark.parametrize("query", QUERIES + random_queries(300))
def test_the_lane_reads_a_query_as_aiohttp_does(query: str) -> None:
    """`app` and `url` as `request.query` gives them: decoding, repeats, bad UTF-8, stray escapes."""
    parsed = URL.build(path="/v1/signature", query_string=query, encoded=True).query
    assert signing_query(query) == (parsed.get("app"), parsed.get("url"))
