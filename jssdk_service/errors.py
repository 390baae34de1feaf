"""Every error jssdk-service raises, in one tree.

    JssdkError
    ├── ConfigError                 a bad setting; stops the service at start-up, names the field
    ├── RequestError                the caller's fault (the web layer answers 4xx)
    │   ├── InvalidRequest          the body or a parameter is malformed
    │   ├── InvalidURL              the page URL cannot be signed
    │   ├── InvalidShare            a share override is malformed
    │   ├── HostNotAllowed          the URL's host is not a JS secure domain of the account
    │   └── UnknownApp              no configured account has that name or appId
    └── UpstreamError               WeChat did not give us a credential (the web layer answers 503)
        ├── UpstreamUnavailable     busy (-1), HTTP 5xx, timeout, connection failure, retries exhausted
        │   └── RateLimited         45011: the minute quota; try again next minute
        ├── UpstreamRejected        WeChat refuses the account's configuration (errcode kept)
        │   └── QuotaExhausted      45009: the daily quota is spent
        └── TokenInvalid            40001/40014/42001 on an API other than /token: the token died

Messages never carry an AppSecret or an access_token: the WeChat client scrubs both from whatever
WeChat says before it builds one of these.
"""

from __future__ import annotations


class JssdkError(Exception):
    """Base of every error raised on purpose by jssdk-service."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


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


class UpstreamUnavailable(UpstreamError):
    """WeChat could not be reached or kept failing; worth retrying later."""


class RateLimited(UpstreamUnavailable):
    """45011: the per-minute quota is spent; calls resume in the next minute."""


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
