"""A central token server (中控) for the sandbox: the one host that owns the tokens.

Real deployments sometimes whitelist a single server's IP; it alone calls the token API and every
other system reads the token from it. jssdk-service then never asks WeChat for a token itself. This
emulates such a server over the sandbox's `WeChatSandbox`: its tokens come from
`WeChatSandbox.issue_owned_token()` (counted as api "central", never as "token", "stable_token" or
"gettoken") and are accepted by getticket, get_jsapi_ticket and ticket/get like any other.

Two flavours, together or apart:
- HTTP, served with the sandbox (`SandboxServer(sandbox, central=...)`, `WeChatSandbox.app(central=...)`
  or `install(app)`):

      GET  /sandbox/central/token?app=    {"access_token", "expires_in"}; 401 without the bearer, 404 unknown app
      POST /sandbox/central/rotate?app=   a new token; the previous one dies at WeChat at once
      POST /sandbox/central/revoke?app=   the current token dies at WeChat, but it is still handed out
      POST /sandbox/central/fault?mode=   none | timeout | http500 | bad_json | unauthorized | wechat_error

- Redis (`keys`): every token minted is written to `key_format.format(app=app)`, as JSON
  `{"access_token", "expires_at"}` or as the plain token, the key's TTL the seconds it has left.

As a real owner does, it renews a token once it is within a fifth of its life of expiry (on the next
HTTP read, and on its own timer for Redis, whose readers never ask); the previous one keeps working
until its own expiry. It believes its own expiries: a token revoked at WeChat is still handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import orjson
from aiohttp import web

from jssdk_service.cache import RawKeyError, RawKeys
from jssdk_service.sandbox import WeChatSandbox

log = logging.getLogger("jssdk_service.sandbox_central")

CentralFault = Literal["timeout", "http500", "bad_json", "unauthorized", "wechat_error"]
FAULT_MODES: dict[str, CentralFault] = {mode: mode for mode in get_args(CentralFault)}
TIMEOUT_FAULT_SECONDS = 30.0
"""How long a token read waits under the "timeout" fault (`stop()` ends the wait)."""
RENEW_WITHIN = 1 / 5
"""A token is renewed once this share of its life is left."""
TOKEN_PATH = "/sandbox/central/token"  # noqa: S105 (a path, not a secret)
"""Where the token is read (`?app=`): what an external account's token_url names."""


@dataclass(slots=True, frozen=True, kw_only=True)
class OwnedToken:
    """A token the central server hands out, with the expiry it believes (WeChat may have killed it sooner)."""

    app: str
    value: str = field(repr=False)
    issued_at: float
    expires_at: float

    @property
    def renew_at(self) -> float:
        return self.expires_at - (self.expires_at - self.issued_at) * RENEW_WITHIN


class CentralTokenServer:
    """Owns the tokens of `apps` (appIds or WeCom app keys "corpid:agentid") that `sandbox` knows.

    `bearer`: token reads must carry `Authorization: Bearer <bearer>`. `keys`: write every token to
    Redis (the caller opens and closes `keys`). `rotate_every`: rotate every app's token on that period.
    """

    def __init__(
        self,
        sandbox: WeChatSandbox,
        apps: Sequence[str],
        *,
        bearer: str | None = None,
        keys: RawKeys | None = None,
        key_format: str = "central:{app}:token",
        record: Literal["json", "plain"] = "json",
        rotate_every: float | None = None,
    ) -> None:
        unknown = [app for app in apps if app not in sandbox.accounts and app not in sandbox.wecom_apps]
        if unknown:
            raise ValueError(f"the sandbox knows no app {', '.join(unknown)}")
        self.sandbox = sandbox
        self.apps = tuple(apps)
        self.fault: CentralFault | None = None
        self.reads: Counter[str] = Counter()
        """HTTP token reads per `app` parameter, faulted and refused ones included."""
        self._bearer = bearer
        self._keys = keys
        self._key_format = key_format
        self._record = record
        self._rotate_every = rotate_every
        self._held: dict[str, OwnedToken] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"CentralTokenServer(apps={list(self.apps)!r}, keys={self._keys!r})"

    def key(self, app: str) -> str:
        """The Redis key `app`'s token is written to."""
        return self._key_format.format(app=app)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Mint (and write) the first tokens; start the rotating and, with Redis, the renewing timers."""
        if self._tasks:
            return
        self._stopping.clear()
        for app in self.apps:
            await self.current(app)
        loop = asyncio.get_running_loop()
        if self._rotate_every is not None:
            self._tasks.append(loop.create_task(self._rotating(self._rotate_every)))
        if self._keys is not None and self.apps:
            self._tasks.append(loop.create_task(self._renewing()))

    async def stop(self) -> None:
        """Stop the timers and end the waits of reads held by the "timeout" fault."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- behaviours -----------------------------------------------------------------------------

    async def current(self, app: str) -> OwnedToken:
        """The token handed out for `app` now: a new one once the held one is due for renewal."""
        held = self._held.get(app)
        if held is not None and self.sandbox.now() < held.renew_at:
            return held
        return await self._take(app)

    async def rotate(self, app: str) -> OwnedToken:
        """A new token for `app`; the one handed out until now dies at WeChat at once."""
        previous = self._held.get(app)
        token = await self._take(app)
        if previous is not None:
            self.sandbox.knock_out_token(previous.value)
        return token

    async def revoke(self, app: str) -> OwnedToken:
        """Kill `app`'s current token at WeChat but keep handing it out (dead until `rotate`)."""
        token = await self.current(app)
        self.sandbox.knock_out_token(token.value)
        return token

    async def _take(self, app: str) -> OwnedToken:
        issued = self.sandbox.issue_owned_token(app)
        token = OwnedToken(app=app, value=issued.value, issued_at=issued.issued_at, expires_at=issued.expires_at)
        self._held[app] = token
        await self._write(token)
        return token

    async def _write(self, token: OwnedToken) -> None:
        if self._keys is None:
            return
        ttl = token.expires_at - self.sandbox.now()
        if self._record == "json":
            value = orjson.dumps({"access_token": token.value, "expires_at": token.expires_at}).decode()
        else:
            value = token.value
        await self._keys.write(self.key(token.app), value, ttl)

    async def _rotating(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for app in self.apps:
                try:
                    await self.rotate(app)
                except RawKeyError as exc:
                    log.warning("central token server: could not write %s: %s", self.key(app), exc)

    async def _renewing(self) -> None:
        while True:
            due = min(self._held[app].renew_at for app in self.apps)
            await asyncio.sleep(max(0.05, due - self.sandbox.now()))
            for app in self.apps:
                try:
                    await self.current(app)
                except RawKeyError as exc:
                    log.warning("central token server: could not write %s: %s", self.key(app), exc)

    # -- HTTP ----------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The token read and the control routes (see the module docstring)."""
        return [
            web.get(TOKEN_PATH, self._read),
            web.post("/sandbox/central/rotate", self._rotate),
            web.post("/sandbox/central/revoke", self._revoke),
            web.post("/sandbox/central/fault", self._fault),
        ]

    def install(self, app: web.Application) -> None:
        """Add `routes()` to `app` (the sandbox's)."""
        app.add_routes(self.routes())

    async def _read(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app", "")
        self.reads[app] += 1
        fault = self.fault
        if fault == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TIMEOUT_FAULT_SECONDS)
        elif fault == "http500":
            return web.Response(status=500, text="<html>500 Internal Server Error</html>", content_type="text/html")
        elif fault == "bad_json":
            return web.Response(text='{"access_token": ', content_type="application/json")
        elif fault == "unauthorized":
            return _json(401, {"errcode": 401, "errmsg": "unauthorized"})
        elif fault == "wechat_error":
            return _json(200, {"errcode": 40001, "errmsg": "invalid credential"})
        if self._bearer is not None and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), f"Bearer {self._bearer}".encode()
        ):
            return _json(401, {"errcode": 401, "errmsg": "unauthorized"})
        if app not in self.apps:
            return _unknown_app()
        token = await self.current(app)
        return _json(200, {"access_token": token.value, "expires_in": int(token.expires_at - self.sandbox.now())})

    async def _rotate(self, request: web.Request) -> web.Response:
        app = request.query.get("app", "")
        if app not in self.apps:
            return _unknown_app()
        token = await self.rotate(app)
        return _json(200, {"app": app, "rotated": True, "expires_in": int(token.expires_at - self.sandbox.now())})

    async def _revoke(self, request: web.Request) -> web.Response:
        app = request.query.get("app", "")
        if app not in self.apps:
            return _unknown_app()
        await self.revoke(app)
        return _json(200, {"app": app, "revoked": True})

    async def _fault(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "none")
        if mode == "none":
            self.fault = None
        elif mode in FAULT_MODES:
            self.fault = FAULT_MODES[mode]
        else:
            return _json(400, {"errcode": 400, "errmsg": f"mode must be none or one of {', '.join(FAULT_MODES)}"})
        return _json(200, {"fault": self.fault})


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _unknown_app() -> web.Response:
    return _json(404, {"errcode": 404, "errmsg": "unknown app"})
