"""Configuration: environment and TOML, and errors that name the field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from jssdk_service.config import Account, Settings, load_settings
from jssdk_service.errors import ConfigError
from jssdk_service.server import sandbox_options

from .helpers import write_toml

ENV = {"JSSDK_APP_ID": "wx1234567890abcdef", "JSSDK_APP_SECRET": "topsecret", "JSSDK_ALLOWED_HOSTS": "example.com"}


def test_single_account_from_the_environment() -> None:
    """The environment alone configures one account with the documented defaults."""
    settings = load_settings(ENV)
    (account,) = settings.accounts
    assert account.app_id == account.name == "wx1234567890abcdef"
    assert account.allowed_hosts == ("example.com",)
    assert account.token_api == "stable"
    assert account.js_api_list == ("updateAppMessageShareData", "updateTimelineShareData")
    assert settings.api_bases == ("https://api.weixin.qq.com", "https://api2.weixin.qq.com")
    assert (settings.host, settings.port, settings.cache_url) == ("127.0.0.1", 8080, "memory://")


def test_secret_from_a_file(tmp_path: Path) -> None:
    """JSSDK_APP_SECRET_FILE is read and stripped, as container secrets are mounted."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    env = {**ENV, "JSSDK_APP_SECRET": "", "JSSDK_APP_SECRET_FILE": str(secret_file)}
    assert load_settings(env).accounts[0].reveal_secret() == "from-file"


def test_secrets_are_hidden_from_reprs() -> None:
    """Neither the settings nor the account show the AppSecret in their repr."""
    settings = load_settings({**ENV, "JSSDK_ADMIN_TOKEN": "admintoken"})
    assert "topsecret" not in repr(settings)
    assert "admintoken" not in repr(settings)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"JSSDK_APP_ID": ""}, "JSSDK_APP_ID"),
        ({"JSSDK_APP_ID": "wx bad id"}, "JSSDK_APP_ID"),
        ({"JSSDK_APP_SECRET": ""}, "JSSDK_APP_SECRET"),
        ({"JSSDK_APP_SECRET": "", "JSSDK_APP_SECRET_FILE": "/nonexistent/secret"}, "JSSDK_APP_SECRET_FILE"),
        ({"JSSDK_ALLOWED_HOSTS": ""}, "JSSDK_ALLOWED_HOSTS"),
        ({"JSSDK_ALLOWED_HOSTS": "https://example.com"}, "JSSDK_ALLOWED_HOSTS"),
        ({"JSSDK_ALLOWED_HOSTS": "example.com:8080"}, "JSSDK_ALLOWED_HOSTS"),
        ({"JSSDK_PORT": "abc"}, "JSSDK_PORT"),
        ({"JSSDK_PORT": "70000"}, "JSSDK_PORT"),
        ({"JSSDK_TOKEN_API": "fast"}, "JSSDK_TOKEN_API"),
        ({"JSSDK_CACHE_URL": "memcached://x"}, "JSSDK_CACHE_URL"),
        ({"JSSDK_WECHAT_API_BASE": "api.weixin.qq.com"}, "JSSDK_WECHAT_API_BASE"),
        ({"JSSDK_LOG_LEVEL": "LOUD"}, "JSSDK_LOG_LEVEL"),
        ({"JSSDK_SHARE_LINK": "https://evil.com/"}, "JSSDK_SHARE"),
        ({"JSSDK_SHARE_IMG_URL": "javascript:x"}, "JSSDK_SHARE"),
    ],
)
def test_environment_errors_name_the_variable(change: dict[str, str], field: str) -> None:
    """Each bad environment value is a ConfigError that names its variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, **change})
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


TOML = """
[service]
port = 9000
wechat_api_base = ["http://127.0.0.1:1", "http://127.0.0.1:2"]

[[accounts]]
name = "shop"
app_id = "wx1111111111111111"
secret_env = "SHOP_SECRET"
allowed_hosts = ["shop.example.com", "example.org"]
token_api = "classic"
open_tag_list = ["wx-open-launch-weapp"]

[accounts.share]
title = "Shop"
imgUrl = "/share.png"

[[accounts.share.rules]]
path = "/sale/*"
title = "Sale"

[[accounts]]
name = "blog"
app_id = "wx2222222222222222"
secret_file = "{secret_file}"
allowed_hosts = ["blog.example.com"]
"""


def write_config(tmp_path: Path, text: str) -> str:
    return write_toml(tmp_path, text, {"secret_file": "blogsecret"})


def test_several_accounts_from_toml(tmp_path: Path) -> None:
    """A TOML file configures several accounts, their secrets by reference, and share rules."""
    settings = load_settings({"SHOP_SECRET": "shopsecret"}, write_config(tmp_path, TOML))
    shop, blog = settings.accounts
    assert settings.port == 9000
    assert settings.api_bases == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert (shop.name, shop.token_api, shop.reveal_secret()) == ("shop", "classic", "shopsecret")
    assert shop.open_tag_list == ("wx-open-launch-weapp",)
    assert shop.share.fields_for("/sale/today").title == "Sale"
    assert blog.reveal_secret() == "blogsecret"
    assert settings.account("blog") is blog
    assert settings.account("wx1111111111111111") is shop
    assert settings.account(None) is None


def test_environment_overrides_single_values_of_the_file(tmp_path: Path) -> None:
    """JSSDK_PORT beats the file's [service] port."""
    settings = load_settings({"SHOP_SECRET": "x", "JSSDK_PORT": "9100"}, write_config(tmp_path, TOML))
    assert settings.port == 9100


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (('secret_env = "SHOP_SECRET"', 'secret = "inline"'), "accounts[0].secret"),
        (('secret_env = "SHOP_SECRET"', 'secret_env = "MISSING_VAR"'), "accounts[0].secret_env"),
        (('token_api = "classic"', 'token_api = "quick"'), "accounts[0].token_api"),
        (('allowed_hosts = ["blog.example.com"]', "allowed_hosts = []"), "accounts[1].allowed_hosts"),
        (('app_id = "wx2222222222222222"', 'app_id = "wx1111111111111111"'), "accounts[1]"),
        (('title = "Sale"', 'link = "https://evil.com/"'), "accounts[0].share.rules[0]"),
        (('path = "/sale/*"', 'path = "sale"'), "accounts[0].share.rules[0].path"),
        (('name = "blog"', 'name = "blog"\ncolour = "red"'), "accounts[1].colour"),
        (("[service]", "[servise]"), "servise"),
        (("[service]", "[service"), "JSSDK_CONFIG"),
    ],
)
def test_file_errors_name_the_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    """Each bad value in the file is a ConfigError naming the field by its path in the file."""
    text = TOML.replace(*edit, 1)
    with pytest.raises(ConfigError) as caught:
        load_settings({"SHOP_SECRET": "x"}, write_config(tmp_path, text))
    assert caught.value.field == field


def test_app_id_in_the_environment_conflicts_with_file_accounts(tmp_path: Path) -> None:
    """Accounts come from one place: JSSDK_APP_ID next to [[accounts]] is refused."""
    with pytest.raises(ConfigError, match="JSSDK_APP_ID"):
        load_settings({**ENV, "SHOP_SECRET": "x"}, write_config(tmp_path, TOML))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    """An unreadable config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings({}, str(tmp_path / "nope.toml"))


def test_flags_win_over_the_environment_and_the_file(tmp_path: Path) -> None:
    """Overrides (the serve flags) beat JSSDK_* and [service]; a None override leaves them be."""
    env = {"SHOP_SECRET": "x", "JSSDK_PORT": "9100", "JSSDK_HOST": "0.0.0.0"}
    settings = load_settings(env, write_config(tmp_path, TOML), overrides={"port": 9200, "host": None})
    assert (settings.port, settings.host) == (9200, "0.0.0.0")
    with pytest.raises(ConfigError) as caught:
        load_settings(ENV, overrides={"port": 70000})
    assert caught.value.field == "--port"


def test_environment_strings_become_typed_values() -> None:
    """Numbers, flags and lists from the environment arrive as the types Settings declares."""
    settings = load_settings({**ENV, "JSSDK_ACCESS_LOG": "true", "JSSDK_UPSTREAM_CONCURRENCY": "32",
                              "JSSDK_DRAIN_SECONDS": "0", "JSSDK_LOG_LEVEL": "debug",
                              "JSSDK_WECHAT_API_BASE": "http://127.0.0.1:1/, http://127.0.0.1:2"})  # fmt: skip
    assert (settings.access_log, settings.upstream_concurrency, settings.drain_seconds) == (True, 32, 0.0)
    assert settings.log_level == "DEBUG"
    assert settings.api_bases == ("http://127.0.0.1:1", "http://127.0.0.1:2")


def test_the_defaults_are_declared_once() -> None:
    """What an environment that sets nothing optional loads is what Settings and Account default to."""
    loaded = load_settings(ENV)
    (account,) = loaded.accounts
    assert replace(loaded, accounts=()) == Settings(accounts=())
    assert account == Account(name=account.name, app_id=account.app_id, secret=account.secret,
                              allowed_hosts=account.allowed_hosts, share=account.share)  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JSSDK_UPSTREAM_CONCURRENCY", "0"),
        ("JSSDK_UPSTREAM_CONCURRENCY", "1025"),
        ("JSSDK_REQUEST_WAIT", "0"),
        ("JSSDK_DRAIN_SECONDS", "-1"),
        ("JSSDK_KEEPALIVE_TIMEOUT", "3601"),
        ("JSSDK_LOCK_LEASE", "soon"),
        ("JSSDK_ACCESS_LOG", "maybe"),
        ("JSSDK_LOG_FORMAT", "xml"),
    ],
)
def test_service_limits_name_the_variable(variable: str, value: str) -> None:
    """A value outside its limits is refused, naming the variable, and the message shows the value."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, variable: value})
    assert caught.value.field == variable
    assert repr(value) in caught.value.problem


def test_file_lists_may_be_comma_separated_and_service_keys_are_checked(tmp_path: Path) -> None:
    """A list in the file may be one comma-separated string; an unknown [service] key is refused."""
    text = TOML.replace('allowed_hosts = ["blog.example.com"]', 'allowed_hosts = "blog.example.com, b.example.org"')
    blog = load_settings({"SHOP_SECRET": "x"}, write_config(tmp_path, text)).accounts[1]
    assert blog.allowed_hosts == ("blog.example.com", "b.example.org")
    with pytest.raises(ConfigError) as caught:
        load_settings({"SHOP_SECRET": "x"}, write_config(tmp_path, TOML.replace("port = 9000", "colour = 1")))
    assert (caught.value.field, caught.value.problem) == ("service.colour", "unknown field")


def test_a_misplaced_secret_is_not_shown(tmp_path: Path) -> None:
    """Errors show a refused value only when it is a single value: a table holding a secret is not echoed."""
    with pytest.raises(ConfigError) as caught:
        load_settings({}, write_config(tmp_path, 'accounts = {secret = "hush-hush"}\n'))
    assert caught.value.field == "accounts"
    assert "hush-hush" not in str(caught.value)


def test_sandbox_options_flags_then_variables() -> None:
    """`--sandbox-*` flags beat JSSDK_SANDBOX_* variables; strings become numbers, flags and rates."""
    options = sandbox_options({"delay": "0.5", "dead_base": "1"},
                              {"JSSDK_SANDBOX_DELAY": "9", "JSSDK_SANDBOX_ERRORS": "-1:0.3, 45011:0.05"})  # fmt: skip
    assert (options.delay, options.dead_base, options.expires_in) == (0.5, True, 7200)
    assert options.error_rates == {-1: 0.3, 45011: 0.05}


@pytest.mark.parametrize(
    ("flags", "env", "field"),
    [
        ({"errors": "bogus"}, {}, "--sandbox-errors"),
        ({}, {"JSSDK_SANDBOX_ERRORS": "-1:0.6,45011:0.6"}, "JSSDK_SANDBOX_ERRORS"),
        ({}, {"JSSDK_SANDBOX_ERRORS": "-1:2"}, "JSSDK_SANDBOX_ERRORS"),
        ({"http500_rate": "lots"}, {}, "--sandbox-http500-rate"),
        ({}, {"JSSDK_SANDBOX_EXPIRES_IN": "86401"}, "JSSDK_SANDBOX_EXPIRES_IN"),
        ({"delay": "61"}, {"JSSDK_SANDBOX_DELAY": "1"}, "--sandbox-delay"),
    ],
)
def test_sandbox_option_errors_name_the_flag_or_variable(
    flags: dict[str, str], env: dict[str, str], field: str
) -> None:
    """A bad sandbox option names where it came from: the flag, or the variable."""
    with pytest.raises(ConfigError) as caught:
        sandbox_options(flags, env)
    assert caught.value.field == field
