"""The composition root: `create_app` builds the application from its settings and its parts.

The resources live under the keys of `keys.py`; each one that opens and closes has one cleanup
context here (the WeChat client, the shared cache, the credential store, the notifications'
sender, the workers' stats publisher), so start-up and shutdown mirror each other. The routes come
from `routes.py`: the public ones, the demo's under `serve --sandbox`, and the admin sub-application
at /admin when an admin token is set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from jssdk_service.admin import admin_app
from jssdk_service.cache import RawKeys, open_cache
from jssdk_service.component import Platforms, PushGuard
from jssdk_service.config import Account, Settings, TokenRedisKey
from jssdk_service.credentials import AuthorizerTokens, CredentialStore, PlatformWatcher, RefreshRules, StateWatcher
from jssdk_service.endpoint import Route, install_routes
from jssdk_service.keys import (
    CACHE,
    CALL_OBSERVERS,
    CLOCK,
    DOCUMENT,
    LIFECYCLE,
    NONCES,
    PLATFORMS,
    PUSH_GUARD,
    QUOTA_RESETS,
    QUOTA_WATCHERS,
    REPORTS,
    SETTINGS,
    SIGNERS,
    STORE,
    WECHAT,
    Lifecycle,
)
from jssdk_service.metrics import MULTIPROCESS_DIR, keep_publishing_http_stats, upstream_call_counter
from jssdk_service.notify import Notifier
from jssdk_service.openapi import openapi_document
from jssdk_service.quotas import QuotaWatcher, UpstreamUsage
from jssdk_service.reports import PageReports
from jssdk_service.routes import ADMIN, ADMIN_PREFIX, DEMO, PUBLIC
from jssdk_service.scheduler import UpstreamScheduler
from jssdk_service.shapes import encode
from jssdk_service.signing import NonceSource
from jssdk_service.wechat import CallObserver, RetryPolicy, Transport, WeChatClient

# The largest request body read: every body the API takes is a small JSON object.
MAX_BODY = 64 * 1024
# The longest request line read: a GET with `url` and `page` at their longest, percent-encoded
# (a non-ASCII character is up to 12 bytes so), and no longer: aiohttp refuses it in plain text.
MAX_REQUEST_LINE = 128 * 1024


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    retry_policy: RetryPolicy | None = None,
    transport: Transport | None = None,
    demo: bool = False,
) -> web.Application:
    """The aiohttp application serving `settings`; resources open and close with it.

    `demo` serves the sandbox's demo page at /demo (`serve --sandbox` only).
    """
    app = web.Application(client_max_size=MAX_BODY, handler_args={"max_line_size": MAX_REQUEST_LINE})
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[NONCES] = NonceSource()
    app[SIGNERS] = _signers(settings)
    app[LIFECYCLE] = lifecycle = Lifecycle()
    app[REPORTS] = PageReports()
    usage = UpstreamUsage(clock=clock, names={account.key: account.name for account in settings.accounts})
    app[CALL_OBSERVERS] = [usage.record, upstream_call_counter(settings.accounts)]
    notifier = _notifier(settings, clock)
    state_watchers: tuple[StateWatcher, ...] = () if notifier is None else (notifier.watch_state,)
    quota_watchers: tuple[QuotaWatcher, ...] = () if notifier is None else (notifier.watch_quota,)
    platform_watchers: tuple[PlatformWatcher, ...] = () if notifier is None else (notifier.watch_platform,)
    usage.watchers.extend(quota_watchers)
    app[QUOTA_WATCHERS] = quota_watchers
    app[QUOTA_RESETS] = {}

    async def wechat_client(app: web.Application) -> AsyncIterator[None]:
        observers: list[CallObserver] = app[CALL_OBSERVERS]
        scheduler = UpstreamScheduler(settings.upstream_concurrency)
        client = WeChatClient(settings.api_bases, wecom_bases=settings.wecom_api_bases, policy=retry_policy,
                              observers=observers, clock=clock, scheduler=scheduler, transport=transport)  # fmt: skip
        app[WECHAT] = client
        yield
        await client.aclose()

    async def shared_cache(app: web.Application) -> AsyncIterator[None]:
        password = settings.redis_password.reveal() if settings.redis_password else None
        cache = open_cache(settings.cache_url, password=password)
        app[CACHE] = cache
        yield
        await cache.close()

    async def credential_store(app: web.Application) -> AsyncIterator[None]:
        password = settings.redis_password.reveal() if settings.redis_password else None
        # The Redis of each external source kept there: its own URL, or (None) the service's.
        urls = {a.source.redis_url for a in settings.accounts if isinstance(a.source, TokenRedisKey)}
        source_keys = {url: RawKeys(url or settings.cache_url, password=password) for url in urls}
        # Each platform's authorizer tokens, filled in once the platforms exist (they need the store).
        authorizer_tokens: dict[str, AuthorizerTokens] = {}
        rules = RefreshRules(clock=clock, lock_lease=settings.lock_lease, request_wait=settings.request_wait,
                             usage=usage, source_keys=source_keys, platforms=authorizer_tokens,
                             watchers=state_watchers, quota_watchers=quota_watchers,
                             platform_watchers=platform_watchers)  # fmt: skip
        cache = app[CACHE]
        store = CredentialStore(settings.accounts, app[WECHAT], cache, rules=rules)
        app[STORE] = store
        platforms = Platforms(settings.platforms, app[WECHAT], cache, rules, store)
        authorizer_tokens.update(platforms.tokens())
        app[PLATFORMS] = platforms
        app[PUSH_GUARD] = PushGuard(cache, clock)
        await platforms.load()  # the authorizers the fleet keeps, before their refreshers start
        store.start()
        platforms.start()

        def on_news(key: str) -> None:
            if not platforms.on_news(key):
                store.on_news(key)

        # Cache health and the fleet's news, for as long as the store runs.
        watcher = asyncio.get_running_loop().create_task(cache.watch(on_news))
        yield
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await platforms.stop()
        await store.stop()
        for keys in source_keys.values():
            await keys.close()

    app.cleanup_ctx.extend([wechat_client, shared_cache, credential_store])
    if notifier is not None:

        async def notifications(app: web.Application) -> AsyncIterator[None]:
            # After the store, so it stops first; what the store told before it started waits in its queue.
            await notifier.start(app[CACHE])
            yield
            await notifier.stop()

        app.cleanup_ctx.append(notifications)
    directory = MULTIPROCESS_DIR
    if directory is not None:

        async def http_stats_publisher(app: web.Application) -> AsyncIterator[None]:
            # With workers, the other processes' /metrics read this one's numbers from a file.
            publisher = asyncio.get_running_loop().create_task(keep_publishing_http_stats(directory))
            yield
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

        app.cleanup_ctx.append(http_stats_publisher)

    routes: list[Route] = PUBLIC + (DEMO if demo else [])
    documented = routes + (ADMIN if settings.admin_token is not None else [])
    app[DOCUMENT] = encode(openapi_document(documented))
    if settings.admin_token is not None:
        admin = admin_app(settings.admin_token)
        install_routes(admin, ADMIN, lifecycle=lifecycle, access_log=settings.access_log, prefix=ADMIN_PREFIX)
        app.add_subapp(ADMIN_PREFIX, admin)
    install_routes(app, routes, lifecycle=lifecycle, access_log=settings.access_log)
    return app


def _notifier(settings: Settings, clock: Callable[[], float]) -> Notifier | None:
    """What tells the configured webhooks of state changes and quotas; None without webhooks."""
    if not settings.webhooks:
        return None
    return Notifier(settings.webhooks, names={account.key: account.name for account in settings.accounts}, clock=clock)


def _signers(settings: Settings) -> dict[str, tuple[Account, ...]]:
    """Each JS secure domain's accounts, in configured order; a platform's domains too (its authorizers
    come and go, so none is listed)."""
    by_domain: dict[str, list[Account]] = {}
    for account in settings.accounts:
        for domain in account.allowed_hosts:
            by_domain.setdefault(domain, []).append(account)
    for platform in settings.platforms:
        for domain in platform.web_domains:
            by_domain.setdefault(domain, [])
    return {domain: tuple(accounts) for domain, accounts in by_domain.items()}
