"""The HTTP API of API.md, over real HTTP against the sandbox."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox, closed_port_url
from jssdk_service.share import ShareFields, SharePolicy, ShareRule

from .helpers import APP_ID, OTHER_APP_ID, OTHER_SECRET, SECRET, RunningService, ServiceFactory, make_account, verifies

PAGE = "https://example.com/p?a=1#top"


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.json()


async def post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.json()


async def test_share_returns_a_verifiable_config_and_two_payloads(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """GET /v1/share signs the page without its fragment and returns both complete share payloads."""
    status, headers, body = await get(http, f"{service.url}/v1/share?url={quote(PAGE, safe='')}")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    config = body["config"]
    assert set(config) == {"appId", "timestamp", "nonceStr", "signature", "jsApiList"}
    assert config["appId"] == APP_ID
    assert config["jsApiList"] == ["updateAppMessageShareData", "updateTimelineShareData"]
    assert verifies(sandbox, config, "https://example.com/p?a=1")
    assert set(body["appMessage"]) == {"title", "desc", "link", "imgUrl"}
    assert set(body["timeline"]) == {"title", "link", "imgUrl"}
    assert body["appMessage"]["link"] == body["timeline"]["link"] == "https://example.com/p?a=1"
    assert all(body["appMessage"].values()) and all(body["timeline"].values())


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/商品/详情?id=1",
        "https://example.com/p?q=%E4%B8%AD%E6%96%87&x=a%2Fb",
        "http://localhost:8080/app/",
        "https://a.example.com",
    ],
)
async def test_tricky_urls_are_signed_raw(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession, url: str
) -> None:
    """Unicode paths, encoded queries, ports and bare hosts verify exactly as the browser sent them."""
    status, _, config = await get(http, f"{service.url}/v1/signature", params={"url": url + "#frag"})
    assert status == 200
    assert verifies(sandbox, config, url)


async def test_post_forms_match_the_get_forms(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """POST /v1/signature and /v1/share take the same fields as JSON."""
    status, headers, config = await post(http, f"{service.url}/v1/signature", json={"url": PAGE, "app": "main"})
    assert (status, headers["Cache-Control"]) == (200, "no-store")
    assert verifies(sandbox, config, "https://example.com/p?a=1")
    status, _, body = await post(http, f"{service.url}/v1/share", json={"url": PAGE, "app": APP_ID})
    assert status == 200
    assert verifies(sandbox, body["config"], "https://example.com/p?a=1")


async def test_share_rules_and_overrides(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Configured rules shape the payloads and a POST's `share` is merged over them."""
    policy = SharePolicy(
        defaults=ShareFields(title="Shop", desc="All of it", img_url="/i/shop.png"),
        rules=(ShareRule("/sale/*", ShareFields(title="Sale")),),
    )
    service = await start_service(accounts=(make_account(share=policy, open_tag_list=("wx-open-launch-weapp",)),))
    _, _, body = await get(http, f"{service.url}/v1/share", params={"url": "https://m.example.com/sale/x"})
    assert body["appMessage"] == {"title": "Sale", "desc": "All of it", "link": "https://m.example.com/sale/x",
                                  "imgUrl": "https://m.example.com/i/shop.png"}  # fmt: skip
    assert body["config"]["openTagList"] == ["wx-open-launch-weapp"]
    share = {"title": "Mine", "link": "/landing", "imgUrl": "https://cdn.example.com/a.png"}
    _, _, body = await post(
        http, f"{service.url}/v1/share", json={"url": "https://m.example.com/sale/x", "share": share}
    )
    assert body["timeline"] == {"title": "Mine", "link": "https://m.example.com/landing",
                                "imgUrl": "https://cdn.example.com/a.png"}  # fmt: skip


async def test_several_accounts_are_selected_by_app(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """With two accounts, `app` picks one by name or appId; each signs with its own ticket."""
    other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET), allowed_hosts=("other.com",))
    service = await start_service(accounts=(make_account(), other))
    for app in ("other", OTHER_APP_ID):
        status, _, config = await get(
            http, f"{service.url}/v1/signature", params={"url": "https://other.com/", "app": app}
        )
        assert (status, config["appId"]) == (200, OTHER_APP_ID)
        assert verifies(sandbox, config, "https://other.com/")
    status, _, body = await get(http, f"{service.url}/v1/signature", params={"url": "https://other.com/"})
    assert (status, body["error"]["code"]) == (404, "unknown_app")
    status, _, body = await get(
        http, f"{service.url}/v1/signature", params={"url": "https://other.com/", "app": "main"}
    )
    assert (status, body["error"]["code"]) == (403, "host_not_allowed")


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "invalid_url"),
        ({"url": "/relative"}, 400, "invalid_url"),
        ({"url": "ftp://example.com/"}, 400, "invalid_url"),
        ({"url": "https://example.com/" + "a" * 4100}, 400, "invalid_url"),
        ({"url": "https://example.com/\x01"}, 400, "invalid_url"),
        ({"url": "https://exa mple.com/"}, 400, "invalid_url"),
        ({"url": "https://example.com:99999/"}, 400, "invalid_url"),
        ({"url": "https://evilexample.com/"}, 403, "host_not_allowed"),
        ({"url": "https://example.com.evil.com/"}, 403, "host_not_allowed"),
        ({"url": "https://example.com/", "app": "nobody"}, 404, "unknown_app"),
    ],
)
async def test_request_errors_have_documented_codes(
    service: RunningService, http: aiohttp.ClientSession, params: dict[str, str], status: int, code: str
) -> None:
    """Every 4xx of API.md's table comes as a JSON error with its code and a message."""
    for endpoint in ("/v1/signature", "/v1/share"):
        got, headers, body = await get(http, service.url + endpoint, params=params)
        assert (got, body["error"]["code"]) == (status, code)
        assert body["error"]["message"]
        assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"url": 5}', 400, "invalid_url"),
        (b'{"url": "https://example.com/", "app": 5}', 400, "invalid_request"),
        (b'{"url": "https://example.com/", "share": "x"}', 400, "invalid_share"),
        (b'{"url": "https://example.com/", "share": {"imgUrl": "javascript:x"}}', 400, "invalid_share"),
        (b'{"url": "https://example.com/", "share": {"link": "https://evil.com/"}}', 403, "host_not_allowed"),
        (b'{"url": "https://example.com/", "share": {"link": "//evil.com/"}}', 403, "host_not_allowed"),
    ],
)
async def test_bad_post_bodies_are_4xx(
    service: RunningService, http: aiohttp.ClientSession, payload: bytes, status: int, code: str
) -> None:
    """Malformed JSON, wrong types and bad share overrides are clear 4xx errors, never 500."""
    got, _, body = await post(http, f"{service.url}/v1/share", data=payload,
                              headers={"Content-Type": "application/json"})  # fmt: skip
    assert (got, body["error"]["code"]) == (status, code)


async def test_unknown_routes_and_methods_are_json_errors(service: RunningService, http: aiohttp.ClientSession) -> None:
    """404 and 405 come in the same JSON error shape."""
    status, _, body = await get(http, f"{service.url}/v2/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")
    async with http.delete(f"{service.url}/v1/share") as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"
    status, _, body = await post(http, f"{service.url}/v1/share", data=b"x" * 70_000)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


async def test_a_wrong_secret_is_upstream_rejected_naming_40125(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """WeChat refusing the AppSecret is 503 upstream_rejected with errcode 40125, and the secret is not shown."""
    service = await start_service(accounts=(make_account(secret=Secret("wrong-secret-123")),))
    status, headers, body = await get(http, f"{service.url}/v1/signature", params={"url": PAGE})
    assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    assert "40125" in body["error"]["message"]
    assert "wrong-secret-123" not in str(body) and SECRET not in str(body)
    assert headers["Cache-Control"] == "no-store"


async def test_unreachable_wechat_is_upstream_unavailable(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """With nothing cached and no base answering, requests get 503 upstream_unavailable."""
    service = await start_service(api_bases=(closed_port_url(), closed_port_url()))
    status, _, body = await get(http, f"{service.url}/v1/share", params={"url": PAGE})
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable")


async def test_cors_for_the_accounts_domains_only(service: RunningService, http: aiohttp.ClientSession) -> None:
    """An origin on a JS secure domain is allowed with Vary: Origin; any other origin gets no CORS headers."""
    url = f"{service.url}/v1/share"
    _, headers, _ = await get(http, url, params={"url": PAGE}, headers={"Origin": "https://m.example.com"})
    assert headers["Access-Control-Allow-Origin"] == "https://m.example.com"
    assert headers["Vary"] == "Origin"
    for origin in ("https://evilexample.com", "null", "https://example.com.evil.com", "file://example.com"):
        _, headers, _ = await get(http, url, params={"url": PAGE}, headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in headers
    _, headers, _ = await get(http, url, params={"url": "/bad"}, headers={"Origin": "https://example.com"})
    assert headers["Access-Control-Allow-Origin"] == "https://example.com"


async def test_preflight_allows_the_post_forms(service: RunningService, http: aiohttp.ClientSession) -> None:
    """OPTIONS answers 204 with the method and Content-Type for an allowed origin, and nothing for others."""
    preflight = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    async with http.options(f"{service.url}/v1/share", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    async with http.options(
        f"{service.url}/v1/signature", headers={**preflight, "Origin": "https://evil.com"}
    ) as response:
        assert response.status == 204
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_health_and_readiness(start_service: ServiceFactory, http: aiohttp.ClientSession) -> None:
    """/healthz is 200 while running; /readyz is 200 with a ticket and 503 naming the account without one."""
    ready = await start_service()
    await get(http, f"{ready.url}/v1/signature", params={"url": PAGE})
    assert (await get(http, f"{ready.url}/healthz"))[0] == 200
    status, _, body = await get(http, f"{ready.url}/readyz")
    assert (status, body["status"], body["ready"], body["total"], body["accounts"]) == (200, "ready", 1, 1, [])
    status, _, body = await get(http, f"{ready.url}/readyz", params={"verbose": "1"})
    assert (status, body["status"], body["accounts"][0]["ready"]) == (200, "ready", True)

    rejected = await start_service(accounts=(make_account(secret=Secret("nope-nope")),))
    await get(http, f"{rejected.url}/v1/signature", params={"url": PAGE})
    status, _, body = await get(http, f"{rejected.url}/readyz")
    assert (status, body["status"]) == (503, "unready")
    (account,) = body["accounts"]
    assert (account["app"], account["ready"], account["errcode"]) == ("main", False, 40125)
    assert "nope-nope" not in str(body)


async def test_share_page_picks_the_rule_when_the_signed_url_differs(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """`page` (iOS signs a single-page app's landing URL) picks the share rule and the link; `url` is what is signed."""
    policy = SharePolicy(
        defaults=ShareFields(title="App"), rules=(ShareRule("/app/orders/*", ShareFields(title="Order")),)
    )
    service = await start_service(accounts=(make_account(share=policy),))
    landing, current = "https://example.com/app/", "https://example.com/app/orders/42?tab=items"
    status, _, body = await post(http, f"{service.url}/v1/share", json={"url": landing, "page": current})
    assert status == 200
    assert verifies(sandbox, body["config"], landing)
    assert body["appMessage"]["title"] == "Order"
    assert body["appMessage"]["link"] == body["timeline"]["link"] == current
    status, _, body = await post(http, f"{service.url}/v1/share", json={"url": landing, "page": "https://evil.com/"})
    assert (status, body["error"]["code"]) == (403, "host_not_allowed")
