"""The wx.config failures pages reported lately, per process: what the doctor replays for a bare URL."""

from __future__ import annotations

from collections import deque

import msgspec

from jssdk_service.shapes import Finding

RECENT_REPORTS = 100


class PageReport(msgspec.Struct, frozen=True, kw_only=True):
    """A wx.config failure a page reported, as diagnosed when it arrived; no user agent, no landing URL."""

    received_at: float
    page: str
    err_msg: str
    findings: tuple[Finding, ...]


class PageReports:
    """The last `RECENT_REPORTS` reports, oldest first."""

    def __init__(self) -> None:
        self._kept: deque[PageReport] = deque(maxlen=RECENT_REPORTS)

    def __repr__(self) -> str:
        return f"PageReports(kept={len(self._kept)})"

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, report: PageReport) -> None:
        self._kept.append(report)

    def replay(self, page: str, now: float) -> list[Finding] | None:
        """The latest report from `page` as findings: a note saying so, then its diagnosis; None if none is kept."""
        from_page = [r for r in self._kept if r.page == page]
        if not from_page:
            return None
        latest = from_page[-1]
        ago = max(0, round(now - latest.received_at))
        message = (
            f"a page at this URL reported {latest.err_msg[:200]!r} {ago}s ago ({len(from_page)} of the last "
            f"{len(self._kept)} reports kept came from it); the other findings are that report's diagnosis."
        )
        return [Finding("reported", "info", message), *latest.findings]
