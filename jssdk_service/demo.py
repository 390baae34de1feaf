"""The sandbox's demo (`serve --sandbox` only): its accounts, and a page that uses them, signed by the sandbox.

With no account configured, `serve --sandbox` signs for three, one of each kind and token source,
every one known to the emulator:

    wxd0000000000000de   an official account whose token the service fetches with its AppSecret
    demo-wecom           a WeCom self-built app (corp wwd0000000000000de, agent 1000002): wx.config
                         with the corp ticket, wx.agentConfig with the app's agent ticket
    demo-central         an official account whose token another server owns: the sandbox's central
                         token server, read over HTTP with a bearer token (the service never asks
                         WeChat for this account's token)

and a third-party platform, `wxd000000000000c0d`, whose authorizers `wxd00000000000a0d1` to `...a0d3` the
emulator authorizes once the service listens (pushed `authorized` events, after a component_verify_ticket):
they sign with their own appIds, on the demo's hosts.

A request that names no account is the first one's, as it was when that was the only one.

GET  /demo                 the page: the helper with either official account, and the WeCom flow
GET  /demo/sandbox-wx.js   its stand-ins for jweixin in WeChat and in WeCom (the sandbox's tickets are not WeChat's)
POST /demo/verify          a wx.config checked by the emulator as the client checks it (`/sandbox/verify`)
POST /demo/verify-agent    a WeCom wx.agentConfig checked by the emulator (`/sandbox/verify-agent`)
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from typing import Annotated

import aiohttp
import msgspec
import orjson
from aiohttp import web

from jssdk_service.config import SHARE_APIS, Account, Platform, Secret, Settings, TokenURL
from jssdk_service.endpoint import Handler, json_response
from jssdk_service.errors import UpstreamUnavailable
from jssdk_service.keys import SETTINGS
from jssdk_service.pageside import Asset
from jssdk_service.pageurl import MAX_URL_LENGTH
from jssdk_service.sandbox import DEMO_APP_ID
from jssdk_service.sandbox_central import TOKEN_PATH
from jssdk_service.shapes import decode_body

DEMO_WECOM_NAME = "demo-wecom"
DEMO_CORP_ID = "wwd0000000000000de"
DEMO_AGENT_ID = "1000002"
DEMO_CENTRAL_NAME = "demo-central"
DEMO_CENTRAL_APP_ID = "wxd0000000000000ce"
DEMO_PLATFORM_APPID = "wxd000000000000c0d"
DEMO_AUTHORIZERS = ("wxd00000000000a0d1", "wxd00000000000a0d2", "wxd00000000000a0d3")
# Where a token_url names the sandbox's central token server before the sandbox runs: its path is
# what counts (`server.start_sandbox` points it at the running sandbox).
SANDBOX_CENTRAL_URL = f"http://sandbox.invalid{TOKEN_PATH}"
VERIFY_TIMEOUT = 5.0

_PAGE = Asset.load("demo.html", "text/html; charset=utf-8")
_STAND_IN = Asset.load("sandbox-wx.js", "text/javascript; charset=utf-8")


class DemoSettings(Settings):
    """The demo's settings: a request that names no account gets the demo official account (the
    first), so that the README's requests without `app` are answered as when it was the only one."""

    __slots__ = ()

    def account(self, key: str | None) -> Account | None:
        return Settings.account(self, key) if key else self.accounts[0]


def demo_settings(settings: Settings) -> DemoSettings:
    """`settings`, whose one account is the demo official account, with the demo WeCom app and the
    demo external account added: same hosts and share fields, secrets (and the bearer) made now."""
    official = settings.accounts[0]
    assert official.app_id == DEMO_APP_ID
    wecom = Account(
        name=DEMO_WECOM_NAME, kind="wecom", app_id=DEMO_CORP_ID, agent_id=DEMO_AGENT_ID,
        secret=Secret(secrets.token_hex(16)), allowed_hosts=official.allowed_hosts, js_api_list=SHARE_APIS["wecom"],
        share=official.share,
    )  # fmt: skip
    central = Account(
        name=DEMO_CENTRAL_NAME, app_id=DEMO_CENTRAL_APP_ID, secret=None,
        source=TokenURL(url=SANDBOX_CENTRAL_URL, auth=Secret(secrets.token_hex(16))),
        allowed_hosts=official.allowed_hosts, js_api_list=official.js_api_list,
        open_tag_list=official.open_tag_list, share=official.share,
    )  # fmt: skip
    platform = Platform(
        component_appid=DEMO_PLATFORM_APPID, name="demo-platform", secret=Secret(secrets.token_hex(16)),
        token=Secret(secrets.token_hex(8)), aes_key=Secret(_aes_key()), web_domains=official.allowed_hosts,
        js_api_list=official.js_api_list, open_tag_list=official.open_tag_list,
    )  # fmt: skip
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}
    return DemoSettings(**{**values, "accounts": (official, wecom, central), "platforms": (platform,)})


def _aes_key() -> str:
    """A new EncodingAESKey: 43 letters and digits (the base64 of 32 random bytes, without its padding)."""
    while True:
        key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        if key.isalnum():
            return key


# -- the page --------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    return _PAGE.response(request, "no-cache")


async def stand_in(request: web.Request) -> web.Response:
    return _STAND_IN.response(request, "no-cache")


# -- what the client would say ---------------------------------------------------------------

_URL = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]
_FIELD = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class _Check(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """What a client checks a signature by: the URL it verifies and the values the page passed."""

    url: _URL
    nonce_str: _FIELD
    timestamp: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    signature: _FIELD


class ConfigCheck(_Check, kw_only=True):
    """A `wx.config` to check: its appId (a WeCom app's is the corp_id)."""

    app_id: _FIELD


class AgentConfigCheck(_Check, kw_only=True):
    """A WeCom `wx.agentConfig` to check: its corpid and agentid."""

    corpid: _FIELD
    agentid: _FIELD


class Verdict(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """What the client reports: `config:ok` / `agentConfig:ok`, or its error (and, for an agentConfig,
    what made the signature: `agent`, `corp`, `other_app_agent` or `unknown`)."""

    err_msg: str
    err_code: int | None = None
    signed_with: str | None = None


def _verifier(path: str, shape: type[_Check]) -> Handler:
    """A handler that asks the emulator's `path` about the `shape` in the request's body."""

    async def verify(request: web.Request) -> web.Response:
        check = decode_body(await request.read(), shape)
        # Under --sandbox every API base is the emulator (after an unreachable one with --sandbox-dead-base).
        sandbox = request.app[SETTINGS].api_bases[-1]
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=VERIFY_TIMEOUT)) as http,
                http.post(f"{sandbox}{path}", data=msgspec.json.encode(check)) as response,
            ):
                answer = msgspec.convert(orjson.loads(await response.read()), Verdict)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, msgspec.ValidationError) as exc:
            raise UpstreamUnavailable(f"the sandbox did not check it ({type(exc).__name__})", api=path) from None
        return json_response(answer)

    return verify


verify_config = _verifier("/sandbox/verify", ConfigCheck)
verify_agent_config = _verifier("/sandbox/verify-agent", AgentConfigCheck)
