"""Every shape the HTTP API reads or writes, declared once: msgspec Structs.

Request bodies are decoded with these types (`decode_body`), answers are encoded from them, and
`openapi.py` derives the document's schemas from them; limits are `Meta` constraints, so the
document says what the handlers enforce. A constraint that only the handler can check in full (a
page URL must parse, a host must be allowed) is described to the document with `extra_json_schema`
and enforced by the domain code with its own message.

Names are snake_case here and camelCase on the wire (`app_id` is `appId`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from jssdk_service.errors import InvalidRequest, InvalidShare, InvalidURL, RequestError
from jssdk_service.pageurl import MAX_URL_LENGTH
from jssdk_service.share import REFERENCE_PATTERN

# The page URLs a browser sends (`location.href` is ASCII, escaped), as a pattern for the document:
# lower-case http(s), a host name, a port, no spaces or control characters. pageurl.py accepts
# more (upper case, IP literals, a fragment); the document promises only what is always signed.
_HOST = r"(?:[a-z0-9]+\.)*[a-z0-9]+"
_PORT = r"(?::[1-9][0-9]{0,3})?"
_PATH = r"(?:/[\x21\x22\x24-\x3e\x40-\x7e]*)?(?:\?[\x21\x22\x24-\x7e]*)?"
URL_PATTERN = rf"^https?://{_HOST}{_PORT}{_PATH}$"
_SHARE_TEXT = 1024
Reference = Annotated[str, msgspec.Meta(max_length=2048, extra_json_schema={"pattern": REFERENCE_PATTERN})]

PageURLText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="The page URL as the browser has it: `location.href.split('#')[0]`",
        examples=["https://example.com/p?a=1"],
        extra_json_schema={"pattern": URL_PATTERN},
    ),
]
AccountName = Annotated[
    str,
    msgspec.Meta(max_length=64, description="The account's appId or name; may be left out when one is configured"),
]
Severity = Literal["error", "warning", "info", "ok"]
Code = Annotated[str, msgspec.Meta(pattern="^[a-z_]+$")]
Count = Annotated[int, msgspec.Meta(ge=0)]


class _Shape(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """camelCase on the wire; fields left at their default are left out of an answer."""


class _Closed(_Shape, forbid_unknown_fields=True):
    """A shape that refuses fields it does not declare."""


# -- requests --------------------------------------------------------------------------------


class SignatureQuery(_Shape):
    """What a signature is asked for with: the page, and which account."""

    url: PageURLText
    app: AccountName | None = None


class ShareQuery(SignatureQuery):
    """A share card is asked for with the signature's fields and the page the card is for."""

    page: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_URL_LENGTH,
                description="The page the card is for when it is not the signed url (iOS signs an SPA's landing URL)",
                extra_json_schema={"pattern": URL_PATTERN},
            ),
        ]
        | None
    ) = None


class ShareOverride(_Closed):
    """Per-page share fields, merged over the account's share rules."""

    title: Annotated[str, msgspec.Meta(max_length=_SHARE_TEXT)] | None = None
    desc: Annotated[str, msgspec.Meta(max_length=_SHARE_TEXT)] | None = None
    link: Annotated[str, msgspec.Meta(max_length=1024, extra_json_schema={"pattern": REFERENCE_PATTERN})] | None = None
    img_url: Annotated[str, msgspec.Meta(max_length=2048, extra_json_schema={"pattern": REFERENCE_PATTERN})] | None = (
        None
    )


class SignatureRequest(SignatureQuery):
    """`POST /v1/signature`'s body."""


class ShareRequest(ShareQuery):
    """`POST /v1/share`'s body: the query's fields and an optional override of the share fields."""

    share: ShareOverride | None = None


# A URL may arrive percent-encoded, three times as long; the document describes the plain form.
_EVIDENCE_URL = msgspec.Meta(
    min_length=1,
    max_length=3 * MAX_URL_LENGTH,
    description="A URL the page had (`location.href`), as it is or percent-encoded",
    extra_json_schema={"pattern": URL_PATTERN, "maxLength": MAX_URL_LENGTH},
)


class Evidence(_Closed):
    """What a page passed to wx.config and what WeChat answered; only url is required."""

    url: Annotated[str, _EVIDENCE_URL]
    landing_url: Annotated[str, _EVIDENCE_URL] | None = None
    app_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    agent_id: (
        Annotated[
            str,
            msgspec.Meta(pattern="^[0-9]{0,19}$", description="wx.agentConfig's agentid, when that call failed"),
        ]
        | None
    ) = None
    signature: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    nonce_str: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    timestamp: (
        Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[str, msgspec.Meta(pattern="^[0-9]{0,19}$")] | None
    ) = None
    user_agent: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    err_msg: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class Report(Evidence, kw_only=True):
    """A page's wx.config failure: the evidence, with what wx.error said."""

    err_msg: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


# -- answers ---------------------------------------------------------------------------------


class Config(_Closed):
    """The object the page passes to `wx.config`."""

    app_id: str
    timestamp: int
    nonce_str: Annotated[str, msgspec.Meta(min_length=1)]
    signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]
    js_api_list: tuple[str, ...]
    open_tag_list: tuple[str, ...] = ()
    beta: bool | None = None  # true for a WeCom app: its client needs it for wx.invoke's APIs


class AgentConfig(_Closed):
    """The object a WeCom page passes to `wx.agentConfig` (`corpid` and `agentid` are WeCom's spelling)."""

    corpid: str
    agentid: str
    timestamp: int
    nonce_str: Annotated[str, msgspec.Meta(min_length=1)]
    signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]
    js_api_list: tuple[str, ...]


class AppMessage(_Closed):
    """`wx.updateAppMessageShareData`'s fields."""

    title: str
    desc: str
    link: str
    img_url: str


class Timeline(_Closed):
    """`wx.updateTimelineShareData`'s fields."""

    title: str
    link: str
    img_url: str


class Share(_Closed):
    """`wx.config`'s object and the share payloads for a page; a WeCom app's also has its
    `wx.agentConfig` object and the `onMenuShareWechat` payload (`appMessage` and `timeline` then go
    to `onMenuShareAppMessage` and `onMenuShareTimeline`)."""

    config: Config
    app_message: AppMessage
    timeline: Timeline
    agent_config: AgentConfig | None = None
    wechat: AppMessage | None = None


class Finding(_Closed, kw_only=False):
    """One thing the doctor found: a stable `code`, how bad it is, and what to do, for a human."""

    code: Code
    severity: Severity
    message: str


class Findings(_Closed):
    """The doctor's findings, the worst first."""

    findings: list[Finding]


class Health(_Closed):
    status: Literal["ok"]


class AccountReadiness(_Closed):
    """Whether one account may sign now, and if not why."""

    app: str
    app_id: str
    ready: bool
    reason: str
    ticket_expires_in: float | None
    errcode: int | None = None
    fix: str | None = None
    retry_in: float | None = None


class UpstreamSlots(_Closed):
    """The process's upstream calls: in flight, waiting for a slot, and the slots there are."""

    in_flight: Count
    waiting: Count
    concurrency: Annotated[int, msgspec.Meta(ge=1)]


class CacheHealth(_Closed):
    """The shared cache as the process sees it."""

    backend: Literal["memory", "redis"]
    ok: bool
    url: str | None = None
    error: str | None = None


class Readiness(_Closed):
    """`/readyz`: how many accounts may sign, those that may not (at most 100), the upstream slots, the cache."""

    status: Literal["ready", "unready", "draining"]
    ready: Annotated[int, msgspec.Meta(ge=0, description="Accounts that may sign now")]
    total: Annotated[int, msgspec.Meta(ge=0, description="Accounts configured")]
    accounts: Annotated[
        list[AccountReadiness],
        msgspec.Meta(description="The accounts that may not sign now (at most 100), or with ?verbose=1 every account"),
    ]
    upstream: UpstreamSlots
    cache: CacheHealth
    accounts_listed: str | None = None
    degraded: str | None = None


Flag = Literal["0", "1", "true", "false"]


class ReadinessQuery(_Shape):
    verbose: Annotated[Flag, msgspec.Meta(description="1 lists every account, ready or not")] | None = None


class AssetQuery(_Shape):
    v: Annotated[str, msgspec.Meta(description="The helper's ETag: with it, cached for a year")] | None = None


class Lifetime(_Closed):
    """A credential's age and time left; both null when none is held."""

    age_seconds: float | None
    expires_in: float | None


class WeChatQuota(_Closed):
    """WeChat's own count of one API's calls today (`openapi/quota/get`), as it answered at `askedAt`."""

    daily_limit: Count
    used: Count
    remain: Count
    asked_at: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class AdminQuota(_Closed):
    """WeChat's quota of the account's token and ticket APIs, asked now, next to the service's own count today."""

    app: str
    app_id: str
    wechat_quota: dict[str, WeChatQuota]
    upstream_calls_today: dict[str, Count]


class ClearQuotaRequest(_Closed):
    """A reset of WeChat's daily quotas, confirmed by naming the account as the path does."""

    confirm: Annotated[
        str,
        msgspec.Meta(
            max_length=64,
            description="The account exactly as the path names it (its name or appId): the reset uses one of the "
            "10 WeChat allows an account a month",
        ),
    ]


class QuotaCleared(_Closed):
    """A reset of WeChat's daily quotas, and how many of the month's 10 the service has made (null: the shared
    cache does not answer); resets made elsewhere (another system, WeChat's console) are not among them."""

    app: str
    app_id: str
    cleared: bool
    resets_this_month: Count | None
    resets_left_this_month: Count | None


class AdminApp(_Closed):
    """One account's credentials in the admin API; never a credential value."""

    app: str
    app_id: str
    kind: Literal["official", "wecom"]
    token_source: Literal["secret", "external", "platform"]
    ready: bool
    reason: str
    token: Lifetime
    ticket: Lifetime
    last_refresh: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})] | None
    last_error: str | None
    errcode: int | None
    fix: str | None
    upstream_calls_today: Annotated[
        dict[str, Count],
        msgspec.Meta(
            description="Calls to each upstream API the account uses (token_source: reads of its external "
            "source) since midnight China time, the fleet's"
        ),
    ]
    forced_token_refreshes_today: Count
    wechat_quota: (
        Annotated[
            dict[str, WeChatQuota],
            msgspec.Meta(
                description="WeChat's own count of the same APIs, as GET /admin/apps/{app}/quota last asked it "
                "(kept 10 minutes); null when not asked lately. It counts every caller of the account"
            ),
        ]
        | None
    )
    token_api: Literal["stable", "classic"] | None = None
    """An official account's token API when it fetches its own token."""
    agent_ticket: Lifetime | None = None
    """A WeCom app's agent ticket (`ticket` is then its corp ticket)."""
    ticket_calls_last_hour: (
        Annotated[
            dict[str, Count],
            msgspec.Meta(
                description="A WeCom app's ticket calls in WeCom's hourly window, the fleet's: its own "
                "get_jsapi_ticket and get_agent_ticket (100 an hour each) and its corp's "
                "get_jsapi_ticket@corp (400 an hour)"
            ),
        ]
        | None
    ) = None


class AdminApps(_Closed):
    apps: list[AdminApp]


class TicketFingerprint(_Closed):
    fingerprint: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{8}$", description="A digest, never the ticket")]
    expires_in: float


class AdminRefresh(_Closed):
    """What a forced refresh got: the new ticket's fingerprint and lifetime."""

    app: str
    app_id: str
    token_refreshed: bool
    ticket: TicketFingerprint


class RefreshQuery(_Shape):
    token: (
        Annotated[Literal["0", "1", "true", "false"], msgspec.Meta(description="Also replace the access_token")] | None
    ) = None


class PushQuery(_Shape):
    """What WeChat adds to a push's URL."""

    timestamp: Annotated[str, msgspec.Meta(pattern="^[0-9]{1,12}$")]
    nonce: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    msg_signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")] = msgspec.field(name="msg_signature")
    encrypt_type: Literal["aes"] = msgspec.field(name="encrypt_type")
    signature: str | None = None


class PlatformStatus(_Closed):
    """A platform's own credentials; never a value."""

    component_token_expires_in: float | None
    last_push_ago: Annotated[float | None, msgspec.Meta(description="Seconds since this process got a push")]
    last_error: str | None
    fix: str | None


class AdminAuthorizer(_Closed):
    """One authorizer of a platform; never a credential value."""

    app_id: str
    ready: bool
    reason: str
    token: Lifetime
    ticket: Lifetime
    since: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})] | None
    via: str | None
    last_error: str | None
    fix: str | None


class AdminAuthorizers(_Closed):
    """A page of a platform's authorizers (`nextCursor` 0: the last page)."""

    platform: str
    status: PlatformStatus
    total: Count
    authorizers: list[AdminAuthorizer]
    next_cursor: Count


_CURSOR = msgspec.Meta(pattern="^[0-9]{1,19}$", description="From an earlier page's nextCursor")
_PAGE = msgspec.Meta(pattern="^[0-9]{1,4}$", description="About this many (at most 1000; 500 when left out)")


class AuthorizersQuery(_Shape):
    cursor: Annotated[str, _CURSOR] | None = None
    count: Annotated[str, _PAGE] | None = None


class NewAuthorizer(_Closed):
    """An authorizer added by hand: its appId and the refresh token the platform got for it."""

    appid: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] = msgspec.field(name="refresh_token")


class CallbackCheckRequest(_Closed):
    """WeChat's network check of the account's callback URL (`callback/check`)."""

    action: Literal["dns", "ping", "all"] = "all"
    check_operator: Literal["CHINANET", "UNICOM", "CAP", "DEFAULT"] = msgspec.field(
        default="DEFAULT", name="check_operator"
    )


class DnsResult(_Closed):
    ip: str
    real_operator: str


class PingResult(_Closed):
    ip: str
    from_operator: str
    package_loss: str
    time: str


class CallbackCheck(_Closed):
    """What WeChat found resolving and pinging the callback URL's addresses."""

    app: str
    dns: list[DnsResult] = []
    ping: list[PingResult] = []


class ErrorDetail(_Closed):
    code: Code
    message: Annotated[str, msgspec.Meta(min_length=1)]


class ErrorBody(_Closed):
    """Every error: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


# -- decoding --------------------------------------------------------------------------------

T = TypeVar("T", bound=msgspec.Struct)
# Which error a bad top-level field of a body is: a URL's is invalid_url, a share override's
# invalid_share, anything else invalid_request.
_FIELD_ERRORS: dict[str, type[RequestError]] = {
    "url": InvalidURL,
    "page": InvalidURL,
    "landingUrl": InvalidURL,
    "share": InvalidShare,
}
_AT_FIELD = re.compile(r" - at `\$\.([A-Za-z]+)((?:\.[A-Za-z]+|\[\d+\])*)`")
_MISSING = re.compile(r"missing required field `([A-Za-z]+)`")
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode_body(body: bytes, shape: type[T]) -> T:
    """`body` decoded as `shape`; a `RequestError` naming the field for anything else."""
    decoder = _decoders.get(shape)
    if decoder is None:
        # Lax: a JSON number such as 13900.0 is the integer JSON Schema says it is.
        decoder = _decoders[shape] = msgspec.json.Decoder(shape, strict=False)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _field_error(str(exc)) from None
    except msgspec.DecodeError:
        raise InvalidRequest("the body must be a JSON object") from None


def _field_error(text: str) -> RequestError:
    """msgspec's complaint as our error, named by the top-level field it is about."""
    at = _AT_FIELD.search(text)
    missing = _MISSING.search(text)
    if at is not None:
        field, name, problem = at[1], at[1] + at[2], text[: at.start()]
    elif missing is not None:
        field = name = missing[1]
        problem = "is required"
    else:
        return InvalidRequest(f"the body: {text}")
    return _FIELD_ERRORS.get(field, InvalidRequest)(f"{name}: {problem}")


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
