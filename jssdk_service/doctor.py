"""The signature doctor: why WeChat or WeCom refused a wx.config (WECHAT.md §3, WECOM_PLATFORM.md A.3).
Pure: values in, findings out.

A page (or a person) sends what was passed to `wx.config` (or a WeCom page's `wx.agentConfig`) and
where; the doctor re-computes the signature with the account's current and recent tickets (a WeCom
app's corp tickets and agent tickets both), for the page URL, the landing URL, and the mistakes that
commonly turn one into another string (a `#fragment` left in, percent-encoding, a port, a trailing
slash, the scheme). Which combination matches names the cause:

    signature_valid        right for the URL this client verifies, with the current ticket ("ok")
    signature_mismatch     nothing matches: other values reached wx.config, or something else signed
    stale_ticket           signed with an earlier ticket: a cached config
    ios_landing_url        signed the landing URL where the current one is verified, or the reverse
    fragment_in_url, url_encoded, url_decoded, port_in_url, trailing_slash, scheme_mismatch
                           signed a variant of the page URL instead of the URL itself
    app_id_mismatch        wx.config got an appId other than the one whose ticket signed, or an unknown one
    corp_ticket_for_agent_config, agent_ticket_for_config
                           WeCom: the corp ticket's signature went to wx.agentConfig, or the agent ticket's
                           to wx.config (which call failed is errMsg's prefix, `agentConfig:` or `config:`)
    host_not_allowed       the page's host is not a JS secure domain (WeCom: trusted domain) of the account
    offline_verifying, invalid_url_domain, permission_denied
                           what WeChat's errMsg means, in plain words
    invalid_corp_id, untrusted_domain, ticket_unusable
                           what WeCom's 40013, 80001 and 42012 mean here (its 40093 is the signature's)
    signature_not_checked  nothing to re-compute with: fields missing, no ticket yet, or (several accounts
                           configured) no appId to say whose tickets to use

A WeCom page is one whose account is a WeCom app or, the account unknown, whose user agent says
`wxwork/`: its findings give WeCom's rules (trusted domains, corp and agent tickets), not WeChat's.
Its appId is the corp's corp_id, which every app of the corp shares: the doctor is then given the
corp's apps (at most `MAX_CORP_APPS`) and tries each.

A diagnosis costs the same however many accounts are configured: it re-computes with the tickets of
the account the page meant (or its corp's few apps) and, only when they made nothing, of a few other
accounts signing for the page's host (`MAX_OTHERS`); its messages name a few accounts and domains at most.

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

Call = Literal["config", "agentConfig"]
"""What a signature is for: `wx.config` (the jsapi_ticket; a WeCom corp's ticket) or a WeCom app's
`wx.agentConfig` (that app's agent ticket)."""
Client = Literal["ios_wechat", "wecom", "other"]
"""Who verified the signature, from the user agent: iOS WeChat verifies the landing URL of a
history-routed page; the WeCom client and every other one verify the current URL."""

_CALLS: tuple[Call, ...] = ("config", "agentConfig")
_WORST_FIRST: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2, "ok": 3}

_ENCODED_URL = re.compile(r"https?%3a%2f%2f", re.IGNORECASE)
_AUTHORITY = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_PORT = re.compile(r"(.*?)(?::([0-9]+))?", re.DOTALL)
_DEFAULT_PORT = {"http": 80, "https": 443}
# What encodeURIComponent leaves alone besides letters and digits (quote() always keeps _.-~).
_URI_COMPONENT_SAFE = "!*'()"
# WeCom's client errors, by the errcode its errMsg or err_Info ends with ("...devtool/query?e=40093")
# or by their words (WECOM_PLATFORM.md A.3).
_WECOM_ERRCODE = re.compile(r"(?<![0-9])(40013|40093|42012|80001)(?![0-9])")
_WECOM_WORDS = {
    "invalid signature": 40093,
    "invalid corpid": 40013,
    "not match any reliable domain": 80001,
    "jsapi_ticket不可用": 42012,
}
# How many other accounts signing for the page's host a diagnosis may re-compute with.
MAX_OTHERS = 4
# How many apps of the corp an appId that is a corp_id may stand for, re-computed with.
MAX_CORP_APPS = 8
# How many accounts, or domains, a message lists.
_LISTED = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What a page saw: its URLs, what it passed to wx.config (or wx.agentConfig), and what the client said."""

    url: str
    app_id: str | None = None
    agent_id: str | None = None
    signature: str | None = None
    nonce: str | None = None
    timestamp: int | None = None
    landing_url: str | None = None
    user_agent: str | None = None
    err_msg: str | None = None


@dataclass(frozen=True, slots=True)
class AccountTickets:
    """An account and the tickets it signed with lately, newest (the current one) first: `tickets`
    sign wx.config (a WeCom app's corp tickets), `agent_tickets` a WeCom app's wx.agentConfig."""

    account: Account
    tickets: Sequence[JsapiTicket]
    agent_tickets: Sequence[JsapiTicket] = ()

    def signing(self, call: Call) -> Sequence[JsapiTicket]:
        """The tickets that sign `call`."""
        return self.tickets if call == "config" else self.agent_tickets


def evidence_from_body(body: shapes.Evidence) -> Evidence:
    """The evidence a page sent, with empty fields as absent and the timestamp as a number; its URLs checked."""
    timestamp = body.timestamp
    page_url(body.url)
    _landing(body.landing_url or None)
    return Evidence(
        url=body.url,
        app_id=body.app_id or None,
        agent_id=body.agent_id or None,
        signature=body.signature.lower() if body.signature else None,
        nonce=body.nonce_str or None,
        timestamp=int(timestamp) if timestamp not in (None, "") else None,
        landing_url=body.landing_url or None,
        user_agent=body.user_agent or None,
        err_msg=body.err_msg or None,
    )


def is_wecom(user_agent: str) -> bool:
    """The WeCom client: its user agent says `wxwork/` (and MicroMessenger too, so this is asked first)."""
    return "wxwork/" in user_agent.lower()


def is_ios_wechat(user_agent: str) -> bool:
    """WeChat on an iPhone, iPad or iPod: it verifies the landing URL of a history-routed page."""
    return (
        "micromessenger" in user_agent.lower()
        and not is_wecom(user_agent)
        and any(d in user_agent for d in ("iPhone", "iPad", "iPod"))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Question:
    """What one diagnosis is about: the evidence, its page, the accounts it concerns, and who verified what."""

    evidence: Evidence
    url: str  # the page URL, decoded if it arrived encoded as a whole
    page: PageURL
    landing: str | None
    meant: Sequence[AccountTickets]  # the account the page meant, or its corp's apps; empty: unknown
    others: Sequence[AccountTickets]
    configured: Sequence[Account]
    wecom: bool  # WeCom's rules and words, not WeChat's
    client: Client | None  # None: no user agent, and not a WeCom page
    call: Call | None  # the call that failed, from errMsg's prefix; None: not said
    errcodes: frozenset[int]  # WeCom's client errcodes errMsg names
    now: float


def diagnose(
    evidence: Evidence,
    meant: Sequence[AccountTickets],
    *,
    others: Sequence[AccountTickets] = (),
    configured: Sequence[Account] = (),
    now: float,
) -> list[Finding]:
    """Every finding about `evidence`, the worst first.

    `meant` is the account the page meant (the one its appId names, the only one configured, or the
    only one signing for its host) or, when its appId is a corp_id, that corp's WeCom apps (at most
    `MAX_CORP_APPS`); empty when that is unknown. `others` are a few (`MAX_OTHERS`) other accounts
    signing for the page's host, whose tickets are tried when `meant`'s made nothing (a signature
    from another account's answer); `configured` are all the accounts, of which messages name a few.
    """
    findings: list[Finding] = []
    url, times = _decode_whole(evidence.url)
    if times:
        findings.append(Finding("url_encoded", "warning", _SENT_ENCODED.format(times=_times(times))))
    meant = meant[:MAX_CORP_APPS]
    user_agent, err_msg = evidence.user_agent, (evidence.err_msg or "").lower()
    wecom = any(e.account.wecom for e in meant) if meant else user_agent is not None and is_wecom(user_agent)
    q = _Question(
        evidence=evidence,
        url=url,
        page=parse_page_url(url),
        landing=_landing(evidence.landing_url),
        meant=meant,
        others=others[:MAX_OTHERS],
        configured=configured,
        wecom=wecom,
        client=_client(user_agent, wecom),
        call=_failed_call(err_msg),
        errcodes=_errcodes(err_msg),
        now=now,
    )
    signature = _signature_findings(q)
    if evidence.app_id is not None and not meant and all(f.code != "app_id_mismatch" for f in signature):
        message = (
            f"wx.config was given appId {evidence.app_id!r}; this service signs for {_some_accounts(configured)} "
            f"only. {_SAME_ANSWER}"
        )
        findings.append(Finding("app_id_mismatch", "error", message))
    findings += _url_findings(q)
    findings += signature
    findings += _err_msg_findings(q, err_msg)
    findings.sort(key=lambda f: _WORST_FIRST[f.severity])
    return findings


_SENT_ENCODED = (
    "url arrived percent-encoded {times} (https%3A%2F%2F...) and was decoded before diagnosis. Send the raw "
    "location.href in a JSON body; in a query string encode it exactly once (the service decodes ?url= once)."
)
_SAME_ANSWER = "Pass wx.config the appId from the same answer as the signature."


def _client(user_agent: str | None, wecom: bool) -> Client | None:
    """Who verified: from the user agent; without one, the WeCom client for a WeCom app's page."""
    if user_agent is None:
        return "wecom" if wecom else None
    if is_wecom(user_agent):
        return "wecom"
    return "ios_wechat" if is_ios_wechat(user_agent) else "other"


def _failed_call(err_msg: str) -> Call | None:
    """Which call errMsg is about: `agentConfig:...` or `config:...` (lower-cased), else not said."""
    text = err_msg.lstrip()
    if text.startswith("agentconfig:"):
        return "agentConfig"
    return "config" if text.startswith("config:") else None


def _errcodes(err_msg: str) -> frozenset[int]:
    """The WeCom client errcodes a (lower-cased) errMsg names, by number or by words."""
    named = {int(code) for code in _WECOM_ERRCODE.findall(err_msg)}
    return frozenset(named | {code for words, code in _WECOM_WORDS.items() if words in err_msg})


def _invalid_signature(q: _Question) -> bool:
    return 40093 in q.errcodes


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


def _signs_for_host(q: _Question) -> bool:
    """Whether the service signs the page's host for the accounts meant (none known: for any account)."""
    if q.meant:
        return any(host_allowed(q.page.host, e.account.allowed_hosts) for e in q.meant)
    return bool(q.others)  # with no account meant, `others` are the accounts signing for this host


def _url_findings(q: _Question) -> list[Finding]:
    findings = []
    page = q.page
    if not _signs_for_host(q):
        if q.meant:
            whose, domains = _whose(q.meant), _domains_of(q.meant)
        else:
            whose, domains = "any account of this service", _some_domains(q.configured)
        template = _WECOM_HOST_NOT_ALLOWED if q.wecom else _HOST_NOT_ALLOWED
        findings.append(
            Finding("host_not_allowed", "error", template.format(host=page.host, whose=whose, domains=domains))
        )
    if page.port is not None and page.port == _DEFAULT_PORT[page.scheme]:
        message = (
            f"the URL names the default port :{page.port}. Browsers leave it out of location.href, so a URL "
            "written with it is not the one the client verifies: sign location.href as it is."
        )
        findings.append(Finding("port_in_url", "warning", message))
    elif page.port is not None and q.wecom:
        message = (
            f"the page is served on port {page.port}. WeCom accepts it only when the app's trusted domain (可信域名) "
            f"names the port too ({page.host}:{page.port}); WeChat, should the page be opened there, accepts ports "
            "80 and 443 only."
        )
        findings.append(Finding("port_in_url", "warning", message))
    elif page.port is not None:
        message = (
            f"the page is served on port {page.port}. WeChat accepts pages on ports 80 and 443 only (a JS secure "
            "domain has no port): serve it without a port in its URL."
        )
        findings.append(Finding("port_in_url", "error", message))
    return findings


_HOST_NOT_ALLOWED = (
    "{host} is not a JS secure domain of {whose} (those are: {domains}). The service refuses to sign it and WeChat "
    "answers 'invalid url domain': add the domain to the official account's JS secure domains (JS接口安全域名) and "
    "to the account's allowed_hosts."
)
_WECOM_HOST_NOT_ALLOWED = (
    "{host} is not a trusted domain of {whose} (those are: {domains}). The service refuses to sign it and WeCom "
    "answers 'not match any reliable domain' (80001): add the domain to the app's trusted domains (可信域名, "
    "verified and ICP-filed) in the WeCom admin console and to the account's allowed_hosts."
)


# -- the signature ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A URL the page may have signed: `base` says which URL; `mistake` is a finding code, or None."""

    base: Literal["page", "landing"]
    mistake: str | None
    url: str


@dataclass(frozen=True, slots=True)
class _Match:
    """What made the signature: `entry`'s ticket number `index` (0: the current one) of those for `call`."""

    entry: AccountTickets
    call: Call
    index: int
    candidate: _Candidate


def _signature_findings(q: _Question) -> list[Finding]:
    evidence = q.evidence
    signature, nonce, timestamp = evidence.signature, evidence.nonce, evidence.timestamp
    if signature is None or nonce is None or timestamp is None:
        if (signature, nonce, timestamp) != (None, None, None) or _invalid_signature(q):
            return [Finding("signature_not_checked", "info", _FIELDS_MISSING)]
        return []
    if not q.meant and evidence.app_id is None:
        # Several accounts, none of them named: re-computing with every one of them is what this avoids.
        return [Finding("signature_not_checked", "info", _APP_ID_NEEDED)]
    match = _find([*q.meant, *q.others], _candidates(q), signature, nonce, timestamp)
    if match is not None:
        return _explain(match, q)
    if not q.meant:
        return []  # an unknown appId: app_id_mismatch says so
    if not any(e.tickets for e in q.meant):
        return [Finding("signature_not_checked", "info", _NO_TICKET)]
    return [_no_match(q, timestamp)]


_FIELDS_MISSING = (
    "to check the signature the doctor needs signature, nonceStr and timestamp together, as passed to wx.config "
    "(with appId, and landingUrl and userAgent for single-page apps)."
)
_NO_TICKET = (
    "the service holds no jsapi_ticket yet (WeChat, or WeCom, has not handed one out since it started), so there "
    "is nothing to re-compute the signature with; /readyz says why."
)
_APP_ID_NEEDED = (
    "this service signs for several accounts and the question names none of them: send appId, the one passed to "
    "wx.config, so that the doctor re-computes the signature with that account's tickets."
)


def _landing_differs(q: _Question) -> bool:
    return q.landing is not None and strip_fragment(q.landing) != q.page.raw


def _candidates(q: _Question) -> list[_Candidate]:
    """The page URL and the landing URL as they are, then each with one of the usual mistakes."""
    bases: list[tuple[Literal["page", "landing"], str]] = [("page", q.url)]
    if q.landing is not None and _landing_differs(q):
        bases.append(("landing", q.landing))
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
        for call in _CALLS:
            for index, ticket in enumerate(entry.signing(call)):
                for candidate in candidates:
                    if _sign_exact(ticket.value, nonce, timestamp, candidate.url) == signature:
                        return _Match(entry, call, index, candidate)
    return None


def _sign_exact(ticket: str, nonce: str, timestamp: int, url: str) -> str:
    """WeChat's signature of `url` as given, fragment and all: what a signer that made a mistake computed."""
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(plain.encode("utf-8")).hexdigest()  # noqa: S324 (WeChat's algorithm, not our choice)


def _explain(match: _Match, q: _Question) -> list[Finding]:
    """What a match says: each reason the signature fails, whether the right URL was signed, or that it is valid."""
    signer, candidate = match.entry, match.candidate
    which = "the page URL" if candidate.base == "page" else "the landing URL"
    failures: list[Finding] = []
    mismatch = _app_id_mismatch(match, q)
    if mismatch is not None:
        failures.append(Finding("app_id_mismatch", "error", mismatch))
    if q.call is not None and q.call != match.call and signer.account.wecom:
        failures.append(_wrong_ticket(match))
    if match.index > 0:
        failures.append(_stale(match, q.now))
    if candidate.mistake is not None:
        message = f"the signature was made for {which} {_MISTAKES[candidate.mistake]}"
        failures.append(Finding(candidate.mistake, "error", message))
    verdict = _landing_verdict(candidate.base, q.client, _landing_differs(q))
    findings = failures if verdict is None else [*failures, verdict]
    # Valid when nothing failed and this is the URL the client verifies, or may verify (no user agent known).
    verified = verdict is None or (verdict.severity == "warning" and candidate.base == "page")
    if not failures and verified:
        findings.append(_valid(which, match, q))
    return findings


def _app_id_mismatch(match: _Match, q: _Question) -> str | None:
    """Why the appId the page passed cannot go with this signature; None when it can (or none was sent)."""
    signer, app_id = match.entry, q.evidence.app_id
    if app_id is None or any(signer is e for e in q.meant):
        return None
    same_corp = signer.account.wecom and any(
        e.account.wecom and e.account.app_id == signer.account.app_id for e in q.meant
    )
    if same_corp and match.call == "config":
        return None  # wx.config names the corp: any of its apps' corp tickets signs for it
    if same_corp:
        return (
            f"the signature was made with the agent ticket of {_name(signer.account)}, but the question names "
            f"{_whose(q.meant)}: wx.agentConfig verifies with the agent ticket of the app its agentid names. Pass "
            "wx.agentConfig the agentid and the signature of one /v1/agent-signature answer."
        )
    return (
        f"the signature was made with the ticket of {_name(signer.account)}, but wx.config was given appId "
        f"{app_id!r}. {_SAME_ANSWER}"
    )


def _wrong_ticket(match: _Match) -> Finding:
    """A WeCom app's corp ticket signature passed to wx.agentConfig, or its agent ticket's to wx.config."""
    whose = _name(match.entry.account)
    if match.call == "config":
        message = (
            f"the signature was made with the corp ticket of {whose}, the one that signs wx.config, but it was "
            "passed to wx.agentConfig, which WeCom verifies with the app's own agent ticket (invalid signature, "
            "40093, or 42012): pass wx.agentConfig the answer of /v1/agent-signature (agentConfig in /v1/share's), "
            "and wx.config that of /v1/signature."
        )
        return Finding("corp_ticket_for_agent_config", "error", message)
    message = (
        f"the signature was made with the agent ticket of {whose}, the one that signs wx.agentConfig, but it was "
        "passed to wx.config, which WeCom verifies with the corp ticket (invalid signature, 40093): pass wx.config "
        "the answer of /v1/signature (config in /v1/share's), and wx.agentConfig that of /v1/agent-signature."
    )
    return Finding("agent_ticket_for_config", "error", message)


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


def _landing_verdict(base: str, client: Client | None, landing_differs: bool) -> Finding | None:
    """Whether the URL that was signed is the one this client verifies (iOS WeChat: the landing URL)."""
    if not landing_differs:
        return None
    if client is None:
        message = _UNKNOWN_CLIENT_PAGE if base == "page" else _UNKNOWN_CLIENT_LANDING
        return Finding("ios_landing_url", "warning", message)
    if client == "ios_wechat" and base == "page":
        return Finding("ios_landing_url", "error", _IOS_SIGNED_PAGE)
    if client != "ios_wechat" and base == "landing":
        return Finding(
            "ios_landing_url", "error", _WECOM_SIGNED_LANDING if client == "wecom" else _OTHER_SIGNED_LANDING
        )
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
_WECOM_SIGNED_LANDING = (
    "the signature matches landingUrl, not url, but the WeCom client verifies the current URL, on iOS too (only "
    "iOS WeChat verifies the landing URL): sign the current location.href without its #fragment, as @wecom/jssdk "
    "does in WeCom."
)


def _valid(which: str, match: _Match, q: _Question) -> Finding:
    account = match.entry.account
    if not account.wecom:
        message = f"the signature is right for {which} with the current ticket of {_name(account)}."
    elif match.call == "config":
        message = (
            f"the signature is right for {which} with the current corp ticket of {_name(account)}: the one "
            f"wx.config (appId {account.app_id}, beta: true) needs, not wx.agentConfig."
        )
    else:
        message = (
            f"the signature is right for {which} with the current agent ticket of {_name(account)}: the one "
            f"wx.agentConfig needs, with corpid {account.app_id} and agentid {account.agent_id}, not wx.config."
        )
    if _invalid_signature(q):
        message += _YET_WECOM if account.wecom else _YET_WECHAT
    return Finding("signature_valid", "ok", message)


_YET_WECHAT = (
    " Yet WeChat said invalid signature: wx.config got other values than these, or the client verified "
    "another URL (wx.config with debug: true shows it as realAuthUrl)."
)
_YET_WECOM = (
    " Yet WeCom said invalid signature: the call got other values than these (another agentid, a nonceStr or "
    "timestamp from another answer), or the client verified another URL (a page in an iframe is verified by "
    "top.location.href)."
)


def _stale(match: _Match, now: float) -> Finding:
    tickets = match.entry.signing(match.call)
    ticket, current, index = tickets[match.index], tickets[0], match.index
    kind = _ticket_kind(match.entry.account, match.call)
    which = f"the {kind} before the current one" if index == 1 else f"the {kind} {index} before the current one"
    severity: Severity = "error" if ticket.expires_at <= now else "warning"
    if severity == "error":
        state = f"it expired {_duration(now - ticket.expires_at)} ago"
    else:
        state = f"the client may accept it for {_duration(ticket.expires_at - now)} more"
    message = (
        f"signed with {which}, obtained {_duration(now - ticket.obtained_at)} ago ({state}); the current {kind} was "
        f"obtained {_duration(now - current.obtained_at)} ago. {_CACHED_CONFIG}"
    )
    return Finding("stale_ticket", severity, message)


def _ticket_kind(account: Account, call: Call) -> str:
    if not account.wecom:
        return "ticket"
    return "corp ticket" if call == "config" else "agent ticket"


_CACHED_CONFIG = (
    "A config was cached (by the page, a CDN or a proxy) or signed by something with its own ticket cache: fetch "
    "a fresh signature on every page load."
)


def _no_match(q: _Question, timestamp: int) -> Finding:
    kept = [t for e in q.meant for call in _CALLS for t in e.signing(call)]
    whose, now = _whose(q.meant), q.now
    oldest = min((t.obtained_at for t in kept), default=now)
    # A minute's slack: a timestamp is a whole second, and hosts' clocks differ a little.
    if timestamp < oldest - 60:
        message = (
            f"the signature matches none of the tickets kept for {whose}, and its timestamp is "
            f"{_duration(now - timestamp)} old, older than the oldest of them (obtained {_duration(now - oldest)} "
            f"ago): most likely signed with a ticket replaced since. {_CACHED_CONFIG}"
        )
        return Finding("stale_ticket", "error", message)
    if q.wecom:
        call = "wx.agentConfig" if q.call == "agentConfig" else "wx.config (or wx.agentConfig)"
        message = _WECOM_NO_MATCH.format(whose=whose, kept=len(kept), call=call)
        return Finding("signature_mismatch", "error", message)
    earlier = f" and the {len(kept) - 1} before it" if len(kept) > 1 else ""
    message = (
        f"the signature matches no ticket kept for {whose} (the current one{earlier}) for the page URL, the "
        "landing URL or their usual variants. Pass wx.config the appId, nonceStr, timestamp "
        "and signature of one answer unchanged, sign exactly location.href without its #fragment, and check that "
        "nothing else (another server, an old cache) signs for this page."
    )
    return Finding("signature_mismatch", "error", message)


_WECOM_NO_MATCH = (
    "the signature matches none of the {kept} corp and agent tickets kept for {whose}, for the page URL, "
    "the landing URL or their usual variants (#fragment, percent-encoding, port, trailing slash, scheme). Pass "
    "{call} the nonceStr, timestamp and signature of one answer unchanged (wx.config: /v1/signature's, "
    "wx.agentConfig: /v1/agent-signature's), sign exactly location.href without its #fragment (in an iframe, "
    "top.location.href; send landingUrl for a single-page app), fetch a fresh signature on every page load rather "
    "than a cached one, and check that nothing else (another server, an old cache) signs for this page."
)


# -- the client's words ----------------------------------------------------------------------


def _err_msg_findings(q: _Question, text: str) -> list[Finding]:
    """What the (lower-cased) errMsg means: WeChat's phrases, and WeCom's 40013, 80001 and 42012."""
    findings = []
    host, wecom = q.page.host, q.wecom
    if "the permission value is offline verifying" in text or "fail_nopermission" in text:
        message = _WECOM_OFFLINE_VERIFYING if wecom else _OFFLINE_VERIFYING
        findings.append(Finding("offline_verifying", "error", message))
    if "invalid url domain" in text:
        template = _WECOM_INVALID_URL_DOMAIN if wecom else _INVALID_URL_DOMAIN
        lacks = f"{_CONSOLE_LACKS} (or the corpid is another corp's)" if wecom else _OWN_LIST_LACKS
        findings.append(
            Finding("invalid_url_domain", "error", template.format(host=host, cause=_domain_cause(q, lacks)))
        )
    if "permission denied" in text:
        message = _WECOM_PERMISSION_DENIED if wecom else _PERMISSION_DENIED
        findings.append(Finding("permission_denied", "error", message))
    if 40013 in q.errcodes:
        findings.append(Finding("invalid_corp_id", "error", _INVALID_CORP_ID + _corp_id_cause(q)))
    elif q.client == "wecom" and q.meant and not any(e.account.wecom for e in q.meant):
        findings.append(Finding("invalid_corp_id", "warning", _OFFICIAL_IN_WECOM.format(whose=_whose(q.meant))))
    if 80001 in q.errcodes:
        whose = _whose(q.meant) if q.meant else "the WeCom app"
        cause = _domain_cause(q, f"{_CONSOLE_LACKS} (or the agentid is another app's)")
        findings.append(
            Finding("untrusted_domain", "error", _UNTRUSTED_DOMAIN.format(host=host, whose=whose, cause=cause))
        )
    if 42012 in q.errcodes:
        message = _TICKET_UNUSABLE if q.evidence.signature is not None else _TICKET_UNUSABLE + _SEND_THE_VALUES
        findings.append(Finding("ticket_unusable", "error", message))
    return findings


def _domain_cause(q: _Question, signed: str) -> str:
    """`signed` (why the console's list must lack the host) when the service signs for it, else that it does not."""
    return (
        f"this service signs for it, so {signed}" if _signs_for_host(q) else "this service does not sign for it either"
    )


def _corp_id_cause(q: _Question) -> str:
    """What the appId sent says about a 40013."""
    app_id = q.evidence.app_id
    if app_id is None:
        return " Send appId (the corpid the page passed) to have it checked."
    if not q.meant:
        return f" {app_id!r} is not the corp_id of any app of this service."
    corp = q.meant[0].account
    if not corp.wecom:
        return (
            f" {app_id!r} is the official account {_whose(q.meant)}'s appId: a WeCom page passes the corp_id "
            '(ww...), signed with the corp ticket of a WeCom app of this service (kind = "wecom").'
        )
    if app_id != corp.app_id:
        return f" {app_id!r} names {_whose(q.meant)}: pass its corp_id itself, {corp.app_id}, not a name or a key."
    return (
        f" {app_id} is the corp of {_whose(q.meant)}: with that passed, the user is signed in to another corp "
        "(the page was opened in another corp's WeCom), or wx.agentConfig's corpid differs from wx.config's appId."
    )


_CONSOLE_LACKS = "the app's trusted domains in the WeCom admin console lack it"
_OWN_LIST_LACKS = "the official account's own list lacks it (or the appId is another's)"
_OFFICIAL_IN_WECOM = (
    "this page runs in the WeCom client with the appId of the official account {whose}: WeCom verifies wx.config "
    "against a corp (appId: the corp_id, signed with the corp ticket) and answers 'invalid corpId' (40013) "
    'otherwise. Sign it for a WeCom app of the corp (kind = "wecom").'
)
_OFFLINE_VERIFYING = (
    "'the permission value is offline verifying' means WeChat had no working wx.config when the API was called: "
    "the config failed (see the other findings), the API is missing from jsApiList, or it was called before "
    "wx.ready. Call the share APIs inside wx.ready and list them in jsApiList; the page helper does both."
)
_WECOM_OFFLINE_VERIFYING = (
    "'the permission value is offline verifying' (or fail_nopermission) means the WeCom client had no working "
    "wx.config when the API was called (for an API that needs the app's identity: no working wx.agentConfig): "
    "that call failed (see the other findings), the API is missing from jsApiList, or it was called before "
    "wx.ready (or before agentConfig's success). Call the APIs after those and list them in jsApiList."
)
_INVALID_URL_DOMAIN = (
    "'invalid url domain' means {host} is not one of the JS secure domains (JS接口安全域名) set for this appId in "
    "the WeChat admin console; {cause}. An account has up to 5, without IP addresses or ports; a domain covers "
    "its subdomains."
)
_WECOM_INVALID_URL_DOMAIN = (
    "'invalid url domain' means {host} is not bound to the corp; {cause}. Set it as a trusted domain (可信域名) of "
    "the app (应用管理 → the app → 网页授权及JS-SDK); a domain covers its subdomains."
)
_PERMISSION_DENIED = (
    "'permission denied' means the official account may not use this API: custom share cards need a verified "
    "(认证) account with the share permission."
)
_WECOM_PERMISSION_DENIED = (
    "'permission denied' means the WeCom app may not use this API: grant it the permission in the WeCom admin "
    "console, and for an API that needs the app's identity call wx.agentConfig (signed with /v1/agent-signature) "
    "first."
)
_INVALID_CORP_ID = (
    "'invalid corpId' (40013) means the corpid passed (wx.config's appId, wx.agentConfig's corpid) is not the corp "
    "the app belongs to, or not the corp the user is signed in to: both must be the corp_id (企业ID, ww...) of the "
    "app's corp, as /v1/signature's appId and /v1/agent-signature's corpid are."
)
_UNTRUSTED_DOMAIN = (
    "'not match any reliable domain' (80001) means {host} is not a trusted domain (可信域名) of {whose}: set it in "
    "the WeCom admin console (应用管理 → the app → 网页授权及JS-SDK → 可信域名), its ownership verified (the "
    "WW_verify_....txt file served at the domain's root) and ICP-filed under the corp's subject, a port other than "
    "80 and 443 included; {cause}."
)
_TICKET_UNUSABLE = (
    "42012 (jsapi_ticket unusable) means WeCom does not accept the ticket the signature was made with for this call: "
    "wx.agentConfig needs the agent ticket of the app its agentid names (fetched with that app's own token), "
    "wx.config the corp ticket. Sign wx.agentConfig with /v1/agent-signature and wx.config with /v1/signature."
)
_SEND_THE_VALUES = " Send the signature, nonceStr and timestamp passed, and the doctor names the ticket that made them."


# -- words -----------------------------------------------------------------------------------


def _name(account: Account) -> str:
    """An account as messages name it: its key (appId, or corp_id:agent_id), after its name if that differs."""
    return account.key if account.name == account.key else f"{account.name} ({account.key})"


def _whose(meant: Sequence[AccountTickets]) -> str:
    """The account meant, or the corp whose apps were."""
    if len(meant) == 1:
        return _name(meant[0].account)
    return f"the apps of corp {meant[0].account.app_id} ({_some_accounts([e.account for e in meant])})"


def _domains_of(meant: Sequence[AccountTickets]) -> str:
    return ", ".join(sorted({d for e in meant for d in e.account.allowed_hosts}))


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
