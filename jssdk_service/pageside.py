"""The page's side of the service: the helper script, the signature doctor, failure reports, the demo.

    GET  /v1/jssdk-share.js      the page helper (static/jssdk-share.js): signs the page, sets the share
                                 card, reports wx.config failures; ETag, and a year of caching at ?v=<ETag>
    POST /v1/doctor              why WeChat refused a config: `doctor.diagnose` against the current and
                                 recent tickets of the account the page names (and of a few others
                                 signing for its host), never of every account; with only a url, the
                                 latest report from it
    POST /v1/report              what the helper sends on wx.error: diagnosed, kept (the last
                                 RECENT_REPORTS, per process), counted in jssdk_reports_total, logged
    GET  /demo                   `serve --sandbox` only: a page that uses the helper, with a sandbox
    GET  /demo/sandbox-wx.js     stand-in for WeChat's jweixin (the sandbox's tickets are not WeChat's)

Answers are JSON with `Cache-Control: no-store`; bad input raises the `errors` the web layer renders.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from importlib import resources

import orjson
from aiohttp import web

from jssdk_service.bodies import json_object, preflight
from jssdk_service.config import Account, Settings
from jssdk_service.credentials import CredentialStore
from jssdk_service.doctor import (
    MAX_OTHERS,
    AccountTickets,
    Evidence,
    Finding,
    diagnose,
    evidence_from_mapping,
    page_url,
)
from jssdk_service.errors import InvalidRequest, UpstreamError
from jssdk_service.metrics import REPORTS
from jssdk_service.pageurl import covering_domains

log = logging.getLogger("jssdk_service.pageside")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RECENT_REPORTS = 100
_JSON = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
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


@dataclass(frozen=True, slots=True, kw_only=True)
class PageReport:
    """A wx.config failure a page reported, as diagnosed when it arrived; no user agent, no landing URL."""

    received_at: float
    page: str
    err_msg: str
    findings: tuple[Finding, ...]


class PageSide:
    """The handlers of this module for one application; the credential store is looked up per request."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Callable[[], CredentialStore],
        clock: Callable[[], float],
        demo: bool = False,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._demo = demo
        self._script = Asset.load("jssdk-share.js", "text/javascript; charset=utf-8")
        self.reports: deque[PageReport] = deque(maxlen=RECENT_REPORTS)
        # Each JS secure domain's accounts, in configured order: who signs for a host, without a scan.
        by_domain: dict[str, list[Account]] = {}
        for account in settings.accounts:
            for domain in account.allowed_hosts:
                by_domain.setdefault(domain, []).append(account)
        self._by_domain = {domain: tuple(accounts) for domain, accounts in by_domain.items()}

    def __repr__(self) -> str:
        return f"PageSide(reports={len(self.reports)})"

    def routes(self) -> list[tuple[str, str, Handler]]:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/v1/jssdk-share.js", self.script),
            ("POST", "/v1/doctor", self.doctor),
            ("OPTIONS", "/v1/doctor", preflight),
            ("POST", "/v1/report", self.report),
            ("OPTIONS", "/v1/report", preflight),
        ]
        if self._demo:
            page = Asset.load("demo.html", "text/html; charset=utf-8")
            stand_in = Asset.load("sandbox-wx.js", "text/javascript; charset=utf-8")
            routes += [
                ("GET", "/demo", _serve(page, "no-cache")),
                ("GET", "/demo/sandbox-wx.js", _serve(stand_in, "no-cache")),
            ]
        return routes

    async def script(self, request: web.Request) -> web.Response:
        """The page helper: cached for a year at `?v=<its ETag>`, for an hour (then revalidated) otherwise."""
        pinned = request.query.get("v") == self._script.version
        return self._script.response(request, _IMMUTABLE if pinned else f"public, max-age={_SCRIPT_MAX_AGE}")

    async def doctor(self, request: web.Request) -> web.Response:
        """Findings about a wx.config; a bare url gets the diagnosis of the latest report from that page."""
        evidence = evidence_from_mapping(await json_object(request))
        bare = (evidence.signature, evidence.nonce, evidence.timestamp, evidence.err_msg) == (None, None, None, None)
        replayed = self._replay(page_url(evidence.url).raw) if bare else None
        return _answer(replayed if replayed is not None else (await self._diagnose(evidence))[1])

    async def report(self, request: web.Request) -> web.Response:
        """A page's wx.error: diagnosed, kept, counted and logged; the answer carries the findings."""
        evidence = evidence_from_mapping(await json_object(request))
        err_msg = evidence.err_msg
        if err_msg is None:
            raise InvalidRequest("errMsg is required: a report says what wx.error (or a share API) answered")
        if evidence.user_agent is None and request.headers.get("User-Agent"):
            evidence = replace(evidence, user_agent=request.headers["User-Agent"][:1024])
        account, findings = await self._diagnose(evidence)
        app = account.name if account is not None else "unknown"
        page = page_url(evidence.url)
        self.reports.append(
            PageReport(
                received_at=self._clock(),
                page=page.raw,
                err_msg=err_msg,
                findings=tuple(findings),
            )
        )
        REPORTS.labels(app).inc()
        log.info(
            "app=%s page %s%s reported %r; doctor: %s",
            app,
            page.host,
            page.path,
            err_msg[:200],
            ", ".join(f.code for f in findings) or "no finding",
        )
        return _answer(findings)

    async def _diagnose(self, evidence: Evidence) -> tuple[Account | None, list[Finding]]:
        """The account the page meant and the findings, from its tickets (and a few others'): O(1) in accounts.

        The account is the one the appId names, or the only one configured; with no appId, the only
        one signing for the page's host. With several accounts and none of them named, no ticket is
        tried (the doctor says it needs the appId).
        """
        page = page_url(evidence.url)
        account = self._settings.account(evidence.app_id)
        # One more than MAX_OTHERS: the account itself may be among them.
        covering = self._signing_for(page.host, limit=MAX_OTHERS + 1)
        if account is None and evidence.app_id is None and len(covering) == 1:
            account = covering[0]
        others = [a for a in covering if a is not account][:MAX_OTHERS]
        store = self._store()
        entry = None
        if account is not None:
            creds = store[account.app_id]
            if not creds.recent_tickets:
                # Cold start: join the first refresh; when WeChat fails, the findings say no ticket was there.
                with contextlib.suppress(UpstreamError):
                    await creds.ticket()
            entry = AccountTickets(account, tuple(creds.recent_tickets))
        # Others' tickets as they are: a diagnosis never waits for another account's refresh.
        tickets = [AccountTickets(a, tuple(store[a.app_id].recent_tickets)) for a in others]
        configured = self._settings.accounts
        return account, diagnose(evidence, entry, others=tickets, configured=configured, now=self._clock())

    def _signing_for(self, host: str, *, limit: int) -> list[Account]:
        """Up to `limit` accounts that sign for `host`, the nearest domain's first, each in configured order."""
        found: list[Account] = []
        for domain in covering_domains(host):
            for account in self._by_domain.get(domain, ()):
                if all(a is not account for a in found):
                    found.append(account)
                    if len(found) == limit:
                        return found
        return found

    def _replay(self, page: str) -> list[Finding] | None:
        """The latest report from `page` as findings: a note saying so, then its diagnosis; None if none is kept."""
        from_page = [r for r in self.reports if r.page == page]
        if not from_page:
            return None
        latest = from_page[-1]
        ago = max(0, round(self._clock() - latest.received_at))
        message = (
            f"a page at this URL reported {latest.err_msg[:200]!r} {ago}s ago ({len(from_page)} of the last "
            f"{len(self.reports)} reports kept came from it); the other findings are that report's diagnosis."
        )
        return [Finding("reported", "info", message), *latest.findings]


def _serve(asset: Asset, cache_control: str) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return asset.response(request, cache_control)

    return serve


def _answer(findings: list[Finding]) -> web.Response:
    return web.Response(body=orjson.dumps({"findings": [f.to_json() for f in findings]}), headers=_JSON)
