"""`serve --sandbox` with every kind of account: the demo's three, a user's config, and the config examples."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson
import pytest

from jssdk_service.config import Secret, Settings, TokenURL
from jssdk_service.demo import (
    DEMO_AGENT_ID,
    DEMO_AUTHORIZERS,
    DEMO_CENTRAL_APP_ID,
    DEMO_CENTRAL_NAME,
    DEMO_CORP_ID,
    DEMO_WECOM_NAME,
)
from jssdk_service.errors import ConfigError
from jssdk_service.sandbox import DEMO_APP_ID
from jssdk_service.server import SandboxOptions, build_sandbox, start_sandbox

from .helpers import (
    AES_KEY,
    CLI,
    PAGE,
    WECOM_KEY,
    Process,
    clean_environment,
    make_account,
    make_wecom_account,
    require_binary,
    serving,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.toml"))
REHEARSAL = EXAMPLES_DIR / "sandbox-rehearsal.toml"
WECOM_SHARE_APIS = ["onMenuShareAppMessage", "onMenuShareWechat", "onMenuShareTimeline"]
# A stop without the drain: these tests do not rehearse stopping.
QUICK = {"JSSDK_DRAIN_SECONDS": "0"}


class Sandboxed(NamedTuple):
    """A `serve --sandbox` child process: the service's URL, the emulator's, and the log."""

    url: str
    sandbox: str
    log: Path
    process: Process


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Sandboxed]:
    """`serve --sandbox` with nothing configured, ready; it must exit 0 on SIGTERM."""
    log = tmp_path / "serve.log"
    async with serving(log, env=QUICK, ready="/readyz") as (url, process):
        yield Sandboxed(url, emulator_url(log), log, process)
    assert process.returncode == 0, log.read_text()


def emulator_url(log: Path) -> str:
    """The emulator's base URL, from the service's start-up line."""
    found = re.search(r"emulator at (http://[^;\s]+);", log.read_text())
    assert found, log.read_text()
    return found[1]


async def get(http: aiohttp.ClientSession, target: str, /, **params: str) -> tuple[int, Any]:
    """GET `target` with the query `params`: the status and the JSON body."""
    async with http.get(target, params=params) as response:
        return response.status, await response.json()


async def post(http: aiohttp.ClientSession, target: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST `body` as JSON to `target`: the status and the JSON body."""
    async with http.post(target, json=body) as response:
        return response.status, await response.json()


def checked(config: dict[str, Any], **names: str) -> dict[str, Any]:
    """What a client checks a signed object by, for PAGE; `names` rename the appId fields."""
    return {"url": PAGE, "nonceStr": config["nonceStr"], "timestamp": config["timestamp"],
            "signature": config["signature"], **{name: config[field] for name, field in names.items()}}  # fmt: skip


async def test_the_demo_signs_for_a_wecom_app(demo: Sandboxed, http: aiohttp.ClientSession) -> None:
    """The demo WeCom app's share answer has wx.config (beta), wx.agentConfig and the WeCom payloads, and the emulator accepts both signatures."""
    status, answer = await get(http, f"{demo.url}/v1/share", url=PAGE, app=DEMO_WECOM_NAME)
    assert status == 200, answer
    config, agent = answer["config"], answer["agentConfig"]
    assert (config["appId"], config["beta"], config["jsApiList"]) == (DEMO_CORP_ID, True, WECOM_SHARE_APIS)
    assert (agent["corpid"], agent["agentid"]) == (DEMO_CORP_ID, DEMO_AGENT_ID)
    assert answer["wechat"] == answer["appMessage"] and answer["appMessage"]["link"] == PAGE
    assert set(answer["timeline"]) == {"title", "link", "imgUrl"}
    assert config["signature"] != agent["signature"]
    for base in (demo.sandbox + "/sandbox", demo.url + "/demo"):  # the emulator, and the demo page's way to it
        assert await post(http, f"{base}/verify", checked(config, appId="appId")) == (200, {"errMsg": "config:ok"})
        status, verdict = await post(http, f"{base}/verify-agent", checked(agent, corpid="corpid", agentid="agentid"))
        assert (status, verdict["errMsg"], verdict["signedWith"]) == (200, "agentConfig:ok", "agent")
    # The common mistake, as the emulator tells it: wx.agentConfig signed with the corp ticket.
    mistake = {**checked(config), "corpid": DEMO_CORP_ID, "agentid": DEMO_AGENT_ID}
    status, verdict = await post(http, f"{demo.url}/demo/verify-agent", mistake)
    assert (status, verdict) == (
        200,
        {"errMsg": "agentConfig:invalid signature", "errCode": 40093, "signedWith": "corp"},
    )
    status, error = await post(http, f"{demo.url}/demo/verify", {"url": PAGE})
    assert (status, error["error"]["code"]) == (400, "invalid_request")


async def test_the_demo_external_account_signs_with_the_central_servers_token(
    demo: Sandboxed, http: aiohttp.ClientSession
) -> None:
    """The demo external account is ready and signs, with a token only the central token server asked for; the
    demo platform's authorizers, authorized by the emulator once the service listens, are ready too."""
    ready = await demo_ready(http, demo)
    assert [a["app"] for a in ready["accounts"]] == [DEMO_APP_ID, DEMO_WECOM_NAME, DEMO_CENTRAL_NAME, *DEMO_AUTHORIZERS]
    status, config = await get(http, f"{demo.url}/v1/signature", url=PAGE, app=DEMO_CENTRAL_NAME)
    assert (status, config["appId"]) == (200, DEMO_CENTRAL_APP_ID)
    assert await post(http, f"{demo.sandbox}/sandbox/verify", checked(config, appId="appId")) == (
        200, {"errMsg": "config:ok"})  # fmt: skip
    _, stats = await get(http, f"{demo.sandbox}/sandbox/stats")
    calls = stats["calls"]
    # One token fetched with a secret (the official demo account's), one by the central server, one WeCom gettoken.
    assert calls["central"]["ok"] >= 1 and calls["stable_token"] == {"ok": 1, "failed": 0}
    assert calls["token"] == {"ok": 0, "failed": 0} and calls["gettoken"] == {"ok": 1, "failed": 0}
    assert calls["getticket"]["ok"] == 2 + len(DEMO_AUTHORIZERS)  # the two official accounts', the authorizers'
    assert calls["api_component_token"] == {"ok": 1, "failed": 0}
    assert calls["api_query_auth"] == {"ok": len(DEMO_AUTHORIZERS), "failed": 0}
    for app_id in DEMO_AUTHORIZERS:
        status, config = await get(http, f"{demo.url}/v1/signature", url=PAGE, app=app_id)
        assert (status, config["appId"]) == (200, app_id)
        assert await post(http, f"{demo.sandbox}/sandbox/verify", checked(config, appId="appId")) == (
            200, {"errMsg": "config:ok"})  # fmt: skip


async def demo_ready(http: aiohttp.ClientSession, demo: Sandboxed) -> dict[str, Any]:
    """/readyz once the demo's six accounts (three authorizers among them) may all sign."""
    deadline = time.monotonic() + 15
    while True:
        status, ready = await get(http, f"{demo.url}/readyz", verbose="1")
        if (status, ready["ready"], ready["total"]) == (200, 6, 6) or time.monotonic() > deadline:
            assert (status, ready["ready"], ready["total"]) == (200, 6, 6), ready
            return dict(ready)
        await asyncio.sleep(0.1)


async def test_the_demo_answers_requests_naming_no_account_and_serves_its_page(
    demo: Sandboxed, http: aiohttp.ClientSession
) -> None:
    """A request without `app` is the official demo account's; /demo offers the WeCom flow; the log names the accounts, never a secret."""
    status, config = await get(http, f"{demo.url}/v1/signature", url=PAGE)
    assert (status, config["appId"]) == (200, DEMO_APP_ID)
    async with http.get(f"{demo.url}/demo") as response:
        page = await response.text()
    assert response.status == 200 and DEMO_WECOM_NAME in page and DEMO_CENTRAL_NAME in page
    async with http.get(f"{demo.url}/demo/sandbox-wx.js") as response:
        assert "wxWork.agentConfig" in await response.text()
    text = demo.log.read_text()
    started = next(line for line in text.splitlines() if "emulator at" in line)
    for name in (DEMO_APP_ID, DEMO_WECOM_NAME, DEMO_CENTRAL_NAME, "/sandbox/central/token", "with a bearer token"):
        assert name in started
    assert "sandbox_token_" not in text and "sandbox_ticket_" not in text and "?app=" not in text


# The demo page in jsdom, its scripts run, until both flows are done (or 10 s): what its lists say.
DEMO_IN_JSDOM = """
import { JSDOM } from 'jsdom';
const base = process.argv[1];
const dom = await JSDOM.fromURL(base + '/demo', { runScripts: 'dangerously', resources: 'usable',
  beforeParse(window) { window.fetch = (url, init) => fetch(new URL(url, base + '/demo'), init); } });
const items = (id) => [...dom.window.document.querySelectorAll('#' + id + ' li')].map((li) => li.textContent);
const done = () => items('wecom-steps').some((s) => s.startsWith('wx.agentConfig'))
  && items('steps').some((s) => s.startsWith('wx.config accepted')) && items('wecom-cards').length === 3;
for (const deadline = Date.now() + 10000; !done() && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({ steps: items('steps'), wecom: items('wecom-steps'), cards: items('wecom-cards') }));
dom.window.close();
"""


async def test_the_demo_page_runs_the_wechat_and_the_wecom_flow(demo: Sandboxed) -> None:
    """/demo in jsdom: the helper's wx.config is accepted, and the WeCom app's wx.config, wx.agentConfig and three share APIs."""
    node = require_binary("node")
    js_tests = Path(__file__).parent / "js"
    if not (js_tests / "node_modules" / "jsdom").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("jsdom is required under CI=true: npm ci --prefix tests/js")
        pytest.skip("jsdom is not installed (npm ci --prefix tests/js)")
    process = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "-e", DEMO_IN_JSDOM, demo.url, cwd=js_tests,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, errors.decode()
    seen = orjson.loads(output)
    assert "wx.config accepted, wx.ready ran, both share payloads set" in seen["steps"]
    assert seen["wecom"][1:] == [
        f"wx.config accepted (appId {DEMO_CORP_ID}, beta: true, the corp ticket)",
        "onMenuShareAppMessage, onMenuShareWechat and onMenuShareTimeline set",
        "wx.agentConfig accepted (the app's agent ticket)",
    ]
    assert [card.partition(":")[0] for card in seen["cards"]] == WECOM_SHARE_APIS


async def test_a_config_of_every_kind_is_rehearsed_against_the_sandbox(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """`serve --sandbox --config` with an official account, a WeCom app and a central-server account: all ready and signing."""
    env = {**QUICK, **{name: f"rehearsal-{name.lower()}" for name in secret_variables(REHEARSAL)}}
    log = tmp_path / "serve.log"
    async with serving(log, "--config", str(REHEARSAL), env=env, ready="/readyz") as (url, _):
        for app in ("shop", "crm", "central"):
            status, config = await get(http, f"{url}/v1/signature", url=PAGE, app=app)
            assert status == 200, config
            verdict = await post(http, f"{emulator_url(log)}/sandbox/verify", checked(config, appId="appId"))
            assert verdict == (200, {"errMsg": "config:ok"}), app
    text = log.read_text()
    assert not any(secret in text for secret in env.values() if secret.startswith("rehearsal-"))


async def test_under_the_sandbox_only_token_urls_naming_its_central_server_are_pointed_at_it() -> None:
    """A token_url with the central server's path is read from the running sandbox; one elsewhere is left as it is."""
    bearer = Secret("central-bearer")
    reader = make_account(
        name="central",
        app_id="wxcccccccccccccccc",
        secret=None,
        source=TokenURL(url="http://sandbox.invalid/sandbox/central/token", auth=bearer),
    )
    elsewhere = make_account(
        name="elsewhere",
        app_id="wxeeeeeeeeeeeeeeee",
        secret=None,
        source=TokenURL(url="https://token.example.com/sandbox/token?app=x"),
    )
    wecom_at_central = make_wecom_account(
        secret=None, source=TokenURL(url="http://x/sandbox/central/token", auth=bearer)
    )
    settings = Settings(accounts=(make_account(), reader, elsewhere, wecom_at_central))
    server, pointed = await start_sandbox(settings, SandboxOptions())
    try:
        sources = {a.name: a.source for a in pointed.accounts}
        assert server.central is not None and server.central.apps == ("wxcccccccccccccccc", WECOM_KEY)
        assert WECOM_KEY in server.sandbox.wecom_apps and "wxeeeeeeeeeeeeeeee" in server.sandbox.accounts
        assert sources["elsewhere"] == elsewhere.source
        assert sources["central"] == TokenURL(url=f"{server.base_url}/sandbox/central/token?app=wxcccccccccccccccc",
                                              auth=bearer)  # fmt: skip
        wecom = sources["wecom"]
        assert isinstance(wecom, TokenURL) and wecom.url.endswith("?app=ww0123456789abcdef%3A1000002")
        assert pointed.api_bases == pointed.wecom_api_bases == (server.base_url,)
    finally:
        await server.stop()


def test_the_sandboxs_central_server_takes_one_bearer() -> None:
    """Accounts naming the sandbox's central server with different bearers are a config error naming --sandbox."""
    readers = (make_account(name=name, app_id=f"wx{name * 16}", secret=None,
                            source=TokenURL(url="http://x/sandbox/central/token", auth=Secret(name)))
               for name in "ab")  # fmt: skip
    with pytest.raises(ConfigError, match="--sandbox"):
        build_sandbox(Settings(accounts=tuple(readers)), SandboxOptions())


# -- the config examples -----------------------------------------------------------------------


def secret_variables(path: Path) -> list[str]:
    """The environment variables `path` names for its secrets (`*_env` keys of its accounts and platforms)."""
    document = tomllib.loads(path.read_text())
    tables = [*document.get("accounts", []), *document.get("platforms", [])]
    return [value for table in tables for key, value in table.items() if key.endswith("_env")]


def account_lines(path: Path) -> Iterator[tuple[str, str]]:
    """Each account and platform of `path`: its name, and what check-config must say it is."""
    document = tomllib.loads(path.read_text())
    for account in document.get("accounts", []):
        kind = "WeCom app" if account.get("kind") == "wecom" else "official account"
        source = "token read from" if account.get("token_source") == "external" else "token fetched with its secret"
        yield account["name"], f"{kind} .*, {source}"
    for platform in document.get("platforms", []):
        yield platform.get("name", platform["component_appid"]), "third-party platform .* for pages on "


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_check_config_accepts_each_example_and_describes_its_accounts(example: Path) -> None:
    """`check-config` accepts each example with its secrets set, and says each account's kind and token source
    (and each platform's domains), never a secret."""
    secrets = {name: AES_KEY if "AES_KEY" in name else f"example-secret-{i}-0123456789"
               for i, name in enumerate(secret_variables(example))}  # fmt: skip
    result = subprocess.run([*CLI, "check-config", "--config", str(example)], capture_output=True, text=True,
                            timeout=30, env=clean_environment(**secrets))  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = list(account_lines(example))
    platforms = len(tomllib.loads(example.read_text()).get("platforms", []))
    counted = f"ok: {len(expected) - platforms} account(s)" + (f", {platforms} platform(s)" if platforms else "")
    assert lines[0] == counted
    for line, (name, description) in zip(lines[1:], expected, strict=True):
        assert re.fullmatch(rf"  {re.escape(name)}: {description}.*", line), line
    assert not any(secret in result.stdout for secret in secrets.values())


def test_the_examples_cover_every_kind_and_source() -> None:
    """Between them the examples configure WeCom apps and both external token sources."""
    accounts = [a for path in EXAMPLES for a in tomllib.loads(path.read_text()).get("accounts", [])]
    assert any(a.get("kind") == "wecom" and "secret_env" in a for a in accounts)
    assert any("token_url" in a and "token_url_auth_env" in a for a in accounts)
    assert any("token_redis_key" in a and "token_redis_url" in a for a in accounts)
    assert any("token_redis_key" in a and "token_redis_url" not in a for a in accounts)
