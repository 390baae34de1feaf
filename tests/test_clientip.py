"""The client's address: X-Forwarded-For believed only from the loopback sidecar, read from the right."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from jssdk_service.clientip import client_address, client_ip


def test_a_direct_client_is_known_by_its_connection() -> None:
    """Without X-Forwarded-For the answer is the peer address."""
    assert client_address("203.0.113.9", None) == "203.0.113.9"
    assert client_address("127.0.0.1", "") == "127.0.0.1"
    assert client_address(None, None) is None


def test_the_header_is_ignored_from_anyone_but_loopback() -> None:
    """A non-loopback peer cannot choose its address by sending X-Forwarded-For."""
    assert client_address("203.0.113.9", "198.51.100.7") == "203.0.113.9"
    assert client_address("10.0.0.5", "198.51.100.7, 10.0.0.4") == "10.0.0.5"


def test_the_sidecar_address_is_replaced_by_the_client_it_saw() -> None:
    """From loopback, the address nginx appended is the client, IPv4 or IPv6."""
    assert client_address("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert client_address("::1", "2001:db8::7") == "2001:db8::7"
    assert client_address("::ffff:127.0.0.1", "203.0.113.9") == "203.0.113.9"


def test_addresses_a_client_wrote_itself_are_skipped() -> None:
    """The right-most address that is not loopback wins; spoofed entries to its left are ignored."""
    assert client_address("127.0.0.1", "1.1.1.1, 198.51.100.7, 203.0.113.9") == "203.0.113.9"
    assert client_address("127.0.0.1", "198.51.100.7, 203.0.113.9, 127.0.0.1") == "203.0.113.9"
    assert client_address("127.0.0.1", "not-an-ip, 203.0.113.9") == "203.0.113.9"


def test_a_chain_of_loopback_proxies_gives_its_left_most_address() -> None:
    """A request made on the host itself is reported as loopback."""
    assert client_address("127.0.0.1", "127.0.0.1, ::1") == "127.0.0.1"


def test_garbage_written_by_a_trusted_hop_falls_back_to_the_peer() -> None:
    """An entry that is not an IP address where a proxy of ours should have written one is not believed."""
    assert client_address("127.0.0.1", "203.0.113.9, unknown") == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9, ") == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9:4711") == "127.0.0.1"


@pytest.fixture
async def echo_client_ip() -> AsyncIterator[str]:
    """A loopback server that answers each request with `client_ip(request)`."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=client_ip(request) or "")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/"
    await runner.cleanup()


async def test_client_ip_reads_a_real_request(echo_client_ip: str, http: aiohttp.ClientSession) -> None:
    """`client_ip` takes the peer and the header of a request received over HTTP on loopback."""
    async with http.get(echo_client_ip) as response:
        assert await response.text() == "127.0.0.1"
    headers = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    async with http.get(echo_client_ip, headers=headers) as response:
        assert await response.text() == "203.0.113.9"
