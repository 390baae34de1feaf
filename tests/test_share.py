"""Share payloads: defaults, path rules, overrides, relative references and the link domain rule."""

from __future__ import annotations

import orjson
import pytest

from jssdk_service.errors import HostNotAllowed, InvalidShare
from jssdk_service.pageurl import parse_page_url
from jssdk_service.shapes import ShareRequest, decode_body
from jssdk_service.share import (
    ShareFields,
    SharePolicy,
    ShareRule,
    check_link_domain,
    share_fields,
    share_payloads,
)

HOSTS = ("example.com",)
POLICY = SharePolicy(
    defaults=ShareFields(title="Shop", desc="Everything", img_url="/img/default.png"),
    rules=(
        ShareRule("/blog/", ShareFields(title="Blog")),
        ShareRule("/blog/*/comments", ShareFields(title="Comments", img_url="https://cdn.example.com/c.png")),
        ShareRule("/docs/**", ShareFields(desc="Docs")),
        ShareRule("/item?", ShareFields(title="Item")),
    ),
)


def payloads(url: str, override: ShareFields | None = None) -> dict[str, dict[str, str]]:
    return share_payloads(parse_page_url(url), POLICY, HOSTS, override)


def test_defaults_apply_and_link_is_the_page() -> None:
    """Without a matching rule the defaults apply; link is the page URL without its fragment."""
    result = payloads("https://example.com/home?x=1#top")
    assert result["appMessage"] == {
        "title": "Shop",
        "desc": "Everything",
        "link": "https://example.com/home?x=1",
        "imgUrl": "https://example.com/img/default.png",
    }
    assert result["timeline"] == {"title": "Shop", "link": "https://example.com/home?x=1",
                                  "imgUrl": "https://example.com/img/default.png"}  # fmt: skip


def test_the_most_specific_rule_wins() -> None:
    """A glob with more literal characters beats a shorter prefix; unset fields fall back to defaults."""
    assert payloads("https://example.com/blog/post-1")["appMessage"]["title"] == "Blog"
    comments = payloads("https://example.com/blog/post-1/comments")["appMessage"]
    assert comments["title"] == "Comments"
    assert comments["imgUrl"] == "https://cdn.example.com/c.png"
    assert comments["desc"] == "Everything"


def test_single_star_stays_in_one_segment_and_double_star_crosses() -> None:
    """`*` does not cross `/`; `**` does; `?` is one character."""
    assert payloads("https://example.com/blog/a/b/comments")["appMessage"]["title"] == "Blog"
    assert payloads("https://example.com/docs/a/b/c")["appMessage"]["desc"] == "Docs"
    assert payloads("https://example.com/item7")["appMessage"]["title"] == "Item"
    assert payloads("https://example.com/item77")["appMessage"]["title"] == "Shop"


def test_overrides_merge_over_rules_and_resolve_relative_references() -> None:
    """Request overrides win; a relative link or imgUrl is resolved against the page."""
    result = payloads("https://a.example.com/blog/x", ShareFields(desc="Mine", link="../promo", img_url="p.png"))
    assert result["appMessage"] == {
        "title": "Blog",
        "desc": "Mine",
        "link": "https://a.example.com/promo",
        "imgUrl": "https://a.example.com/blog/p.png",
    }


def test_a_link_outside_the_secure_domains_is_refused() -> None:
    """An absolute or protocol-relative link to another domain is refused."""
    for link in ("https://evil.com/x", "//evil.com/x", "https://example.com.evil.com/"):
        with pytest.raises(HostNotAllowed):
            check_link_domain(ShareFields(link=link), HOSTS, where="share")
    check_link_domain(ShareFields(link="https://m.example.com/x"), HOSTS, where="share")


@pytest.mark.parametrize(
    "data",
    [
        {"imgUrl": "javascript:alert(1)"},
        {"imgUrl": "data:image/png;base64,AAAA"},
        {"link": "ftp://example.com/"},
        {"title": 5},
        {"imgUrl": " "},
        {"picture": "x"},
    ],
)
def test_malformed_share_fields_are_refused(data: dict[str, object]) -> None:
    """Non-http(s) references, non-strings, blanks and unknown keys are `InvalidShare`."""
    with pytest.raises(InvalidShare):
        override = decode_body(orjson.dumps({"url": "https://example.com/", "share": data}), ShareRequest).share
        assert override is not None
        share_fields(title=override.title, desc=override.desc, link=override.link, img_url=override.img_url,
                     where="share")  # fmt: skip


def test_fallbacks_without_any_configuration() -> None:
    """With nothing configured: the host as title, the link as desc, the site's favicon as image."""
    result = share_payloads(parse_page_url("https://example.com/p"), SharePolicy(), HOSTS)
    assert result["appMessage"] == {"title": "example.com", "desc": "https://example.com/p",
                                    "link": "https://example.com/p", "imgUrl": "https://example.com/favicon.ico"}  # fmt: skip
