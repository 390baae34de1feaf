"""N accounts of every kind at once: official accounts with their secret, WeCom apps of a few corps, and
accounts whose token a central server owns; one pipeline, the same bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from jssdk_service.config import Account, Secret, TokenURL
from jssdk_service.sandbox import SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.sandbox_wecom import SandboxWeComApp

from .helpers import ServiceFactory, make_account, make_wecom_account

PAGE = "http://localhost/p"
PER_KIND = 100
CORPS = 10
BEARER = "crowd-bearer-0123456789"


@dataclass
class Crowd:
    sandbox: WeChatSandbox
    central: CentralTokenServer
    url: str
    accounts: tuple[Account, ...]


@pytest.fixture
async def crowd() -> AsyncIterator[Crowd]:
    """A sandbox that knows 100 official accounts, 100 WeCom apps of 10 corps and 100 accounts its central
    token server owns; the 300 accounts, interleaved."""
    secret = [make_account(name=f"s{i}", app_id=f"wx{i:016x}", secret=Secret(f"secret-{i}")) for i in range(PER_KIND)]
    wecom = [make_wecom_account(name=f"w{i}", app_id=f"ww{i % CORPS:016x}", agent_id=str(1000000 + i),
                                secret=Secret(f"wecom-{i}")) for i in range(PER_KIND)]  # fmt: skip
    external_ids = [f"wx{PER_KIND + i:016x}" for i in range(PER_KIND)]
    sandbox = WeChatSandbox(
        [SandboxAccount(app_id=a.app_id, secret=a.reveal_secret()) for a in secret]
        + [SandboxAccount(app_id=app_id, secret=f"never-used-{app_id}") for app_id in external_ids],
        wecom_apps=[
            SandboxWeComApp(corp_id=a.app_id, agent_id=str(a.agent_id), secret=a.reveal_secret()) for a in wecom
        ],
        seed=5,
    )
    sandbox.faults.delay = 0.05
    central = CentralTokenServer(sandbox, external_ids, bearer=BEARER)
    server = SandboxServer(sandbox, central=central)
    url = await server.start()
    external = [
        make_account(name=f"e{i}", app_id=app_id, secret=None,
                     source=TokenURL(url=f"{url}/sandbox/central/token?app={app_id}", auth=Secret(BEARER)))
        for i, app_id in enumerate(external_ids)
    ]  # fmt: skip
    # Interleaved, as a real configuration mixes them.
    mixed = tuple(a for trio in zip(secret, wecom, external, strict=True) for a in trio)
    yield Crowd(sandbox=sandbox, central=central, url=url, accounts=mixed)
    await server.stop()


async def test_a_cold_start_of_300_accounts_of_every_kind(
    crowd: Crowd, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """300 accounts, a third of each kind: at most 8 upstream calls at once; per account one token (or one
    source read) and one call per ticket; a request for any account is answered within the wait bound."""
    sandbox = crowd.sandbox
    service = await start_service(accounts=crowd.accounts, api_bases=(crowd.url,), wecom_api_bases=(crowd.url,),
                                  upstream_concurrency=8)  # fmt: skip
    for name in ("w99", "e99", "s99"):  # the last of each kind, hurried ahead of the rest (else 503 after 5 s)
        async with http.get(f"{service.url}/v1/share", params={"url": PAGE, "app": name}) as response:
            assert response.status == 200, await response.text()
    deadline = time.monotonic() + 90
    while True:
        async with http.get(f"{service.url}/readyz") as response:
            body = await response.json()
            if response.status == 200:
                break
        assert time.monotonic() < deadline, f"{body['ready']} of {body['total']} ready"
        await asyncio.sleep(0.2)
    assert (body["ready"], body["total"]) == (3 * PER_KIND, 3 * PER_KIND)
    assert sandbox.peak_in_flight <= 8
    assert (sandbox.count("stable_token"), sandbox.count("gettoken"), sandbox.count("token")) == (PER_KIND,) * 2 + (0,)
    assert sum(crowd.central.reads.values()) == PER_KIND
    assert set(crowd.central.reads.values()) == {1}
    assert (sandbox.count("getticket"), sandbox.count("get_jsapi_ticket"), sandbox.count("get_agent_ticket")) == (
        2 * PER_KIND, PER_KIND, PER_KIND,
    )  # fmt: skip
