"""Page URLs as the signing endpoints accept them, and the JS secure domain rule. Pure."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from typing import NamedTuple

from jssdk_service.errors import HostNotAllowed, InvalidURL
from jssdk_service.signing import strip_fragment

MAX_URL_LENGTH = 4096

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# scheme://netloc path: the split urlsplit makes, without its cost on the hot path.
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)")
_LABELS = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*"
# The everyday URL in one pass: lower-case http(s), a host name, an optional port, no control
# characters anywhere. Anything else takes the general path below, which says what is wrong.
_EVERYDAY = re.compile(
    rf"(https?)://({_LABELS})(?::([1-9][0-9]{{0,4}}))?(/[^?#\x00-\x1f\x7f]*)?(?:\?[^#\x00-\x1f\x7f]*)?"
)
_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?")


class PageURL(NamedTuple):
    """A page URL that may be signed: `raw` is what gets signed (fragment dropped, nothing else)."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str


def parse_page_url(value: str | None) -> PageURL:
    """Validate a page URL; raise `InvalidURL` saying what is wrong with it."""
    if not value:
        raise InvalidURL("url is required")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidURL(f"url is longer than {MAX_URL_LENGTH} characters")
    everyday = _EVERYDAY.match(value)
    if everyday is not None:
        end = everyday.end()
        whole = end == len(value) or (value[end] == "#" and not _CONTROL.search(value, end))
        port = None if everyday[3] is None else int(everyday[3])
        if whole and (port is None or port < 65536):
            return PageURL(everyday[0], everyday[1], everyday[2], port, everyday[4] or "/")
    return _parse_general(value)


def _parse_general(value: str) -> PageURL:
    if _CONTROL.search(value):
        raise InvalidURL("url contains control characters")
    raw = strip_fragment(value)
    parts = _ABSOLUTE.match(raw)
    scheme = parts.group(1).lower() if parts else ""
    if parts is None or scheme not in ("http", "https"):
        raise InvalidURL("url must be an absolute http:// or https:// URL")
    host, port = _split_netloc(parts.group(2))
    return PageURL(raw=raw, scheme=scheme, host=host, port=port, path=parts.group(3) or "/")


def _split_netloc(netloc: str) -> tuple[str, int | None]:
    if not netloc:
        raise InvalidURL("url has no host")
    if "@" in netloc:
        raise InvalidURL("url must not carry user credentials")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise InvalidURL("url has an invalid IPv6 host")
        literal, rest = netloc[1:end], netloc[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise InvalidURL("url has an invalid IPv6 host") from None
        host = f"[{literal.lower()}]"
        if rest and not rest.startswith(":"):
            raise InvalidURL("url has an invalid host")
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text_raw = netloc.partition(":")
        host = name.lower()
        if not _HOSTNAME.fullmatch(host):
            raise InvalidURL("url has an invalid host")
        port_text = port_text_raw if sep else None
    return host.rstrip("."), _parse_port(port_text)


def _parse_port(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidURL("url has an invalid port")
    return int(text)


def normalise_domain(domain: str) -> str:
    """A configured JS secure domain, lower-cased, without a leading `.` or a trailing `.`."""
    return domain.strip().lower().strip(".")


def host_allowed(host: str, domains: Collection[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one (`a.example.com` for `example.com`).

    `host` is as `parse_page_url` gives it (lower-case, no trailing dot). An IP address matches itself
    only: a host that is an IP literal (bracketed IPv6, or ending in a numeric label, which browsers
    read as IPv4) is no subdomain of anything, so a configured `127.0.0.1` never covers
    `evil.127.0.0.1`. Deciding that on the host is enough: every suffix of a host shares its last
    label, so only a host that is no IP literal can have a suffix that is a configured domain (and an
    IPv6 literal without dots, bracketed or not, has no suffix at all).
    """
    if host in domains:
        return True
    # The last character and a substring search clear almost every name without a closer look.
    if (host[-1:] in _NUMERIC_TAIL or "0x" in host) and is_ip_literal(host):
        return False
    dot = host.find(".")
    while dot >= 0:
        if host[dot + 1 :] in domains:
            return True
        dot = host.find(".", dot + 1)
    return False


def is_ip_literal(host: str) -> bool:
    """Whether `host` is an IP address: bracketed IPv6, or ending in a number (decimal, or `0x` hex),
    which browsers read as IPv4. An unbracketed IPv6 literal counts too when it ends in IPv4 form."""
    if host.endswith("]"):
        return True
    last = host[host.rfind(".") + 1 :]
    return last.isdigit() or (last[:2] == "0x" and all(c in _HEX for c in last[2:]))


def covering_domains(host: str) -> list[str]:
    """The domains that allow `host` (see `host_allowed`): the host itself, then, unless it is an IP
    literal, each parent domain, nearest first (`a.b.com`, `b.com`, `com`)."""
    if is_ip_literal(host):
        return [host]
    domains = [host]
    dot = host.find(".")
    while dot >= 0:
        domains.append(host[dot + 1 :])
        dot = host.find(".", dot + 1)
    return domains


# A host ending in one of these may be an IP literal: IPv4 (a numeric last label) or bracketed IPv6.
_NUMERIC_TAIL = frozenset("0123456789]")
# A last label `0x` + hexadecimal digits is a number to a browser too.
_HEX = frozenset("0123456789abcdef")


def require_allowed(host: str, domains: Collection[str], *, what: str = "url") -> None:
    """Raise `HostNotAllowed` unless `host_allowed`."""
    if not host_allowed(host, domains):
        raise HostNotAllowed(f"{what} host {host!r} is not a JS secure domain of this account")
