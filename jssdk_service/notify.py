"""Notifications: the one module that posts to webhooks (a generic JSON webhook, a WeCom group robot).

What is told: an account's refreshes start failing (`failed`, with the error's class; again when the
class changes, as when WeChat starts refusing the configuration), work again (`recovered`), and a
quota passes 80% (`quota`); a platform's component token likewise (its authorizers, which fail
with it, are not told one by one). The credential store and the quota counters call `watch_state` and
`watch_quota` in the event loop, and never wait: a notice goes on a bounded queue (dropped, with one
log line, when the queue is full); one background task decides which notices this process sends
for the fleet, and a task per webhook sends them (a webhook that does not answer holds up no other).

Once per change, and once for the fleet:
- in this process a notice that repeats the account's last state is dropped (a quota is told once a
  China day, or once an hour for WeCom's hourly limits);
- before sending a state change, the sender swaps the account's state into the shared cache
  (`SharedCache.swap`, one atomic step): it sends only when the state it replaced differs, so of
  two processes seeing the same change, however far apart, one sends; a failure after a recovery is
  told again however soon it comes; a recovery is told only when a failure was. A quota takes
  markers instead (`SharedCache.acquire`, never released: they expire at the end of the quota's
  day or hour): the first process to take them sends. With the memory cache there is one process.
  While the shared cache is away a change is sent (twice rather than never).

Per webhook at most `per_minute` messages a minute (a robot takes 20): the notices beyond are folded
into one summary, sent when the minute has room again (counted in this process: each process of a
fleet sends its own changes). A message is tried 3 times (again after 0.5 s, then 2 s) when the
connection fails, the webhook answers 5xx, or a robot answers errcode -1 (busy); after a minute when
a robot answers 45009 (its limit); anything else (a 4xx, another errcode) is logged once and dropped.

A message says the account's name and key (appId, or corp_id:agent_id), the event, the error's
message (scrubbed of secrets where it is made, `errors.py`), errcode, fix and class, a quota's API,
window and use, this host and the time: never a secret, token or ticket. A webhook's URL is a secret
too (a robot's carries its key): logs name a webhook by its name, never by its URL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson

from jssdk_service.cache import SharedCache
from jssdk_service.config import Account, Platform, Secret, Webhook
from jssdk_service.credentials import AccountEvent
from jssdk_service.errors import UpstreamError, failure_class
from jssdk_service.quotas import china_day, next_china_midnight

log = logging.getLogger("jssdk_service.notify")

NoticeEvent = Literal["failed", "recovered", "quota"]
Retry = Literal["", "soon", "minute"]
"""When trying a message again may help: never, soon, in the next minute (a robot's limit)."""
QUEUE_SIZE = 1000
RATE_WINDOW = 60.0  # seconds over which a webhook's `per_minute` counts
RETRY_DELAYS = (0.5, 2.0)  # before the second and the third attempt
ROBOT_LIMIT = 45009  # a robot's answer past its 20 messages a minute: tried again in the next minute
# (a robot's -1, busy, is tried again after RETRY_DELAYS)
POST_TIMEOUT = 5.0
HOUR = 3600.0
# How long the fleet remembers an account's last state told: a failure lasting longer is told again.
STATE_KEPT = 7 * 24 * 3600.0
FOLDED_KEPT = 100  # notices a summary lists; it counts the rest
ROBOT_CONTENT_BYTES = 4000  # a robot's markdown content may be 4096 bytes
VALUE_CHARS = 500  # the longest value a message carries (a message, a fix)
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """One thing to tell: an account's state change, or a quota past 80%."""

    event: NoticeEvent
    app: str
    """The account's name (a corp_id for a corp's own WeCom limit)."""
    app_id: str
    """The account's key: its appId, or corp_id:agent_id for a WeCom app."""
    at: float
    failure: str | None = None
    """The failure's class (`errors.failure_class`): configuration, quota, source, upstream."""
    errcode: int | None = None
    message: str | None = None
    fix: str | None = None
    api: str | None = None
    window: str | None = None
    used: int | None = None
    limit: int | None = None

    def describe(self) -> str:
        """The notice in a log line."""
        if self.event == "quota":
            return f"quota of {self.app}: {self.api} {self.used}/{self.limit} this {self.window}"
        return f"{self.event} of {self.app}" + (f" ({self.failure})" if self.failure else "")


def json_body(notice: Notice, host: str) -> dict[str, Any]:
    """The JSON webhook's body for `notice`: the fields that apply to it."""
    body = {
        "event": notice.event, "app": notice.app, "appId": notice.app_id, "class": notice.failure,
        "errcode": notice.errcode, "message": notice.message, "fix": notice.fix, "api": notice.api,
        "window": notice.window, "used": notice.used, "limit": notice.limit, "host": host, "at": _iso(notice.at),
    }  # fmt: skip
    return {key: value for key, value in body.items() if value is not None}


def json_summary(notices: Sequence[Notice], count: int, host: str, now: float) -> dict[str, Any]:
    """The JSON webhook's body for `count` folded notices, the first of which are `notices`."""
    listed = [{k: v for k, v in json_body(n, host).items() if k != "host"} for n in notices]
    return {"event": "summary", "count": count, "notices": listed, "host": host, "at": _iso(now)}


def robot_markdown(notice: Notice, host: str) -> str:
    """A WeCom robot's markdown content for `notice`: a title line, then its fields."""
    if notice.event == "failed":
        title = f'<font color="warning">**jssdk-service: {notice.app} refreshes failing ({notice.failure})**</font>'
    elif notice.event == "recovered":
        title = f'<font color="info">**jssdk-service: {notice.app} recovered**</font>'
    else:
        title = f'<font color="warning">**jssdk-service: {notice.app} past 80% of a quota**</font>'
    fields = {
        "app": f"{notice.app} ({notice.app_id})", "class": notice.failure, "errcode": notice.errcode,
        "message": notice.message, "fix": notice.fix, "api": notice.api, "window": notice.window,
        "used": None if notice.used is None else f"{notice.used} of {notice.limit}", "host": host,
        "at": _iso(notice.at),
    }  # fmt: skip
    return "\n".join([title, *(f"> {key}: {_one_line(value)}" for key, value in fields.items() if value is not None)])


def robot_summary(notices: Sequence[Notice], count: int, host: str, now: float) -> str:
    """A WeCom robot's markdown content for `count` folded notices: a line each, within the robot's size."""
    title = f'<font color="warning">**jssdk-service: {count} notifications, folded (too many a minute)**</font>'
    tail = [f"> host: {_one_line(host)}", f"> at: {_iso(now)}"]
    lines = [title]
    size = len("\n".join([title, *tail]).encode()) + 40  # room for the "more" line
    for listed, notice in enumerate(notices):
        line = f"> {_iso(notice.at)} {notice.event}: {_one_line(notice.app)} ({notice.app_id})"
        if notice.event == "failed":
            line += f" {notice.failure}" + ("" if notice.errcode is None else f" errcode {notice.errcode}")
        elif notice.event == "quota":
            line += f" {notice.api} {notice.used}/{notice.limit} this {notice.window}"
        size += len(line.encode()) + 1
        if size > ROBOT_CONTENT_BYTES:
            lines.append(f"> … and {count - listed} more")
            break
        lines.append(line)
    else:
        if count > len(notices):
            lines.append(f"> … and {count - len(notices)} more")
    return "\n".join([*lines, *tail])


def robot_body(content: str) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": content}}


def quota_markers(notice: Notice) -> list[tuple[str, float]]:
    """The markers (cache key, lease) the sender of a quota notice takes in the fleet's cache, in order: it
    sends only when it took them all.

    A daily quota is marked once a China day (its quota resets at midnight). An hourly one is marked in
    its hour and the next: two processes within an hour of each other share a key whichever hours they
    are in, so one sends; each marker lives until its hour is over.
    """
    now = notice.at
    if notice.window == "day":
        day = china_day(now)
        return [(f"notify:{notice.app_id}:quota:{notice.api}:day:{day}", next_china_midnight(now) - now + 60)]
    name = f"notify:{notice.app_id}:quota:{notice.api}:{notice.window}"
    bucket = int(now // HOUR)
    return [(f"{name}:{b}", (b + 1) * HOUR - now + 1) for b in (bucket, bucket + 1)]


def state_told(notice: Notice) -> tuple[str, str]:
    """The shared cache's key for an account's (or a platform's) last state told, and this notice's state."""
    return f"notify:{notice.app_id}:state", f"{notice.event}:{notice.failure or '-'}"


class _Hook:
    """One webhook's side of sending: its recent messages (the rate limit) and the notices folded meanwhile."""

    __slots__ = ("folded", "inbox", "pending", "sent", "webhook")

    def __init__(self, webhook: Webhook) -> None:
        self.webhook = webhook
        self.inbox: asyncio.Queue[Notice] = asyncio.Queue()
        """Notices this process is the fleet's sender of, for this webhook (the dispatcher puts them here)."""
        self.sent: deque[float] = deque()
        self.pending: list[Notice] = []
        self.folded = 0
        """Notices folded beyond `pending` (which keeps FOLDED_KEPT): counted, not listed."""

    def fold(self, notice: Notice) -> None:
        if len(self.pending) < FOLDED_KEPT:
            self.pending.append(notice)
        else:
            self.folded += 1

    def take(self) -> tuple[list[Notice], int]:
        """The notices waiting, and how many there are."""
        taken, count = self.pending, len(self.pending) + self.folded
        self.pending, self.folded = [], 0
        return taken, count

    def has_room(self, now: float, window: float) -> bool:
        while self.sent and self.sent[0] <= now - window:
            self.sent.popleft()
        return len(self.sent) < self.webhook.per_minute

    def scrub(self, text: str) -> str:
        """`text` without the URL or any of its query values (a robot's key)."""
        url = self.webhook.url.reveal()
        for value in sorted({url, *(v for _, v in parse_qsl(urlsplit(url).query) if v)}, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


class Notifier:
    """Tells `webhooks` of accounts' state changes and quotas: `watch_state` and `watch_quota` are the
    watchers to register; `start` runs the sender, `stop` ends it.

    `names` gives each account's name by its key (quota watchers are told keys); `rate_window` and
    `retry_delays` are the minute of `per_minute` and the pauses between attempts (shorter in tests).
    """

    def __init__(
        self, webhooks: Sequence[Webhook], *, names: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time, host: str | None = None, queue_size: int = QUEUE_SIZE,
        rate_window: float = RATE_WINDOW, retry_delays: Sequence[float] = RETRY_DELAYS,
        timeout: float = POST_TIMEOUT,
    ) -> None:  # fmt: skip
        self._hooks = [_Hook(webhook) for webhook in webhooks]
        self._names = names or {}
        self._clock = clock
        self._host = host or socket.gethostname()
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(queue_size)
        self._rate_window = rate_window
        self._retry_delays = tuple(retry_delays)
        self._timeout = timeout
        # This process's last state told per account, and when each quota was last told.
        self._states: dict[str, tuple[str, str | None]] = {}
        self._quotas: dict[tuple[str, str, str], float] = {}
        self._dropping = False
        self._owner = secrets.token_hex(8)
        self._cache: SharedCache | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Notifier(webhooks={[hook.webhook for hook in self._hooks]!r}, waiting={self._queue.qsize()})"

    # -- the watchers: called in the event loop, never wait ----------------------------------

    def watch_state(self, account: Account, event: AccountEvent, error: UpstreamError | None) -> None:
        """A `credentials.StateWatcher`: an account's refreshes failed (first, or of a new class) or recovered.
        (An authorizer failing for its platform's component token is not told: the platform's failure is,
        `watch_platform`, once for all its authorizers.)"""
        self._tell(account.key, account.name, event, error, account.secret)

    def watch_platform(self, platform: Platform, event: AccountEvent, error: UpstreamError | None) -> None:
        """A `credentials.PlatformWatcher`: a platform's component token failed (first, or of a new class) or
        recovered."""
        self._tell(platform.component_appid, platform.name, event, error, platform.secret)

    def _tell(self, key: str, name: str, event: AccountEvent, error: UpstreamError | None,
              secret: Secret | None) -> None:  # fmt: skip
        failure = None if error is None else failure_class(error)
        if self._states.get(key) == (event, failure):
            return
        self._states[key] = (event, failure)
        message = fix = None
        if error is not None:
            message = _scrubbed(error.message, secret)
            fix = _scrubbed(getattr(error, "fix", "") or "", secret) or None
        errcode = getattr(error, "errcode", None)
        self._put(Notice(event=event, app=name, app_id=key, at=self._clock(), failure=failure,
                         errcode=errcode if isinstance(errcode, int) else None, message=message, fix=fix,
                         api=(error.api or None) if error is not None else None))  # fmt: skip

    def watch_quota(self, scope: str, api: str, window: str, used: int, limit: int) -> None:
        """A `quotas.QuotaWatcher`: the fleet passed 80% of `scope`'s (an account's key or a corp_id) quota."""
        now = self._clock()
        told = self._quotas.get((scope, api, window))
        if told is not None and (china_day(told) == china_day(now) if window == "day" else now - told < HOUR):
            return
        self._quotas[(scope, api, window)] = now
        self._put(Notice(event="quota", app=self._names.get(scope, scope), app_id=scope, at=now, api=api,
                         window=window, used=used, limit=limit))  # fmt: skip

    def _put(self, notice: Notice) -> None:
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            if not self._dropping:  # one line for a burst, not one per notice
                log.warning("notifications: %d waiting, dropping new ones until there is room (first: %s)",
                            self._queue.qsize(), notice.describe())  # fmt: skip
            self._dropping = True
        else:
            self._dropping = False

    # -- the sender ---------------------------------------------------------------------------

    async def start(self, cache: SharedCache) -> None:
        """Send from now on (what was watched before waits in the queue), marking changes in `cache`."""
        self._cache = cache
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        loop = asyncio.get_running_loop()
        # One dispatcher (the fleet decides who sends), and a sender per webhook: a webhook that does not
        # answer holds up its own messages only.
        self._tasks = [
            loop.create_task(self._dispatch()),
            *(loop.create_task(self._send(hook)) for hook in self._hooks),
        ]

    async def stop(self) -> None:
        """Stop sending; what has not been sent yet is logged as lost."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        unsent = self._queue.qsize() + sum(h.inbox.qsize() + len(h.pending) + h.folded for h in self._hooks)
        if unsent:
            log.warning("notifications: %d not sent, the service is stopping", unsent)

    async def _dispatch(self) -> None:
        """Each notice this process is the fleet's sender of, to the webhooks that take its event."""
        while True:
            notice = await self._queue.get()
            try:
                claimed = await self._claimed(notice)
            except Exception:
                # Whatever went wrong with this notice, the dispatcher goes on to the next.
                log.exception("notifications: %s could not be claimed", notice.describe())
                continue
            if not claimed:
                log.debug("notifications: %s is another process's to send", notice.describe())
                continue
            for hook in self._hooks:
                if notice.event in hook.webhook.events:
                    if hook.inbox.qsize() >= self._queue.maxsize:  # a webhook that never answers: fold
                        hook.fold(notice)
                    else:
                        hook.inbox.put_nowait(notice)

    async def _send(self, hook: _Hook) -> None:
        """`hook`'s sender: each notice as its own message while the minute has room, the rest folded into
        one summary sent when it has room again."""
        while True:
            notice = await self._next(hook)
            if notice is not None:
                hook.fold(notice)
            if hook.pending and hook.has_room(time.monotonic(), self._rate_window):
                notices, count = hook.take()
                try:
                    await self._post(hook, notices, count)
                except Exception:
                    log.exception("webhook %s: sending failed unexpectedly", hook.webhook.name)

    async def _next(self, hook: _Hook) -> Notice | None:
        """`hook`'s next notice; None when its folded notices are due first."""
        if not (hook.pending and hook.sent):
            return await hook.inbox.get()
        due = hook.sent[0] + self._rate_window
        try:
            return await asyncio.wait_for(hook.inbox.get(), max(0.001, due - time.monotonic()))
        except TimeoutError:
            return None

    async def _claimed(self, notice: Notice) -> bool:
        """Whether this process is the fleet's sender of `notice`: the state it swapped in is news to the fleet,
        or it took every marker of the quota."""
        assert self._cache is not None  # started
        if notice.event != "quota":
            key, state = state_told(notice)
            before = await self._cache.swap(key, state, STATE_KEPT)
            if before is None and not self._cache.health().get("ok", True):
                return True  # the fleet cannot say: twice rather than never
            return before != state and (notice.event == "failed" or before is not None)
        for key, lease in quota_markers(notice):
            if not await self._cache.acquire(key, self._owner, lease):
                return False
        return True

    async def _post(self, hook: _Hook, notices: list[Notice], count: int) -> None:
        """One message of `notices` (a summary when more than one), tried up to three times."""
        hook.sent.append(time.monotonic())
        robot = hook.webhook.kind == "wecom_robot"
        if count == 1:
            (notice,) = notices
            what = notice.describe()
            body = robot_body(robot_markdown(notice, self._host)) if robot else json_body(notice, self._host)
        else:
            what, now = f"a summary of {count} notifications", self._clock()
            body = (robot_body(robot_summary(notices, count, self._host, now)) if robot
                    else json_summary(notices, count, self._host, now))  # fmt: skip
        data = orjson.dumps(body)
        problem: str = "not tried"
        again: Retry = ""
        for delay in (0.0, *self._retry_delays):
            if again == "minute":  # the robot's limit: it takes more in the next minute, not in a second
                delay = self._rate_window
            if delay:
                await asyncio.sleep(delay)
            problem, again = await self._attempt(hook, data)
            if not problem:
                log.info("webhook %s: sent %s", hook.webhook.name, what)
                return
            if not again:
                break
            log.debug("webhook %s: %s; trying again", hook.webhook.name, problem)
        log.warning("webhook %s: %s not delivered: %s%s", hook.webhook.name, what, problem,
                    " (after 3 attempts)" if again else "")  # fmt: skip

    async def _attempt(self, hook: _Hook, data: bytes) -> tuple[str, Retry]:
        """One POST: ("", "") when delivered, else what went wrong and when trying again may help: "soon", in
        the next "minute" (the robot's limit), or "" (never)."""
        assert self._session is not None  # started
        robot = hook.webhook.kind == "wecom_robot"
        try:
            async with self._session.post(hook.webhook.url.reveal(), data=data, headers=_JSON,
                                          allow_redirects=False) as response:  # fmt: skip
                if response.status >= 300:
                    return f"HTTP {response.status}", "soon" if response.status >= 500 else ""
                answer = orjson.loads(await response.read()) if robot else {"errcode": 0}
        except (aiohttp.ClientError, TimeoutError) as exc:
            # An aiohttp error's text may carry the URL, and so the robot's key: its type only.
            return f"cannot post ({type(exc).__name__})", "soon"
        except orjson.JSONDecodeError:
            return "the robot's answer is not JSON", ""
        errcode = answer.get("errcode") if isinstance(answer, dict) else None
        if errcode == 0:
            return "", ""
        errmsg = hook.scrub(_one_line(answer.get("errmsg", "") if isinstance(answer, dict) else ""))
        again: Retry = "minute" if errcode == ROBOT_LIMIT else "soon" if errcode == -1 else ""
        return f"errcode {errcode}: {errmsg}", again


def _scrubbed(text: str, secret: Secret | None) -> str:
    # errors.py's messages carry no secret already; a message leaving for a chat room is checked once more.
    value = secret.reveal() if secret is not None else ""
    return text.replace(value, "***") if value else text


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
