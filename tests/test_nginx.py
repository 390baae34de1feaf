"""The nginx sidecar: the repository's template, rendered as the official image does, in a real nginx.

Each test starts nginx on a free loopback port in front of either the service (against the sandbox)
or a recording upstream that shows exactly what nginx forwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from jssdk_service.config import Secret
from jssdk_service.msgcrypt import MessageCrypt
from jssdk_service.sandbox import WeChatSandbox, closed_port_url

from .helpers import (
    ACCOUNT_ENV,
    AES_KEY,
    CLI,
    COMPONENT_APPID,
    MESSAGE_TOKEN,
    RunningService,
    ServiceFactory,
    clean_environment,
    events_url,
    free_port,
    make_platform,
    require_binary,
    verifies,
)

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "templates" / "jssdk.conf.template"
# WeChat's callback IPs as the template includes them (relative to nginx's configuration directory).
CALLBACK_IPS_NAME = "wechat-callback-ips.conf"
SHIPPED_CALLBACK_IPS = TEMPLATE.parent.parent / CALLBACK_IPS_NAME
EVENTS = "/v1/platform/wx0000000000000c01/events?timestamp=1&nonce=1&msg_signature=x&encrypt_type=aes"
PUSH = b"<xml><ToUserName><![CDATA[wx0000000000000c01]]></ToUserName><Encrypt><![CDATA[x]]></Encrypt></xml>"
PLACEHOLDERS = ("LISTEN_PORT", "JSSDK_UPSTREAM")
PAGE = "https://example.com/p?a=1#top"
SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy",
                    "Strict-Transport-Security")  # fmt: skip


def render_template(listen: str, upstream: str) -> str:
    """The template with its two placeholders filled in, as envsubst does in the nginx image."""
    return TEMPLATE.read_text().replace("${LISTEN_PORT}", listen).replace("${JSSDK_UPSTREAM}", upstream)


def write_nginx_conf(prefix: Path, listen: str, upstream: str, *, callback_ips: str | None = None) -> Path:
    """A complete nginx.conf around the rendered template, every writable path under `prefix`.

    Beside it, as in /etc/nginx, the callback allow list the template includes: `callback_ips`, or the
    shipped fallback.
    """
    (prefix / "conf.d").mkdir(parents=True)
    rendered = prefix / "conf.d" / "jssdk.conf"
    rendered.write_text(render_template(listen, upstream))
    allow_list = SHIPPED_CALLBACK_IPS.read_text() if callback_ips is None else callback_ips
    (prefix / CALLBACK_IPS_NAME).write_text(allow_list)
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


class NginxFactory(Protocol):
    def __call__(self, upstream: str, *, callback_ips: str | None = None) -> Awaitable[Nginx]:
        """Start nginx in front of `upstream` (host:port), allowing `callback_ips` (nginx lines) to push."""
        ...


@pytest.fixture
async def start_nginx(tmp_path: Path) -> AsyncIterator[NginxFactory]:
    """Start nginx with the rendered template in front of `upstream` (host:port); stopped afterwards."""
    binary = require_binary("nginx")
    processes: list[asyncio.subprocess.Process] = []

    async def start(upstream: str, *, callback_ips: str | None = None) -> Nginx:
        prefix = tmp_path / f"nginx-{len(processes)}"
        port = free_port()
        conf = write_nginx_conf(prefix, f"127.0.0.1:{port}", upstream, callback_ips=callback_ips)
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


def nginx_test(binary: str, prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of `conf`, with `prefix` as nginx's prefix."""
    return subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_the_shipped_callback_allow_list_parses_and_is_found_beside_nginx_conf(tmp_path: Path) -> None:
    """The fallback's four 2021 ranges pass `nginx -t` with the template, included from the -c file's directory."""
    binary = require_binary("nginx")
    allowed = re.findall(r"^allow (\S+);$", SHIPPED_CALLBACK_IPS.read_text(), re.MULTILINE)
    assert allowed == ["81.69.103.0/24", "81.69.101.0/24", "175.24.211.0/24", "101.226.103.0/24"]
    header = SHIPPED_CALLBACK_IPS.read_text().split("\nallow ", 1)[0]
    assert "FALLBACK" in header and "2021" in header
    assert "jssdk-service wechat-ips --callback --format nginx --output /etc/nginx/wechat-callback-ips.conf" in header
    assert "include wechat-callback-ips.conf;" in TEMPLATE.read_text()

    # The configuration's directory (as /etc/nginx) is not nginx's prefix here: the include must follow the former.
    conf_dir, prefix = tmp_path / "etc-nginx", tmp_path / "prefix"
    prefix.mkdir()
    conf = write_nginx_conf(conf_dir, f"127.0.0.1:{free_port()}", "127.0.0.1:8080")
    result = nginx_test(binary, prefix, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    (conf_dir / CALLBACK_IPS_NAME).unlink()
    result = nginx_test(binary, prefix, conf)
    assert result.returncode != 0
    assert str(conf_dir / CALLBACK_IPS_NAME) in result.stderr


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


async def post_push(local_address: str, url: str, body: bytes = PUSH) -> tuple[int, str, Any]:
    """POST `body` to `url` from `local_address`: the status, the Content-Type and the JSON body (None if not JSON)."""
    connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.post(url, data=body) as response:
        text = await response.text()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        return response.status, response.headers.get("Content-Type", ""), answer


async def callback_allow_list(sandbox_url: str, output: Path) -> str:
    """What `jssdk-service wechat-ips --callback --format nginx --output` writes, asking the sandbox."""
    env = clean_environment(**ACCOUNT_ENV, JSSDK_WECHAT_API_BASE=sandbox_url)
    process = await asyncio.create_subprocess_exec(*CLI, "wechat-ips", "--callback", "--format", "nginx", "--output",
                                                   str(output), env=env, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return await asyncio.to_thread(output.read_text)


async def test_only_wechats_callback_ips_reach_the_service_with_a_push(
    start_nginx: NginxFactory, start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, tmp_path: Path
) -> None:
    """With the list wechat-ips wrote, a push from a callback IP reaches the service and is taken; from elsewhere
    it is nginx's 403."""
    service = await start_service(platforms=(make_platform(),))
    sandbox.callback_ips = ["127.0.0.2/32"]
    allow_list = await callback_allow_list(sandbox_url, tmp_path / CALLBACK_IPS_NAME)
    assert "\nallow 127.0.0.2/32;\n" in allow_list
    nginx = await start_nginx(upstream_of(service), callback_ips=allow_list)
    crypt = MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY, receive_id=COMPONENT_APPID)
    timestamp = str(int(time.time()))
    fields = {"AppId": COMPONENT_APPID, "InfoType": "component_verify_ticket", "ComponentVerifyTicket": "t"}
    push, signature = crypt.seal_push(fields, timestamp=timestamp, nonce="5")
    query = f"timestamp={timestamp}&nonce=5&msg_signature={signature}&encrypt_type=aes"
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{events_url(nginx.url)}?{query}", data=push) as response,
    ):
        assert (response.status, await response.text()) == (200, "success")
    # A push nginx let through but the service refuses is the service's own JSON error.
    status, content_type, body = await post_push("127.0.0.2", f"{nginx.url}{EVENTS}")
    assert (status, body["error"]["code"]) == (400, "invalid_push"), body
    assert content_type.startswith("application/json")

    status, content_type, body = await post_push("127.0.0.1", f"{nginx.url}{EVENTS}")
    assert status == 403
    assert content_type == "application/json; charset=utf-8"
    assert body == {"error": {"code": "forbidden", "message": "pushes are accepted from the WeChat callback IPs only"}}
    # What the runbook (deploy/README.md) tells operators to look for.
    assert "access forbidden by rule, client: 127.0.0.1" in nginx.error_log.read_text()


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


async def test_a_push_from_elsewhere_never_reaches_the_upstream_and_wechat_is_never_rate_limited(
    start_nginx: NginxFactory, recording_upstream: RecordingUpstream
) -> None:
    """Refused pushes, other spellings and bodies over 16k stop at nginx; 100 pushes at once from WeChat all pass."""
    nginx = await start_nginx(recording_upstream.address, callback_ips="allow 127.0.0.2/32;\n")
    status, _, body = await post_push("127.0.0.1", f"{nginx.url}{EVENTS}")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    for spelling in ("/v1/platform/wx0000000000000c01%2Fx/events", "/v1/platform/wx.c01/events",
                     "/v1/platform/wx0000000000000c01/events/"):  # fmt: skip
        for source in ("127.0.0.1", "127.0.0.2"):
            status, _, body = await post_push(source, str(URL(f"{nginx.url}{spelling}", encoded=True)))
            assert (status, body["error"]["code"]) == (404, "not_found"), spelling
    status, _, _ = await post_push("127.0.0.2", f"{nginx.url}{EVENTS}", b"x" * 17 * 1024)
    assert status == 413
    assert recording_upstream.paths() == []

    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as wechat:

        async def push() -> int:
            async with wechat.post(f"{nginx.url}{EVENTS}", data=PUSH) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(push() for _ in range(100)))
    assert statuses == [200] * 100
    assert recording_upstream.paths() == ["/v1/platform/wx0000000000000c01/events"] * 100
    assert recording_upstream.requests[0].query_string == EVENTS.partition("?")[2]
