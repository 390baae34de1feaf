"""Signing: WeChat's algorithm, the official vectors, and raw signing of tricky URLs."""

from __future__ import annotations

import pytest

from jssdk_service.signing import NonceSource, sign_url, strip_fragment

from .helpers import OFFICIAL_VECTORS, Vector, wechat_sha1


@pytest.mark.parametrize("vector", OFFICIAL_VECTORS, ids=["the-worked-example", "with-a-port-and-a-query"])
def test_the_official_vectors(vector: Vector) -> None:
    """The worked example of WeChat's documentation, and the second published vector (whose URL carries a port
    and a query), sign to their published values."""
    signature = sign_url(ticket=vector.ticket, nonce=vector.nonce, timestamp=vector.timestamp, url=vector.url)
    assert signature == vector.signature


def test_the_fragment_is_dropped() -> None:
    """A URL with a #fragment signs exactly like the same URL without it."""
    plain = sign_url(ticket="t", nonce="n", timestamp=1, url="https://example.com/p?a=1")
    assert sign_url(ticket="t", nonce="n", timestamp=1, url="https://example.com/p?a=1#top") == plain
    assert sign_url(ticket="t", nonce="n", timestamp=1, url="https://example.com/p?a=1#/route?x=#y") == plain
    assert strip_fragment("https://example.com/#") == "https://example.com/"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/商品/详情?id=1",
        "https://example.com/p?q=%E4%B8%AD%E6%96%87&x=a%2Fb",
        "https://example.com:8443/p",
        "https://example.com/dir/",
        "https://example.com",
        "https://example.com/p?a=1&a=2&b=",
    ],
)
def test_urls_are_signed_raw(url: str) -> None:
    """Unicode paths, encoded queries, ports and trailing slashes are signed byte for byte, unchanged."""
    assert sign_url(ticket="T", nonce="N", timestamp=7, url=url) == wechat_sha1("T", "N", 7, url)


def test_trailing_slash_and_port_change_the_signature() -> None:
    """`http://host` and `http://host/` are different pages to WeChat, and so are explicit ports."""
    a = sign_url(ticket="T", nonce="N", timestamp=7, url="https://example.com")
    b = sign_url(ticket="T", nonce="N", timestamp=7, url="https://example.com/")
    c = sign_url(ticket="T", nonce="N", timestamp=7, url="https://example.com:443/")
    assert len({a, b, c}) == 3


def test_nonces_are_unique_hex_of_16_characters() -> None:
    """Nonces are 16 hex characters and do not repeat, across batch boundaries too."""
    nonces = NonceSource()
    drawn = [nonces() for _ in range(2000)]
    assert all(len(n) == 16 and int(n, 16) >= 0 for n in drawn)
    assert len(set(drawn)) == len(drawn)
