"""Page URL validation and the JS secure domain rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jssdk_service.errors import HostNotAllowed, InvalidURL
from jssdk_service.pageurl import PageURL, host_allowed, parse_page_url, require_allowed


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "example.com/p",
        "/relative/path",
        "ftp://example.com/",
        "javascript:alert(1)",
        "https://",
        "https://exa mple.com/",
        "https://example.com\t/",
        "https://example.com/\n",
        "https://exam\x00ple.com/",
        "https://example.com:99999/",
        "https://example.com:0/",
        "https://example.com:8o8o/",
        "https://example.com:+80/",
        "https://user:pw@example.com/",
        "https://evil.com@example.com/",
        "https://[::1/",
        "https://" + "a" * 4100 + ".com/",
    ],
)
def test_bad_urls_are_invalid(url: str | None) -> None:
    """Missing, relative, non-http(s), spaced, control-character, bad-port, credentialed and long URLs fail."""
    with pytest.raises(InvalidURL):
        parse_page_url(url)


def test_a_url_of_exactly_4096_characters_is_accepted() -> None:
    """The length limit is inclusive: 4096 characters are fine, 4097 are not."""
    base = "https://example.com/?q="
    parse_page_url(base + "a" * (4096 - len(base)))
    with pytest.raises(InvalidURL):
        parse_page_url(base + "a" * (4097 - len(base)))


def test_parsing_keeps_the_url_raw_and_drops_the_fragment() -> None:
    """The signed form is the input without its fragment; the host is lower-cased for matching only."""
    page = parse_page_url("HTTPS://Example.COM:8443/商品?q=%E4%B8%AD#frag")
    assert page.raw == "HTTPS://Example.COM:8443/商品?q=%E4%B8%AD"
    assert (page.scheme, page.host, page.port, page.path) == ("https", "example.com", 8443, "/商品")


def test_ipv6_and_ip_hosts_parse() -> None:
    """Bracketed IPv6 and IPv4 hosts are accepted."""
    assert parse_page_url("http://[::1]:8080/").host == "[::1]"
    assert parse_page_url("http://127.0.0.1/").host == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("example.com", True),
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("evilexample.com", False),
        ("example.com.evil.com", False),
        ("example.co", False),
        ("com", False),
    ],
)
def test_parent_domains_cover_subdomains_only(host: str, allowed: bool) -> None:
    """`example.com` covers its subdomains, never look-alikes that merely end or start with it."""
    assert host_allowed(host, ["example.com"]) is allowed


@pytest.mark.parametrize(
    ("host", "domains", "allowed"),
    [
        ("127.0.0.1", ("127.0.0.1",), True),
        ("evil.127.0.0.1", ("127.0.0.1",), False),
        ("a.b.127.0.0.1", ("127.0.0.1",), False),
        ("evil.0.0.1", ("0.0.1",), False),
        ("evil.0x7f000001", ("0x7f000001",), False),
        ("10.0.0.1", ("0.0.1", "0.1", "1"), False),
        ("[::1]", ("[::1]",), True),
        ("[::ffff:1.2.3.4]", ("2.3.4]", "3.4]"), False),
        ("[::ffff:1.2.3.4]", ("[::ffff:1.2.3.4]",), True),
        ("::ffff:1.2.3.4", ("2.3.4", "3.4"), False),
        ("a.example.com", ("127.0.0.1", "example.com"), True),
    ],
)
def test_an_ip_address_matches_itself_only(host: str, domains: tuple[str, ...], allowed: bool) -> None:
    """An IPv4 or IPv6 literal is allowed only when listed itself: an IP host is no subdomain of anything."""
    assert host_allowed(host, domains) is allowed


def test_ip_literals_from_parsed_urls_match_themselves_only() -> None:
    """Hosts as the URL parser gives them: an IP domain covers that address alone, a name still its subdomains."""
    domains = ("127.0.0.1", "[::1]", "example.com")
    for url, allowed in [
        ("http://127.0.0.1/p", True),
        ("http://evil.127.0.0.1/p", False),
        ("http://[::1]:8080/p", True),
        ("http://[::2]/p", False),
        ("https://m.example.com/p", True),
    ]:
        assert host_allowed(parse_page_url(url).host, domains) is allowed, url


def test_require_allowed_names_the_host() -> None:
    """A refused host is named in the error."""
    with pytest.raises(HostNotAllowed, match=r"evil\.com"):
        require_allowed("evil.com", ["example.com"])


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/product/42?from=timeline&utm_source=wechat",
        "http://localhost:8080",
        "https://a.b.example.com:8443/x/y/?q=1#frag",
        "https://example.com?q#f",
        "https://example.com/a b?c d",
        "https://example.com/p#x\x01",
        "https://example.com:65535/",
        "https://example.com:65536/",
        "https://example.com:080/",
        "https://example.com./p",
        "https://example.com@evil.com/",
        "https://example.com\\@evil.com/",
        "https://example.com:80abc/",
        "https://-example.com/",
        "https://exa_mple.com/",
        "HTTPS://EXAMPLE.COM/P",
        "http://[::1]:80/",
    ],
)
def test_the_fast_path_agrees_with_the_general_parser(url: str) -> None:
    """The one-regex fast path accepts and refuses exactly what the general parser does."""
    from jssdk_service.pageurl import _parse_general

    def outcome(parse: Callable[[str], PageURL]) -> PageURL | str:
        try:
            return parse(url)
        except InvalidURL:
            return "invalid"

    assert outcome(parse_page_url) == outcome(_parse_general)
