"""Third-party platforms: their own credentials, their authorizers, and WeChat's pushes to them.

A platform (开放平台 component) signs for every official account that authorized it. Per platform:
- the **component_verify_ticket** WeChat pushes every 10 minutes (valid 12 hours) is kept in the
  shared cache, so every process of the fleet fetches the component token with the latest one;
- the **component_access_token** (`api_component_token`) goes through the same pipeline as every
  other credential: one fetch at a time per process (single-flight), the fleet lock and the
  shared copy, a refresh time drawn inside its window, news for the fleet, and negative caching
  (a refused fetch blocks new attempts on a growing schedule, so ten thousand authorizers waiting
  on it never become ten thousand calls);
- each **authorizer** is an official account whose access token comes from its refresh token
  (`api_authorizer_token`) and who signs with its own appId, for pages on the platform's domains.
  Its refresh token lives in a table of the shared cache (a Redis hash: it survives restarts and
  the fleet shares it), and the credential store holds it like any configured account.

Authorizers come and go without a restart: WeChat's `authorized` / `updateauthorized` pushes (the
code is exchanged with `api_query_auth` at once), `unauthorized` pushes, and the admin API. Every
change is announced to the fleet; a process also reads the whole table again every
`RESYNC_EVERY` seconds, a page at a time, in case news was lost while Redis was away.

`PushGuard` refuses a push that is too old or too new, or whose nonce was seen before (fleet-wide
with Redis); it is asked only after the signature checked out, so a forged push stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jssdk_service.cache import SharedCache
from jssdk_service.config import Account, Platform
from jssdk_service.credentials import (
    REJECTED_RETRY,
    UNAVAILABLE_RETRY,
    ComponentTokenNeeded,
    CredentialStore,
    RefreshRules,
    Reported,
    backoff,
    under_fleet_lock,
)
from jssdk_service.errors import (
    TokenInvalid,
    UnknownPlatform,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from jssdk_service.msgcrypt import MessageCrypt
from jssdk_service.scheduler import Turn
from jssdk_service.tokens import AccessToken
from jssdk_service.wechat import WeChatClient

log = logging.getLogger("jssdk_service.component")

VERIFY_TICKET_LIFE = 12 * 3600.0
# How far a push's timestamp may be from our clock: WeChat sends it as it pushes.
PUSH_WINDOW = 300.0
# WeChat pushes a component_verify_ticket every 10 minutes: for this long after the start, having none yet
# is expected, and not told to the watchers (notifications) as a failure.
FIRST_PUSH_GRACE = 900.0
# Nonces remembered in this process (within the window); beyond that the oldest go first.
MAX_NONCES = 100_000
AUTHORIZERS_PAGE = 500
RESYNC_EVERY = 300.0
# News of authorizers waiting to be followed; beyond it the periodic re-read catches up.
MAX_NEWS = 10_000
PREFIX = "component"


def _prefix(component_appid: str) -> str:
    return f"{PREFIX}:{component_appid}"


class NoVerifyTicket(UpstreamUnavailable):
    """No component_verify_ticket pushed (or kept by the fleet) yet: no component token can be fetched."""


class ComponentCredentials:
    """One platform's component_verify_ticket, component_access_token and authorizers' refresh tokens."""

    def __init__(self, platform: Platform, client: WeChatClient, cache: SharedCache, rules: RefreshRules) -> None:
        self.platform = platform
        self.crypt = MessageCrypt(
            token=platform.token.reveal(),
            aes_key=platform.aes_key.reveal(),
            receive_id=platform.component_appid,
            previous_aes_key=None if platform.previous_aes_key is None else platform.previous_aes_key.reveal(),
        )
        self._client = client
        self._cache = cache
        self._rules = rules
        self._clock = rules.clock
        prefix = _prefix(platform.component_appid)
        self._ticket_key = f"{prefix}:verify-ticket"
        self.token_key = f"{prefix}:token"
        self._lock_key = f"{prefix}:token-lock"
        self.authorizers_key = f"{prefix}:authorizers"
        self._token: AccessToken | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        self._error: UpstreamError | None = None
        self._blocked_until = 0.0
        self._failures = 0
        # The refresh tokens read or written here: what an authorizer refreshes with while the cache is away.
        self._refresh_tokens: dict[str, str] = {}
        # What the shared table did not take while the cache was away: written back at the next sync
        # (a refresh token, or None for a removal).
        self.pending: dict[str, dict[str, Any] | None] = {}
        # The last pushed ticket, for a token fetch while the cache is away.
        self._last_ticket: str | None = None
        # The token WeChat last refused: not taken again from the shared cache if deleting it failed there.
        self._refused: str | None = None
        self._adopting: asyncio.Task[None] | None = None
        self.last_push: float | None = None
        self._started_at = self._clock()
        self._reported = Reported(platform, platform.name, rules.platform_watchers)

    def __repr__(self) -> str:
        return f"ComponentCredentials(platform={self.platform.component_appid!r})"

    # -- the component_verify_ticket ---------------------------------------------------------

    async def keep_verify_ticket(self, value: str) -> None:
        """Keep the ticket WeChat just pushed for the fleet; a token fetch waiting for one may try at once."""
        now = self._clock()
        await self._cache.set(self._ticket_key, {"value": value, "obtained_at": now}, VERIFY_TICKET_LIFE)
        self._last_ticket, self.last_push = value, now
        if self._error is not None and getattr(self._error, "errcode", None) in (None, 61005, 61006):
            self._blocked_until = 0.0

    async def _verify_ticket(self) -> str:
        record = await self._cache.get(self._ticket_key)
        value = self._last_ticket if record is None else record.get("value")
        if not isinstance(value, str) or not value:
            raise NoVerifyTicket(
                "no component_verify_ticket yet: WeChat pushes one every 10 minutes to "
                f"/v1/platform/{self.platform.component_appid}/events (check the platform's 授权事件接收URL "
                "and the callback allow list: jssdk-service wechat-ips --callback)",
                app_id=self.platform.component_appid, api="api_component_token",
            )  # fmt: skip
        return value

    # -- the component_access_token ----------------------------------------------------------

    async def component_token(self, turn: Turn | None = None) -> AccessToken:
        """A component_access_token that may be used now: the one held while fresh, else the single
        refresh's (run in `turn`'s slot when the caller holds one); the last error while the retry
        schedule holds new attempts back."""
        token = self._token
        now = self._clock()
        if token is not None and token.fresh(now):
            return token
        if self._flight is None:
            if self._error is not None and now < self._blocked_until:
                if token is not None and token.usable(now):
                    return token
                self._error.retry_after = self._blocked_until - now
                raise self._error.with_traceback(None)  # one object raised again and again: no growing traceback
            scheduler = self._client.scheduler
            own = turn or scheduler.turn()
            scheduler.hurry(own)  # every authorizer's refresh waits on it
            flight = asyncio.get_running_loop().create_task(self._refresh(own))
            self._flight = flight
            flight.add_done_callback(self._landed)
        if token is not None and token.usable(now):
            return token  # still good while its refresh runs: nobody waits on it
        return await asyncio.shield(self._flight)

    def _landed(self, flight: asyncio.Task[AccessToken]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            flight.exception()  # kept in self._error

    async def _refresh(self, turn: Turn) -> AccessToken:
        cold = self._token is None or not self._token.usable(self._clock())
        scheduler = self._client.scheduler
        try:
            token = await under_fleet_lock(self._cache, scheduler, self._lock_key, self._rules.lock_lease, turn,
                                           self._shared_token, lambda: self._new_token(turn, cold))  # fmt: skip
        except UpstreamError as exc:
            self._record_failure(exc)
            raise
        except Exception as exc:  # a record this version cannot read, say: a failed refresh, never the end of one
            log.exception("platform=%s component_access_token refresh failed unexpectedly",
                          self.platform.component_appid)  # fmt: skip
            failure = UpstreamUnavailable(f"refresh failed: {type(exc).__name__}", app_id=self.platform.component_appid)
            self._record_failure(failure)
            raise failure from None
        self._token = token
        self._recovered()
        return token

    def _recovered(self) -> None:
        self._reported.recovered()
        if self._error is not None:
            log.info("platform=%s component_access_token recovered", self.platform.component_appid)
        self._error, self._failures, self._blocked_until = None, 0, 0.0

    async def _shared_token(self) -> AccessToken | None:
        record = await self._cache.get(self.token_key)
        if record is None:
            return None
        try:
            token = AccessToken.from_record(record)
        except (KeyError, TypeError, ValueError):
            return None
        fresh = token.fresh(self._clock()) and token != self._token and token.value != self._refused
        return token if fresh else None

    async def _new_token(self, turn: Turn, cold: bool) -> AccessToken:
        platform = self.platform
        ticket = await self._verify_ticket()
        token = await self._client.fetch_component_token(
            component_appid=platform.component_appid, secret=platform.secret.reveal(), verify_ticket=ticket, turn=turn
        )
        token = token.scheduled(self._rules.spread(), cold=cold)
        await self._cache.set(self.token_key, token.to_record(), token.expires_at - self._clock())
        await self._cache.announce(self.token_key)
        log.info("platform=%s component_access_token %s refreshed, expires_in=%ds",
                 platform.component_appid, token.fingerprint, token.expires_in)  # fmt: skip
        return token

    def _record_failure(self, exc: UpstreamError) -> None:
        # No ticket yet is what a start looks like: neither counted nor told.
        if not (isinstance(exc, NoVerifyTicket) and self._clock() - self._started_at < FIRST_PUSH_GRACE):
            self._reported.failed(exc)
        now = self._clock()
        first = self._error is None or str(self._error) != str(exc)
        self._error = exc
        self._failures += 1
        bounds, low = (REJECTED_RETRY, 0.75) if isinstance(exc, UpstreamRejected) else (UNAVAILABLE_RETRY, 0.5)
        self._blocked_until = now + backoff(bounds, self._failures) * self._rules.rng.uniform(low, 1.0)
        exc.retry_after = self._blocked_until - now
        if first:
            log.warning("platform=%s component_access_token refresh failed: %s; next try in %.0fs",
                        self.platform.component_appid, exc, self._blocked_until - now)  # fmt: skip

    def on_news(self) -> None:
        """Another process stored a new component token: take it at the next use (fresh ones only)."""
        self._token = None if self._token is not None and not self._token.usable(self._clock()) else self._token
        if self._flight is None and (self._adopting is None or self._adopting.done()):
            self._adopting = asyncio.get_running_loop().create_task(self._adopt())

    async def _adopt(self) -> None:
        shared = await self._shared_token()
        if shared is not None and (self._token is None or shared.obtained_at >= self._token.obtained_at):
            self._token = shared
            self._recovered()

    async def keep_fresh(self) -> None:
        """The background refresher of the component token: ahead of expiry, so authorizers never wait on it."""
        while True:
            token = self._token
            now = self._clock()
            if token is None or not token.fresh(now):
                with contextlib.suppress(UpstreamError):  # recorded and logged by _record_failure
                    await self.component_token()
            token = self._token
            now = self._clock()
            if token is not None and token.fresh(now):
                delay = token.refresh_at - now
            else:
                delay = max(0.0, self._blocked_until - now)
            await asyncio.sleep(max(0.05, delay))

    def running_tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in (self._flight, self._adopting) if t is not None and not t.done()]

    def token_ttl(self, now: float) -> float | None:
        token = self._token
        return None if token is None else round(token.expires_at - now, 1)

    def status(self) -> dict[str, Any]:
        """What the admin API says of the platform's own credentials; never a value."""
        now = self._clock()
        error = self._error
        return {
            "component_token_expires_in": self.token_ttl(now),
            "last_push_ago": None if self.last_push is None else round(now - self.last_push, 1),
            "last_error": None if error is None else str(error),
            "fix": getattr(error, "fix", None) or None,
        }

    # -- authorizers -------------------------------------------------------------------------

    async def authorizer_token(self, app_id: str, turn: Turn) -> AccessToken:
        """A new access token for the authorizer `app_id` from its refresh token; the component token is
        replaced once if WeChat refuses it, and a refresh token WeChat answers with is kept."""
        entry = await self._cache.entry(self.authorizers_key, app_id)
        refresh = entry.get("refresh_token") if entry is not None else self._refresh_tokens.get(app_id)
        if not isinstance(refresh, str) or not refresh:
            raise UpstreamRejected(0, "no refresh token is kept for this authorizer", app_id=app_id,
                                   api="api_authorizer_token",
                                   fix="it must authorize the platform again, or be added with its refresh token: "
                                   f"POST /admin/platforms/{self.platform.component_appid}/authorizers")  # fmt: skip
        component = self.usable_token()
        if component is None:
            raise ComponentTokenNeeded  # the refresh gets it outside its upstream slot, then comes back
        call = {"component_appid": self.platform.component_appid, "app_id": app_id, "refresh_token": refresh}
        try:
            grant = await self._client.fetch_authorizer_token(component_token=component, turn=turn, **call)
        except TokenInvalid as exc:
            log.warning("platform=%s component_access_token %s refused (errcode %s); getting another",
                        self.platform.component_appid, component.fingerprint, exc.errcode)  # fmt: skip
            await self._drop_token(component)
            raise ComponentTokenNeeded from None
        if grant.refresh_token == refresh:
            if entry is not None:  # this process's copy, for a refresh while the cache is away
                self._refresh_tokens[app_id] = refresh
        elif app_id in self._refresh_tokens or await self._cache.entry(self.authorizers_key, app_id) is not None:
            # WeChat gave another refresh token: kept, unless the authorizer was removed meanwhile.
            await self.keep_refresh_token(app_id, grant.refresh_token, via=str((entry or {}).get("via", "push")))
        return grant.token

    def usable_token(self) -> AccessToken | None:
        """The component token held here while it may be used (a refresh of it may be due), else None."""
        token = self._token
        return token if token is not None and token.usable(self._clock()) else None

    async def _drop_token(self, refused: AccessToken) -> None:
        self._refused = refused.value
        if self._token is not None and self._token.value == refused.value:
            self._token = None
        await self._cache.delete_if_value(self.token_key, refused.value)

    async def exchange_code(self, code: str) -> tuple[str, str, AccessToken]:
        """What an authorization code grants (`api_query_auth`): the authorizer's appId, refresh token and token."""
        turn = self._client.scheduler.turn()
        self._client.scheduler.hurry(turn)  # WeChat waits for our answer to its push
        component = await self.component_token(turn)
        grant = await self._client.query_auth(component_appid=self.platform.component_appid,
                                              component_token=component, code=code, turn=turn)  # fmt: skip
        return grant.app_id, grant.refresh_token, grant.token

    async def keep_refresh_token(self, app_id: str, refresh_token: str, *, via: str) -> bool:
        """Store an authorizer's refresh token for the fleet; False when the shared cache did not take it
        (it is still kept in this process)."""
        self._refresh_tokens[app_id] = refresh_token
        record = {"refresh_token": refresh_token, "since": self._clock(), "via": via}
        self.pending.pop(app_id, None)
        stored = await self._cache.put_entry(self.authorizers_key, app_id, record)
        if not stored:
            self.pending[app_id] = record
            log.error("platform=%s authorizer %s: the shared cache is away; its refresh token is kept here and "
                      "written there once it is back", self.platform.component_appid, app_id)  # fmt: skip
        return stored

    async def forget(self, app_id: str) -> bool:
        """Remove an authorizer's refresh token; True when the table had it (or may have: the cache is away,
        and the removal is written there once it is back)."""
        self._refresh_tokens.pop(app_id, None)
        self.pending.pop(app_id, None)
        dropped = await self._cache.drop_entry(self.authorizers_key, app_id)
        if dropped is None:
            self.pending[app_id] = None
            log.error("platform=%s authorizer %s: the shared cache is away; its removal is written there once it "
                      "is back", self.platform.component_appid, app_id)  # fmt: skip
            return True
        return dropped

    async def write_pending(self) -> bool:
        """Write what the shared table missed while the cache was away; True when nothing is left."""
        for app_id, record in list(self.pending.items()):
            if record is None:
                done = await self._cache.drop_entry(self.authorizers_key, app_id) is not None
            else:
                done = await self._cache.put_entry(self.authorizers_key, app_id, record)
            if not done:
                return False
            if self.pending.get(app_id, ...) == record:
                del self.pending[app_id]
        return True

    def forget_locally(self, app_id: str) -> None:
        """Another process removed the authorizer: drop this process's copy of its refresh token."""
        self._refresh_tokens.pop(app_id, None)

    async def verify_refresh_token(self, app_id: str, refresh_token: str) -> tuple[str, AccessToken]:
        """An authorizer's token from a refresh token someone gave us (the admin API), which is kept only
        if WeChat takes it: the refresh token to keep, and the token."""
        turn = self._client.scheduler.turn()
        self._client.scheduler.hurry(turn)
        component = await self.component_token(turn)
        grant = await self._client.fetch_authorizer_token(component_appid=self.platform.component_appid,
                                                          component_token=component, app_id=app_id,
                                                          refresh_token=refresh_token, turn=turn)  # fmt: skip
        return grant.refresh_token, grant.token

    async def has(self, app_id: str) -> bool:
        return await self._cache.entry(self.authorizers_key, app_id) is not None

    async def pages(self) -> list[dict[str, dict[str, Any]]] | None:
        """Every entry of the authorizers' table, page by page; None when the cache stopped answering."""
        cursor, found = 0, []
        while True:
            page = await self._cache.entries(self.authorizers_key, cursor, AUTHORIZERS_PAGE)
            if page is None:
                return None
            cursor, entries = page
            found.append(entries)
            if cursor == 0:
                return found


class PushGuard:
    """Refuses pushes outside the time window and replayed nonces: in this process, and with Redis fleet-wide."""

    def __init__(self, cache: SharedCache, clock: Callable[[], float] = time.time) -> None:
        self._cache = cache
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def in_window(self, timestamp: str) -> bool:
        try:
            sent = int(timestamp)
        except ValueError:
            return False
        return abs(self._clock() - sent) <= PUSH_WINDOW

    async def first_time(self, component_appid: str, timestamp: str, nonce: str) -> bool:
        """True the first time this push's nonce is seen (with its timestamp), within the window."""
        now = self._clock()
        seen = self._seen
        while seen and (len(seen) >= MAX_NONCES or next(iter(seen.values())) < now - 2 * PUSH_WINDOW):
            seen.popitem(last=False)
        key = _push_key(component_appid, timestamp, nonce)
        if key in seen:
            return False
        seen[key] = now  # before the fleet is asked: a copy arriving meanwhile here is refused
        if await self._cache.acquire(key, "seen", 2 * PUSH_WINDOW):
            return True
        seen.pop(key, None)  # the process that has it decides; if taking it fails there, it lets it in again
        return False

    async def forget(self, component_appid: str, timestamp: str, nonce: str) -> None:
        """Let this push in again: taking it failed (WeChat pushes it again when not answered `success`)."""
        key = _push_key(component_appid, timestamp, nonce)
        self._seen.pop(key, None)
        await self._cache.release(key, "seen")


def _push_key(component_appid: str, timestamp: str, nonce: str) -> str:
    return f"{_prefix(component_appid)}:push:{timestamp}:{nonce}"


class Platforms:
    """Every platform's credentials, and its authorizers in the credential store."""

    def __init__(
        self,
        platforms: Iterable[Platform],
        client: WeChatClient,
        cache: SharedCache,
        rules: RefreshRules,
        store: CredentialStore,
    ) -> None:
        self._by_appid = {p.component_appid: ComponentCredentials(p, client, cache, rules) for p in platforms}
        self._cache = cache
        self._store = store
        self._counts = dict.fromkeys(self._by_appid, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: list[asyncio.Task[None]] = []
        self._news: asyncio.Queue[tuple[ComponentCredentials, str]] = asyncio.Queue(maxsize=MAX_NEWS)
        self._random = random.Random()

    def __iter__(self) -> Iterator[ComponentCredentials]:
        return iter(self._by_appid.values())

    def __len__(self) -> int:
        return len(self._by_appid)

    def get(self, component_appid: str) -> ComponentCredentials | None:
        return self._by_appid.get(component_appid)

    def named(self, component_appid: str) -> ComponentCredentials:
        """The platform a request names; `UnknownPlatform` when none is configured so."""
        component = self._by_appid.get(component_appid)
        if component is None:
            raise UnknownPlatform(f"no platform is configured as {component_appid!r}")
        return component

    def tokens(self) -> Mapping[str, ComponentCredentials]:
        """What `RefreshRules.platforms` holds: each platform's authorizer tokens."""
        return self._by_appid

    def authorizer_count(self, component_appid: str) -> int:
        return self._counts.get(component_appid, 0)

    # -- the authorizers in the store --------------------------------------------------------

    async def _hold(
        self, component: ComponentCredentials, app_id: str, token: AccessToken | None = None
    ) -> Account | None:
        """Hold the authorizer `app_id` in the store (with `token` when one came with it); None when a
        configured account has that appId."""
        held = self._store.get(app_id)
        if held is not None:
            account = held.account
            if account.platform != component.platform.component_appid:
                return None
            if token is not None:
                await held.adopt_token(token)
            return account
        account = component.platform.authorizer(app_id)
        self._counts[component.platform.component_appid] += 1
        await self._store.add(account, token=token)
        return account

    def _release(self, component: ComponentCredentials, app_id: str) -> bool:
        held = self._store.get(app_id)
        if held is None or held.account.platform != component.platform.component_appid:
            return False
        self._store.remove(app_id)
        self._counts[component.platform.component_appid] -= 1
        # Its ticket and token leave the shared cache too: held again later, it must not sign with them.
        self._stopping = [task for task in self._stopping if not task.done()]
        self._stopping.append(asyncio.get_running_loop().create_task(held.drop_shared()))
        return True

    def conflicts(self, component: ComponentCredentials, app_id: str) -> bool:
        """True when `app_id` is a configured account, or another platform's authorizer, here: it cannot be
        added to `component`."""
        held = self._store.get(app_id)
        return held is not None and held.account.platform != component.platform.component_appid

    async def add(
        self, component: ComponentCredentials, app_id: str, refresh_token: str, *, via: str,
        token: AccessToken | None = None,
    ) -> Account | None:  # fmt: skip
        """Keep an authorizer (from a push or the admin API) and start signing for it; announced to the fleet.
        None when a configured account (or another platform's authorizer) has that appId."""
        if self.conflicts(component, app_id):
            return None
        await component.keep_refresh_token(app_id, refresh_token, via=via)
        account = await self._hold(component, app_id, token)
        await self._cache.announce(f"{_prefix(component.platform.component_appid)}:authorizer:{app_id}")
        log.info("platform=%s authorizer %s added (%s)", component.platform.component_appid, app_id, via)
        return account

    async def remove(self, component: ComponentCredentials, app_id: str, *, via: str) -> bool:
        """Forget an authorizer and stop signing for it; announced to the fleet. True when it was known."""
        stored = await component.forget(app_id)
        held = self._release(component, app_id)
        await self._cache.announce(f"{_prefix(component.platform.component_appid)}:authorizer:{app_id}")
        if stored or held:
            log.info("platform=%s authorizer %s removed (%s)", component.platform.component_appid, app_id, via)
        return stored or held

    async def load(self) -> None:
        """Hold every authorizer the shared cache keeps (at start-up), a page at a time."""
        for component in self:
            if not self._cache.shared:
                log.warning("platform=%s: authorizers' refresh tokens are kept in memory and lost on restart; "
                            "set JSSDK_CACHE_URL=redis://... to keep them",
                            component.platform.component_appid)  # fmt: skip
            await self._sync(component)

    async def _sync(self, component: ComponentCredentials) -> None:
        """Write back what the table missed, then hold what it has and release what it no longer has: of
        those held before the read began (one added meanwhile is not in the pages read)."""
        appid = component.platform.component_appid
        if not await component.write_pending():
            return
        before = [c.account.app_id for c in self._store if c.account.platform == appid]
        pages = await component.pages()
        if pages is None:
            return
        listed: set[str] = set()
        for page in pages:
            for app_id in page:
                listed.add(app_id)
                if app_id not in component.pending and await self._hold(component, app_id) is None:
                    log.warning("platform=%s authorizer %s is a configured account (or another platform's): "
                                "that one is used", appid, app_id)  # fmt: skip
            await asyncio.sleep(0)
        for number, app_id in enumerate(before, 1):
            if app_id not in listed and app_id not in component.pending:
                self._release(component, app_id)
            if number % AUTHORIZERS_PAGE == 0:
                await asyncio.sleep(0)

    def start(self) -> None:
        """The component tokens' refreshers, the follower of the fleet's news, and the periodic re-read of
        the authorizers' tables."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(component.keep_fresh()) for component in self]
        self._tasks.append(loop.create_task(self._follow_news()))
        if self._cache.shared:
            self._tasks.append(loop.create_task(self._resync()))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_EVERY * self._random.uniform(0.9, 1.1))
            for component in self:
                await self._sync(component)

    async def stop(self) -> None:
        running = [*self._tasks, *self._stopping, *(task for c in self for task in c.running_tasks())]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks, self._stopping = [], []

    def on_news(self, key: str) -> bool:
        """Another process's news about a platform (a component token, an authorizer); False when `key`
        is not about a platform."""
        prefix, _, rest = key.partition(":")
        if prefix != PREFIX:
            return False
        component_appid, _, what = rest.partition(":")
        component = self._by_appid.get(component_appid)
        if component is None:
            return True
        if what == "token":
            component.on_news()
        elif what.startswith("authorizer:"):
            try:
                self._news.put_nowait((component, what.removeprefix("authorizer:")))
            except asyncio.QueueFull:
                log.warning("platform=%s: too much news at once; the next re-read of the authorizers catches up",
                            component_appid)  # fmt: skip
        return True

    async def _follow_news(self) -> None:
        """Hold or release authorizers as the fleet's news says, one after the other, in the order it came."""
        while True:
            component, app_id = await self._news.get()
            with contextlib.suppress(UpstreamError):
                await self._follow(component, app_id)

    async def _follow(self, component: ComponentCredentials, app_id: str) -> None:
        """Hold or release an authorizer as the shared table now says."""
        if await component.has(app_id):
            await self._hold(component, app_id)
        else:
            component.forget_locally(app_id)
            self._release(component, app_id)
