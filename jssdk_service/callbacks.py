"""WeChat's pushes to a third-party platform: `POST /v1/platform/{component_appid}/events`.

This is the platform's 授权事件接收URL. WeChat pushes the component_verify_ticket every 10 minutes
and the authorization events, each encrypted with the platform's EncodingAESKey (`msgcrypt.py`);
the answer is the plain word `success`. A push is refused with 400 `invalid_push`, and nothing of
it is stored, when its signature does not check out, it does not open with the platform's keys
(the current EncodingAESKey or the previous one), it names another platform, its timestamp is
more than `component.PUSH_WINDOW` seconds from our clock, or its nonce was seen before; a body
over `MAX_PUSH` bytes is 413. The log says why, never with a key, a ticket or a token.

What a push carries goes to `component.py`: the ticket is kept for the fleet; `authorized` and
`updateauthorized` exchange their code at once (`api_query_auth`) and the authorizer is added;
`unauthorized` removes it. When the exchange fails upstream the answer is 503, so WeChat pushes
again; but a code WeChat calls invalid, used or expired (61009, 61010) is answered `success`, with
an error in the log: the same code would fail again, the account has to authorize again.
"""

from __future__ import annotations

import logging

from aiohttp import web

from jssdk_service.clientip import client_ip
from jssdk_service.component import ComponentCredentials, Platforms
from jssdk_service.errors import InvalidPush, PayloadTooLarge, UpstreamError, UpstreamRejected
from jssdk_service.keys import PLATFORMS, PUSH_GUARD, STORE
from jssdk_service.msgcrypt import MessageRejected

log = logging.getLogger("jssdk_service.callbacks")

# WeChat's pushes are well under a kilobyte; anything much larger is not one of them.
MAX_PUSH = 16 * 1024
_AUTHORIZED = ("authorized", "updateauthorized")
# An authorization code that is not valid or was used (61009), or expired (61010): never good again.
SPENT_CODE = frozenset({61009, 61010})


async def platform_events(request: web.Request) -> web.Response:
    """A push from WeChat to a platform: checked, opened, ingested; `success`."""
    component_appid = request.match_info["component_appid"]
    platforms = request.app[PLATFORMS]
    component = platforms.named(component_appid)
    query = request.query
    timestamp, nonce, signature = (query.get(name, "") for name in ("timestamp", "nonce", "msg_signature"))
    if query.get("encrypt_type") != "aes" or not (timestamp and nonce and signature):
        raise _refused(request, component_appid, "not an encrypted push",
                       "a push needs timestamp, nonce, msg_signature and encrypt_type=aes: set the platform's "
                       "message mode to safe mode (安全模式)")  # fmt: skip
    if request.content_length is not None and request.content_length > MAX_PUSH:
        raise PayloadTooLarge(f"a push is at most {MAX_PUSH} bytes")
    body = await request.read()  # all of it, however many pieces it came in (the app's own limit bounds it)
    if len(body) > MAX_PUSH:
        raise PayloadTooLarge(f"a push is at most {MAX_PUSH} bytes")
    try:
        fields = component.crypt.open_push(body, timestamp=timestamp, nonce=nonce, msg_signature=signature)
    except MessageRejected as exc:
        raise _refused(request, component_appid, exc.reason, str(exc)) from None
    guard = request.app[PUSH_GUARD]
    if fields.get("AppId", component_appid) != component_appid:
        raise _refused(request, component_appid, "wrong_platform", "the push is for another platform")
    if not guard.in_window(timestamp):
        raise _refused(request, component_appid, "stale",
                       "the push's timestamp is over 5 minutes from our clock (check both clocks)")  # fmt: skip
    if not await guard.first_time(component_appid, timestamp, nonce):
        raise _refused(request, component_appid, "replayed", "this push was received before (its nonce is used)")
    try:
        await _take(platforms, component, fields)
    except UpstreamRejected as exc:
        if exc.errcode not in SPENT_CODE:
            await guard.forget(component_appid, timestamp, nonce)
            raise
        # The same code would be refused again: a push repeated is no use.
        named = fields.get("AuthorizerAppid", "")
        if named and request.app[STORE].authorizer(named) is not None:  # WeChat pushed it again: we took it once
            log.info("platform=%s %s push for %s: its code was used already, and the authorizer is held",
                     component_appid, fields.get("InfoType", ""), named)  # fmt: skip
        else:  # the account must authorize again
            log.error("platform=%s %s push: %s (%s)", component_appid, fields.get("InfoType", ""), exc.message,
                      exc.fix)  # fmt: skip
    except UpstreamError:
        await guard.forget(component_appid, timestamp, nonce)  # WeChat may push it again as it was
        raise
    return web.Response(text="success")


async def _take(platforms: Platforms, component: ComponentCredentials, fields: dict[str, str]) -> None:
    """What a push carries, taken: the ticket kept, an authorizer added or removed."""
    component_appid = component.platform.component_appid
    info = fields.get("InfoType", "")
    if info == "component_verify_ticket":
        ticket = fields.get("ComponentVerifyTicket", "")
        if not ticket:
            raise InvalidPush("the push carries no ComponentVerifyTicket")
        await component.keep_verify_ticket(ticket)
        log.info("platform=%s component_verify_ticket received", component_appid)
    elif info in _AUTHORIZED:
        code, named = fields.get("AuthorizationCode", ""), fields.get("AuthorizerAppid", "")
        if not code:
            raise InvalidPush(f"the {info} push carries no AuthorizationCode")
        app_id, refresh_token, token = await component.exchange_code(code)
        if named and named != app_id:
            log.warning("platform=%s %s push named %s, its code granted %s", component_appid, info, named, app_id)
        if await platforms.add(component, app_id, refresh_token, via=info, token=token) is None:
            log.warning("platform=%s authorizer %s is a configured account: its configuration is used",
                        component_appid, app_id)  # fmt: skip
    elif info == "unauthorized":
        app_id = fields.get("AuthorizerAppid", "")
        if app_id:
            await platforms.remove(component, app_id, via="unauthorized")
    else:
        log.info("platform=%s push %r not used; answered success", component_appid, info[:40])


def _refused(request: web.Request, component_appid: str, reason: str, message: str) -> InvalidPush:
    log.warning("platform=%s refused a push from %s: %s (%s)", component_appid, client_ip(request), message, reason)
    return InvalidPush(message)
