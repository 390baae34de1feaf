"""The sandbox's webhook receiver: where the service's notifications land in tests and rehearsals.

Two endpoints, served on the emulator's HTTP app (`WeChatSandbox.app()` installs them):
- `POST /sandbox/webhook/json`: a generic JSON webhook; answers 200 `{"ok": true}`;
- `POST /sandbox/webhook/robot?key=K`: a WeCom group robot (企业微信群机器人), answering as it does:
  HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`, 93000 for a key it does not know, 40008 for a
  message type other than text and markdown, 40058 for a markdown content missing or over 4096 bytes.
`faults` make the next calls fail: an errcode (45009 is the robot's limit of 20 messages a minute)
or `"http500"` for the robot, an HTTP status for the JSON webhook. `GET /sandbox/webhook/messages`
answers every POST received, in order, as `messages` holds them.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

RobotFault = int | Literal["http500"]
ROBOT_CONTENT_LIMIT = 4096  # bytes of a markdown message's content
ROBOT_ERRMSG = {
    45009: "api freq out of limit",
    93000: "invalid webhook url, hint: [sandbox], more info at https://open.work.weixin.qq.com/devtool/query?e=93000",
    40008: "invalid message type",
    40058: "markdown.content exceed max length 4096",
}


@dataclass(slots=True, kw_only=True)
class WebhookReceiver:
    """What the receiver was sent and how it answers; change `faults` at any time."""

    robot_key: str = field(default_factory=lambda: secrets.token_hex(16))
    """The one key the robot knows: its URL is `robot_path` on the emulator."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Every POST: `{"hook": "json" | "robot", "body": <its JSON, or None>, "accepted": bool, "at": <epoch>}`."""
    robot_faults: deque[RobotFault] = field(default_factory=deque)
    """How the next robot calls are answered instead: an errcode (HTTP 200), or HTTP 500."""
    json_faults: deque[int] = field(default_factory=deque)
    """The HTTP status of the next JSON webhook calls instead of 200."""

    @property
    def robot_path(self) -> str:
        return f"/sandbox/webhook/robot?key={self.robot_key}"

    def delivered(self, hook: Literal["json", "robot"]) -> list[dict[str, Any]]:
        """The bodies `hook` accepted, in order."""
        return [m["body"] for m in self.messages if m["hook"] == hook and m["accepted"]]

    def install(self, app: web.Application) -> None:
        app.router.add_post("/sandbox/webhook/json", self._json)
        app.router.add_post("/sandbox/webhook/robot", self._robot)
        app.router.add_get("/sandbox/webhook/messages", self._messages)

    async def _json(self, request: web.Request) -> web.Response:
        body = _body(await request.read())
        status = self.json_faults.popleft() if self.json_faults else 200
        self._record("json", body, status == 200)
        return web.Response(status=status, body=orjson.dumps({"ok": status == 200}), content_type="application/json")

    async def _robot(self, request: web.Request) -> web.Response:
        body = _body(await request.read())
        fault = self.robot_faults.popleft() if self.robot_faults else None
        if fault == "http500":
            self._record("robot", body, False)
            return web.Response(status=500, text="<html>500 Internal Server Error</html>")
        errcode = fault if fault is not None else _robot_errcode(request.query.get("key", ""), self.robot_key, body)
        self._record("robot", body, errcode == 0)
        answer = {"errcode": errcode, "errmsg": ROBOT_ERRMSG.get(errcode, "ok" if errcode == 0 else "error")}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _messages(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.messages), content_type="application/json")

    def _record(self, hook: str, body: Any, accepted: bool) -> None:
        self.messages.append({"hook": hook, "body": body, "accepted": accepted, "at": time.time()})


def _robot_errcode(key: str, known: str, body: Any) -> int:
    if not secrets.compare_digest(key.encode(), known.encode()):
        return 93000
    kind = body.get("msgtype") if isinstance(body, dict) else None
    if kind not in ("text", "markdown"):
        return 40008
    section = body.get(kind)
    content = section.get("content") if isinstance(section, dict) else None
    if not isinstance(content, str) or not content or len(content.encode()) > ROBOT_CONTENT_LIMIT:
        return 40058
    return 0


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def install_webhook_receiver(app: web.Application, sandbox: object) -> WebhookReceiver:
    """Serve a receiver on `app`: the sandbox's own (`sandbox.webhooks`) if it has one, so that an app
    built again keeps what was received, else a new one."""
    receiver = getattr(sandbox, "webhooks", None)
    if not isinstance(receiver, WebhookReceiver):
        receiver = WebhookReceiver()
    receiver.install(app)
    return receiver
