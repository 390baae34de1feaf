"""The route table: every endpoint of the service, for the router and for the OpenAPI document alike."""

from __future__ import annotations

from msgspec import Struct

from jssdk_service import admin, callbacks, demo, pageside, public, shapes
from jssdk_service.endpoint import Answer, Handler, Route
from jssdk_service.errors import (
    Conflict,
    HostNotAllowed,
    InvalidPush,
    InvalidRequest,
    InvalidShare,
    InvalidURL,
    JssdkError,
    NotFound,
    PayloadTooLarge,
    RefreshLimited,
    Unauthorized,
    UnknownApp,
    UnknownPlatform,
    UpstreamRejected,
    UpstreamUnavailable,
)

_UPSTREAM: tuple[type[JssdkError], ...] = (UpstreamUnavailable, UpstreamRejected)
_SIGNING: tuple[type[JssdkError], ...] = (InvalidURL, HostNotAllowed, UnknownApp, *_UPSTREAM)
_BODY: tuple[type[JssdkError], ...] = (InvalidRequest, PayloadTooLarge)
_CONFIG = (Answer(status=200, description="The wx.config object", shape=shapes.Config),)
_AGENT = (Answer(status=200, description="The wx.agentConfig object", shape=shapes.AgentConfig),)
_SHARE = (Answer(status=200, description="The wx.config object and the share payloads", shape=shapes.Share),)
_FINDINGS = (Answer(status=200, description="The findings, the worst first", shape=shapes.Findings),)
_CACHED = ("ETag", "Cache-Control")


def _asset(path: str, handler: Handler, summary: str, media: str, query: type[Struct] | None = None) -> Route:
    """A static file with an ETag: 200 with it, or 304 when If-None-Match names its current version."""
    return Route(method="GET", path=path, handler=handler, summary=summary, answers=(
        Answer(status=200, description=summary, media=media, headers=_CACHED),
        Answer(status=304, description="The browser's copy is current", headers=_CACHED),
    ), query=query)  # fmt: skip


PUBLIC = [
    Route(method="GET", path="/v1/signature", handler=public.signature, summary="wx.config object for a page",
          query=shapes.SignatureQuery, answers=_CONFIG, errors=_SIGNING),
    Route(method="POST", path="/v1/signature", handler=public.signature, summary="wx.config object (JSON body)",
          body=shapes.SignatureRequest, answers=_CONFIG, errors=(*_SIGNING, *_BODY)),
    Route(method="GET", path="/v1/agent-signature", handler=public.agent_signature,
          summary="A WeCom app's wx.agentConfig object for a page", query=shapes.SignatureQuery, answers=_AGENT,
          errors=_SIGNING),
    Route(method="POST", path="/v1/agent-signature", handler=public.agent_signature,
          summary="A WeCom app's wx.agentConfig object (JSON body)", body=shapes.SignatureRequest, answers=_AGENT,
          errors=(*_SIGNING, *_BODY)),
    Route(method="GET", path="/v1/share", handler=public.share, summary="wx.config object and the two share payloads",
          query=shapes.ShareQuery, answers=_SHARE, errors=(*_SIGNING, InvalidShare)),
    Route(method="POST", path="/v1/share", handler=public.share, summary="wx.config and share payloads (JSON body)",
          body=shapes.ShareRequest, answers=_SHARE, errors=(*_SIGNING, *_BODY, InvalidShare)),
    Route(method="GET", path="/healthz", handler=public.healthz, summary="200 while the process runs",
          answers=(Answer(status=200, description="Alive", shape=shapes.Health),)),
    Route(method="GET", path="/readyz", handler=public.readyz, summary="Whether every account has a valid ticket",
          query=shapes.ReadinessQuery, errors=(InvalidRequest,), answers=(
              Answer(status=200, description="Every account can sign", shape=shapes.Readiness),
              Answer(status=503, description="Some account cannot sign (each listed says why), or the service is "
                     "stopping", shape=shapes.Readiness),
          )),
    Route(method="GET", path="/metrics", handler=public.metrics, summary="Prometheus metrics (text format)",
          answers=(Answer(status=200, description="The metrics of every process of the service", media="text/plain"),)),
    Route(method="GET", path="/openapi.json", handler=public.openapi, summary="This document",
          answers=(Answer(status=200, description="The OpenAPI document"),)),
    _asset("/v1/jssdk-share.js", pageside.script, "The page helper script", "text/javascript", shapes.AssetQuery),
    Route(method="POST", path="/v1/doctor", handler=pageside.doctor, summary="Why WeChat refused a wx.config",
          body=shapes.Evidence, answers=_FINDINGS, errors=(InvalidURL, *_BODY)),
    Route(method="POST", path="/v1/platform/{component_appid}/events", handler=callbacks.platform_events,
          summary="WeChat's pushes to a third-party platform (its 授权事件接收URL)",
          description="The component_verify_ticket every 10 minutes, and the authorization events, encrypted with "
          "the platform's EncodingAESKey (an XML body). Refused, with nothing stored, when the signature does not "
          "check out, the message does not open, the timestamp is more than 5 minutes off or the nonce was seen.",
          query=shapes.PushQuery, answers=(Answer(status=200, description="The push was taken", media="text/plain"),),
          errors=(InvalidPush, UnknownPlatform, PayloadTooLarge, *_UPSTREAM), pages=False),
    Route(method="POST", path="/v1/report", handler=pageside.report,
          summary="A page's wx.config failure: kept, counted, diagnosed", body=shapes.Report, answers=_FINDINGS,
          errors=(InvalidURL, *_BODY)),
]  # fmt: skip

DEMO = [
    _asset("/demo", demo.page, "The sandbox's demo page", "text/html"),
    _asset("/demo/sandbox-wx.js", demo.stand_in, "The demo page's stand-ins for jweixin", "text/javascript"),
    Route(method="POST", path="/demo/verify", handler=demo.verify_config, body=demo.ConfigCheck,
          summary="A wx.config checked by the sandbox as the WeChat or WeCom client checks it",
          answers=(Answer(status=200, description="What the client reports", shape=demo.Verdict),),
          errors=(*_BODY, UpstreamUnavailable)),
    Route(method="POST", path="/demo/verify-agent", handler=demo.verify_agent_config, body=demo.AgentConfigCheck,
          summary="A WeCom wx.agentConfig checked by the sandbox as the WeCom client checks it",
          answers=(Answer(status=200, description="What the client reports", shape=demo.Verdict),),
          errors=(*_BODY, UpstreamUnavailable)),
]  # fmt: skip

# Mounted at ADMIN_PREFIX as a sub-application; the paths are the full ones.
ADMIN_PREFIX = "/admin"
ADMIN = [
    Route(method="GET", path="/admin/apps", handler=admin.authorized(admin.apps), bearer=True,
          summary="Every account's credentials: ages and seconds left, last refresh and error, calls today",
          answers=(Answer(status=200, description="Each account's state; never a credential value",
                          shape=shapes.AdminApps),),
          errors=(Unauthorized,)),
    Route(method="POST", path="/admin/apps/{app}/refresh", handler=admin.authorized(admin.refresh), bearer=True,
          summary="A new jsapi_ticket now (with token=1, a new access_token first)",
          description="A forced stable token uses WeChat's force_refresh: 20 a day, 30 s apart, kept by the "
          "service (429 past either, without calling WeChat); so are WeCom's hourly ticket limits.",
          query=shapes.RefreshQuery,
          answers=(Answer(status=200, description="The new ticket's fingerprint and lifetime",
                          shape=shapes.AdminRefresh),),
          errors=(InvalidRequest, Unauthorized, UnknownApp, NotFound, RefreshLimited, *_UPSTREAM)),
    Route(method="POST", path="/admin/apps/{app}/callback-check", handler=admin.authorized(admin.callback_check),
          bearer=True, summary="WeChat's network check of the account's callback URL (callback/check)",
          body=shapes.CallbackCheckRequest,
          answers=(Answer(status=200, description="What WeChat resolved and pinged", shape=shapes.CallbackCheck),),
          errors=(*_BODY, Unauthorized, UnknownApp, *_UPSTREAM)),
    Route(method="GET", path="/admin/platforms/{component_appid}/authorizers",
          handler=admin.authorized(admin.authorizers), bearer=True, query=shapes.AuthorizersQuery,
          summary="A page of a platform's authorizers and their credentials",
          answers=(Answer(status=200, description="The page; nextCursor 0 on the last",
                          shape=shapes.AdminAuthorizers),),
          errors=(InvalidRequest, Unauthorized, UnknownPlatform, UpstreamUnavailable)),
    Route(method="POST", path="/admin/platforms/{component_appid}/authorizers",
          handler=admin.authorized(admin.add_authorizer), bearer=True, body=shapes.NewAuthorizer,
          summary="Add an authorizer with its refresh token (kept only if WeChat takes it)",
          answers=(Answer(status=201, description="The authorizer, signing from now on",
                          shape=shapes.AdminAuthorizer),),
          errors=(*_BODY, Unauthorized, UnknownPlatform, Conflict, *_UPSTREAM)),
    Route(method="DELETE", path="/admin/platforms/{component_appid}/authorizers/{appid}",
          handler=admin.authorized(admin.remove_authorizer), bearer=True,
          summary="Stop signing for an authorizer and forget its refresh token",
          answers=(Answer(status=204, description="Removed, fleet-wide"),),
          errors=(Unauthorized, UnknownPlatform, UnknownApp)),
    Route(method="GET", path="/admin/apps/{app}/quota", handler=admin.authorized(admin.quota), bearer=True,
          summary="WeChat's own quota of the account's token and ticket APIs (openapi/quota/get), asked now",
          description="WeChat's daily limit, used and remaining calls count every caller of the account, not only "
          "this service, whose own count today is beside them. The answer is kept 10 minutes for /admin/apps. "
          "WeCom has no quota API (400).",
          answers=(Answer(status=200, description="WeChat's figures and the service's count; never a credential",
                          shape=shapes.AdminQuota),),
          errors=(InvalidRequest, Unauthorized, UnknownApp, *_UPSTREAM)),
    Route(method="POST", path="/admin/apps/{app}/clear-quota", handler=admin.authorized(admin.clear_quota),
          bearer=True, summary="Reset WeChat's daily quotas of the account (clear_quota/v2)",
          description="One of the 10 resets WeChat allows an account a month, so the body must name the account "
          "exactly as the path does (400 without it, 409 naming something else; WeChat is not called then). A "
          "platform's authorizer is reset with the platform's secret (component/clear_quota/v2); an account whose "
          "token another server owns, and a WeCom app (WeCom has no reset), cannot be (400). Past the month's "
          "resets WeChat answers 48006 (503 upstream_rejected).",
          body=shapes.ClearQuotaRequest,
          answers=(Answer(status=200, description="Reset, and the resets this service made this month",
                          shape=shapes.QuotaCleared),),
          errors=(*_BODY, Unauthorized, UnknownApp, Conflict, *_UPSTREAM)),
]  # fmt: skip
