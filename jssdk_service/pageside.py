"""The page's side of the service: the helper script, the signature doctor, and failure reports.

    GET  /v1/jssdk-share.js      the page helper (static/jssdk-share.js): signs the page, sets the share
                                 card, reports wx.config failures; ETag, and a year of caching at ?v=<ETag>
    POST /v1/doctor              why WeChat refused a config: `doctor.diagnose` against the current and
                                 recent tickets of the account the page names (a corp_id: the corp's
                                 few WeCom apps, both tickets of each) and of a few others signing for
                                 its host, never of every account; with only a url, the latest report
                                 from it
    POST /v1/report              what the helper sends on wx.error: diagnosed, kept (the app's
                                 `PageReports`), counted in jssdk_reports_total, logged

Answers are JSON with `Cache-Control: no-store`; bad input raises the `errors` the web layer renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, replace
from importlib import resources

from aiohttp import web

from jssdk_service import shapes
from jssdk_service.config import Account
from jssdk_service.credentials import AccountCredentials
from jssdk_service.doctor import (
    MAX_CORP_APPS,
    MAX_OTHERS,
    AccountTickets,
    Evidence,
    diagnose,
    evidence_from_body,
    page_url,
)
from jssdk_service.endpoint import json_response
from jssdk_service.errors import UpstreamError
from jssdk_service.keys import CLOCK, REPORTS, SETTINGS, SIGNERS, STORE, find_account
from jssdk_service.metrics import REPORTS as REPORTS_TOTAL
from jssdk_service.pageurl import covering_domains
from jssdk_service.reports import PageReport
from jssdk_service.shapes import Finding, Findings, decode_body

log = logging.getLogger("jssdk_service.pageside")

# The helper at a URL without its version may change with the next release: browsers re-check it hourly.
_SCRIPT_MAX_AGE = 3600
_IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    """A file shipped in `jssdk_service/static`, with its content type and a version from its bytes."""

    body: bytes
    content_type: str
    version: str

    @classmethod
    def load(cls, name: str, content_type: str) -> Asset:
        body = resources.files("jssdk_service").joinpath("static", name).read_bytes()
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:16])

    def response(self, request: web.Request, cache_control: str) -> web.Response:
        """The file, or 304 when the browser's copy is current."""
        headers = {"ETag": f'"{self.version}"', "Cache-Control": cache_control}
        if self.version in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body, headers={**headers, "Content-Type": self.content_type})


_SCRIPT = Asset.load("jssdk-share.js", "text/javascript; charset=utf-8")


async def script(request: web.Request) -> web.Response:
    """The page helper: cached for a year at `?v=<its ETag>`, for an hour (then revalidated) otherwise."""
    pinned = request.query.get("v") == _SCRIPT.version
    return _SCRIPT.response(request, _IMMUTABLE if pinned else f"public, max-age={_SCRIPT_MAX_AGE}")


async def doctor(request: web.Request) -> web.Response:
    """Findings about a wx.config; a bare url gets the diagnosis of the latest report from that page."""
    evidence = evidence_from_body(decode_body(await request.read(), shapes.Evidence))
    bare = (evidence.signature, evidence.nonce, evidence.timestamp, evidence.err_msg) == (None, None, None, None)
    app = request.app
    replayed = app[REPORTS].replay(page_url(evidence.url).raw, app[CLOCK]()) if bare else None
    return _answer(replayed if replayed is not None else (await _diagnose(app, evidence))[1])


async def report(request: web.Request) -> web.Response:
    """A page's wx.error: diagnosed, kept, counted and logged; the answer carries the findings."""
    evidence = evidence_from_body(decode_body(await request.read(), shapes.Report))
    err_msg = evidence.err_msg or ""
    if evidence.user_agent is None and request.headers.get("User-Agent"):
        evidence = replace(evidence, user_agent=request.headers["User-Agent"][:1024])
    app = request.app
    meant, findings = await _diagnose(app, evidence)
    # Several apps meant: a corp_id named them, which stands for them all.
    name = meant[0].name if len(meant) == 1 else meant[0].app_id if meant else "unknown"
    page = page_url(evidence.url)
    app[REPORTS].keep(PageReport(received_at=app[CLOCK](), page=page.raw, err_msg=err_msg, findings=tuple(findings)))
    REPORTS_TOTAL.labels(name).inc()
    log.info(
        "app=%s page %s%s reported %r; doctor: %s",
        name,
        page.host,
        page.path,
        err_msg[:200],
        ", ".join(f.code for f in findings) or "no finding",
    )
    return _answer(findings)


async def _diagnose(app: web.Application, evidence: Evidence) -> tuple[tuple[Account, ...], list[Finding]]:
    """The accounts the page meant and the findings, from their tickets (and a few others'): O(1) in accounts.

    The account is the one the appId names, or the only one configured; an appId that is a corp_id
    stands for that corp's WeCom apps (a few: `MAX_CORP_APPS`), each tried; with no appId, the only
    one signing for the page's host. With several accounts and none of them named, no ticket is
    tried (the doctor says it needs the appId).
    """
    page = page_url(evidence.url)
    settings, store = app[SETTINGS], app[STORE]
    named = find_account(app, evidence.app_id)
    if named is None and evidence.app_id and evidence.agent_id:  # wx.agentConfig's corpid and agentid: one app
        named = settings.account(f"{evidence.app_id}:{evidence.agent_id}")
    meant = (named,) if named is not None else settings.corp_apps(evidence.app_id or "")[:MAX_CORP_APPS]
    # MAX_OTHERS more than the accounts meant (at least one): they may be among them.
    covering = _signing_for(app[SIGNERS], page.host, limit=MAX_OTHERS + max(1, len(meant)))
    if not meant and evidence.app_id is None and len(covering) == 1:
        meant = (covering[0],)
    others = [a for a in covering if all(a is not m for m in meant)][:MAX_OTHERS]
    # Cold start: join the first refresh; when WeChat fails, the findings say no ticket was there.
    # Their credentials taken before any wait: an authorizer may be removed meanwhile.
    creds = [store[a.key] for a in meant]
    await asyncio.gather(*(_first_ticket(c) for c in creds if not c.recent_tickets))
    entries = [_held(c) for c in creds]
    # Others' tickets as they are: a diagnosis never waits for another account's refresh.
    tickets = [_held(store[a.key]) for a in others]
    return meant, diagnose(evidence, entries, others=tickets, configured=settings.accounts, now=app[CLOCK]())


async def _first_ticket(creds: AccountCredentials) -> None:
    with contextlib.suppress(UpstreamError):
        await creds.ticket()


def _held(creds: AccountCredentials) -> AccountTickets:
    """The account's recent tickets (and a WeCom app's agent tickets), as they are now."""
    return AccountTickets(creds.account, tuple(creds.recent_tickets), tuple(creds.recent_agent_tickets))


def _signing_for(signers: dict[str, tuple[Account, ...]], host: str, *, limit: int) -> list[Account]:
    """Up to `limit` accounts that sign for `host`, the nearest domain's first, each in configured order."""
    found: list[Account] = []
    for domain in covering_domains(host):
        for account in signers.get(domain, ()):
            if all(a is not account for a in found):
                found.append(account)
                if len(found) == limit:
                    return found
    return found


def _answer(findings: list[Finding]) -> web.Response:
    return json_response(Findings(findings=findings))
