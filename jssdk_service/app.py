"""The web layer: the only code that knows HTTP status codes.

A request is parsed and validated here, signed by `signing`, given share payloads by `share`, and
answered as JSON. Errors from anywhere below become `{"error": {"code", "message"}}` in one
middleware, with the status from `_STATUS`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from aiohttp import web

from jssdk_service.admin import AdminAPI
from jssdk_service.bodies import json_object, preflight
from jssdk_service.cache import SharedCache, open_cache
from jssdk_service.config import Account, Settings
from jssdk_service.credentials import AccountCredentials, AccountStatus, CredentialStore, RefreshRules, UpstreamUsage
from jssdk_service.errors import (
    HostNotAllowed,
    InvalidRequest,
    InvalidShare,
    InvalidURL,
    JssdkError,
    UnknownApp,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from jssdk_service.logs import REQUEST_ID, REQUEST_ID_HEADER, log_access, new_request_id, usable_request_id
from jssdk_service.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    MULTIPROCESS_DIR,
    UNMATCHED_ROUTE,
    exposition,
    keep_publishing_http_stats,
    route_stats,
    upstream_call_counter,
)
from jssdk_service.openapi import openapi_document
from jssdk_service.pageside import PageSide
from jssdk_service.pageurl import PageURL, host_allowed, parse_page_url, require_allowed
from jssdk_service.scheduler import UpstreamScheduler
from jssdk_service.share import ShareFields, check_link_domain, share_fields_from_mapping, share_payloads
from jssdk_service.signing import NonceSource, sign_url
from jssdk_service.tokens import JsapiTicket
from jssdk_service.wechat import CallObserver, RetryPolicy, WeChatClient

log = logging.getLogger("jssdk_service.web")

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
CACHE: web.AppKey[SharedCache] = web.AppKey("cache")
WECHAT = web.AppKey("wechat", WeChatClient)
STORE = web.AppKey("store", CredentialStore)
NONCES = web.AppKey("nonces", NonceSource)
ALL_DOMAINS: web.AppKey[tuple[str, ...]] = web.AppKey("all_domains")
# Called once per HTTP call to WeChat; fill before start-up (metrics, daily usage counting).
CALL_OBSERVERS: web.AppKey[list[CallObserver]] = web.AppKey("call_observers")
ACCOUNT = web.RequestKey("account", Account)


class Lifecycle:
    """Where the process is in its life: `draining` from the first SIGTERM on (see `server.py`)."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False

    def __repr__(self) -> str:
        return f"Lifecycle(draining={self.draining})"


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
# /readyz lists at most this many accounts unless asked for all (`?verbose=1`).
READYZ_LISTED = 100

# Each error class maps to one status and code; the most specific class in the MRO wins.
_STATUS: dict[type[JssdkError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request"),
    InvalidURL: (400, "invalid_url"),
    InvalidShare: (400, "invalid_share"),
    HostNotAllowed: (403, "host_not_allowed"),
    UnknownApp: (404, "unknown_app"),
    UpstreamRejected: (503, "upstream_rejected"),
    UpstreamUnavailable: (503, "upstream_unavailable"),
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_NO_STORE = {**_JSON, "Cache-Control": "no-store"}
_PREFLIGHT = {"Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "Content-Type",
              "Access-Control-Max-Age": "600"}  # fmt: skip


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    retry_policy: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    demo: bool = False,
) -> web.Application:
    """The aiohttp application serving `settings`; resources open and close with it.

    `demo` serves the sandbox's demo page at /demo (`serve --sandbox` only).
    """
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[NONCES] = NonceSource()
    app[ALL_DOMAINS] = tuple({d for a in settings.accounts for d in a.allowed_hosts})
    app[LIFECYCLE] = Lifecycle()
    scheduler = UpstreamScheduler(settings.upstream_concurrency)

    usage = UpstreamUsage(clock=clock)
    observers: list[CallObserver] = [usage.record, upstream_call_counter(settings.accounts)]
    app[CALL_OBSERVERS] = observers

    async def wechat_client(app: web.Application) -> AsyncIterator[None]:
        observers: list[CallObserver] = app[CALL_OBSERVERS]
        client = WeChatClient(settings.api_bases, policy=retry_policy, observers=observers, clock=clock,
                              scheduler=scheduler, transport=transport)  # fmt: skip
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
        rules = RefreshRules(
            clock=clock, lock_lease=settings.lock_lease, request_wait=settings.request_wait, usage=usage
        )
        store = CredentialStore(settings.accounts, app[WECHAT], app[CACHE], rules=rules)
        app[STORE] = store
        store.start()
        # Cache health and the fleet's news, for as long as the store runs.
        watcher = asyncio.get_running_loop().create_task(app[CACHE].watch(store.on_news))
        yield
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await store.stop()

    app.cleanup_ctx.extend([wechat_client, shared_cache, credential_store])
    directory = MULTIPROCESS_DIR
    if directory is not None:

        async def http_stats_publisher(app: web.Application) -> AsyncIterator[None]:
            # With workers, the other processes' /metrics read this one's numbers from a file.
            publisher = asyncio.get_running_loop().create_task(keep_publishing_http_stats(directory))
            yield
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

        app.cleanup_ctx.append(http_stats_publisher)
    admin = []
    if settings.admin_token is not None:
        admin = AdminAPI(settings.admin_token, settings=settings, store=lambda: app[STORE], cache=lambda: app[CACHE],
                         clock=clock).routes()  # fmt: skip
    install_routes(app, [
        ("GET", "/v1/signature", signature),
        ("POST", "/v1/signature", signature),
        ("OPTIONS", "/v1/signature", preflight),
        ("GET", "/v1/share", share),
        ("POST", "/v1/share", share),
        ("OPTIONS", "/v1/share", preflight),
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", metrics),
        ("GET", "/openapi.json", _document(openapi_document(admin=settings.admin_token is not None, demo=demo))),
        *PageSide(settings, store=lambda: app[STORE], clock=clock, demo=demo).routes(),
        *admin,
    ])  # fmt: skip
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install_routes(app: web.Application, routes: list[tuple[str, str, Handler]]) -> None:
    """Register every endpoint wrapped in `_endpoint`, then a catch-all that answers 404 and 405.

    Errors are rendered by a wrapper rather than a middleware: aiohttp runs two extra coroutine
    layers per request once any middleware exists, and that shows on /v1/signature's throughput.
    """
    access_log, lifecycle = app[SETTINGS].access_log, app[LIFECYCLE]
    methods: dict[str, set[str]] = {}
    for method, path, handler in routes:
        app.router.add_route(method, path, _endpoint(handler, path, lifecycle, access_log=access_log))
        methods.setdefault(path, set()).add(method)

    async def no_route(request: web.Request) -> web.StreamResponse:
        allowed = methods.get(request.path)
        if allowed is None:
            raise web.HTTPNotFound()
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))

    app.router.add_route("*", "/{path:.*}", _endpoint(no_route, UNMATCHED_ROUTE, lifecycle, access_log=access_log))


# -- handlers --------------------------------------------------------------------------------


async def signature(request: web.Request) -> web.Response:
    """`wx.config`'s object for the page URL."""
    app = request.app  # a property behind a property: read once on the hot path
    params = request.query if request.method == "GET" else await json_object(request)
    account, page = _resolve(request, app, params)
    ticket = await _ticket(app, account)
    return _json(_config(app, account, page, ticket), headers=_NO_STORE)


async def share(request: web.Request) -> web.Response:
    """`wx.config`'s object plus the two share payloads for the page."""
    app = request.app
    params = request.query if request.method == "GET" else await json_object(request)
    account, page = _resolve(request, app, params)
    override = _share_override(params.get("share"), account)
    shared_page = _shared_page(request, params.get("page"), account) or page
    payloads = share_payloads(shared_page, account.share, account.allowed_hosts, override)
    ticket = await _ticket(app, account)
    body = {"config": _config(app, account, page, ticket), **payloads}
    return _json(body, headers=_NO_STORE)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; credential lifetimes are read now, everything else is counted as it happens.

    Its cost grows with the accounts: it is built a chunk at a time, between other requests.
    """
    app = request.app
    store = app[STORE]
    accounts: list[AccountCredentials] = list(store)
    body = await exposition(accounts, app[WECHAT].scheduler, app[CLOCK]())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _document(document: dict[str, Any]) -> Handler:
    """A handler answering `document`, the OpenAPI description of this application's routes."""
    body = orjson.dumps(document)

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=_JSON)

    return openapi


async def readyz(request: web.Request) -> web.Response:
    """200 when every account has a usable ticket; 503 otherwise, and from the first SIGTERM on.

    The answer counts the accounts that are ready and lists those that are not (at most
    `READYZ_LISTED`; `?verbose=1` lists every account, ready or not).
    """
    app = request.app
    store = app[STORE]
    verbose = request.query.get("verbose", "0") not in ("0", "", "false")
    readiness = store.readiness(limit=len(store) if verbose else READYZ_LISTED)
    listed = list(store) if verbose else readiness.unready
    ready = readiness.ready == readiness.total
    draining = app[LIFECYCLE].draining
    scheduler = app[WECHAT].scheduler
    body: dict[str, Any] = {
        "status": "draining" if draining else "ready" if ready else "unready",
        "ready": readiness.ready,
        "total": readiness.total,
        "accounts": [_account_status(creds.status()) for creds in listed],
        "upstream": {
            "inFlight": scheduler.in_flight,
            "waiting": scheduler.waiting,
            "concurrency": scheduler.concurrency,
        },
    }
    if not verbose and readiness.total - readiness.ready > len(listed):
        body["accountsListed"] = f"{len(listed)} of {readiness.total - readiness.ready} not ready; ?verbose=1 for all"
    cache = body["cache"] = app[CACHE].health()
    if not cache["ok"]:
        body["degraded"] = "the shared cache is unavailable: serving from memory, refreshing without the fleet"
    return _json(body, status=200 if ready and not draining else 503)


def _account_status(s: AccountStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {"app": s.name, "appId": s.app_id, "ready": s.ready, "reason": s.reason,
                             "ticketExpiresIn": s.ticket_expires_in}  # fmt: skip
    optional = {"errcode": s.errcode, "fix": s.fix, "retryIn": s.retry_in}
    entry.update({key: value for key, value in optional.items() if value is not None})
    return entry


# -- the pieces ------------------------------------------------------------------------------


def _resolve(request: web.Request, app: web.Application, params: Mapping[str, Any]) -> tuple[Account, PageURL]:
    settings = app[SETTINGS]
    app_key = params.get("app")
    if app_key is not None and not isinstance(app_key, str):
        raise InvalidRequest("app must be a string")
    account = settings.account(app_key)
    if account is None:
        if app_key:
            raise UnknownApp(f"no account is configured as {app_key!r}")
        raise UnknownApp("several accounts are configured: name one with app=<appId or name>")
    request[ACCOUNT] = account
    url = params.get("url")
    if url is not None and not isinstance(url, str):
        raise InvalidURL("url must be a string")
    if url is not None and "\ufffd" in url and request.method == "GET":
        _require_utf8_query(request)
    page = parse_page_url(url)
    require_allowed(page.host, account.allowed_hosts)
    return account, page


async def _ticket(app: web.Application, account: Account) -> JsapiTicket:
    """The account's ticket: from memory on the hot path, else after the (single) refresh."""
    creds = app[STORE][account.app_id]
    return creds.usable_ticket(app[CLOCK]()) or await creds.ticket()


def _config(app: web.Application, account: Account, page: PageURL, ticket: JsapiTicket) -> dict[str, Any]:
    timestamp = int(app[CLOCK]())
    nonce = app[NONCES]()
    config: dict[str, Any] = {
        "appId": account.app_id,
        "timestamp": timestamp,
        "nonceStr": nonce,
        "signature": sign_url(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=page.raw),
        "jsApiList": account.js_api_list,
    }
    if account.open_tag_list:
        config["openTagList"] = account.open_tag_list
    return config


def _require_utf8_query(request: web.Request) -> None:
    """Refuse a query whose percent-escapes are not UTF-8: aiohttp decodes them to U+FFFD, and a page
    URL with a replacement character in it is not the URL the browser has, so it cannot be signed."""
    try:
        parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURL("url's percent-encoding is not valid UTF-8") from None


def _shared_page(request: web.Request, value: Any, account: Account) -> PageURL | None:
    """`page`: the page the card is for when it is not the signed `url` (iOS WeChat signs a
    single-page app's landing URL); its path picks the share rule and it is the default link."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidURL("page must be a string")
    if "\ufffd" in value and request.method == "GET":
        _require_utf8_query(request)
    page = parse_page_url(value)
    require_allowed(page.host, account.allowed_hosts, what="page")
    return page


def _share_override(value: Any, account: Account) -> ShareFields | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidShare("share must be an object with title, desc, imgUrl and link")
    fields = share_fields_from_mapping(value, where="share")
    check_link_domain(fields, account.allowed_hosts, where="share")
    return fields


def _json(body: Any, *, status: int = 200, headers: dict[str, str] = _JSON) -> web.Response:
    """A JSON response; `headers` must carry the Content-Type (`_JSON` or `_NO_STORE`)."""
    return web.Response(body=orjson.dumps(body), status=status, headers=headers)


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _status_of(exc: JssdkError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if issubclass(cls, JssdkError) and cls in _STATUS:
            return _STATUS[cls]
    return 500, "internal_error"


def _cors_headers(request: web.Request, domains: tuple[str, ...]) -> dict[str, str]:
    origin = request.headers.get("Origin", "")
    try:
        page = parse_page_url(origin)
    except InvalidURL:
        return {}
    if page.raw.rstrip("/") != origin.rstrip("/") or not host_allowed(page.host, domains):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _endpoint(handler: Handler, route: str, lifecycle: Lifecycle, *, access_log: bool) -> Handler:
    """`handler` with errors rendered as JSON, CORS headers for allowed origins, a request id, and metrics.

    While the process drains (after SIGTERM), every answer closes its connection: a client on a
    keep-alive connection gets its answer, then opens its next connection elsewhere.

    `route` is the registered path: the label of the request's metrics and its access log line.
    Every request passes here, /v1/signature's hot path included, so the request id is made in C
    and the request is counted into `RouteStats` in place, with names bound once (bench/README.md).
    """
    stats = route_stats(route)
    statuses, buckets = stats.statuses, stats.buckets
    clock, set_request_id = time.perf_counter, REQUEST_ID.set

    async def endpoint(request: web.Request) -> web.StreamResponse:
        started = clock()
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id is None or not usable_request_id(request_id):
            request_id = new_request_id()
        set_request_id(request_id)
        try:
            response = await handler(request)
        except Exception as exc:  # every failure becomes a JSON error, never a traceback
            response = _error_response(request, exc)
        if "Origin" in request.headers and request.path.startswith("/v1/"):
            _add_cors(request, response)
        response.headers[REQUEST_ID_HEADER] = request_id
        if lifecycle.draining:
            response.force_close()
        elapsed = clock() - started
        status = response.status
        statuses[status] = statuses.get(status, 0) + 1
        buckets[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        stats.seconds += elapsed
        if access_log:
            log_access(request, route, status, elapsed)
        return response

    return endpoint


def _error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, JssdkError):
        status, code = _status_of(exc)
        if status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.path, status, code, exc.message)
        headers = _NO_STORE
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            headers = {**_NO_STORE, "Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return _json(_error_body(code, exc.message), status=status, headers=headers)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = _json(_error_body(code, exc.reason), status=exc.status)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response
    if isinstance(exc, web.HTTPException):
        return exc
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return _json(_error_body("internal_error", "the service failed; see its log"), status=500)


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    account = request.get(ACCOUNT)
    domains = account.allowed_hosts if account else request.app[ALL_DOMAINS]
    cors = _cors_headers(request, domains)
    if cors and request.method == "OPTIONS":
        cors.update(_PREFLIGHT)
    response.headers.update(cors)
