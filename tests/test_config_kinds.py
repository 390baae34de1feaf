"""Configuration of every account kind and token source: what each needs, what it refuses, and errors
that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jssdk_service.config import TokenRedisKey, TokenURL, load_settings
from jssdk_service.errors import ConfigError

from .helpers import write_toml

KINDS = """
[[accounts]]
name = "hr"
kind = "wecom"
corp_id = "ww0123456789abcdef"
agent_id = 1000002
secret_env = "HR_SECRET"
allowed_hosts = ["hr.example.com"]

[[accounts]]
name = "crm"
kind = "wecom"
corp_id = "ww0123456789abcdef"
agent_id = "1000003"
token_source = "external"
token_redis_key = "central:crm:token"
token_redis_url = "redis://:pa/ss@word@10.0.0.5:6379/2"
allowed_hosts = ["crm.example.com"]

[[accounts]]
name = "shop"
app_id = "wx1111111111111111"
token_source = "external"
token_url = "https://central.internal/token?app=wx1111111111111111"
token_url_auth_file = "{bearer_file}"
allowed_hosts = ["shop.example.com"]
"""


def write(tmp_path: Path, text: str) -> str:
    return write_toml(tmp_path, text, {"bearer_file": "central-bearer-value\n"})


def test_every_kind_and_source_from_toml(tmp_path: Path) -> None:
    """A WeCom app with its secret, a WeCom app and an official account whose tokens another server owns."""
    settings = load_settings({"HR_SECRET": "hr-app-secret"}, write(tmp_path, KINDS))
    hr, crm, shop = settings.accounts
    assert (hr.kind, hr.app_id, hr.agent_id, hr.key) == ("wecom", "ww0123456789abcdef", "1000002",
                                                         "ww0123456789abcdef:1000002")  # fmt: skip
    assert hr.reveal_secret() == "hr-app-secret" and hr.source is None
    assert hr.js_api_list == ("onMenuShareAppMessage", "onMenuShareWechat", "onMenuShareTimeline")
    assert crm.source == TokenRedisKey(key="central:crm:token", redis_url="redis://:pa/ss@word@10.0.0.5:6379/2")
    assert crm.secret is None
    with pytest.raises(ValueError, match="holds no secret"):
        crm.reveal_secret()
    assert isinstance(shop.source, TokenURL) and shop.source.auth is not None
    assert shop.source.auth.reveal() == "central-bearer-value"
    assert shop.js_api_list == ("updateAppMessageShareData", "updateTimelineShareData")
    # Found by name or by key; two apps of one corp are two accounts.
    assert settings.account("hr") is hr and settings.account("ww0123456789abcdef:1000003") is crm
    assert settings.account("ww0123456789abcdef") is None
    shown = repr(settings) + repr(shop.source) + repr(crm) + crm.describe()
    assert "pa/ss" not in shown and "10.0.0.5:6379/2" in shown
    assert "central-bearer-value" not in shown and "hr-app-secret" not in shown and "?app=" not in shown


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (('corp_id = "ww0123456789abcdef"\nagent_id = 1000002', 'corp_id = "ww0123456789abcdef"'),
         "accounts[0].agent_id", 'required for kind = "wecom"'),
        (('kind = "wecom"\ncorp_id = "ww0123456789abcdef"\nagent_id = 1000002', 'app_id = "wx2"\nagent_id = 1'),
         "accounts[0].agent_id", 'not used with kind = "official"'),
        (('secret_env = "HR_SECRET"', 'secret_env = "HR_SECRET"\ntoken_api = "classic"'),
         "accounts[0].token_api", 'not used with kind = "wecom"'),
        (('agent_id = 1000002', 'agent_id = "100x"'), "accounts[0].agent_id", ""),
        (('token_redis_key = "central:crm:token"', 'token_redis_key = "k"\nsecret_env = "HR_SECRET"'),
         "accounts[1].secret_env", 'not used with token_source = "external"'),
        (('token_redis_key = "central:crm:token"\n', ""), "accounts[1].token_source", "exactly one of"),
        (('token_redis_url = "redis://:pa/ss@word@10.0.0.5:6379/2"\n', ""), "accounts[1].token_redis_key", "needs a Redis"),
        (('token_redis_url = "redis://:pa/ss@word@10.0.0.5:6379/2"', 'token_redis_url = "http://x"'),
         "accounts[1].token_redis_url", ""),
        (('token_url = "https://central.internal/token?app=wx1111111111111111"', 'token_url = "ftp://x"'),
         "accounts[2].token_url", ""),
        (('token_url_auth_file = "{bearer_file}"', 'token_url_auth_env = "NO_SUCH_VARIABLE"'),
         "accounts[2].token_url_auth_env", "is not set"),
        (('token_source = "external"\ntoken_url', 'token_source = "elsewhere"\ntoken_url'),
         "accounts[2].token_source", ""),
        (('agent_id = "1000003"', 'agent_id = "1000002"'), "accounts[1]", ""),
    ],
)  # fmt: skip
def test_each_kind_and_source_names_what_is_wrong(tmp_path: Path, edit: tuple[str, str], field: str, says: str) -> None:
    """A field a kind or source needs, or refuses, or a bad value is a ConfigError naming that field."""
    text = KINDS.replace(*edit, 1)
    assert text != KINDS
    with pytest.raises(ConfigError) as caught:
        load_settings({"HR_SECRET": "hr-app-secret"}, write(tmp_path, text))
    assert caught.value.field == field, caught.value
    assert says in str(caught.value)
    assert "hr-app-secret" not in str(caught.value) and "central-bearer-value" not in str(caught.value)


def test_a_token_redis_key_may_use_the_services_own_redis(tmp_path: Path) -> None:
    """Without token_redis_url the key is read from JSSDK_CACHE_URL's Redis."""
    text = KINDS.replace('token_redis_url = "redis://:pa/ss@word@10.0.0.5:6379/2"\n', "")
    settings = load_settings({"HR_SECRET": "x", "JSSDK_CACHE_URL": "redis://127.0.0.1:6379/0"}, write(tmp_path, text))
    assert settings.accounts[1].source == TokenRedisKey(key="central:crm:token", redis_url=None)


def test_the_wecom_api_base_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    """[service] wecom_api_base, overridden by JSSDK_WECOM_API_BASE; qyapi by default."""
    path = write(tmp_path, '[service]\nwecom_api_base = "http://127.0.0.1:1/"\n' + KINDS)
    assert load_settings({"HR_SECRET": "x"}, path).wecom_api_bases == ("http://127.0.0.1:1",)
    env = {"HR_SECRET": "x", "JSSDK_WECOM_API_BASE": "http://127.0.0.1:2,http://127.0.0.1:3"}
    assert load_settings(env, path).wecom_api_bases == ("http://127.0.0.1:2", "http://127.0.0.1:3")
    assert load_settings({"HR_SECRET": "x"}, write(tmp_path, KINDS)).wecom_api_bases == ("https://qyapi.weixin.qq.com",)
