"""Every error jssdk-service raises, in one tree.

    JssdkError
    ├── ConfigError                 a bad setting; stops the service at start-up, names the field
    ├── RequestError                the caller's fault (the web layer answers 4xx)
    │   ├── InvalidRequest          the body or a parameter is malformed
    │   ├── InvalidURL              the page URL cannot be signed
    │   ├── InvalidShare            a share override is malformed
    │   ├── Unauthorized            an admin request without the bearer token
    │   ├── HostNotAllowed          the URL's host is not a JS secure domain of the account
    │   ├── UnknownApp              no configured account has that name or appId
    │   ├── NotFound                no route has that path
    │   ├── MethodNotAllowed        the route has no such method (`allowed` lists those it has)
    │   ├── PayloadTooLarge         the body is over the limit
    │   ├── InvalidPush             a push to a platform's events URL we refuse: signature, age, replay, crypto
    │   ├── UnknownPlatform         no configured platform has that component_appid
    │   ├── Conflict                the request contradicts the configuration (an authorizer that is an account)
    │   └── RefreshLimited          WeChat's force_refresh limits; `retry_after` says when the next is allowed
    └── UpstreamError               WeChat did not give us a credential (the web layer answers 503)
        ├── UpstreamUnavailable     busy (-1), HTTP 5xx, timeout, connection failure, retries exhausted
        │   ├── RateLimited         45011: the minute quota; try again next minute
        │   │   └── HourlyLimited   WeCom's hourly ticket limits (45009 there), or our guard that keeps below them
        │   ├── TokenSourceFailed   an external token source failed: timeout, 5xx, bad answer, auth refused
    │   ├── PlatformUnavailable an authorizer waits on its platform's component token, which failed
        │   └── TokenSourceStale    an external token source keeps handing out a token WeChat refuses
        ├── UpstreamRejected        WeChat refuses the account's configuration (errcode kept)
        │   └── QuotaExhausted      45009: the daily quota is spent
        └── TokenInvalid            40001/40014/42001 on an API other than /token: the token died

Messages never carry an AppSecret or an access_token: the WeChat client scrubs both from whatever
WeChat says before it builds one of these.

`STATUS` gives each class its HTTP status and error code (the most specific class in the MRO
wins); the web layer renders every error a client sees from it, and the OpenAPI document lists
each operation's errors from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class JssdkError(Exception):
    """Base of every error raised on purpose by jssdk-service."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def headers(self) -> dict[str, str]:
        """The response headers this error adds to its answer (the names are in its `ErrorKind`)."""
        return {}


class ConfigError(JssdkError):
    """A setting is missing or wrong; `field` names it (e.g. `JSSDK_PORT`, `accounts[1].app_id`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RequestError(JssdkError):
    """The request cannot be served as asked; nothing upstream is involved."""


class InvalidRequest(RequestError):
    """The request body or a parameter is malformed."""


class InvalidURL(RequestError):
    """The page URL is missing, not absolute http(s), unparsable, too long or has control characters."""


class InvalidShare(RequestError):
    """A share field is malformed (e.g. a non-http(s) `imgUrl`)."""


class HostNotAllowed(RequestError):
    """A host is not one of the account's JS secure domains."""


class UnknownApp(RequestError):
    """`app` names no configured account, or is missing while several are configured."""


class Unauthorized(RequestError):
    """An admin request without `Authorization: Bearer <admin token>`."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="jssdk-service admin"'}


class NotFound(RequestError):
    """No route has that path."""


class MethodNotAllowed(RequestError):
    """The path exists, the method does not; `allowed` are the methods it has."""

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ",".join(self.allowed)}


class PayloadTooLarge(RequestError):
    """The body is larger than the service reads."""


class InvalidPush(RequestError):
    """A push to a platform's events URL that is refused: its signature, its age, a replayed nonce, or a
    message that does not open with the platform's keys. Nothing of it is stored."""


class UnknownPlatform(RequestError):
    """No configured platform has that component_appid."""


class Conflict(RequestError):
    """The request contradicts the configuration: an authorizer whose appId is a configured account's."""


class RefreshLimited(RequestError):
    """A forced refresh upstream would refuse (WeChat's force_refresh limits, WeCom's hourly ticket limits):
    asking is skipped."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": _seconds(self.retry_after)}


class UpstreamError(JssdkError):
    """WeChat did not hand out a credential; `app_id` and `api` say which account and call.

    `retry_after` is the number of seconds after which asking again may succeed, when known: the
    web layer sends it as `Retry-After`.
    """

    def __init__(self, message: str, *, app_id: str = "", api: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.app_id = app_id
        self.api = api
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": _seconds(self.retry_after)}


class UpstreamUnavailable(UpstreamError):
    """WeChat could not be reached or kept failing; worth retrying later."""


class RateLimited(UpstreamUnavailable):
    """45011: the per-minute quota is spent; calls resume in the next minute."""


class HourlyLimited(RateLimited):
    """WeCom's hourly ticket limits (400 a corp, 100 an app): spent, or about to be (`retry_after` says when)."""


class TokenSourceFailed(UpstreamUnavailable):
    """The server that owns an external account's token did not hand one out; the message says how."""

    def __init__(self, message: str, *, app_id: str = "", fix: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, app_id=app_id, api="token_source", retry_after=retry_after)
        self.fix = fix


class PlatformUnavailable(UpstreamUnavailable):
    """An authorizer cannot refresh because its platform's component_access_token failed: the platform's
    error (`errcode`, `fix`) is repeated for it, and it retries soon, as the platform recovers."""

    def __init__(self, message: str, *, app_id: str, errcode: int | None, fix: str) -> None:
        super().__init__(message, app_id=app_id, api="api_component_token")
        self.errcode = errcode
        self.fix = fix


class TokenSourceStale(UpstreamUnavailable):
    """An external token source still hands out the access_token WeChat refused (`errcode`)."""

    def __init__(self, message: str, *, errcode: int, app_id: str = "", fix: str = "") -> None:
        super().__init__(message, app_id=app_id, api="token_source")
        self.errcode = errcode
        self.fix = fix


class UpstreamRejected(UpstreamError):
    """WeChat refused the request for a reason retrying will not fix (a configuration error)."""

    def __init__(self, errcode: int, errmsg: str, *, app_id: str = "", api: str = "", fix: str = "") -> None:
        super().__init__(f"WeChat errcode {errcode}: {errmsg}", app_id=app_id, api=api)
        self.errcode = errcode
        self.errmsg = errmsg
        self.fix = fix


class QuotaExhausted(UpstreamRejected):
    """45009: the account's daily quota for this API is spent."""


class TokenInvalid(UpstreamError):
    """The access_token was refused (40001, 40014, 42001): fetch a new one and retry once."""

    def __init__(self, errcode: int, errmsg: str, *, app_id: str = "", api: str = "") -> None:
        super().__init__(f"WeChat errcode {errcode}: {errmsg}", app_id=app_id, api=api)
        self.errcode = errcode
        self.errmsg = errmsg


def failure_class(exc: UpstreamError) -> str:
    """What kind of trouble a failed refresh is, for alerts: "configuration" (WeChat refuses the setup: a
    person must fix it), "quota" (a quota or limit is spent), "source" (an external token source fails),
    "platform" (a third-party platform's own token fails: see the platform), "upstream" (WeChat fails or
    cannot be reached: it passes)."""
    if isinstance(exc, QuotaExhausted | RateLimited):
        return "quota"
    if isinstance(exc, UpstreamRejected):
        return "configuration"
    if isinstance(exc, TokenSourceFailed | TokenSourceStale):
        return "source"
    if isinstance(exc, PlatformUnavailable):
        return "platform"
    return "upstream"


def _seconds(value: float) -> str:
    """A `Retry-After` value: whole seconds, at least one."""
    return str(max(1, math.ceil(value)))


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How the web layer answers an error class: a status, a stable code, and the headers it may set."""

    status: int
    code: str
    headers: tuple[str, ...] = ()


STATUS: dict[type[JssdkError], ErrorKind] = {
    InvalidRequest: ErrorKind(400, "invalid_request"),
    InvalidURL: ErrorKind(400, "invalid_url"),
    InvalidShare: ErrorKind(400, "invalid_share"),
    Unauthorized: ErrorKind(401, "unauthorized", ("WWW-Authenticate",)),
    HostNotAllowed: ErrorKind(403, "host_not_allowed"),
    UnknownApp: ErrorKind(404, "unknown_app"),
    NotFound: ErrorKind(404, "not_found"),
    MethodNotAllowed: ErrorKind(405, "method_not_allowed", ("Allow",)),
    PayloadTooLarge: ErrorKind(413, "payload_too_large"),
    InvalidPush: ErrorKind(400, "invalid_push"),
    UnknownPlatform: ErrorKind(404, "unknown_platform"),
    Conflict: ErrorKind(409, "conflict"),
    RefreshLimited: ErrorKind(429, "refresh_limited", ("Retry-After",)),
    UpstreamRejected: ErrorKind(503, "upstream_rejected", ("Retry-After",)),
    UpstreamUnavailable: ErrorKind(503, "upstream_unavailable", ("Retry-After",)),
}
INTERNAL = ErrorKind(500, "internal_error")


def kind_of(exc: JssdkError) -> ErrorKind:
    """The status and code `exc` is answered with: its most specific class in `STATUS`."""
    for cls in type(exc).__mro__:
        kind = STATUS.get(cls)
        if kind is not None:
            return kind
    return INTERNAL
