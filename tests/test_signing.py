"""Signing: WeChat's algorithm, the official vectors, and raw signing of tricky URLs."""

from __future__ import annotations

import hashlib

import pytest

from jssdk_service.signing import NonceSource, sign_url, strip_fragment


def test_official_vector_from_the_docs() -> None:
    """The worked example of WeChat's documentation signs to its published value."""
    signature = sign_url(
        ticket="sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
        nonce="Wm3WZYTPz0wzccnW",
        timestamp=1414587457,
        url="http://mp.weixin.qq.com?params=value",
    )
    assert signature == "0f9de62fce790f9a083d5c99e95740ceb90c27ed"


def test_second_vector_with_a_port() -> None:
    """The second published vector, whose URL carries a port and a query, signs to its value."""
    signature = sign_url(
        ticket="bxLdikRXVbTPdHSM05e5u4RbEYQn7pNQMPrfzl8lJNb1foLDa3HIwI3BRMkQmSO_5F64VFa75uURcq6Uz7QHgA",
        nonce="82693e11-b9bc-448e-892f-f5289f46cd0f",
        timestamp=1419835025,
        url="http://omstest.vmall.com:23568/thirdparty/wechat/vcode/gotoshare?quantity=1&batchName=MATE7",
    )
    assert signature == "c6f04b64d6351d197b71bd23fb7dd2d44c0db486"


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
    expected = hashlib.sha1(f"jsapi_ticket=T&noncestr=N&timestamp=7&url={url}".encode()).hexdigest()
    assert sign_url(ticket="T", nonce="N", timestamp=7, url=url) == expected


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
