"""The application's resources, each under one typed key: what every handler may read from the app.

`app.py` fills them (the settings and indexes at once, the clients in their cleanup contexts); a
handler reads `request.app[KEY]`, or `request.config_dict[KEY]` in the admin sub-application.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from jssdk_service.cache import SharedCache
from jssdk_service.component import Platforms, PushGuard
from jssdk_service.config import Account, Settings
from jssdk_service.credentials import CredentialStore
from jssdk_service.quotas import QuotaWatcher
from jssdk_service.reports import PageReports
from jssdk_service.signing import NonceSource
from jssdk_service.wechat import CallObserver, WeChatClient


class Lifecycle:
    """Where the process is in its life: `draining` from the first SIGTERM on (see `server.py`)."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False

    def __repr__(self) -> str:
        return f"Lifecycle(draining={self.draining})"


SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
NONCES = web.AppKey("nonces", NonceSource)
# Each JS secure domain's accounts, in configured order: who signs for a host, without a scan.
SIGNERS: web.AppKey[dict[str, tuple[Account, ...]]] = web.AppKey("signers")
# Called once per HTTP call to WeChat; fill before start-up (metrics, daily usage counting).
CALL_OBSERVERS: web.AppKey[list[CallObserver]] = web.AppKey("call_observers")
# Told when the fleet passes 80% of a quota (notifications): also of WeChat's own figures, once asked.
QUOTA_WATCHERS: web.AppKey[tuple[QuotaWatcher, ...]] = web.AppKey("quota_watchers")
# The accounts whose quota reset is under way in this process, or whose last one's outcome is unknown,
# and until when (monotonic; the admin API's, `admin.py`).
QUOTA_RESETS: web.AppKey[dict[str, float]] = web.AppKey("quota_resets")
WECHAT = web.AppKey("wechat", WeChatClient)
CACHE: web.AppKey[SharedCache] = web.AppKey("cache")
STORE = web.AppKey("store", CredentialStore)
REPORTS = web.AppKey("reports", PageReports)
# The third-party platforms: their own credentials and their authorizers (in STORE).
PLATFORMS = web.AppKey("platforms", Platforms)
PUSH_GUARD = web.AppKey("push_guard", PushGuard)
# The OpenAPI document of this application, encoded once.
DOCUMENT = web.AppKey("document", bytes)
# The admin token's digest, in the admin sub-application.
ADMIN_DIGEST = web.AppKey("admin_digest", bytes)

# The account a request named, once it is known: its domains decide the CORS answer.
ACCOUNT = web.RequestKey("account", Account)


def find_account(config: Mapping[Any, Any], key: str | None) -> Account | None:
    """The account `key` names: a configured one (`Settings.account`), else a platform's authorizer the
    store holds (they come and go at run time); `config` is the app or a request's `config_dict`."""
    settings: Settings = config[SETTINGS]
    store: CredentialStore = config[STORE]
    return settings.account(key) or store.authorizer(key)
