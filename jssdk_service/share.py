"""Share payloads for `wx.updateAppMessageShareData` / `wx.updateTimelineShareData`. Pure.

An account has default share fields and rules that match a page path and override some fields. A
rule's pattern is a path prefix (`/shop/`) or a glob (`/blog/*/comments`, `/docs/**`): `*` stays
within one path segment, `**` crosses segments, `?` is one character. The most specific matching
rule (the most literal characters; the first one in the file on a tie) wins. Request overrides are
merged last. Relative `imgUrl` and `link` are resolved against the page; `link` defaults to the
signed page URL and must stay inside the account's JS secure domains.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from jssdk_service.errors import HostNotAllowed, InvalidShare, InvalidURL
from jssdk_service.pageurl import PageURL, parse_page_url, require_allowed

# `link` and `imgUrl`: an http(s) URL, or a reference relative to the page (no other scheme), with
# no white space or control character in it. The OpenAPI document carries the same pattern.
REFERENCE_PATTERN = r"^(?:[Hh][Tt][Tt][Pp][Ss]?://|(?![A-Za-z][A-Za-z0-9+.-]*:))[^\x00-\x20\x7f]+$"
_REFERENCE = re.compile(REFERENCE_PATTERN)
_FALLBACK_IMAGE = "/favicon.ico"


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareFields:
    """Any subset of the four share fields; `None` means "not set here"."""

    title: str | None = None
    desc: str | None = None
    link: str | None = None
    img_url: str | None = None

    def over(self, base: ShareFields) -> ShareFields:
        """These fields, falling back to `base` for the ones not set here."""
        return ShareFields(
            title=base.title if self.title is None else self.title,
            desc=base.desc if self.desc is None else self.desc,
            link=base.link if self.link is None else self.link,
            img_url=base.img_url if self.img_url is None else self.img_url,
        )


@dataclass(frozen=True, slots=True)
class ShareRule:
    """Share fields for pages whose path matches `pattern` (a prefix, or a glob with `*`/`?`)."""

    pattern: str
    fields: ShareFields
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    specificity: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", _compile_pattern(self.pattern))
        object.__setattr__(self, "specificity", len(self.pattern.replace("*", "").replace("?", "")))

    def matches(self, path: str) -> bool:
        return self._regex.match(path) is not None


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    if not any(ch in pattern for ch in "*?"):
        return re.compile(re.escape(pattern))
    pieces = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(p, re.escape(p)) for p in pieces) + r"\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class SharePolicy:
    """An account's share defaults and rules."""

    defaults: ShareFields = ShareFields()
    rules: tuple[ShareRule, ...] = ()

    def fields_for(self, path: str) -> ShareFields:
        best: ShareRule | None = None
        for rule in self.rules:
            if rule.matches(path) and (best is None or rule.specificity > best.specificity):
                best = rule
        return self.defaults if best is None else best.fields.over(self.defaults)


def share_fields(
    *, title: str | None, desc: str | None, link: str | None, img_url: str | None, where: str
) -> ShareFields:
    """Share fields whose `link` and `imgUrl` are http(s) URLs or references relative to the page."""
    if img_url is not None:
        _check_http_reference(img_url, where=f"{where}.imgUrl")
    if link is not None:
        _check_http_reference(link, where=f"{where}.link")
    return ShareFields(title=title, desc=desc, link=link, img_url=img_url)


def _check_http_reference(value: str, *, where: str) -> None:
    """An absolute http(s) URL, or a reference relative to the page (a path); nothing else."""
    if not value.strip():
        raise InvalidShare(f"{where} must not be empty")
    if not _REFERENCE.match(value):
        raise InvalidShare(f"{where} must be an http(s) URL or a path relative to the page, without spaces")


def check_link_domain(fields: ShareFields, allowed_hosts: Collection[str], *, where: str) -> None:
    """Raise `HostNotAllowed` when an absolute (or protocol-relative) `link` leaves the JS secure domains."""
    if fields.link is None or not urlsplit(fields.link).netloc:
        return
    absolute = fields.link if urlsplit(fields.link).scheme else "https:" + fields.link
    try:
        host = parse_page_url(absolute).host
    except InvalidURL:
        raise HostNotAllowed(f"{where}.link has no host that could be a JS secure domain") from None
    require_allowed(host, allowed_hosts, what=f"{where}.link")


def share_payloads(
    page: PageURL,
    policy: SharePolicy,
    allowed_hosts: Collection[str],
    override: ShareFields | None = None,
) -> dict[str, dict[str, str]]:
    """`appMessage` and `timeline` payloads for `page`, ready for the two share APIs."""
    fields = policy.fields_for(page.path)
    if override is not None:
        fields = override.over(fields)
    link = page.raw if fields.link is None else urljoin(page.raw, fields.link)
    require_allowed(parse_page_url(link).host, allowed_hosts, what="share link")
    title = fields.title if fields.title is not None else page.host
    img_url = urljoin(page.raw, fields.img_url if fields.img_url is not None else _FALLBACK_IMAGE)
    desc = fields.desc if fields.desc is not None else link
    return {
        "appMessage": {"title": title, "desc": desc, "link": link, "imgUrl": img_url},
        "timeline": {"title": title, "link": link, "imgUrl": img_url},
    }
