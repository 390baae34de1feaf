"""The public handlers: signatures and share cards for pages, and the probes an operator scrapes.

    GET|POST /v1/signature    `wx.config`'s object for the page URL
    GET|POST /v1/agent-signature  a WeCom app's `wx.agentConfig` object for the page URL
    GET|POST /v1/share        the same, and the payloads of the share APIs for the page
    GET      /healthz         200 while the process runs
    GET      /readyz          200 when every account may sign; 503 otherwise, and while draining
    GET      /metrics         Prometheus text format
    GET      /openapi.json    the document of this application's routes

A GET reads its query by hand (the hot path); a POST body is decoded by its shape.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import msgspec
from aiohttp import web

from jssdk_service.config import Account
from jssdk_service.credentials import AccountStatus
from jssdk_service.endpoint import JSON_HEADERS, flag, json_response
from jssdk_service.errors import InvalidShare, InvalidURL, UnknownApp
from jssdk_service.keys import (
    ACCOUNT,
    CACHE,
    CLOCK,
    DOCUMENT,
    LIFECYCLE,
    NONCES,
    PLATFORMS,
    STORE,
    WECHAT,
    find_account,
)
from jssdk_service.metrics import CONTENT_TYPE, exposition
from jssdk_service.pageurl import PageURL, parse_page_url, require_allowed
from jssdk_service.shapes import (
    AccountReadiness,
    AgentConfig,
    AppMessage,
    CacheHealth,
    Config,
    Health,
    Readiness,
    Share,
    ShareOverride,
    ShareRequest,
    SignatureRequest,
    Timeline,
    UpstreamSlots,
    decode_body,
)
from jssdk_service.share import ShareFields, check_link_domain, share_fields, share_payloads
from jssdk_service.signing import sign_url
from jssdk_service.tokens import JsapiTicket

# /readyz lists at most this many accounts unless asked for all (`?verbose=1`).
READYZ_LISTED = 100
_HEALTHY = Health(status="ok")


async def signature(request: web.Request) -> web.Response:
    """`wx.config`'s object for the page URL."""
    app = request.app  # a property behind a property: read once on the hot path
    account, page = await _signing_request(request, app)
    ticket = await _ticket(app, account)
    return json_response(signed_config(account, page, ticket, now=app[CLOCK](), nonce=app[NONCES]()))


async def agent_signature(request: web.Request) -> web.Response:
    """A WeCom app's `wx.agentConfig` object for the page URL (404 for any other account)."""
    app = request.app
    account, page = await _signing_request(request, app)
    if not account.wecom:
        raise UnknownApp(f"{account.name!r} is not a WeCom app: wx.agentConfig is WeCom's; use /v1/signature")
    ticket = await _agent_ticket(app, account)
    return json_response(signed_agent_config(account, page, ticket, now=app[CLOCK](), nonce=app[NONCES]()))


async def share(request: web.Request) -> web.Response:
    """`wx.config`'s object plus the share payloads for the page (and `wx.agentConfig`'s for WeCom)."""
    app = request.app
    if request.method == "GET":
        query = request.query
        if "share" in query:
            raise InvalidShare("share must be an object with title, desc, imgUrl and link: send it in a POST body")
        body = ShareRequest(url=query.get("url", ""), app=query.get("app"), page=query.get("page"))
    else:
        body = decode_body(await request.read(), ShareRequest)
    account, page = _resolve(request, app, body.app, body.url)
    override = None if body.share is None else _share_override(body.share, account)
    shared_page = page if body.page is None else _shared_page(request, body.page, account)
    payloads = share_payloads(shared_page, account.share, account.allowed_hosts, override)
    ticket = await _ticket(app, account)
    now = app[CLOCK]()
    app_message = msgspec.convert(payloads["appMessage"], AppMessage)
    agent_config = None
    if account.wecom:
        agent_config = signed_agent_config(account, page, await _agent_ticket(app, account), now=now,
                                           nonce=app[NONCES]())  # fmt: skip
    answer = Share(
        config=signed_config(account, page, ticket, now=now, nonce=app[NONCES]()),
        agent_config=agent_config,
        app_message=app_message,
        wechat=app_message if account.wecom else None,
        timeline=msgspec.convert(payloads["timeline"], Timeline),
    )
    return json_response(answer)


async def healthz(request: web.Request) -> web.Response:
    return json_response(_HEALTHY, headers=JSON_HEADERS)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; credential lifetimes are read now, everything else is counted as it happens.

    Its cost grows with the accounts: it is built a chunk at a time, between other requests.
    """
    app = request.app
    store = app[STORE]
    now = app[CLOCK]()
    platforms = app[PLATFORMS]
    samples = [(c.platform.name, platforms.authorizer_count(c.platform.component_appid), c.token_ttl(now))
               for c in platforms]  # fmt: skip
    body = await exposition(list(store), app[WECHAT].scheduler, now, samples, cache_up=bool(app[CACHE].health()["ok"]))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this application's routes."""
    return web.Response(body=request.app[DOCUMENT], headers=JSON_HEADERS)


async def readyz(request: web.Request) -> web.Response:
    """200 when every account has a usable ticket; 503 otherwise, and from the first SIGTERM on.

    The answer counts the accounts that are ready and lists those that are not (at most
    `READYZ_LISTED`; `?verbose=1` lists every account, ready or not).
    """
    app = request.app
    store = app[STORE]
    verbose = flag(request.query.get("verbose", "0"), "verbose")
    readiness = store.readiness(limit=len(store) if verbose else READYZ_LISTED)
    listed = list(store) if verbose else readiness.unready
    ready = readiness.ready == readiness.total
    draining = app[LIFECYCLE].draining
    scheduler = app[WECHAT].scheduler
    cache = msgspec.convert(app[CACHE].health(), CacheHealth)
    unlisted = readiness.total - readiness.ready - len(listed)
    answer = Readiness(
        status="draining" if draining else "ready" if ready else "unready",
        ready=readiness.ready,
        total=readiness.total,
        accounts=[_account_readiness(creds.status()) for creds in listed],
        upstream=UpstreamSlots(
            in_flight=scheduler.in_flight, waiting=scheduler.waiting, concurrency=scheduler.concurrency
        ),
        cache=cache,
        accounts_listed=(
            f"{len(listed)} of {len(listed) + unlisted} not ready; ?verbose=1 for all"
            if not verbose and unlisted > 0
            else None
        ),
        degraded=(
            None if cache.ok else "the shared cache is unavailable: serving from memory, refreshing without the fleet"
        ),
    )
    return json_response(answer, status=200 if ready and not draining else 503, headers=JSON_HEADERS)


def _account_readiness(s: AccountStatus) -> AccountReadiness:
    return AccountReadiness(app=s.name, app_id=s.app_id, ready=s.ready, reason=s.reason,
                            ticket_expires_in=s.ticket_expires_in, errcode=s.errcode, fix=s.fix,
                            retry_in=s.retry_in)  # fmt: skip


# -- the pieces ------------------------------------------------------------------------------


async def _signing_request(request: web.Request, app: web.Application) -> tuple[Account, PageURL]:
    """The account and page a signature request names, from its query (GET) or its JSON body."""
    if request.method == "GET":
        query = request.query
        return _resolve(request, app, query.get("app"), query.get("url"))
    body = decode_body(await request.read(), SignatureRequest)
    return _resolve(request, app, body.app, body.url)


def _resolve(
    request: web.Request, app: web.Application, app_key: str | None, url: str | None
) -> tuple[Account, PageURL]:
    """The account `app_key` names and the page `url` it is asked to sign, checked against its domains
    (their types are the query's, or checked by the body's shape)."""
    account = find_account(app, app_key)
    if account is None:
        if app_key:
            raise UnknownApp(f"no account is configured as {app_key!r}")
        raise UnknownApp("several accounts are configured: name one with app=<appId or name>")
    request[ACCOUNT] = account
    if url is not None and "\ufffd" in url and request.method == "GET":
        _require_utf8_query(request)
    page = parse_page_url(url)
    require_allowed(page.host, account.allowed_hosts)
    return account, page


async def _ticket(app: web.Application, account: Account) -> JsapiTicket:
    """The account's ticket: from memory on the hot path, else after the (single) refresh."""
    creds = app[STORE][account.key]
    return creds.usable_ticket(app[CLOCK]()) or await creds.ticket()


async def _agent_ticket(app: web.Application, account: Account) -> JsapiTicket:
    """A WeCom app's agent ticket, as `_ticket` gives its corp ticket."""
    creds = app[STORE][account.key]
    return creds.usable_agent_ticket(app[CLOCK]()) or await creds.agent_ticket()


def signed_config(account: Account, page: PageURL, ticket: JsapiTicket, *, now: float, nonce: str) -> Config:
    """`wx.config`'s object for `page`, signed at `now` with `ticket` and `nonce` (the fast lane's too)."""
    timestamp = int(now)
    return Config(
        app_id=account.app_id,
        timestamp=timestamp,
        nonce_str=nonce,
        signature=sign_url(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=page.raw),
        js_api_list=account.js_api_list,
        open_tag_list=account.open_tag_list,
        beta=True if account.wecom else None,
    )


def signed_agent_config(account: Account, page: PageURL, ticket: JsapiTicket, *, now: float, nonce: str) -> AgentConfig:
    """A WeCom app's `wx.agentConfig` object for `page`, signed at `now` with its agent `ticket`."""
    assert account.agent_id is not None  # a WeCom app's, always
    timestamp = int(now)
    return AgentConfig(
        corpid=account.app_id,
        agentid=account.agent_id,
        timestamp=timestamp,
        nonce_str=nonce,
        signature=sign_url(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=page.raw),
        js_api_list=account.js_api_list,
    )


def _require_utf8_query(request: web.Request) -> None:
    """Refuse a query whose percent-escapes are not UTF-8: aiohttp decodes them to U+FFFD, and a page
    URL with a replacement character in it is not the URL the browser has, so it cannot be signed."""
    try:
        parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURL("url's percent-encoding is not valid UTF-8") from None


def _shared_page(request: web.Request, value: str, account: Account) -> PageURL:
    """`page`: the page the card is for when it is not the signed `url` (iOS WeChat signs a
    single-page app's landing URL); its path picks the share rule and it is the default link."""
    if "\ufffd" in value and request.method == "GET":
        _require_utf8_query(request)
    page = parse_page_url(value)
    require_allowed(page.host, account.allowed_hosts, what="page")
    return page


def _share_override(value: ShareOverride, account: Account) -> ShareFields:
    fields = share_fields(title=value.title, desc=value.desc, link=value.link, img_url=value.img_url, where="share")
    check_link_domain(fields, account.allowed_hosts, where="share")
    return fields
