"""What a /metrics scrape costs at N accounts, and how long it holds the event loop at a time.

    python bench/bench_metrics.py [--accounts 10000] [--rounds 7]

Builds a credential store of N accounts in this process (each holding a token and a ticket, with a
token call and a ticket call counted, as after a start-up), then runs `metrics.exposition` once
per round while a task on the same event loop notes the longest time between two of its turns:
how long a signature arriving during a scrape could have waited. No network, no other process: the
figures are this machine's CPU time for the text, not HTTP. Prints the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from jssdk_service import metrics
from jssdk_service.cache import MemoryCache
from jssdk_service.config import Account, Secret, Settings
from jssdk_service.credentials import CredentialStore, RefreshRules
from jssdk_service.tokens import AccessToken, JsapiTicket
from jssdk_service.wechat import WeChatClient


async def longest_turn(done: asyncio.Event) -> float:
    """The longest wait (s) between two turns of this task on the event loop, until `done`."""
    longest = 0.0
    while not done.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0)
        longest = max(longest, time.perf_counter() - began)
    return longest


async def scrape_rounds(accounts: int, rounds: int) -> tuple[list[float], list[float], int]:
    """Per round: the scrape's wall time and the longest hold of the loop (ms); and the text's size."""
    configured = [Account(name=f"a{i}", app_id=f"wx{i:016x}", secret=Secret("unused"),
                          allowed_hosts=("example.com",)) for i in range(accounts)]  # fmt: skip
    client = WeChatClient(["http://127.0.0.1:9"])
    settings = Settings(accounts=tuple(configured))
    rules = RefreshRules(lock_lease=settings.lock_lease, request_wait=settings.request_wait)
    store = CredentialStore(configured, client, MemoryCache(), rules=rules)
    now = time.time()
    count = metrics.upstream_call_counter(configured)
    for creds in store:
        ticket = JsapiTicket(value="ticket", obtained_at=now, expires_in=7200)
        creds._hold(ticket, None)
        creds._token = AccessToken(value="token", obtained_at=now, expires_in=7200)
        count(creds.account.app_id, "stable_token", "ok")
        count(creds.account.app_id, "getticket", "ok")
    held: list[float] = []
    took: list[float] = []
    size = 0
    for _ in range(rounds):
        done = asyncio.Event()
        watcher = asyncio.create_task(longest_turn(done))
        await asyncio.sleep(0)
        began = time.perf_counter()
        size = len(await metrics.exposition(list(store), client.scheduler, now))
        took.append((time.perf_counter() - began) * 1000)
        done.set()
        held.append(await watcher * 1000)
    await client.aclose()
    return took, held, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    took, held, size = uvloop.run(scrape_rounds(args.accounts, args.rounds))
    print(f"{args.accounts} accounts: a scrape of {size / 1e6:.1f} MB takes {statistics.median(took):.1f} ms "
          f"(median of {args.rounds}); the event loop is held {statistics.median(held):.1f} ms at a time at most "
          f"(median of the rounds' longest; worst {max(held):.1f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
