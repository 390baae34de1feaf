"""The command line: sign, check-config and serve --sandbox, run as a user runs them."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from jssdk_service.sandbox import DEMO_APP_ID
from jssdk_service.signing import sign_url

from .helpers import CLI, OFFICIAL_VECTORS, clean_environment, serving


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`jssdk-service *args` in a clean environment plus `env`, to its end."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=30, env=clean_environment(**(env or {}))
    )


def test_sign_prints_the_official_vector() -> None:
    """`sign` computes a signature offline."""
    vector = OFFICIAL_VECTORS[0]
    result = run("sign", "--ticket", vector.ticket, "--nonce", vector.nonce, "--timestamp", str(vector.timestamp),
                 vector.url)  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, vector.signature)


def test_check_config_accepts_a_good_setup() -> None:
    """`check-config` exits 0 and names the accounts."""
    env = {"JSSDK_APP_ID": "wx1234567890abcdef", "JSSDK_APP_SECRET": "x", "JSSDK_ALLOWED_HOSTS": "example.com"}
    result = run("check-config", env=env)
    assert result.returncode == 0
    assert "wx1234567890abcdef" in result.stdout


def test_config_errors_are_one_clear_line(tmp_path: Path) -> None:
    """A bad setting prints one line naming the field, no traceback, and exits non-zero."""
    env = {"JSSDK_APP_ID": "wx1234567890abcdef", "JSSDK_APP_SECRET": "supersecret", "JSSDK_ALLOWED_HOSTS": "example.com",
           "JSSDK_PORT": "eighty"}  # fmt: skip
    for args in (("check-config",), ("serve",)):
        result = run(*args, env=env)
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0
        assert "JSSDK_PORT" in result.stderr and "eighty" in result.stderr
        assert "Traceback" not in result.stderr and "supersecret" not in result.stderr
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[[accounts]]\napp_id = "wx1"\nsecret = "inline"\nallowed_hosts = ["a.com"]\n')
    result = run("check-config", "--config", str(bad_file))
    assert result.returncode == 2
    assert "accounts[0].secret" in result.stderr and "inline" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (("serve", "--workers", "2"), {}, "--workers"),
        (("serve", "--sandbox", "--sandbox-errors=bogus"), {}, "--sandbox-errors"),
        (("serve", "--sandbox"), {"JSSDK_SANDBOX_ERRORS": "-1:2"}, "JSSDK_SANDBOX_ERRORS"),
        (("serve", "--sandbox", "--sandbox-http500-rate", "lots"), {}, "--sandbox-http500-rate"),
    ],
)
def test_bad_serve_options_are_one_clear_line(args: tuple[str, ...], env: dict[str, str], field: str) -> None:
    """--workers with memory:// and malformed sandbox knobs are refused with one line naming the option."""
    base = {"JSSDK_APP_ID": "wx1234567890abcdef", "JSSDK_APP_SECRET": "x", "JSSDK_ALLOWED_HOSTS": "example.com"}
    result = run(*args, env={**base, **env})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert field in result.stderr


@pytest.fixture
async def sandbox_service(tmp_path: Path) -> AsyncIterator[str]:
    """`jssdk-service serve --sandbox` as a newcomer starts it, on a free port; it must exit 0 on SIGTERM."""
    async with serving(tmp_path / "serve.log", ready="/readyz") as (url, process):
        yield url
    assert process.returncode == 0


def test_serve_sandbox_answers_the_readme_request(sandbox_service: str) -> None:
    """The README's curl against `serve --sandbox` returns a config and two complete share payloads."""
    page = "https://example.com/p?a=1#top"
    response = httpx.get(f"{sandbox_service}/v1/share?url={quote(page, safe='')}")
    assert response.status_code == 200
    body = response.json()
    assert body["config"]["appId"] == DEMO_APP_ID
    assert body["appMessage"]["link"] == "https://example.com/p?a=1"
    assert all(body["appMessage"].values()) and all(body["timeline"].values())
    assert len(body["config"]["signature"]) == 40
    assert sign_url(ticket="x", nonce=body["config"]["nonceStr"], timestamp=0, url=page) != body["config"]["signature"]


def test_serve_sandbox_serves_the_demo_page(sandbox_service: str) -> None:
    """`serve --sandbox` serves /demo, a page that loads the helper, and the helper it loads."""
    page = httpx.get(f"{sandbox_service}/demo")
    assert page.status_code == 200
    assert '<script src="/v1/jssdk-share.js"></script>' in page.text
    assert httpx.get(f"{sandbox_service}/v1/jssdk-share.js").text.count("JssdkShare") > 1
