"""The nginx sidecar: the repository's template, rendered as the official image does, in a real nginx.

Each test starts nginx on a free loopback port in front of either the service (against the sandbox)
or a recording upstream that shows exactly what nginx forwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox, closed_port_url

from .helpers import RunningService, ServiceFactory, free_port, require_binary, verifies

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "templates" / "jssdk.conf.template"
PLACEHOLDERS = ("LISTEN_PORT", "JSSDK_UPSTREAM")
PAGE = "https://example.com/p?a=1#top"
SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy",
                    "Strict-Transport-Security")  # fmt: skip


def render_template(listen: str, upstream: str) -> str:
    """The template with its two placeholders filled in, as envsubst does in the nginx image."""
    return TEMPLATE.read_text().replace("${LISTEN_PORT}", listen).replace("${JSSDK_UPSTREAM}", upstream)


def write_nginx_conf(prefix: Path, listen: str, upstream: str) -> Path:
    """A complete nginx.conf around the rendered template, every writable path under `prefix`."""
    (prefix / "conf.d").mkdir(parents=True)
    rendered = prefix / "conf.d" / "jssdk.conf"
    rendered.write_text(render_template(listen, upstream))
    # As root, nginx would hand its workers to `nobody`, who cannot enter pytest's private tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        "events {\n    worker_connections 1024;\n}\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp_paths}    include {rendered};\n}}\n"
    )
    return conf


@dataclass
class Nginx:
    """A running nginx: its public URL and its error log."""

    url: str
    error_log: Path


NginxFactory = Callable[[str], Awaitable[Nginx]]


@pytest.fixture
async def start_nginx(tmp_path: Path) -> AsyncIterator[NginxFactory]:
    """Start nginx with the rendered template in front of `upstream` (host:port); stopped afterwards."""
    binary = require_binary("nginx")
    processes: list[asyncio.subprocess.Process] = []

    async def start(upstream: str) -> Nginx:
        prefix = tmp_path / f"nginx-{len(processes)}"
        port = free_port()
        conf = write_nginx_conf(prefix, f"127.0.0.1:{port}", upstream)
        error_log = prefix / "error.log"
        process = await asyncio.create_subprocess_exec(binary, "-p", str(prefix), "-c", str(conf), "-e", str(error_log),
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert process.returncode is None, error_log.read_text()
                assert time.monotonic() < deadline, "nginx did not start listening"
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return Nginx(url=f"http://127.0.0.1:{port}", error_log=error_log)

    yield start
    for process in processes:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


@dataclass
class RecordingUpstream:
    """An upstream that answers everything and records what nginx sent it."""

    address: str
    requests: list[web.Request] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


@pytest.fixture
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    """A loopback HTTP server standing in for the service, serving a helper script at /v1/jssdk-share.js."""
    recorder = RecordingUpstream(address="")

    async def handler(request: web.Request) -> web.Response:
        recorder.requests.append(request)
        recorder.peers.append(request.transport.get_extra_info("peername") if request.transport else ("", 0))
        if request.path == "/v1/jssdk-share.js":
            return web.Response(text=f"/* {len(recorder.requests)} */", content_type="application/javascript")
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    recorder.address = f"{host}:{port}"
    yield recorder
    await runner.cleanup()


def upstream_of(service: RunningService) -> str:
    return service.url.removeprefix("http://")


def share_url(base: str) -> str:
    return f"{base}/v1/share?url={quote(PAGE, safe='')}"


# -- the template ----------------------------------------------------------------------------


def test_the_template_has_exactly_two_placeholders() -> None:
    """Only ${LISTEN_PORT} and ${JSSDK_UPSTREAM} are for envsubst; every other variable is nginx's own, lower case."""
    text = TEMPLATE.read_text()
    assert set(re.findall(r"\$\{([^}]*)\}", text)) == set(PLACEHOLDERS)
    bare = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))
    assert bare and all(name == name.lower() for name in bare), bare


def test_nginx_accepts_the_rendered_template(tmp_path: Path) -> None:
    """`nginx -t` passes on the rendered template inside a complete configuration."""
    binary = require_binary("nginx")
    conf = write_nginx_conf(tmp_path, f"127.0.0.1:{free_port()}", "127.0.0.1:8080")
    result = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# -- in front of the service -----------------------------------------------------------------


async def test_share_works_through_the_sidecar(
    start_nginx: NginxFactory, service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/v1/share answers through nginx with a verifiable config, the service's headers and nginx's security headers."""
    nginx = await start_nginx(upstream_of(service))
    async with http.get(share_url(nginx.url), headers={"Origin": "https://m.example.com"}) as response:
        assert response.status == 200
        body = await response.json()
        headers = response.headers
    config = body["config"]
    assert verifies(sandbox, config, "https://example.com/p?a=1")
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == "https://m.example.com"
    assert headers["Server"] == "nginx"
    assert all(name in headers for name in SECURITY_HEADERS)
    async with http.get(share_url(nginx.url), headers={"Origin": "https://evil.example.net"}) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_flood_from_one_client_gets_429_while_the_service_stays_healthy(
    start_nginx: NginxFactory, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """300 simultaneous requests from one address get 429s; health, other clients and later requests are served."""
    nginx = await start_nginx(upstream_of(service))
    async with http.get(share_url(nginx.url)) as response:
        assert response.status == 200

    async def status_of(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
        async with session.get(url) as response:
            return response.status, await response.text()

    answers = await asyncio.gather(*(status_of(http, share_url(nginx.url)) for _ in range(300)))
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 429}, set(statuses)
    assert 0 < statuses.count(200) <= 60
    limited = next(text for status, text in answers if status == 429)
    assert '"code": "rate_limited"' in limited

    # The same address is still over its limit; another address and the health endpoints are not.
    again = await asyncio.gather(*(status_of(http, share_url(nginx.url)) for _ in range(60)))
    assert 429 in [status for status, _ in again]
    neighbour = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=neighbour) as other_client:
        assert (await status_of(other_client, share_url(nginx.url)))[0] == 200
    for url in (f"{nginx.url}/healthz", f"{nginx.url}/readyz", f"{service.url}/healthz", f"{service.url}/readyz"):
        assert (await status_of(http, url))[0] == 200

    deadline = time.monotonic() + 3
    while (await status_of(http, share_url(nginx.url)))[0] != 200:
        assert time.monotonic() < deadline, "the limit did not recover"
        await asyncio.sleep(0.05)


async def test_admin_is_not_reachable_through_the_public_listener_even_with_the_token(
    start_nginx: NginxFactory, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """/admin/ and /metrics answer 404 from nginx, however the path is spelled, with or without the admin token."""
    # The paths go out byte for byte (encoded=True): nginx, not the client, must see through the spellings.
    service = await start_service(admin_token=Secret("admin-token-for-tests"))
    nginx = await start_nginx(upstream_of(service))
    token = {"Authorization": "Bearer admin-token-for-tests"}
    for path in ("/admin/", "/admin/refresh", "/%61dmin/refresh", "//admin/refresh", "/v1/../admin/refresh",
                 "/metrics", "/metrics/", "/%6Detrics"):  # fmt: skip
        for method in ("GET", "POST"):
            for headers in ({}, token):
                async with http.request(method, URL(f"{nginx.url}{path}", encoded=True), headers=headers) as response:
                    assert response.status == 404, (method, path)
                    body = await response.json(content_type=None)
                    assert body["error"]["message"] == "not served on the public listener"


# -- what nginx sends upstream ---------------------------------------------------------------


async def test_nothing_blocked_reaches_the_upstream(
    start_nginx: NginxFactory, recording_upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """Requests for /admin and /metrics stop at nginx; health and API requests are forwarded."""
    nginx = await start_nginx(recording_upstream.address)
    for path in ("/admin/refresh", "/%61dmin/x", "/v1/..%2fadmin/x", "/metrics", "/healthz", "/readyz", "/v1/share"):
        async with http.post(
            URL(f"{nginx.url}{path}", encoded=True), headers={"Authorization": "Bearer x"}
        ) as response:
            await response.read()
    assert recording_upstream.paths() == ["/healthz", "/readyz", "/v1/share"]


async def test_forwarding_headers_and_upstream_keepalive(
    start_nginx: NginxFactory, recording_upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """The client's address is appended to X-Forwarded-For, the scheme and host are passed, and one connection serves many requests."""
    nginx = await start_nginx(recording_upstream.address)
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https", "Host": "jssdk.example.com"}
    for _ in range(5):
        async with http.get(f"{nginx.url}/v1/share", headers=headers) as response:
            assert response.status == 200
    async with http.get(f"{nginx.url}/v1/signature") as response:
        assert response.status == 200
    first, last = recording_upstream.requests[0], recording_upstream.requests[-1]
    assert first.headers["X-Forwarded-For"] == "198.51.100.7, 127.0.0.1"
    assert first.headers["X-Real-IP"] == "127.0.0.1"
    assert first.headers["X-Forwarded-Proto"] == "https"
    assert first.headers["Host"] == first.headers["X-Forwarded-Host"] == "jssdk.example.com"
    assert last.headers["X-Forwarded-For"] == "127.0.0.1"
    assert last.headers["X-Forwarded-Proto"] == "http"
    assert len(set(recording_upstream.peers)) == 1, recording_upstream.peers


async def test_the_helper_script_is_cached(
    start_nginx: NginxFactory, recording_upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """/v1/jssdk-share.js is fetched from the upstream once and then served from nginx's cache."""
    nginx = await start_nginx(recording_upstream.address)
    bodies = []
    for _ in range(3):
        async with http.get(f"{nginx.url}/v1/jssdk-share.js") as response:
            assert response.status == 200
            bodies.append(await response.text())
    assert bodies == ["/* 1 */"] * 3
    assert recording_upstream.paths() == ["/v1/jssdk-share.js"]


async def test_a_stopped_service_is_a_json_502(start_nginx: NginxFactory, http: aiohttp.ClientSession) -> None:
    """When nothing answers upstream, nginx replies 502 in the service's error shape, with its security headers."""
    nginx = await start_nginx(closed_port_url().removeprefix("http://"))
    async with http.get(share_url(nginx.url)) as response:
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert (await response.json())["error"]["code"] == "service_unreachable"
        assert all(name in response.headers for name in SECURITY_HEADERS)
