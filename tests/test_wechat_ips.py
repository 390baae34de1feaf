"""`jssdk-service wechat-ips`: WeChat's IP lists, run as an operator runs it, against the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from jssdk_service.errors import TokenInvalid, UpstreamRejected
from jssdk_service.sandbox import WeChatSandbox
from jssdk_service.wechat import WeChatClient

from .helpers import (
    ACCOUNT_ENV,
    AES_KEY,
    APP_ID,
    COMPONENT_APPID,
    COMPONENT_SECRET,
    FAST_RETRY,
    MESSAGE_TOKEN,
    SECRET,
    RedisServer,
    ServiceFactory,
    clean_environment,
    run_cli,
    sign,
)
from .helpers import (
    CommandResult as Result,
)

CALLBACK_IPS = ["101.226.103.0/25", "203.0.113.7", "2001:db8::/32"]
API_IPS = ["101.89.47.18", "101.91.37.62"]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def wechat_ips(*args: str, env: dict[str, str]) -> Result:
    """`jssdk-service wechat-ips *args` as a child process in a clean environment plus `env`, to its end."""
    return await run_cli("wechat-ips", *args, env=env)


@pytest.fixture
def ips_sandbox(sandbox: WeChatSandbox) -> WeChatSandbox:
    """The sandbox answering distinct callback and API lists, single IPs and ranges."""
    sandbox.callback_ips = list(CALLBACK_IPS)
    sandbox.api_ips = list(API_IPS)
    return sandbox


@pytest.fixture
def env(ips_sandbox: WeChatSandbox, sandbox_url: str) -> dict[str, str]:
    """The test account from the environment, talking to the sandbox, with the default (memory) cache."""
    return {**ACCOUNT_ENV, "JSSDK_WECHAT_API_BASE": sandbox_url}


def tokens_issued(sandbox: WeChatSandbox) -> list[str]:
    """Every access_token the sandbox has handed out."""
    return [value for value, issued in sandbox.issued.items() if issued.kind in ("classic", "stable")]


def assert_nothing_secret(sandbox: WeChatSandbox, *texts: str) -> None:
    """None of `texts` holds the AppSecret or an access_token."""
    for text in texts:
        assert SECRET not in text
        assert not any(token in text for token in tokens_issued(sandbox))


def strays(directory: Path, keep: Path) -> list[str]:
    """The files in `directory` other than `keep`: what a write left behind."""
    return sorted(p.name for p in directory.iterdir() if p != keep)


# -- what it prints ----------------------------------------------------------------------------


async def test_callback_prints_one_entry_a_line(ips_sandbox: WeChatSandbox, env: dict[str, str]) -> None:
    """--callback prints getcallbackip's entries, ranges and single IPs as WeChat gave them, one a line."""
    result = await wechat_ips("--callback", env=env)
    assert result == Result(0, "".join(f"{ip}\n" for ip in CALLBACK_IPS), "")
    assert ips_sandbox.count("getcallbackip", APP_ID, ok_only=True) == 1
    assert ips_sandbox.count("get_api_domain_ip") == 0


async def test_api_prints_the_api_entry_points(ips_sandbox: WeChatSandbox, env: dict[str, str]) -> None:
    """--api prints get_api_domain_ip's entries instead."""
    result = await wechat_ips("--api", "--format", "plain", "--app", APP_ID, env=env)
    assert result == Result(0, "".join(f"{ip}\n" for ip in API_IPS), "")
    assert ips_sandbox.count("get_api_domain_ip", APP_ID, ok_only=True) == 1
    assert ips_sandbox.count("getcallbackip") == 0


async def test_nginx_format_is_allow_lines_under_a_header(ips_sandbox: WeChatSandbox, env: dict[str, str]) -> None:
    """--format nginx prints a comment header (what, the command, a UTC time, refresh daily) and one allow a line."""
    result = await wechat_ips("--callback", "--format", "nginx", env=env)
    assert (result.code, result.err) == (0, "")
    lines = result.out.splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[: len(header)] == header, "the header comes first"
    assert lines[len(header) :] == [f"allow {ip};" for ip in CALLBACK_IPS]
    text = "\n".join(header)
    assert "getcallbackip" in text and "pushes" in text
    assert "jssdk-service wechat-ips --callback --format nginx" in text
    assert TIMESTAMP.search(text) and "UTC" in text
    assert "refresh daily" in text


async def test_exactly_one_list_must_be_chosen(env: dict[str, str]) -> None:
    """Without --callback or --api, or with both, the command refuses with a usage error (exit 2)."""
    for args in ((), ("--callback", "--api")):
        result = await wechat_ips(*args, env=env)
        assert result.code == 2 and result.out == ""
        assert "--callback" in result.err and "--api" in result.err


async def test_an_unknown_app_is_a_config_error(ips_sandbox: WeChatSandbox, env: dict[str, str]) -> None:
    """--app naming no account exits 2 with one line naming --app, and nothing is asked of WeChat."""
    result = await wechat_ips("--callback", "--app", "wxnobody", env=env)
    assert (result.code, result.out) == (2, "")
    assert result.err.strip().count("\n") == 0 and "--app" in result.err and "wxnobody" in result.err
    assert ips_sandbox.count("stable_token") == 0


async def test_a_platform_alone_is_told_to_configure_an_account(tmp_path: Path) -> None:
    """A config with a platform and no account exits 2, saying the lists need one configured account."""
    config = tmp_path / "platform.toml"
    config.write_text(f'[[platforms]]\ncomponent_appid = "{COMPONENT_APPID}"\nsecret_env = "P_SECRET"\n'
                      f'token_env = "P_TOKEN"\naes_key_env = "P_KEY"\nweb_domains = ["example.com"]\n')  # fmt: skip
    env = {"P_SECRET": COMPONENT_SECRET, "P_TOKEN": MESSAGE_TOKEN, "P_KEY": AES_KEY}
    result = await wechat_ips("--callback", "--config", str(config), env=env)
    assert (result.code, result.out) == (2, "")
    assert "[[accounts]]" in result.err and result.err.strip().count("\n") == 0


# -- --output ----------------------------------------------------------------------------------


async def test_output_replaces_the_file_atomically(tmp_path: Path, env: dict[str, str]) -> None:
    """--output renames a complete new file over the old one (a new inode, its mode kept) and leaves no temp file."""
    target = tmp_path / "wechat-callback-ips.conf"
    target.write_text("allow 192.0.2.1;\n")
    target.chmod(0o640)
    before = target.stat().st_ino
    result = await wechat_ips("--callback", "--format", "nginx", "--output", str(target), env=env)
    assert result == Result(0, "", "")
    text = target.read_text()
    assert text.endswith("".join(f"allow {ip};\n" for ip in CALLBACK_IPS))
    assert f"--output {target}" in text
    assert target.stat().st_ino != before, "replaced by a rename, not rewritten in place"
    assert target.stat().st_mode & 0o777 == 0o640
    assert strays(tmp_path, target) == []


async def test_output_creates_a_missing_file_readable_by_nginx(tmp_path: Path, env: dict[str, str]) -> None:
    """A file that does not exist yet is created with mode 0644, whatever the umask."""
    target = tmp_path / "ips.txt"
    result = await wechat_ips("--api", "--output", str(target), env=env)
    assert result.code == 0, result.err
    assert target.read_text() == "".join(f"{ip}\n" for ip in API_IPS)
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("fault", "answer", "phrase"),
    [
        (40164, CALLBACK_IPS, "40164"),
        (None, [], "ip_list"),
        (None, ["101.226.103.0/25", "not-an-ip"], "not-an-ip"),
    ],
    ids=["wechat-refuses", "empty-list", "bad-entry"],
)
async def test_a_failed_fetch_leaves_the_file_as_it_was(
    ips_sandbox: WeChatSandbox, env: dict[str, str], tmp_path: Path, fault: int | None, answer: list[str], phrase: str
) -> None:
    """A refused call, an empty list or an entry that is no address exits 1 with one line; the file is untouched."""
    target = tmp_path / "wechat-callback-ips.conf"
    target.write_text("allow 192.0.2.1;\n")
    before = target.stat()
    ips_sandbox.callback_ips = answer
    if fault is not None:
        ips_sandbox.faults.script = deque([fault])
    result = await wechat_ips("--callback", "--format", "nginx", "--output", str(target), env=env)
    assert (result.code, result.out) == (1, "")
    assert result.err.strip().count("\n") == 0 and phrase in result.err, result.err
    assert "Traceback" not in result.err
    assert target.read_text() == "allow 192.0.2.1;\n"
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert strays(tmp_path, target) == []


async def test_an_unwritable_output_is_one_line_and_exit_1(tmp_path: Path, env: dict[str, str]) -> None:
    """--output into a directory that does not exist exits 1 with one line naming the file."""
    target = tmp_path / "missing" / "ips.conf"
    result = await wechat_ips("--callback", "--output", str(target), env=env)
    assert (result.code, result.out) == (1, "")
    assert result.err.strip().count("\n") == 0 and str(target) in result.err
    assert not target.parent.exists()


# -- WeChat's errors ---------------------------------------------------------------------------


async def test_a_wechat_error_is_printed_with_its_fix_and_without_the_secret(
    ips_sandbox: WeChatSandbox, env: dict[str, str]
) -> None:
    """An IP whitelist refusal prints WeChat's message and what to do, never the AppSecret or a token, and exits 1."""
    ips_sandbox.accounts[APP_ID].ip_whitelist = frozenset({"198.51.100.1"})
    result = await wechat_ips("--callback", env=env)
    assert (result.code, result.out) == (1, "")
    assert result.err.strip().count("\n") == 0
    assert "40164" in result.err and "127.0.0.1" in result.err and "whitelist" in result.err.lower()
    assert "Traceback" not in result.err
    assert_nothing_secret(ips_sandbox, result.out, result.err)


async def test_a_refused_secret_is_printed_without_it(ips_sandbox: WeChatSandbox, env: dict[str, str]) -> None:
    """A wrong AppSecret is reported by its errcode and fix, and the secret given appears nowhere."""
    wrong = "wrong-secret-value-that-must-not-leak"
    result = await wechat_ips("--callback", env={**env, "JSSDK_APP_SECRET": wrong})
    assert (result.code, result.out) == (1, "")
    assert "40125" in result.err and "secret" in result.err.lower()
    assert wrong not in result.err
    assert_nothing_secret(ips_sandbox, result.err)


# -- the fleet's token -------------------------------------------------------------------------


async def test_the_fleets_token_in_redis_is_used_not_a_new_one(
    ips_sandbox: WeChatSandbox,
    env: dict[str, str],
    start_service: ServiceFactory,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With the fleet's Redis, the command asks with the token the service holds: no token call goes to WeChat."""
    service = await start_service(cache_url=redis_server.url)
    status, _ = await sign(http, service.url)
    assert status == 200
    token_calls = ips_sandbox.count("stable_token")
    assert token_calls == 1
    fleet_env = {**env, "JSSDK_CACHE_URL": redis_server.url}

    result = await wechat_ips("--callback", env=fleet_env)
    assert result == Result(0, "".join(f"{ip}\n" for ip in CALLBACK_IPS), "")
    assert ips_sandbox.count("stable_token") == token_calls
    assert ips_sandbox.count("getcallbackip", APP_ID, ok_only=True) == 1

    # A refusal of the IP call itself (the token being the fleet's) leaves the file alone, too.
    target = tmp_path / "ips.conf"
    target.write_text("allow 192.0.2.1;\n")
    ips_sandbox.faults.script = deque([48001])
    result = await wechat_ips("--callback", "--format", "nginx", "--output", str(target), env=fleet_env)
    assert result.code == 1 and "48001" in result.err
    assert target.read_text() == "allow 192.0.2.1;\n"
    assert ips_sandbox.count("stable_token") == token_calls
    assert ips_sandbox.count("getcallbackip", APP_ID) == 2
    # The service still signs with the token it had: nothing knocked it out.
    status, _ = await sign(http, service.url)
    assert status == 200
    assert ips_sandbox.count("stable_token") == token_calls


async def test_without_a_fleet_the_token_it_gets_is_shared_for_the_next_run(
    ips_sandbox: WeChatSandbox, env: dict[str, str], redis_server: RedisServer
) -> None:
    """With Redis and no service yet, the first run fetches one token under the fleet's lock, and the next reuses it."""
    fleet_env = {**env, "JSSDK_CACHE_URL": redis_server.url}
    for _ in range(2):
        result = await wechat_ips("--api", env=fleet_env)
        assert result.code == 0, result.err
    assert ips_sandbox.count("stable_token") == 1
    assert ips_sandbox.count("get_api_domain_ip", APP_ID, ok_only=True) == 2


async def test_the_installed_script_has_the_subcommand() -> None:
    """The virtualenv's `jssdk-service` script (what the systemd unit runs) offers wechat-ips and its options."""
    script = Path(sys.executable).parent / "jssdk-service"
    process = await asyncio.create_subprocess_exec(script, "wechat-ips", "--help", env=clean_environment(),
                                                   stdout=asyncio.subprocess.PIPE)  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert all(option in out.decode() for option in ("--callback", "--api", "--format", "--app", "--output"))


# -- the client's operations calls -------------------------------------------------------------


@pytest.fixture
async def client(sandbox_url: str) -> AsyncIterator[WeChatClient]:
    """A WeChat client of the sandbox that gives up quickly."""
    client = WeChatClient([sandbox_url], policy=FAST_RETRY)
    yield client
    await client.aclose()


async def test_a_dead_token_is_token_invalid_not_a_refused_secret(
    ips_sandbox: WeChatSandbox, client: WeChatClient
) -> None:
    """An IP list asked with a token WeChat no longer accepts raises TokenInvalid, whose text has no token."""
    token = await client.fetch_token(app_id=APP_ID, secret=SECRET, api="stable")
    assert await client.fetch_ip_list(app_id=APP_ID, token=token, which="callback") == CALLBACK_IPS
    ips_sandbox.knock_out_tokens(APP_ID)
    with pytest.raises(TokenInvalid) as caught:
        await client.fetch_ip_list(app_id=APP_ID, token=token, which="api")
    assert (caught.value.errcode, caught.value.api) == (40001, "get_api_domain_ip")
    assert token.value not in str(caught.value)


async def test_check_callback_answers_without_errcode_and_explains_bad_arguments(
    ips_sandbox: WeChatSandbox, client: WeChatClient
) -> None:
    """callback/check returns WeChat's dns and ping lists alone; a bad action or operator is refused with its fix."""
    token = await client.fetch_token(app_id=APP_ID, secret=SECRET, api="stable")
    answer = await client.check_callback(app_id=APP_ID, token=token, action="all", operator="DEFAULT")
    assert set(answer) == {"dns", "ping"}
    assert all({"ip", "real_operator"} <= set(entry) for entry in answer["dns"])
    for action, operator, errcode, word in (("trace", "DEFAULT", 40202, "action"), ("dns", "NOWHERE", 40203, "CAP")):
        with pytest.raises(UpstreamRejected) as caught:
            await client.check_callback(app_id=APP_ID, token=token, action=action, operator=operator)
        assert caught.value.errcode == errcode and word in caught.value.fix
    assert ips_sandbox.count("callback_check", APP_ID) == 3
