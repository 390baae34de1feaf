"""The signature doctor: why WeChat refused a wx.config (WECHAT.md §3). Pure: values in, findings out.

A page (or a person) sends what was passed to `wx.config` and where; the doctor re-computes the
signature with the account's current and recent tickets, for the page URL, the landing URL, and
the mistakes that commonly turn one into another string (a `#fragment` left in, percent-encoding,
a port, a trailing slash, the scheme). Which combination matches names the cause:

    signature_valid        right for the URL this client verifies, with the current ticket ("ok")
    signature_mismatch     nothing matches: other values reached wx.config, or something else signed
    stale_ticket           signed with an earlier ticket: a cached config
    ios_landing_url        signed the landing URL where the current one is verified, or the reverse
    fragment_in_url, url_encoded, url_decoded, port_in_url, trailing_slash, scheme_mismatch
                           signed a variant of the page URL instead of the URL itself
    app_id_mismatch        wx.config got an appId other than the one whose ticket signed, or an unknown one
    host_not_allowed       the page's host is not a JS secure domain of the account
    offline_verifying, invalid_url_domain, permission_denied
                           what WeChat's errMsg means, in plain words
    signature_not_checked  nothing to re-compute with: fields missing, no ticket yet, or (several accounts
                           configured) no appId to say whose tickets to use

A diagnosis costs the same however many accounts are configured: it re-computes with the tickets of
the one account the page meant and, only when they made nothing, of a few other accounts signing for
the page's host (`MAX_OTHERS`); its messages name a few accounts and domains at most.

Findings never carry a ticket, and of the URLs they name only hosts: a stored report's findings
may be shown to whoever asks about the same page.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from jssdk_service import shapes
from jssdk_service.config import Account
from jssdk_service.errors import InvalidURL
from jssdk_service.pageurl import PageURL, host_allowed, parse_page_url
from jssdk_service.shapes import Finding, Severity
from jssdk_service.signing import strip_fragment
from jssdk_service.tokens import JsapiTicket

_WORST_FIRST: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2, "ok": 3}

_ENCODED_URL = re.compile(r"https?%3a%2f%2f", re.IGNORECASE)
_AUTHORITY = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_PORT = re.compile(r"(.*?)(?::([0-9]+))?", re.DOTALL)
_DEFAULT_PORT = {"http": 80, "https": 443}
# What encodeURIComponent leaves alone besides letters and digits (quote() always keeps _.-~).
_URI_COMPONENT_SAFE = "!*'()"
# How many other accounts signing for the page's host a diagnosis may re-compute with.
MAX_OTHERS = 4
# How many accounts, or domains, a message lists.
_LISTED = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What a page saw: its URLs, what it passed to wx.config, and what WeChat said."""

    url: str
    app_id: str | None = None
    signature: str | None = None
    nonce: str | None = None
    timestamp: int | None = None
    landing_url: str | None = None
    user_agent: str | None = None
    err_msg: str | None = None


@dataclass(frozen=True, slots=True)
class AccountTickets:
    """An account and the tickets it signed with lately, newest (the current one) first."""

    account: Account
    tickets: Sequence[JsapiTicket]


def evidence_from_body(body: shapes.Evidence) -> Evidence:
    """The evidence a page sent, with empty fields as absent and the timestamp as a number; its URLs checked."""
    timestamp = body.timestamp
    page_url(body.url)
    _landing(body.landing_url or None)
    return Evidence(
        url=body.url,
        app_id=body.app_id or None,
        signature=body.signature.lower() if body.signature else None,
        nonce=body.nonce_str or None,
        timestamp=int(timestamp) if timestamp not in (None, "") else None,
        landing_url=body.landing_url or None,
        user_agent=body.user_agent or None,
        err_msg=body.err_msg or None,
    )


def is_ios_wechat(user_agent: str) -> bool:
    """WeChat on an iPhone, iPad or iPod: it verifies the landing URL of a history-routed page."""
    return "micromessenger" in user_agent.lower() and any(d in user_agent for d in ("iPhone", "iPad", "iPod"))


def diagnose(
    evidence: Evidence,
    account: AccountTickets | None,
    *,
    others: Sequence[AccountTickets] = (),
    configured: Sequence[Account] = (),
    now: float,
) -> list[Finding]:
    """Every finding about `evidence`, the worst first.

    `account` is the account the page meant (the one its appId names, the only one configured, or
    the only one signing for its host), None when that is unknown; `others` are a few (`MAX_OTHERS`)
    other accounts signing for the page's host, whose tickets are tried when `account`'s made
    nothing (a signature from another account's answer); `configured` are all the accounts, of which
    messages name a few.
    """
    findings: list[Finding] = []
    url, times = _decode_whole(evidence.url)
    if times:
        findings.append(Finding("url_encoded", "warning", _SENT_ENCODED.format(times=_times(times))))
    page = parse_page_url(url)
    landing = _landing(evidence.landing_url)
    others = others[:MAX_OTHERS]
    signature = _signature_findings(evidence, url, page, landing, account, others, now)
    if evidence.app_id is not None and account is None and all(f.code != "app_id_mismatch" for f in signature):
        message = (
            f"wx.config was given appId {evidence.app_id!r}; this service signs for {_some_accounts(configured)} "
            f"only. {_SAME_ANSWER}"
        )
        findings.append(Finding("app_id_mismatch", "error", message))
    findings += _url_findings(page, account, others, configured)
    findings += signature
    findings += _err_msg_findings(evidence.err_msg, page, account, others)
    findings.sort(key=lambda f: _WORST_FIRST[f.severity])
    return findings


_SENT_ENCODED = (
    "url arrived percent-encoded {times} (https%3A%2F%2F...) and was decoded before diagnosis. Send the raw "
    "location.href in a JSON body; in a query string encode it exactly once (the service decodes ?url= once)."
)
_SAME_ANSWER = "Pass wx.config the appId from the same answer as the signature."


# -- the URL and the account -----------------------------------------------------------------


def page_url(url: str) -> PageURL:
    """The page URL `url` stands for, decoded first if it arrived percent-encoded as a whole."""
    return parse_page_url(_decode_whole(url)[0])


def _decode_whole(url: str) -> tuple[str, int]:
    """`url` decoded as often as it was percent-encoded as a whole (at most 3 times), and how often."""
    times = 0
    while times < 3 and _ENCODED_URL.match(url):
        url, times = unquote(url), times + 1
    return url, times


def _landing(value: str | None) -> str | None:
    if value is None:
        return None
    raw, _ = _decode_whole(value)
    try:
        parse_page_url(raw)
    except InvalidURL as exc:
        raise InvalidURL("landingUrl " + exc.message.removeprefix("url ")) from None
    return raw


def _url_findings(
    page: PageURL, account: AccountTickets | None, others: Sequence[AccountTickets], configured: Sequence[Account]
) -> list[Finding]:
    findings = []
    # With no account, `others` are the accounts signing for this host: none means no account does.
    allowed = host_allowed(page.host, account.account.allowed_hosts) if account is not None else bool(others)
    if not allowed:
        if account is not None:
            whose, domains = _name(account.account), ", ".join(sorted(account.account.allowed_hosts))
        else:
            whose, domains = "any account of this service", _some_domains(configured)
        message = (
            f"{page.host} is not a JS secure domain of {whose} (those are: {domains}). The service refuses to "
            "sign it and WeChat answers 'invalid url domain': add the domain to the official account's JS secure "
            "domains (JS接口安全域名) and to the account's allowed_hosts."
        )
        findings.append(Finding("host_not_allowed", "error", message))
    if page.port is not None and page.port == _DEFAULT_PORT[page.scheme]:
        message = (
            f"the URL names the default port :{page.port}. Browsers leave it out of location.href, so a URL "
            "written with it is not the one WeChat verifies: sign location.href as it is."
        )
        findings.append(Finding("port_in_url", "warning", message))
    elif page.port is not None:
        message = (
            f"the page is served on port {page.port}. WeChat accepts pages on ports 80 and 443 only (a JS secure "
            "domain has no port): serve it without a port in its URL."
        )
        findings.append(Finding("port_in_url", "error", message))
    return findings


# -- the signature ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A URL the page may have signed: `base` says which URL; `mistake` is a finding code, or None."""

    base: Literal["page", "landing"]
    mistake: str | None
    url: str


@dataclass(frozen=True, slots=True)
class _Match:
    entry: AccountTickets
    index: int
    candidate: _Candidate


def _signature_findings(
    evidence: Evidence,
    url: str,
    page: PageURL,
    landing: str | None,
    account: AccountTickets | None,
    others: Sequence[AccountTickets],
    now: float,
) -> list[Finding]:
    signature, nonce, timestamp = evidence.signature, evidence.nonce, evidence.timestamp
    if signature is None or nonce is None or timestamp is None:
        if (signature, nonce, timestamp) != (None, None, None) or "invalid signature" in (evidence.err_msg or ""):
            return [Finding("signature_not_checked", "info", _FIELDS_MISSING)]
        return []
    if account is None and evidence.app_id is None:
        # Several accounts, none of them named: re-computing with every one of them is what this avoids.
        return [Finding("signature_not_checked", "info", _APP_ID_NEEDED)]
    entries = [account, *others] if account is not None else list(others)
    match = _find(entries, _candidates(url, page, landing), signature, nonce, timestamp)
    if match is not None:
        landing_differs = landing is not None and strip_fragment(landing) != page.raw
        return _explain(match, evidence, account, landing_differs, now)
    if account is None:
        return []  # an unknown appId: app_id_mismatch says so
    if not account.tickets:
        return [Finding("signature_not_checked", "info", _NO_TICKET)]
    return [_no_match(account, timestamp, now)]


_FIELDS_MISSING = (
    "to check the signature the doctor needs signature, nonceStr and timestamp together, as passed to wx.config "
    "(with appId, and landingUrl and userAgent for single-page apps)."
)
_NO_TICKET = (
    "the service holds no jsapi_ticket yet (WeChat has not handed one out since it started), so there is nothing "
    "to re-compute the signature with; /readyz says why."
)
_APP_ID_NEEDED = (
    "this service signs for several accounts and the question names none of them: send appId, the one passed to "
    "wx.config, so that the doctor re-computes the signature with that account's tickets."
)


def _candidates(url: str, page: PageURL, landing: str | None) -> list[_Candidate]:
    """The page URL and the landing URL as they are, then each with one of the usual mistakes."""
    bases: list[tuple[Literal["page", "landing"], str]] = [("page", url)]
    if landing is not None and strip_fragment(landing) != page.raw:
        bases.append(("landing", landing))
    candidates = [_Candidate(base, None, strip_fragment(full)) for base, full in bases]
    for base, full in bases:
        raw = strip_fragment(full)
        variants = {
            "fragment_in_url": full,
            "url_encoded": quote(raw, safe=_URI_COMPONENT_SAFE),
            "url_decoded": unquote(raw),
            "port_in_url": _toggle_port(raw),
            "trailing_slash": _toggle_slash(raw),
            "scheme_mismatch": _toggle_scheme(raw),
        }
        candidates += [_Candidate(base, code, variant) for code, variant in variants.items() if variant != raw]
    return candidates


def _toggle_port(raw: str) -> str:
    """The URL without its explicit port, or with the scheme's default port when it has none."""
    scheme, authority, rest = _split(raw)
    host, port = _PORT.fullmatch(authority).groups()  # type: ignore[union-attr]  # the pattern matches any text
    return f"{scheme}://{host}{rest}" if port else f"{scheme}://{host}:{_DEFAULT_PORT[scheme.lower()]}{rest}"


def _toggle_slash(raw: str) -> str:
    """The URL with a slash added to the end of its path, or with the one there removed."""
    scheme, authority, rest = _split(raw)
    path, mark, query = rest.partition("?")
    path = path[:-1] if path.endswith("/") else path + "/"
    return f"{scheme}://{authority}{path}{mark}{query}"


def _toggle_scheme(raw: str) -> str:
    scheme, authority, rest = _split(raw)
    return f"{'http' if scheme.lower() == 'https' else 'https'}://{authority}{rest}"


def _split(raw: str) -> tuple[str, str, str]:
    """Scheme, authority and the rest of a URL that `parse_page_url` accepted."""
    scheme, authority, rest = _AUTHORITY.fullmatch(raw).groups()  # type: ignore[union-attr]  # validated before
    return scheme, authority, rest


def _find(
    entries: Sequence[AccountTickets], candidates: Sequence[_Candidate], signature: str, nonce: str, timestamp: int
) -> _Match | None:
    for entry in entries:
        for index, ticket in enumerate(entry.tickets):
            for candidate in candidates:
                if _sign_exact(ticket.value, nonce, timestamp, candidate.url) == signature:
                    return _Match(entry, index, candidate)
    return None


def _sign_exact(ticket: str, nonce: str, timestamp: int, url: str) -> str:
    """WeChat's signature of `url` as given, fragment and all: what a signer that made a mistake computed."""
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(plain.encode("utf-8")).hexdigest()  # noqa: S324 (WeChat's algorithm, not our choice)


def _explain(
    match: _Match, evidence: Evidence, account: AccountTickets | None, landing_differs: bool, now: float
) -> list[Finding]:
    """What a match says: each reason the signature fails, whether the right URL was signed, or that it is valid."""
    signer, candidate = match.entry, match.candidate
    which = "the page URL" if candidate.base == "page" else "the landing URL"
    failures: list[Finding] = []
    if evidence.app_id is not None and signer is not account:
        message = (
            f"the signature was made with the ticket of {_name(signer.account)}, but wx.config was given appId "
            f"{evidence.app_id!r}. {_SAME_ANSWER}"
        )
        failures.append(Finding("app_id_mismatch", "error", message))
    if match.index > 0:
        failures.append(_stale(signer, match.index, now))
    if candidate.mistake is not None:
        message = f"the signature was made for {which} {_MISTAKES[candidate.mistake]}"
        failures.append(Finding(candidate.mistake, "error", message))
    verdict = _landing_verdict(candidate.base, evidence.user_agent, landing_differs)
    findings = failures if verdict is None else [*failures, verdict]
    # Valid when nothing failed and this is the URL the client verifies, or may verify (no user agent known).
    verified = verdict is None or (verdict.severity == "warning" and candidate.base == "page")
    if not failures and verified:
        findings.append(_valid(which, signer, evidence.err_msg))
    return findings


_MISTAKES = {
    "fragment_in_url": (
        "with its #fragment, which WeChat leaves out when it verifies: sign location.href.split('#')[0] (the "
        "service drops a fragment itself)."
    ),
    "url_encoded": (
        "still percent-encoded (https%3A%2F%2F...): the page's encodeURIComponent was not undone before signing. "
        "Sign the raw URL; the service decodes its ?url= parameter once."
    ),
    "url_decoded": (
        "decoded once too often (%XX escapes turned into characters); WeChat verifies location.href exactly as "
        "the browser holds it, escapes and all."
    ),
    "port_in_url": "with a port added or removed: sign location.href exactly as the browser shows it.",
    "trailing_slash": (
        "with a trailing slash added or removed (a browser opens http://host as http://host/): sign location.href, "
        "not a URL put together by hand."
    ),
    "scheme_mismatch": "with the other scheme (http versus https): sign location.href, scheme included.",
}


def _landing_verdict(base: str, user_agent: str | None, landing_differs: bool) -> Finding | None:
    """Whether the URL that was signed is the one this client verifies (iOS WeChat: the landing URL)."""
    if not landing_differs:
        return None
    if user_agent is None:
        message = _UNKNOWN_CLIENT_PAGE if base == "page" else _UNKNOWN_CLIENT_LANDING
        return Finding("ios_landing_url", "warning", message)
    ios = is_ios_wechat(user_agent)
    if ios and base == "page":
        return Finding("ios_landing_url", "error", _IOS_SIGNED_PAGE)
    if not ios and base == "landing":
        return Finding("ios_landing_url", "error", _OTHER_SIGNED_LANDING)
    return None


_UNKNOWN_CLIENT_PAGE = (
    "the signature matches url, not landingUrl: right where WeChat verifies the current URL (Android, desktop), "
    "wrong in iOS WeChat, which verifies the landing URL of a history-routed page. Send userAgent to know which "
    "applies; the page helper signs the right one for each."
)
_UNKNOWN_CLIENT_LANDING = (
    "the signature matches landingUrl, not url: right in iOS WeChat only, which verifies the landing URL of a "
    "history-routed page; Android and desktop WeChat verify the current URL. Send userAgent to know which applies."
)
_IOS_SIGNED_PAGE = (
    "the signature matches url, not landingUrl, but iOS WeChat verifies the landing URL (where this page load "
    "began) of a history-routed page: sign the landing URL on iOS, as the page helper does."
)
_OTHER_SIGNED_LANDING = (
    "the signature matches landingUrl, not url, but only iOS WeChat verifies the landing URL and this user agent "
    "is not iOS WeChat: sign the current location.href here, as the page helper does."
)


def _valid(which: str, signer: AccountTickets, err_msg: str | None) -> Finding:
    message = f"the signature is right for {which} with the current ticket of {_name(signer.account)}."
    if err_msg is not None and "invalid signature" in err_msg:
        message += (
            " Yet WeChat said invalid signature: wx.config got other values than these, or the client verified "
            "another URL (wx.config with debug: true shows it as realAuthUrl)."
        )
    return Finding("signature_valid", "ok", message)


def _stale(signer: AccountTickets, index: int, now: float) -> Finding:
    ticket, current = signer.tickets[index], signer.tickets[0]
    which = "the ticket before the current one" if index == 1 else f"the ticket {index} before the current one"
    severity: Severity = "error" if ticket.expires_at <= now else "warning"
    if severity == "error":
        state = f"it expired {_duration(now - ticket.expires_at)} ago"
    else:
        state = f"WeChat may accept it for {_duration(ticket.expires_at - now)} more"
    message = (
        f"signed with {which}, obtained {_duration(now - ticket.obtained_at)} ago ({state}); the current ticket was "
        f"obtained {_duration(now - current.obtained_at)} ago. {_CACHED_CONFIG}"
    )
    return Finding("stale_ticket", severity, message)


_CACHED_CONFIG = (
    "A config was cached (by the page, a CDN or a proxy) or signed by something with its own ticket cache: fetch "
    "a fresh signature on every page load."
)


def _no_match(account: AccountTickets, timestamp: int, now: float) -> Finding:
    kept = list(account.tickets)
    whose = _name(account.account)
    oldest = min((t.obtained_at for t in kept), default=now)
    # A minute's slack: a timestamp is a whole second, and hosts' clocks differ a little.
    if timestamp < oldest - 60:
        message = (
            f"the signature matches none of the tickets kept for {whose}, and its timestamp is "
            f"{_duration(now - timestamp)} old, older than the oldest of them (obtained {_duration(now - oldest)} "
            f"ago): most likely signed with a ticket replaced since. {_CACHED_CONFIG}"
        )
        return Finding("stale_ticket", "error", message)
    earlier = f" and the {len(kept) - 1} before it" if len(kept) > 1 else ""
    message = (
        f"the signature matches no ticket kept for {whose} (the current one{earlier}) for the page URL, the "
        "landing URL or their usual variants. Pass wx.config the appId, nonceStr, timestamp "
        "and signature of one answer unchanged, sign exactly location.href without its #fragment, and check that "
        "nothing else (another server, an old cache) signs for this page."
    )
    return Finding("signature_mismatch", "error", message)


# -- WeChat's words --------------------------------------------------------------------------


def _err_msg_findings(
    err_msg: str | None, page: PageURL, account: AccountTickets | None, others: Sequence[AccountTickets]
) -> list[Finding]:
    text = (err_msg or "").lower()
    findings = []
    if "the permission value is offline verifying" in text:
        findings.append(Finding("offline_verifying", "error", _OFFLINE_VERIFYING))
    if "invalid url domain" in text:
        signed = host_allowed(page.host, account.account.allowed_hosts) if account is not None else bool(others)
        if signed:
            cause = "this service signs for it, so the official account's own list lacks it (or the appId is another's)"
        else:
            cause = "this service does not sign for it either"
        message = (
            f"'invalid url domain' means {page.host} is not one of the JS secure domains (JS接口安全域名) set for "
            f"this appId in the WeChat admin console; {cause}. An account has up to 5, without IP addresses or "
            "ports; a domain covers its subdomains."
        )
        findings.append(Finding("invalid_url_domain", "error", message))
    if "permission denied" in text:
        findings.append(Finding("permission_denied", "error", _PERMISSION_DENIED))
    return findings


_OFFLINE_VERIFYING = (
    "'the permission value is offline verifying' means WeChat had no working wx.config when the API was called: "
    "the config failed (see the other findings), the API is missing from jsApiList, or it was called before "
    "wx.ready. Call the share APIs inside wx.ready and list them in jsApiList; the page helper does both."
)
_PERMISSION_DENIED = (
    "'permission denied' means the official account may not use this API: custom share cards need a verified "
    "(认证) account with the share permission."
)


# -- words -----------------------------------------------------------------------------------


def _name(account: Account) -> str:
    return account.app_id if account.name == account.app_id else f"{account.name} ({account.app_id})"


def _some_accounts(accounts: Sequence[Account]) -> str:
    """The accounts, named; past `_LISTED` of them, how many and the first few."""
    names = ", ".join(_name(a) for a in accounts[:_LISTED])
    return names if len(accounts) <= _LISTED else f"{len(accounts)} accounts ({names}, ...)"


def _some_domains(accounts: Sequence[Account]) -> str:
    """The JS secure domains of the first few accounts, sorted; '...' when there may be more."""
    domains = sorted({d for account in accounts[:_LISTED] for d in account.allowed_hosts})
    more = len(accounts) > _LISTED or len(domains) > _LISTED
    return ", ".join(domains[:_LISTED]) + (", ..." if more else "")


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _duration(seconds: float) -> str:
    """`45s`, `12 min`, `2h 5min`: a span of time, for a human."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60}h {minutes % 60}min"
