"""The signature doctor for WeCom apps: WeCom's client errors named from real signatures of the service, over HTTP.

Each case posts what a WeCom page had (the values of `/v1/signature` for wx.config, of
`/v1/agent-signature` for wx.agentConfig, sometimes swapped) and what the client said, and the
sandbox confirms that the WeCom client would refuse (or accept) those values as the doctor says.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox
from jssdk_service.sandbox_wecom import SandboxWeComApp

from .helpers import (
    AGENT_ID,
    APP_ID,
    CORP_ID,
    WECOM_KEY,
    RunningService,
    ServiceFactory,
    evidence,
    make_account,
    make_wecom_account,
    wechat_sha1,
)
from .test_doctor import IOS, ask, by_code, codes, signed

PAGE = "https://example.com/oa/leave?id=7"
WXWORK = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh ColorScheme/Light"
)
MORE_INFO = "more info at https://open.work.weixin.qq.com/devtool/query?e="
# What the WeCom client's callbacks say (WECOM_PLATFORM.md A.3); wx.config's err_Info after its errMsg.
AGENT_INVALID_SIGNATURE = f"agentConfig:invalid signature {MORE_INFO}40093"
CONFIG_INVALID_SIGNATURE = f"config:fail invalid signature {MORE_INFO}40093"
CLIENT_ERRORS = {
    40013: f"agentConfig:invalid corpId {MORE_INFO}40013",
    80001: f"agentConfig:not match any reliable domain. {MORE_INFO}80001",
}
HR_AGENT_ID = "1000003"
HR_SECRET = "wecom-hr-app-secret-value-0123456789abcdef"


@pytest.fixture
async def wecom(start_service: ServiceFactory, sandbox_url: str) -> RunningService:
    """The service with the official test account and the test WeCom app, both signing for example.com."""
    return await start_service(accounts=(make_account(), make_wecom_account()), wecom_api_bases=(sandbox_url,))


async def agent_signed(
    http: aiohttp.ClientSession, service: RunningService, url: str, app: str = "wecom"
) -> dict[str, Any]:
    """The evidence a page has after passing the service's agent signature for `url` to wx.agentConfig."""
    async with http.get(f"{service.url}/v1/agent-signature", params={"url": url, "app": app}) as response:
        assert response.status == 200
        config = await response.json()
    return {"appId": config["corpid"], **{key: config[key] for key in ("signature", "nonceStr", "timestamp")}}


def graded(answer: Any) -> list[tuple[str, str]]:
    """Each finding's code and severity, in the answer's order."""
    return [(finding["code"], finding["severity"]) for finding in answer["findings"]]


def no_ticket_in(sandbox: WeChatSandbox, *answers: Any) -> bool:
    """Whether the WeCom app holds tickets and none of them appears in `answers`."""
    tickets = [t.value for t in (*sandbox.corp_tickets(WECOM_KEY), *sandbox.agent_tickets(WECOM_KEY))]
    return bool(tickets) and all(ticket not in str(answer) for ticket in tickets for answer in answers)


async def test_each_signature_is_valid_for_its_own_call(
    wecom: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """The corp-signed wx.config and the agent-signed wx.agentConfig, appId the corp_id, are each `signature_valid`."""
    config = await signed(http, wecom, PAGE, app="wecom")
    agent = await agent_signed(http, wecom, PAGE)
    assert config["appId"] == agent["appId"] == CORP_ID
    config_answer = await ask(http, wecom, url=PAGE, userAgent=WXWORK, **config)
    agent_answer = await ask(http, wecom, url=PAGE, userAgent=WXWORK, **agent)
    assert codes(config_answer) == codes(agent_answer) == ["signature_valid"]
    assert "current corp ticket of wecom" in by_code(config_answer, "signature_valid")["message"]
    assert f"agentid {AGENT_ID}" in by_code(agent_answer, "signature_valid")["message"]
    assert sandbox.verify_config(CORP_ID, **evidence(config, PAGE)) == "config:ok"
    verdict = sandbox.verify_agent_config(corp_id=CORP_ID, agent_id=AGENT_ID, **evidence(agent, PAGE))
    assert verdict["errMsg"] == "agentConfig:ok"
    assert no_ticket_in(sandbox, config_answer, agent_answer)


async def test_the_corp_ticket_passed_to_agent_config_is_named(
    wecom: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """wx.config's signature given to wx.agentConfig (40093) is `corp_ticket_for_agent_config`, the fix named."""
    config = await signed(http, wecom, PAGE, app="wecom")
    verdict = sandbox.verify_agent_config(corp_id=CORP_ID, agent_id=AGENT_ID, **evidence(config, PAGE))
    assert (verdict["errCode"], verdict["signedWith"]) == (40093, "corp")
    answer = await ask(http, wecom, url=PAGE, userAgent=WXWORK, errMsg=AGENT_INVALID_SIGNATURE, **config)
    assert codes(answer) == ["corp_ticket_for_agent_config"]
    finding = by_code(answer, "corp_ticket_for_agent_config")
    assert finding["severity"] == "error"
    assert "corp ticket of wecom" in finding["message"] and "/v1/agent-signature" in finding["message"]


async def test_the_agent_ticket_passed_to_config_is_named(
    wecom: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """wx.agentConfig's signature given to wx.config (config:fail, 40093) is `agent_ticket_for_config`."""
    agent = await agent_signed(http, wecom, PAGE)
    assert sandbox.verify_config(CORP_ID, **evidence(agent, PAGE)) == "config:invalid signature"
    answer = await ask(http, wecom, url=PAGE, userAgent=WXWORK, errMsg=CONFIG_INVALID_SIGNATURE, **agent)
    assert codes(answer) == ["agent_ticket_for_config"]
    assert "/v1/signature" in by_code(answer, "agent_ticket_for_config")["message"]


async def test_42012_says_which_ticket_the_call_needs(wecom: RunningService, http: aiohttp.ClientSession) -> None:
    """42012 (ticket unusable) is explained as `ticket_unusable`; with the values, the wrong ticket is named too."""
    config = await signed(http, wecom, PAGE, app="wecom")
    err_msg = f"agentConfig:fail jsapi_ticket不可用 {MORE_INFO}42012"
    answer = await ask(http, wecom, url=PAGE, errMsg=err_msg, **config)
    assert sorted(codes(answer)) == ["corp_ticket_for_agent_config", "ticket_unusable"]
    assert "agent ticket" in by_code(answer, "ticket_unusable")["message"]
    assert codes(await ask(http, wecom, url=PAGE, errMsg=err_msg)) == ["ticket_unusable"]


async def test_a_signature_no_ticket_made_gives_the_usual_causes(
    wecom: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """40093 with values no corp or agent ticket made is `signature_mismatch`; an old timestamp is `stale_ticket`."""
    agent = await agent_signed(http, wecom, PAGE)
    changed = {**agent, "nonceStr": "0123456789abcdef"}
    answer = await ask(http, wecom, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **changed)
    assert codes(answer) == ["signature_mismatch"]
    message = by_code(answer, "signature_mismatch")["message"]
    assert "corp and agent tickets kept for wecom" in message and "#fragment" in message
    assert "wx.agentConfig the nonceStr" in message
    stale = {**agent, "timestamp": agent["timestamp"] - 86400}
    assert codes(await ask(http, wecom, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **stale)) == ["stale_ticket"]
    # A hand-rolled signer that kept the #fragment, with the agent ticket: the mistake is named.
    ticket = sandbox.agent_tickets(WECOM_KEY)[-1].value
    routed = PAGE + "#/step/2"
    fragment = {**agent, "signature": wechat_sha1(ticket, agent["nonceStr"], agent["timestamp"], routed)}
    answer = await ask(http, wecom, url=routed, errMsg=AGENT_INVALID_SIGNATURE, **fragment)
    assert codes(answer) == ["fragment_in_url"]


async def test_an_earlier_agent_ticket_is_stale(wecom: RunningService, http: aiohttp.ClientSession) -> None:
    """An agentConfig signed before the app's tickets were renewed is `stale_ticket` naming the agent ticket."""
    agent = await agent_signed(http, wecom, PAGE)
    await wecom.credentials(WECOM_KEY).refresh(force=True)
    answer = await ask(http, wecom, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **agent)
    assert codes(answer) == ["stale_ticket"]
    stale = by_code(answer, "stale_ticket")
    assert stale["severity"] == "warning" and "the agent ticket before the current one" in stale["message"]


@pytest.mark.parametrize(
    ("errcode", "url", "app_id", "expected", "says"),
    [
        (40013, PAGE, CORP_ID, ["invalid_corp_id"], "signed in to another corp"),
        (40013, PAGE, "wecom", ["invalid_corp_id"], f"pass its corp_id itself, {CORP_ID}"),
        (40013, PAGE, APP_ID, ["invalid_corp_id"], "official account"),
        (40013, PAGE, "ww9999999999999999", ["app_id_mismatch", "invalid_corp_id"], "not the corp_id of any app"),
        (80001, PAGE, CORP_ID, ["untrusted_domain"], "this service signs for it, so the app's trusted domains"),
        (80001, "https://intranet.test/oa", CORP_ID, ["host_not_allowed", "untrusted_domain"], "does not sign for it"),
    ],
)
async def test_40013_and_80001_are_explained_from_the_evidence(
    wecom: RunningService, http: aiohttp.ClientSession, errcode: int, url: str, app_id: str, expected: list[str],
    says: str,
) -> None:  # fmt: skip
    """'invalid corpId' is `invalid_corp_id`, saying whether the appId sent is the app's corp_id; 'not match any
    reliable domain' is `untrusted_domain`, saying whether the service signs for the host (its allowed_hosts)."""
    answer = await ask(http, wecom, url=url, appId=app_id, userAgent=WXWORK, errMsg=CLIENT_ERRORS[errcode])
    assert codes(answer) == expected
    message = by_code(answer, expected[-1])["message"]
    assert says in message
    assert errcode != 80001 or ("可信域名" in message and "WW_verify_" in message)
    assert "JS接口安全域名" not in str(answer)


async def test_an_official_accounts_config_in_the_wecom_client_is_warned(
    wecom: RunningService, http: aiohttp.ClientSession
) -> None:
    """An official account's wx.config inside WeCom (wxwork/ in the user agent) is an `invalid_corp_id` warning."""
    config = await signed(http, wecom, PAGE, app="main")
    answer = await ask(http, wecom, url=PAGE, userAgent=WXWORK, **config)
    assert graded(answer) == [("invalid_corp_id", "warning"), ("signature_valid", "ok")]


@pytest.mark.parametrize(
    ("url", "err_msg", "expected"),
    [
        ("https://intranet.test/oa", None, [("host_not_allowed", "error")]),
        ("https://example.com:8443/oa", None, [("port_in_url", "warning")]),
        (PAGE, "config:invalid url domain", [("invalid_url_domain", "error")]),
        (PAGE, "invoke:permission denied", [("permission_denied", "error")]),
        (PAGE, "onMenuShareWechat:fail_nopermission", [("offline_verifying", "error")]),
    ],
)
async def test_wecom_pages_get_wecoms_rules_not_wechats(
    wecom: RunningService,
    http: aiohttp.ClientSession,
    url: str,
    err_msg: str | None,
    expected: list[tuple[str, str]],
) -> None:
    """Domains, ports and permissions are explained with WeCom's rules (trusted domains, the admin console)."""
    body = {"url": url, "appId": CORP_ID} | ({"errMsg": err_msg} if err_msg else {})
    answer = await ask(http, wecom, **body)
    assert graded(answer) == expected
    text = str(answer)
    assert "WeCom" in text and "JS secure domain" not in text and "JS接口安全域名" not in text
    assert "official account" not in text


async def test_the_wecom_client_verifies_the_current_url_on_ios_too(
    wecom: RunningService, http: aiohttp.ClientSession
) -> None:
    """iOS WeChat's landing-URL rule is not applied to the WeCom client (wxwork/, or a WeCom app and no user agent)."""
    landing, current = "https://example.com/oa/", "https://example.com/oa/leave/42"
    configs = {url: await signed(http, wecom, url, app="wecom") for url in (landing, current)}
    ios_landing = [("ios_landing_url", "error")]
    for signed_for, user_agent, expected in [
        (current, WXWORK, [("signature_valid", "ok")]),
        (landing, WXWORK, ios_landing),
        (current, None, [("signature_valid", "ok")]),
        (current, IOS, ios_landing),  # a WeCom app's page opened in iOS WeChat: WeChat's rule
    ]:
        client = {"userAgent": user_agent} if user_agent else {}
        answer = await ask(http, wecom, url=current, landingUrl=landing, **configs[signed_for], **client)
        assert graded(answer) == expected, (signed_for, user_agent)
        if signed_for == landing:
            assert "the WeCom client verifies the current URL" in by_code(answer, "ios_landing_url")["message"]


async def test_every_app_of_the_corp_is_tried(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """An appId that is a corp_id shared by two apps is checked against both apps' corp and agent tickets."""
    sandbox.add_wecom_app(SandboxWeComApp(corp_id=CORP_ID, agent_id=HR_AGENT_ID, secret=HR_SECRET))
    hr = make_wecom_account(name="hr", agent_id=HR_AGENT_ID, secret=Secret(HR_SECRET))
    service = await start_service(accounts=(make_account(), make_wecom_account(), hr), wecom_api_bases=(sandbox_url,))
    await signed(http, service, PAGE, app="wecom")  # the first app holds tickets too
    agent = await agent_signed(http, service, PAGE, app="hr")
    answer = await ask(http, service, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **agent)
    assert codes(answer) == ["signature_valid"]
    message = by_code(answer, "signature_valid")["message"]
    assert f"hr ({CORP_ID}:{HR_AGENT_ID})" in message and f"agentid {HR_AGENT_ID}" in message
    assert "Yet WeCom said invalid signature" in message
    config = await signed(http, service, PAGE, app="hr")
    assert codes(await ask(http, service, url=PAGE, **config)) == ["signature_valid"]
    answer = await ask(http, service, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **{**agent, "nonceStr": "x" * 16})
    assert f"the apps of corp {CORP_ID} (wecom ({WECOM_KEY}), hr" in by_code(answer, "signature_mismatch")["message"]
    # Named by its key, one app is meant: another app's agent ticket does not sign its wx.agentConfig.
    answer = await ask(http, service, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE, **{**agent, "appId": WECOM_KEY})
    assert codes(answer) == ["app_id_mismatch"]
    assert "agent ticket of hr" in by_code(answer, "app_id_mismatch")["message"]
    # As the page says it: wx.agentConfig's corpid and agentid, and another app's agent ticket signed.
    answer = await ask(http, service, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE,
                       **{**agent, "appId": CORP_ID, "agentId": AGENT_ID})  # fmt: skip
    assert codes(answer) == ["app_id_mismatch"]
    assert "agent ticket of hr" in by_code(answer, "app_id_mismatch")["message"]
    answer = await ask(http, service, url=PAGE, errMsg=AGENT_INVALID_SIGNATURE,
                       **{**agent, "appId": CORP_ID, "agentId": HR_AGENT_ID})  # fmt: skip
    assert codes(answer) == ["signature_valid"]
    bad = {"url": PAGE, "appId": CORP_ID, "agentId": "not-a-number"}
    async with http.post(f"{service.url}/v1/doctor", json=bad) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_request")


async def test_a_wecom_report_is_diagnosed_and_counted_for_the_app(
    wecom: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/v1/report of a swapped agentConfig answers the diagnosis and counts it under the WeCom app's name."""
    config = await signed(http, wecom, PAGE, app="wecom")

    def counted() -> float:
        return REGISTRY.get_sample_value("jssdk_reports_total", {"app": "wecom"}) or 0.0

    before = counted()
    report = {"url": PAGE, "errMsg": AGENT_INVALID_SIGNATURE, **config}
    async with http.post(f"{wecom.url}/v1/report", json=report, headers={"User-Agent": WXWORK}) as response:
        assert response.status == 200
        diagnosis = await response.json()
    assert codes(diagnosis) == ["corp_ticket_for_agent_config"]
    assert counted() == before + 1
    assert no_ticket_in(sandbox, diagnosis)
