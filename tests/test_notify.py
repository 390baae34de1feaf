"""Notifications (notify.py): what a webhook and a WeCom robot are told, once per change and once for the fleet,
within their rate, tried again when worth it; the [[webhooks]] configuration; the sandbox's receiver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from jssdk_service.cache import MemoryCache, RedisCache
from jssdk_service.config import Account, Secret, Webhook, load_settings
from jssdk_service.credentials import AccountCredentials, AccountEvent, RefreshRules
from jssdk_service.errors import ConfigError, PlatformUnavailable, UpstreamRejected, UpstreamUnavailable
from jssdk_service.keys import CACHE
from jssdk_service.notify import (
    Notice,
    Notifier,
    json_body,
    quota_markers,
    robot_markdown,
    robot_summary,
)
from jssdk_service.quotas import DAY, HourlyLimits, china_day
from jssdk_service.sandbox import WeChatSandbox
from jssdk_service.sandbox_webhooks import WebhookReceiver
from jssdk_service.wechat import WeChatClient

from .helpers import (
    APP_ID,
    COMPONENT_APPID,
    COMPONENT_SECRET,
    OTHER_APP_ID,
    OTHER_SECRET,
    SECRET,
    WECOM_KEY,
    WECOM_SECRET,
    Fleet,
    RedisServer,
    ServiceFactory,
    make_account,
    make_platform,
    make_wecom_account,
    readyz,
    sign,
    write_toml,
)

ADMIN = "notify-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ENV = {"JSSDK_APP_ID": APP_ID, "JSSDK_APP_SECRET": SECRET, "JSSDK_ALLOWED_HOSTS": "example.com"}
ROBOT_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=0123abcd-robot-key-4567"
NotifierFactory = Callable[..., Awaitable[Notifier]]


def receiver(sandbox: WeChatSandbox) -> WebhookReceiver:
    """The sandbox's webhook receiver (there once the emulator serves)."""
    return sandbox.webhooks


def webhooks(base: str, sandbox: WeChatSandbox, *, per_minute: int = 20) -> tuple[Webhook, Webhook]:
    """A JSON webhook and a WeCom robot, both the sandbox's receiver at `base`."""
    return (
        Webhook(name="hook", kind="json", url=Secret(f"{base}/sandbox/webhook/json"), per_minute=per_minute),
        Webhook(name="robot", kind="wecom_robot", url=Secret(base + receiver(sandbox).robot_path),
                per_minute=per_minute),
    )  # fmt: skip


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until `check()` holds; a failure after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds:g} s"
        await asyncio.sleep(0.02)


def events(sandbox: WeChatSandbox, hook: str, event: str | None = None) -> list[dict[str, Any]]:
    """What `hook` ("json" or "robot") accepted, of `event` (for the robot: by its title), in order."""
    bodies = receiver(sandbox).delivered("json" if hook == "json" else "robot")
    if event is None:
        return bodies
    if hook == "json":
        return [b for b in bodies if b["event"] == event]
    title = {"failed": "refreshes failing", "recovered": "recovered", "quota": "past 80% of a quota"}[event]
    return [b for b in bodies if title in b["markdown"]["content"].splitlines()[0]]


def assert_no_secret(sandbox: WeChatSandbox, *texts: str) -> None:
    """No AppSecret, token or ticket the sandbox issued, nor the robot's key, in `texts` or what was received."""
    text = "\n".join([*texts, orjson.dumps(receiver(sandbox).messages).decode()])
    for secret in (SECRET, OTHER_SECRET, WECOM_SECRET, receiver(sandbox).robot_key):
        assert secret not in text
    assert not [value for value in sandbox.issued if value in text]


def rejected(app_id: str = APP_ID) -> UpstreamRejected:
    """WeChat refusing the appId (40013) on the token call, as the WeChat client raises it."""
    return UpstreamRejected(40013, "invalid appid rid: 1-2", app_id=app_id, api="stable_token",
                            fix="WeChat does not know this appId: check app_id")  # fmt: skip


@pytest.fixture
async def notifiers(sandbox_url: str, sandbox: WeChatSandbox) -> AsyncIterator[NotifierFactory]:
    """Start Notifiers on the memory cache telling the sandbox's two webhooks, retrying at once; stopped at the end."""
    started: list[Notifier] = []

    async def start(*, per_minute: int = 20, **kwargs: Any) -> Notifier:
        notifier = Notifier(webhooks(sandbox_url, sandbox, per_minute=per_minute), host="test-host",
                            retry_delays=(0.01, 0.02), **kwargs)  # fmt: skip
        await notifier.start(MemoryCache())
        started.append(notifier)
        return notifier

    yield start
    for notifier in started:
        await notifier.stop()


# -- what a message says -----------------------------------------------------------------------


def test_the_json_body_has_the_fields_that_apply() -> None:
    """A failure's body has its class, errcode, message and fix; a quota's its api, window and use; none has the rest."""
    failed = Notice(event="failed", app="main", app_id=APP_ID, at=0.0, failure="configuration", errcode=40013,
                    message="WeChat errcode 40013: invalid appid", fix="check app_id", api="stable_token")  # fmt: skip
    assert json_body(failed, "web-1") == {
        "event": "failed", "app": "main", "appId": APP_ID, "class": "configuration", "errcode": 40013,
        "message": "WeChat errcode 40013: invalid appid", "fix": "check app_id", "api": "stable_token",
        "host": "web-1", "at": "1970-01-01T00:00:00Z",
    }  # fmt: skip
    quota = Notice(event="quota", app="wecom", app_id=WECOM_KEY, at=0.0, api="get_jsapi_ticket", window="hour",
                   used=80, limit=100)  # fmt: skip
    assert set(json_body(quota, "web-1")) == {"event", "app", "appId", "api", "window", "used", "limit", "host", "at"}
    recovered = Notice(event="recovered", app="main", app_id=APP_ID, at=0.0)
    assert set(json_body(recovered, "web-1")) == {"event", "app", "appId", "host", "at"}


def test_the_robot_markdown_has_a_title_and_stays_within_the_robots_size() -> None:
    """A robot message opens with a title line, has a line per field, and a summary of 500 fits in 4096 bytes."""
    failed = Notice(event="failed", app="main", app_id=APP_ID, at=0.0, failure="configuration", errcode=40013,
                    message="WeChat errcode 40013:\ninvalid appid", fix="check app_id")  # fmt: skip
    lines = robot_markdown(failed, "web-1").splitlines()
    assert lines[0] == '<font color="warning">**jssdk-service: main refreshes failing (configuration)**</font>'
    assert lines[1:] == [f"> app: main ({APP_ID})", "> class: configuration", "> errcode: 40013",
                         "> message: WeChat errcode 40013: invalid appid", "> fix: check app_id",
                         "> host: web-1", "> at: 1970-01-01T00:00:00Z"]  # fmt: skip
    many = [
        Notice(event="failed", app=f"app-{i}", app_id=f"wx{i:016d}", at=0.0, failure="upstream") for i in range(100)
    ]
    summary = robot_summary(many, 500, "web-1", 0.0)
    assert len(summary.encode()) <= 4096
    assert "500 notifications" in summary.splitlines()[0] and "more" in summary and "app-0 " in summary


def test_a_quota_is_marked_once_a_day_or_an_hour() -> None:
    """A daily quota's marker is its China day's; two processes less than an hour apart share an hourly marker
    wherever the hour turns, and later ones do not."""
    base = 1_800_000_000.0 - 1_800_000_000.0 % 3600

    def keys(at: float) -> set[str]:
        notice = Notice(event="quota", app="crm", app_id=WECOM_KEY, at=at, api="get_jsapi_ticket", window="hour",
                        used=80, limit=100)  # fmt: skip
        return {key for key, _ in quota_markers(notice)}

    for first, second in ((0.0, 3599.9), (3599.9, 3600.1), (1800.0, 5300.0), (0.0, 0.0)):
        assert keys(base + first) & keys(base + second), (first, second)
    assert not keys(base) & keys(base + 7200)
    day = Notice(event="quota", app="main", app_id=APP_ID, at=base, api="token", window="day", used=1600, limit=2000)
    ((key, lease),) = quota_markers(day)
    assert key.endswith(f":day:{china_day(base)}") and 0 < lease <= DAY + 60


async def test_a_fleet_tells_each_change_once_however_far_apart_or_close(
    redis_server: RedisServer, sandbox: WeChatSandbox, sandbox_url: str
) -> None:
    """Two notifiers on one Redis (two processes): a failure both see minutes apart is one message, its recovery
    one, and a failure again right after it one more (the chat's last word is the truth); a recovery nobody was
    told the failure of is not told."""
    clock = [1_800_000_000.0]
    caches = [RedisCache(redis_server.url), RedisCache(redis_server.url)]
    pair = [Notifier(webhooks(sandbox_url, sandbox)[:1], host=f"host-{n}", clock=lambda: clock[0]) for n in (1, 2)]
    for notifier, cache in zip(pair, caches, strict=True):
        await notifier.start(cache)
    try:
        other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET))
        pair[0].watch_state(other, "recovered", None)
        changes: list[tuple[AccountEvent, UpstreamRejected | None]] = [
            ("failed", rejected()), ("recovered", None), ("failed", rejected())]  # fmt: skip
        for event, error in changes:
            for notifier in pair:
                notifier.watch_state(make_account(), event, error)
                await asyncio.sleep(0.1)
                clock[0] += 300  # the second process sees it five minutes later
        await until(lambda: len(events(sandbox, "json")) == 3)
        await asyncio.sleep(0.3)
        assert [b["event"] for b in events(sandbox, "json")] == ["failed", "recovered", "failed"]
    finally:
        for notifier, cache in zip(pair, caches, strict=True):
            await notifier.stop()
            await cache.close()


# -- configuration -----------------------------------------------------------------------------


def test_webhook_tables_are_read_and_their_urls_hidden(tmp_path: Path) -> None:
    """[[webhooks]] take their URL from a variable or a file, all events by default; repr shows the host only."""
    path = write_toml(tmp_path, """
[[webhooks]]
kind = "wecom_robot"
name = "ops-robot"
url_env = "OPS_ROBOT_URL"
events = ["failed", "recovered"]
per_minute = 10

[[webhooks]]
url_file = "{hook}"
""", {"hook": "https://alerts.example.com/hooks/jssdk?token=hook-token-987\n"})  # fmt: skip
    settings = load_settings({**ENV, "OPS_ROBOT_URL": ROBOT_URL}, path)
    robot, hook = settings.webhooks
    assert (robot.name, robot.kind, robot.events, robot.per_minute, robot.host) == (
        "ops-robot", "wecom_robot", ("failed", "recovered"), 10, "qyapi.weixin.qq.com")  # fmt: skip
    assert robot.url.reveal() == ROBOT_URL
    assert (hook.name, hook.kind, hook.events, hook.per_minute) == (
        "json@alerts.example.com", "json", ("failed", "recovered", "quota"), 20)  # fmt: skip
    assert hook.url.reveal() == "https://alerts.example.com/hooks/jssdk?token=hook-token-987"
    shown = repr(settings) + str(settings.webhooks)
    assert "robot-key" not in shown and "hook-token" not in shown and "/hooks/" not in shown
    assert "qyapi.weixin.qq.com" in shown


@pytest.mark.parametrize(
    ("text", "env", "field"),
    [
        ('url_env = "HOOK"', {"HOOK": "ftp://files.example.com/x?key=hook-secret"}, "webhooks[0].url_env"),
        (
            'url_env = "HOOK"',
            {"HOOK": "qyapi.weixin.qq.com/cgi-bin/webhook/send?key=hook-secret"},
            "webhooks[0].url_env",
        ),
        ('url_env = "HOOK"', {}, "webhooks[0].url_env"),
        ('kind = "json"', {}, "webhooks[0].url_env"),
        ('url_env = "HOOK"\nurl_file = "/run/secrets/hook"', {"HOOK": ROBOT_URL}, "webhooks[0].url_env"),
        ('url_file = "/nonexistent/hook-url"', {}, "webhooks[0].url_file"),
        ('url_env = "HOOK"\nkind = "robot"', {"HOOK": ROBOT_URL}, "webhooks[0].kind"),
        ('url_env = "HOOK"\nevents = ["failed", "paged"]', {"HOOK": ROBOT_URL}, "webhooks[0].events[1]"),
        ('url_env = "HOOK"\nper_minute = 0', {"HOOK": ROBOT_URL}, "webhooks[0].per_minute"),
        ('url = "https://hooks.example.com/x?key=hook-secret"', {}, "webhooks[0].url"),
        ('name = "bad name"\nurl_env = "HOOK"', {"HOOK": ROBOT_URL}, "webhooks[0].name"),
    ],
)
def test_a_bad_webhook_is_named_by_its_field_never_by_its_url(
    tmp_path: Path, text: str, env: dict[str, str], field: str
) -> None:
    """Each problem of a [[webhooks]] table names the field; the URL (a secret) is never in the message, nor in
    the file."""
    path = write_toml(tmp_path, f"[[webhooks]]\n{text}\n", {})
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, **env}, path)
    assert caught.value.field == field
    if field == "webhooks[0].url":
        assert "never goes in the file" in caught.value.problem
    assert "hook-secret" not in str(caught.value) and "robot-key" not in str(caught.value)


def test_a_webhook_from_the_environment() -> None:
    """JSSDK_WEBHOOK_URL (of JSSDK_WEBHOOK_KIND, json by default) adds a webhook; a kind alone or a bad one is refused."""
    (hook,) = load_settings({**ENV, "JSSDK_WEBHOOK_URL": "https://alerts.example.com/x?token=env-secret"}).webhooks
    assert (hook.kind, hook.host, hook.events) == ("json", "alerts.example.com", ("failed", "recovered", "quota"))
    (robot,) = load_settings({**ENV, "JSSDK_WEBHOOK_URL": ROBOT_URL, "JSSDK_WEBHOOK_KIND": "wecom_robot"}).webhooks
    assert robot.kind == "wecom_robot" and robot.url.reveal() == ROBOT_URL
    assert load_settings(ENV).webhooks == ()
    for env, field in (({"JSSDK_WEBHOOK_KIND": "wecom_robot"}, "JSSDK_WEBHOOK_KIND"),
                       ({"JSSDK_WEBHOOK_URL": ROBOT_URL, "JSSDK_WEBHOOK_KIND": "slack"}, "JSSDK_WEBHOOK_KIND"),
                       ({"JSSDK_WEBHOOK_URL": "mailto:ops@example.com?key=env-secret"}, "JSSDK_WEBHOOK_URL")):  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            load_settings({**ENV, **env})
        assert caught.value.field == field and "env-secret" not in str(caught.value)


# -- the notifier, against the sandbox's receiver over HTTP ------------------------------------


async def test_a_state_is_told_once_until_it_changes(notifiers: NotifierFactory, sandbox: WeChatSandbox) -> None:
    """The same failure twice is one message; a new class, a recovery and a failure again are one each; the
    account's secret never leaves, even inside an error's message."""
    notifier = await notifiers()
    main, other = make_account(), make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET))
    notifier.watch_state(main, "failed", rejected())
    notifier.watch_state(main, "failed", rejected())
    notifier.watch_state(other, "failed", UpstreamUnavailable(f"busy, and {OTHER_SECRET}", app_id=OTHER_APP_ID))
    notifier.watch_state(main, "failed", UpstreamUnavailable("cannot connect", app_id=APP_ID))
    notifier.watch_state(main, "recovered", None)
    notifier.watch_state(main, "recovered", None)
    await until(lambda: len(events(sandbox, "json")) == 4 and len(events(sandbox, "robot")) == 4)
    await asyncio.sleep(0.2)
    told = [(b["app"], b["event"], b.get("class")) for b in events(sandbox, "json")]
    assert told == [("main", "failed", "configuration"), ("other", "failed", "upstream"),
                    ("main", "failed", "upstream"), ("main", "recovered", None)]  # fmt: skip
    first = events(sandbox, "json")[0]
    assert (first["appId"], first["errcode"], first["api"], first["host"]) == (
        APP_ID,
        40013,
        "stable_token",
        "test-host",
    )
    assert first["fix"] == "WeChat does not know this appId: check app_id"
    assert events(sandbox, "json")[1]["message"] == "busy, and ***"
    robot = events(sandbox, "robot", "failed")[0]
    assert robot["msgtype"] == "markdown" and "> errcode: 40013" in robot["markdown"]["content"]
    assert_no_secret(sandbox)


async def test_a_quota_is_told_once_a_day(notifiers: NotifierFactory, sandbox: WeChatSandbox) -> None:
    """A quota past 80% is one message with its api, window and use, however often the counters say so."""
    notifier = await notifiers(names={APP_ID: "main"})
    notifier.watch_quota(APP_ID, "token", "day", 1600, 2000)
    notifier.watch_quota(APP_ID, "token", "day", 1700, 2000)
    notifier.watch_quota(APP_ID, "getticket", "day", 1600, 2000)
    await until(lambda: len(events(sandbox, "json")) == 2)
    await asyncio.sleep(0.2)
    first, second = events(sandbox, "json")
    assert {k: first[k] for k in ("event", "app", "appId", "api", "window", "used", "limit")} == {
        "event": "quota", "app": "main", "appId": APP_ID, "api": "token", "window": "day", "used": 1600, "limit": 2000}  # fmt: skip
    assert second["api"] == "getticket"
    assert "> used: 1600 of 2000" in events(sandbox, "robot", "quota")[0]["markdown"]["content"]


async def test_beyond_the_rate_notices_are_folded_into_one_summary(
    notifiers: NotifierFactory, sandbox: WeChatSandbox
) -> None:
    """With 2 messages a window, 6 failures are 2 messages, then one summary of the other 4 when the window reopens."""
    notifier = await notifiers(per_minute=2, rate_window=0.5)
    for i in range(6):
        notifier.watch_state(make_account(name=f"app-{i}", app_id=f"wx{i:016d}"), "failed", rejected(f"wx{i:016d}"))
    await until(lambda: len(events(sandbox, "json")) == 2)
    await asyncio.sleep(0.2)
    assert len(events(sandbox, "json")) == len(events(sandbox, "robot")) == 2, "the window is full"
    await until(lambda: len(events(sandbox, "json")) == 3 and len(events(sandbox, "robot")) == 3)
    summary = events(sandbox, "json")[2]
    assert (summary["event"], summary["count"], summary["host"]) == ("summary", 4, "test-host")
    assert [n["app"] for n in summary["notices"]] == ["app-2", "app-3", "app-4", "app-5"]
    content = events(sandbox, "robot")[2]["markdown"]["content"]
    assert "4 notifications" in content.splitlines()[0]
    assert all(f"app-{i} (wx{i:016d}) configuration errcode 40013" in content for i in range(2, 6))


async def test_a_busy_robot_and_a_failing_webhook_are_tried_again(
    notifiers: NotifierFactory, sandbox: WeChatSandbox, all_logs: pytest.LogCaptureFixture
) -> None:
    """The robot's 45009 (after the minute, here 0.5 s) and HTTP 500, and the webhook's 502 and 503, are tried
    again: the third attempt delivers; the webhook does not wait for the robot."""
    hooks = receiver(sandbox)
    hooks.robot_faults.extend([45009, "http500"])
    hooks.json_faults.extend([502, 503])
    notifier = await notifiers(rate_window=0.5)
    began = time.monotonic()
    notifier.watch_state(make_account(), "failed", rejected())
    await until(lambda: len(events(sandbox, "json")) == 1)
    assert events(sandbox, "robot") == [], "the robot waits out its minute; the webhook does not wait for it"
    await until(lambda: len(events(sandbox, "robot")) == 1)
    assert time.monotonic() - began >= 0.5
    assert [(m["hook"], m["accepted"]) for m in hooks.messages if m["hook"] == "robot"] == [
        ("robot", False), ("robot", False), ("robot", True)]  # fmt: skip
    assert [m["accepted"] for m in hooks.messages if m["hook"] == "json"] == [False, False, True]
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING and r.name == "jssdk_service.notify"]


async def test_a_refusal_is_not_tried_again_and_is_logged_once(
    sandbox_url: str, sandbox: WeChatSandbox, all_logs: pytest.LogCaptureFixture
) -> None:
    """A 404 and a robot's 93000 (a wrong key) are one attempt and one warning each, naming the webhook, not its URL;
    a robot busy three times is given up with one warning."""
    wrong_key = "wrong-robot-key-0000"
    hook, _ = webhooks(sandbox_url, sandbox)
    robot = Webhook(
        name="robot", kind="wecom_robot", url=Secret(f"{sandbox_url}/sandbox/webhook/robot?key={wrong_key}")
    )
    notifier = Notifier((hook, robot), retry_delays=(0.01, 0.02))
    receiver(sandbox).json_faults.append(404)
    await notifier.start(MemoryCache())
    try:
        notifier.watch_state(make_account(), "failed", rejected())
        await until(lambda: len(receiver(sandbox).messages) == 2)
        await asyncio.sleep(0.2)
        assert len(receiver(sandbox).messages) == 2, "not tried again"
        receiver(sandbox).robot_faults.extend([45009, 45009, 45009])
        busy = Notifier(webhooks(sandbox_url, sandbox)[1:], retry_delays=(0.01, 0.02), rate_window=0.05)
        await busy.start(MemoryCache())
        busy.watch_state(make_account(), "failed", rejected())
        await until(lambda: len(receiver(sandbox).messages) == 5)
        await busy.stop()
    finally:
        await notifier.stop()
    warnings = [r.getMessage() for r in all_logs.records if r.levelno == logging.WARNING and r.name.endswith("notify")]
    assert len(warnings) == 3, warnings
    assert "webhook hook: failed of main (configuration) not delivered: HTTP 404" in warnings
    assert any(w.startswith("webhook robot: failed of main") and "errcode 93000" in w for w in warnings)
    assert any("errcode 45009" in w and "after 3 attempts" in w for w in warnings)
    assert wrong_key not in all_logs.text and "/sandbox/webhook" not in all_logs.text
    assert not events(sandbox, "robot")


async def test_a_full_queue_drops_with_one_log_line(
    sandbox_url: str, sandbox: WeChatSandbox, all_logs: pytest.LogCaptureFixture
) -> None:
    """Watchers never wait: past the queue's size a notice is dropped, with one warning for the whole burst."""
    notifier = Notifier(webhooks(sandbox_url, sandbox)[:1], queue_size=2)
    for i in range(5):
        notifier.watch_state(make_account(name=f"app-{i}", app_id=f"wx{i:016d}"), "failed", rejected())
    dropped = [r for r in all_logs.records if "dropping new ones" in r.getMessage()]
    assert len(dropped) == 1
    await notifier.start(MemoryCache())
    try:
        await until(lambda: len(events(sandbox, "json")) == 2)
    finally:
        await notifier.stop()
    assert [b["app"] for b in events(sandbox, "json")] == ["app-0", "app-1"]


# -- the service -------------------------------------------------------------------------------


async def test_a_rejected_configuration_is_told_once_per_account_then_its_recovery(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """WeChat refusing two accounts (40013) under many requests is one `failed` message per account and webhook
    (class configuration, with the fix); fixed and refreshed, one `recovered` each; no secret anywhere."""
    sandbox.faults.error_rates = {40013: 1.0}
    other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET))
    service = await start_service(accounts=(make_account(), other), webhooks=webhooks(sandbox_url, sandbox),
                                  admin_token=Secret(ADMIN))  # fmt: skip
    for _ in range(20):
        for app in ("main", "other"):
            status, body = await sign(http, service.url, app=app)
            assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    await until(lambda: len(events(sandbox, "json", "failed")) == 2 and len(events(sandbox, "robot", "failed")) == 2)
    await asyncio.sleep(0.5)
    failed = events(sandbox, "json", "failed")
    assert sorted(b["app"] for b in failed) == ["main", "other"] and len(events(sandbox, "robot")) == 2
    for body in failed:
        assert (body["class"], body["errcode"]) == ("configuration", 40013)
        assert "invalid appid" in body["message"] and "check app_id" in body["fix"]
        assert body["appId"] == {"main": APP_ID, "other": OTHER_APP_ID}[body["app"]]
    sandbox.faults.error_rates = {}
    for app in ("main", "other"):
        async with http.post(f"{service.url}/admin/apps/{app}/refresh", headers=AUTH) as response:
            assert response.status == 200, await response.text()
    await until(lambda: len(events(sandbox, "json", "recovered")) == 2 and len(events(sandbox, "robot")) == 4)
    for _ in range(20):
        assert (await sign(http, service.url, app="main"))[0] == 200
    await asyncio.sleep(0.5)
    assert sorted(b["app"] for b in events(sandbox, "json", "recovered")) == ["main", "other"]
    assert len(events(sandbox, "json")) == len(events(sandbox, "robot")) == 4
    assert_no_secret(sandbox, all_logs.text)


@contextlib.asynccontextmanager
async def credentials_of(accounts: list[Account], notifier: Notifier) -> AsyncIterator[list[AccountCredentials]]:
    """The accounts' credentials as the store makes them, telling `notifier` of their state (never refreshed:
    a test records their failures and recoveries itself)."""
    cache = MemoryCache()
    client = WeChatClient(["http://127.0.0.1:9"])
    rules = RefreshRules(lock_lease=10.0, request_wait=1.0, watchers=(notifier.watch_state,))
    try:
        yield [AccountCredentials(account, client, cache, rules, HourlyLimits(cache)) for account in accounts]
    finally:
        await client.aclose()


async def test_a_platforms_failure_is_told_once_for_all_its_authorizers(
    notifiers: NotifierFactory, sandbox: WeChatSandbox
) -> None:
    """Authorizers failing for their platform's component token are not told one by one: the platform's
    failure is one message naming the platform, and its recovery one more; an authorizer failing on its
    own afterwards is told as itself."""
    notifier = await notifiers()
    platform = make_platform()
    refused = UpstreamRejected(61004, "access clientip is not registered", app_id=COMPONENT_APPID,
                               api="api_component_token", fix="add this host's IP to the platform's whitelist")  # fmt: skip
    authorizers = [platform.authorizer(f"wxa00000000000b{n:03d}") for n in range(50)]
    async with credentials_of(authorizers, notifier) as held:
        for creds in held:
            creds._record_failure(PlatformUnavailable(
                f"platform {COMPONENT_APPID}: {refused}", app_id=creds.account.key, errcode=61004, fix=refused.fix))  # fmt: skip
        notifier.watch_platform(platform, "failed", refused)
        for creds in held:
            creds._recovered("")
        notifier.watch_platform(platform, "recovered", None)
        held[0]._record_failure(rejected(authorizers[0].key))
        await until(lambda: len(events(sandbox, "json")) == 3)
        await asyncio.sleep(0.3)
    bodies = events(sandbox, "json")
    assert [(b["event"], b["appId"]) for b in bodies] == [
        ("failed", COMPONENT_APPID), ("recovered", COMPONENT_APPID), ("failed", authorizers[0].key)]  # fmt: skip
    assert (bodies[0]["class"], bodies[0]["errcode"], bodies[0]["app"]) == ("configuration", 61004, platform.name)
    assert COMPONENT_SECRET not in orjson.dumps(bodies).decode()


async def test_an_authorizers_own_failure_is_followed_by_its_recovery_through_a_platform_outage(
    notifiers: NotifierFactory, sandbox: WeChatSandbox
) -> None:
    """An authorizer told failing on its own, then failing with its platform, then working: its recovery is told
    (the chat's last word about it is the truth), and a later failure of its own is told again."""
    notifier = await notifiers()
    authorizer = make_platform().authorizer("wxa00000000000d001")
    down = PlatformUnavailable("platform down", app_id=authorizer.key, errcode=61004, fix="see the platform")
    busy = UpstreamUnavailable("WeChat errcode -1: system busy", app_id=authorizer.key, api="getticket")
    async with credentials_of([authorizer], notifier) as (creds,):
        for error in (busy, down, None, busy):
            if error is None:
                creds._recovered("")
            else:
                creds._record_failure(error)
        await until(lambda: len(events(sandbox, "json")) == 3)
        await asyncio.sleep(0.3)
    assert [(b["event"], b.get("class")) for b in events(sandbox, "json")] == [
        ("failed", "upstream"), ("recovered", None), ("failed", "upstream")]  # fmt: skip


async def test_a_wecom_app_past_80_percent_of_its_hourly_tickets_is_told_once(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """85 forced refreshes of a WeCom app: one quota message per ticket API, at 80 of WeCom's 100 an hour."""
    service = await start_service(accounts=(make_wecom_account(),), webhooks=webhooks(sandbox_url, sandbox),
                                  admin_token=Secret(ADMIN))  # fmt: skip
    for _ in range(85):
        async with http.post(f"{service.url}/admin/apps/wecom/refresh", headers=AUTH) as response:
            assert response.status == 200
    await until(lambda: len(events(sandbox, "json", "quota")) == 2 and len(events(sandbox, "robot", "quota")) == 2)
    await asyncio.sleep(0.3)
    told = {b["api"]: b for b in events(sandbox, "json")}
    assert sorted(told) == ["get_agent_ticket", "get_jsapi_ticket"] and len(events(sandbox, "json")) == 2
    for body in told.values():
        assert (body["app"], body["appId"], body["window"], body["used"], body["limit"]) == (
            "wecom", WECOM_KEY, "hour", 80, 100)  # fmt: skip
    assert_no_secret(sandbox)


async def test_a_daily_quota_past_80_percent_is_told(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """The fleet's stable_token calls past 400,000 of 500,000 today: one quota message, window day."""
    service = await start_service(webhooks=webhooks(sandbox_url, sandbox), admin_token=Secret(ADMIN))
    assert (await sign(http, service.url))[0] == 200
    # The fleet's count of today's calls, as the other processes of a fleet would have left it.
    await service.app[CACHE].increment(f"{APP_ID}:calls:stable_token:{china_day(time.time())}", 399_999, 2 * DAY)
    async with http.post(f"{service.url}/admin/apps/main/refresh", params={"token": "1"}, headers=AUTH) as response:
        assert response.status == 200
    await until(lambda: len(events(sandbox, "json", "quota")) == 1)
    (body,) = events(sandbox, "json")
    assert (body["app"], body["api"], body["window"], body["limit"]) == ("main", "stable_token", "day", 500_000)
    assert body["used"] >= 400_000


async def test_a_fleet_of_two_tells_a_failure_once_and_its_recovery_once(
    fleet: Fleet, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two `serve` processes that both see WeChat refuse the account send one `failed` message per webhook, and
    one `recovered` once both sign again: the shared cache's marker decides which process sends."""
    sandbox.faults.error_rates = {40013: 1.0}
    config = write_toml(tmp_path, """
[[webhooks]]
name = "ops-hook"
url_env = "OPS_HOOK_URL"

[[webhooks]]
kind = "wecom_robot"
name = "ops-robot"
url_env = "OPS_ROBOT_URL"
""", {})  # fmt: skip
    urls = await fleet(2, JSSDK_CONFIG=config, OPS_HOOK_URL=f"{sandbox_url}/sandbox/webhook/json",
                       OPS_ROBOT_URL=sandbox_url + receiver(sandbox).robot_path, JSSDK_ADMIN_TOKEN=ADMIN,
                       JSSDK_LOG_LEVEL="DEBUG", JSSDK_DRAIN_SECONDS="0")  # fmt: skip
    for i in range(20):
        assert (await sign(http, urls[i % 2]))[0] == 503

    async def refused_everywhere() -> bool:
        answers = [await readyz(http, url) for url in urls]
        return all(status == 503 and body["accounts"][0].get("errcode") == 40013 for status, body in answers)

    deadline = time.monotonic() + 10
    while not await refused_everywhere():
        assert time.monotonic() < deadline, "both processes see the refusal"
        await asyncio.sleep(0.05)
    await until(lambda: len(events(sandbox, "json", "failed")) == 1 and len(events(sandbox, "robot", "failed")) == 1)
    await asyncio.sleep(1.5)
    (failed,) = events(sandbox, "json", "failed")
    assert (failed["app"], failed["class"], failed["errcode"]) == (APP_ID, "configuration", 40013)
    assert len(events(sandbox, "robot")) == 1

    sandbox.faults.error_rates = {}
    async with http.post(f"{urls[0]}/admin/apps/{APP_ID}/refresh", headers=AUTH) as response:
        assert response.status == 200
    deadline = time.monotonic() + 10
    while [status for status, _ in [await readyz(http, url) for url in urls]] != [200, 200]:
        assert time.monotonic() < deadline, "both processes sign again"
        await asyncio.sleep(0.05)
    await until(lambda: len(events(sandbox, "json", "recovered")) == 1 and len(events(sandbox, "robot")) == 2)
    await asyncio.sleep(1.5)
    assert [b["event"] for b in events(sandbox, "json")] == ["failed", "recovered"]
    assert len(events(sandbox, "robot")) == 2
    logs = [(tmp_path / f"service-{i}.log").read_text() for i in range(2)]
    # Each change was seen by both processes, and left to the other by one of them.
    for change in (f"failed of {APP_ID} (configuration)", f"recovered of {APP_ID}"):
        assert sum(f"{change} is another process's to send" in log for log in logs) == 1, change
    assert_no_secret(sandbox, *logs)
