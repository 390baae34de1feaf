"""The credential store: the only code that knows how tokens and tickets are cached and refreshed.

Per account it keeps the current jsapi_ticket in memory, so a warm signature never waits on
anything, and behind it the shared cache (memory or Redis) where every process finds the newest
token and ticket. A background task refreshes the ticket ahead of expiry; a request that finds
nothing usable starts the same refresh lazily. Either way one refresh runs at a time per account
(single-flight): however many requests arrive at a cold cache, one token call and one ticket call
go upstream. A failed refresh keeps serving the ticket it has while that is still valid.

Built for N accounts: each refresh waits for its turn at the process's upstream scheduler (and a
request waiting on an account hurries that account's turn); a request waits at most
`request_wait` seconds, then gets `UpstreamUnavailable` with a retry time; refresh times are drawn
at random inside a window (`tokens.py`); failure backoffs carry jitter. With a shared cache that
carries news (Redis pub/sub), every credential this process obtains is announced, and news of
another process's credential is adopted from the cache at once: the message names the key only.

Every kind of account goes through the same pipeline. A WeCom app holds two tickets, the corp's
(wx.config) and its own agent ticket (wx.agentConfig), refreshed together with its own token,
each call booked first against WeCom's hourly limits (`quotas.HourlyLimits`). An external account
reads its token from the server that owns it, every time a ticket is fetched, and never calls a
token API; when WeChat refuses that token it reads the source once more after a pause, and if the
source still hands out the same token, the account says so (`TokenSourceStale`) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import orjson

from jssdk_service.cache import RawKeyError, RawKeys, SharedCache
from jssdk_service.config import Account, Platform, TokenRedisKey, TokenURL
from jssdk_service.errors import (
    HourlyLimited,
    PlatformUnavailable,
    QuotaExhausted,
    RateLimited,
    TokenInvalid,
    TokenSourceFailed,
    TokenSourceStale,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    failure_class,
)
from jssdk_service.metrics import count_refresh_failure, refresh_recovered
from jssdk_service.quotas import (
    BUCKET,
    COUNTED_APIS,
    WECOM_APP_TICKETS_PER_HOUR,
    WECOM_CORP_TICKETS_PER_HOUR,
    WECOM_COUNTED_APIS,
    HourlyLimits,
    QuotaWatcher,
    UpstreamUsage,
    next_china_midnight,
)
from jssdk_service.scheduler import Turn, UpstreamScheduler
from jssdk_service.tokens import AccessToken, JsapiTicket, Position, Spread, external_token
from jssdk_service.wechat import TICKET_API, TicketKind, WeChatClient

log = logging.getLogger("jssdk_service.credentials")

C = TypeVar("C", AccessToken, JsapiTicket)
R = TypeVar("R")
S = TypeVar("S")

RECENT_TICKETS = 5
# How often a process waiting on another's refresh looks for its result.
LOCK_POLL = 0.05
# Background refreshers started per turn of the event loop at start-up.
START_BATCH = 200
# Negative caching: a rejected configuration is retried on a slow, growing schedule.
REJECTED_RETRY = (30.0, 900.0)
# A failure with nothing usable left blocks new upstream attempts briefly, growing to a cap.
UNAVAILABLE_RETRY = (1.0, 30.0)
# Accounts whose daily quota is spent resume over this many seconds after midnight, not all at once.
RESUME_SPREAD = 60.0
# An external source whose token WeChat refused is read again after this pause (it may be rotating).
SOURCE_REREAD_PAUSE = 1.0


Tickets = tuple[JsapiTicket, JsapiTicket | None]
"""What a refresh lands: the ticket that signs wx.config, and a WeCom app's agent ticket."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountStatus:
    """What /readyz and the admin API say about one account; never a credential value."""

    name: str
    app_id: str
    ready: bool
    reason: str
    ticket_expires_in: float | None
    token_expires_in: float | None
    ticket_age: float | None
    token_age: float | None
    agent_ticket_expires_in: float | None
    agent_ticket_age: float | None
    last_refresh: float | None
    last_error: str | None
    errcode: int | None
    fix: str | None
    retry_in: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshRules:
    """How the accounts of a store keep their credentials: one object, shared by them all."""

    lock_lease: float
    """How long a fleet refresh lock lives if its holder dies (`Settings.lock_lease`)."""
    request_wait: float
    """How long a request may wait for a refresh before it is answered 503 with Retry-After."""
    clock: Callable[[], float] = time.time
    usage: UpstreamUsage | None = None
    rng: random.Random = field(default_factory=random.Random)
    """Jitter for backoffs, and the start order."""
    spread: Position = field(default_factory=Spread)
    """Positions of refresh times in their windows: one `Spread` for all accounts, so that their
    refreshes come out evenly spaced."""
    source_keys: dict[str | None, RawKeys] = field(default_factory=dict)
    """The Redis of each external source kept there, by its `token_redis_url` (None: the service's own)."""
    source_reread_pause: float = SOURCE_REREAD_PAUSE
    platforms: Mapping[str, AuthorizerTokens] = field(default_factory=dict)
    """Each platform's authorizer tokens, by component_appid: where an authorizer's access token comes from."""
    watchers: Sequence[StateWatcher] = ()
    """Told of each account's state changes (notifications)."""
    quota_watchers: Sequence[QuotaWatcher] = ()
    """Told when the fleet passes 80% of WeCom's hourly limits."""
    platform_watchers: Sequence[PlatformWatcher] = ()
    """Told of each platform's component token state changes (notifications)."""


AccountEvent = Literal["failed", "recovered"]


class StateWatcher(Protocol):
    """Told when an account's refreshes start failing (`failed`, with the error; again when the kind of
    failure changes, as from `upstream` to `configuration`) and when they succeed again (`recovered`).
    Called in this process, once per change; never per request."""

    def __call__(self, account: Account, event: AccountEvent, error: UpstreamError | None) -> None: ...


class PlatformWatcher(Protocol):
    """Told when a platform's component_access_token refreshes start failing (`failed`, again when the
    kind of failure changes) and when they succeed again (`recovered`): its authorizers' refreshes fail
    with it, and are told as the platform's failure, once. Called in this process, once per change."""

    def __call__(self, platform: Platform, event: AccountEvent, error: UpstreamError | None) -> None: ...


class Reported(Generic[S]):
    """What the metrics and the watchers were told of the refreshes of one `subject` (an account, or a
    platform's component token): each failure counted under `name`, the watchers told once per change of
    state (`failed` with its class, again when the class changes; `recovered` after a failure told)."""

    __slots__ = ("_name", "_subject", "_told", "_watchers")

    def __init__(self, subject: S, name: str, watchers: Sequence[Callable[[S, AccountEvent, UpstreamError | None],
                                                                           None]]) -> None:  # fmt: skip
        self._subject, self._name, self._watchers = subject, name, watchers
        self._told: str | None = None  # the class of the failure last told; None: none, or it recovered

    def failed(self, exc: UpstreamError) -> None:
        kind = failure_class(exc)
        count_refresh_failure(self._name, kind)
        if self._told != kind:
            self._told = kind
            for watcher in self._watchers:
                watcher(self._subject, "failed", exc)

    def recovered(self) -> None:
        refresh_recovered(self._name)
        if self._told is not None:
            self._told = None
            for watcher in self._watchers:
                watcher(self._subject, "recovered", None)


class ComponentTokenNeeded(Exception):
    """Raised inside an upstream slot when an authorizer's refresh needs its platform's token first: the
    refresh leaves the slot, waits for the token, and tries again (a component token's own refresh needs a
    slot, which authorizers waiting for it while holding every slot would never leave free)."""


class AuthorizerTokens(Protocol):
    """A platform's side of its authorizers' tokens (`component.ComponentCredentials`)."""

    async def component_token(self, turn: Turn | None = None) -> AccessToken:
        """The platform's own token, which every authorizer token call needs."""
        ...

    async def authorizer_token(self, app_id: str, turn: Turn) -> AccessToken:
        """A new access token for the authorizer `app_id`, from its refresh token."""
        ...


class AccountCredentials:
    """The token and ticket of one account, refreshed ahead of expiry, one refresh at a time."""

    def __init__(
        self, account: Account, client: WeChatClient, cache: SharedCache, rules: RefreshRules, hourly: HourlyLimits
    ) -> None:
        self.account = account
        self._rules = rules
        self._reported = Reported(account, account.name, rules.watchers)
        self._hourly = hourly
        self._lock_lease = rules.lock_lease
        self._request_wait = rules.request_wait
        self._usage = rules.usage
        self._client = client
        self._scheduler: UpstreamScheduler = client.scheduler
        self._cache = cache
        self._clock = rules.clock
        self._random = rules.rng
        self._spread = rules.spread
        self._ticket: JsapiTicket | None = None
        # The last few tickets, newest first, for diagnosing signatures made with an earlier one.
        self.recent_tickets: deque[JsapiTicket] = deque(maxlen=RECENT_TICKETS)
        # A WeCom app's agent ticket, refreshed with the corp ticket (`_ticket`) and its recent ones.
        self._agent_ticket: JsapiTicket | None = None
        self.recent_agent_tickets: deque[JsapiTicket] = deque(maxlen=RECENT_TICKETS)
        # The current ticket's deadlines, copied out of it for the hot path.
        self._usable_until = self._refresh_at = 0.0
        self._token: AccessToken | None = None
        self._flight: asyncio.Task[JsapiTicket] | None = None
        self._turn: Turn | None = None
        self._news: set[str] = set()
        self._adopting: asyncio.Task[None] | None = None
        # The background refresher's pause, while it pauses: `wake` ends it early.
        self._pause: asyncio.Future[None] | None = None
        self._last_refresh: float | None = None
        self._error: UpstreamError | None = None
        self._blocked_until = 0.0
        self._failures = 0
        key = account.key
        self._ticket_key = f"{key}:ticket"
        self._agent_key = f"{key}:agent-ticket"
        api = ("external" if account.source is not None else "gettoken" if account.wecom
               else "authorizer" if account.platform is not None else account.token_api)  # fmt: skip
        self._token_key = f"{key}:token:{api}"
        self._lock_key = f"{key}:refresh-lock"
        # Whether the token lives in the shared cache: not when an external source owns it.
        self._token_cached = account.source is None

    def __repr__(self) -> str:
        return f"AccountCredentials(app={self.account.name!r})"

    def usable_ticket(self, now: float) -> JsapiTicket | None:
        """The hot path: the in-memory ticket if it may sign now; starts a background refresh when due."""
        if now >= self._usable_until:
            return None
        if now >= self._refresh_at and self._flight is None and now >= self._blocked_until:
            self._start_refresh()
        return self._ticket

    def usable_agent_ticket(self, now: float) -> JsapiTicket | None:
        """A WeCom app's agent ticket, as `usable_ticket` gives its corp ticket (None for other accounts)."""
        return self._agent_ticket if self.usable_ticket(now) is not None else None

    async def agent_ticket(self) -> JsapiTicket:
        """A WeCom app's agent ticket that may sign now, waiting as `ticket` does."""
        await self.ticket()
        assert self._agent_ticket is not None  # held with the corp ticket, always
        return self._agent_ticket

    async def ticket(self) -> JsapiTicket:
        """A ticket that may sign now, waiting (at most `request_wait`, ahead of background refreshes)
        for the single refresh if there is none."""
        ticket = self.usable_ticket(self._clock())
        if ticket is not None:
            return ticket
        flight = self._running_refresh()
        if self._turn is not None:
            self._scheduler.hurry(self._turn)
        try:
            return await asyncio.wait_for(asyncio.shield(flight), self._request_wait)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"no jsapi_ticket yet: its refresh is still running after {self._request_wait:g}s",
                app_id=self.account.key,
                retry_after=self._request_wait,
            ) from None

    async def refresh(self, *, force: bool = False, new_token: bool = False) -> JsapiTicket:
        """Join the running refresh or start one; raise the upstream error when it fails.

        `force` (the admin API) lets a running refresh land, then fetches a new ticket from WeChat
        whatever the shared cache and the retry schedule say; `new_token` replaces the token first.
        """
        if force:
            while self._flight is not None:
                with contextlib.suppress(UpstreamError):
                    await asyncio.shield(self._flight)
            return await asyncio.shield(self._start_refresh(force=True, new_token=new_token))
        return await asyncio.shield(self._running_refresh())

    def _running_refresh(self) -> asyncio.Task[JsapiTicket]:
        """The refresh in flight, or a new one; the last error while the retry schedule holds new ones back."""
        if self._flight is not None:
            return self._flight
        now = self._clock()
        if now < self._blocked_until and self._error is not None:
            self._error.retry_after = self._blocked_until - now
            raise self._error.with_traceback(None)  # raised again and again: no growing traceback
        return self._start_refresh()

    def _start_refresh(self, *, force: bool = False, new_token: bool = False) -> asyncio.Task[JsapiTicket]:
        self._turn = turn = self._scheduler.turn()
        flight = asyncio.get_running_loop().create_task(self._refresh_ticket(turn, force, new_token))
        self._flight = flight
        flight.add_done_callback(self._landed)
        return flight

    def _landed(self, flight: asyncio.Task[JsapiTicket]) -> None:
        if self._flight is flight:
            self._flight = self._turn = None
        self.wake()  # a refresh the background refresher did not start moved its schedule
        if not flight.cancelled():
            flight.exception()  # the error is kept in self._error; this only marks it retrieved

    async def _refresh_ticket(self, turn: Turn, force: bool, new_token: bool) -> JsapiTicket:
        cold = self._ticket is None or not self._ticket.usable(self._clock())
        try:
            ticket, agent = await self._shared_or_new_ticket(turn, force, new_token, cold)
        except UpstreamError as exc:
            self._record_failure(exc)
            raise
        except Exception as exc:
            # Anything else (say, a cache record in a format this version cannot read) must not end
            # the background refresher or reach a request as a 500: it is a failed refresh.
            log.exception("app=%s refresh failed unexpectedly", self.account.name)
            failure = UpstreamUnavailable(f"refresh failed: {type(exc).__name__}", app_id=self.account.key)
            self._record_failure(failure)
            raise failure from None
        finally:
            if self._usage is not None:
                await self._usage.flush(self._cache)
        self._hold(ticket, agent)
        self._recovered("")
        return ticket

    def _hold(self, ticket: JsapiTicket, agent: JsapiTicket | None) -> None:
        """Sign with `ticket` (and a WeCom app's agentConfig with `agent`) from now on."""
        if ticket != self._ticket:
            self.recent_tickets.appendleft(ticket)
        if agent is not None and agent != self._agent_ticket:
            self.recent_agent_tickets.appendleft(agent)
        self._ticket, self._agent_ticket = ticket, agent
        held = (ticket,) if agent is None else (ticket, agent)
        self._usable_until = min(t.usable_until for t in held)
        self._refresh_at = min(t.refresh_at for t in held)
        self._last_refresh = self._clock()

    def _recovered(self, how: str) -> None:
        self._reported.recovered()
        if self._blocked_until:
            self.wake()  # held back by a failure: the background refresher's schedule is its own again
        if self._error is not None:
            log.info("app=%s credentials recovered%s", self.account.name, how)
        self._error, self._failures, self._blocked_until = None, 0, 0.0

    async def _shared_or_new_ticket(self, turn: Turn, force: bool, new_token: bool, cold: bool) -> Tickets:
        """The fleet's ticket if another process already renewed it, else a new one, under the lock.

        The lock is taken once this refresh holds an upstream slot, so its lease covers the calls
        and never a wait in line.
        """

        async def shared() -> Tickets | None:
            return None if force else await self._shared_ticket()

        return await self._outside_slots(
            shared, lambda: self._under_lock(turn, shared, lambda: self._new_ticket(turn, new_token, cold))
        )

    async def _outside_slots(self, shared: Callable[[], Awaitable[R | None]], run: Callable[[], Awaitable[R]]) -> R:
        """`run`; for an authorizer, with its platform's token obtained outside any upstream slot first
        (`ComponentTokenNeeded`), once more if the token was replaced meanwhile."""
        platform = self.account.platform
        if platform is None:
            return await run()
        for attempt in (1, 2):
            if await shared() is None:
                await self._platform_token(platform)
            try:
                return await run()
            except ComponentTokenNeeded:
                if attempt == 2:
                    break
        raise UpstreamUnavailable("the platform's component_access_token was replaced twice during one refresh",
                                  app_id=self.account.key, api="api_authorizer_token")  # fmt: skip

    async def _platform_token(self, platform: str) -> None:
        """The platform's token is usable, or its failure becomes this authorizer's, retried soon."""
        try:
            await self._rules.platforms[platform].component_token()
        except UpstreamError as exc:
            errcode, fix = getattr(exc, "errcode", None), getattr(exc, "fix", "")
            raise PlatformUnavailable(f"platform {platform}: {exc}", app_id=self.account.key, errcode=errcode,
                                      fix=fix) from None  # fmt: skip

    async def _under_lock(
        self, turn: Turn, shared: Callable[[], Awaitable[R | None]], new: Callable[[], Awaitable[R]]
    ) -> R:
        return await under_fleet_lock(self._cache, self._scheduler, self._lock_key, self._lock_lease, turn, shared, new)

    async def access_token(self) -> AccessToken:
        """A token that may call WeChat now, for the operations APIs (IP lists, network checks, quotas):
        the one held here while fresh, else the fleet's, else a new one under the fleet lock."""
        token = self._token
        if token is not None and token.fresh(self._clock()):
            return token
        turn = self._scheduler.turn()

        async def shared() -> AccessToken | None:
            if not self._token_cached:
                return None
            found = await self._read_shared(self._token_key, AccessToken)
            if found is None or not found.fresh(self._clock()):
                return None
            self._token = found
            return found

        return await self._outside_slots(
            shared, lambda: self._under_lock(turn, shared, lambda: self._fresh_token(turn))
        )

    async def _shared_ticket(self) -> Tickets | None:
        """The fleet's tickets when all are fresh and not those held here."""
        now = self._clock()
        shared = await self._read_shared(self._ticket_key, JsapiTicket)
        if shared is None or not shared.fresh(now):
            return None
        if not self.account.wecom:
            return None if shared == self._ticket else (shared, None)
        agent = await self._read_shared(self._agent_key, JsapiTicket)
        if agent is None or not agent.fresh(now) or (shared, agent) == (self._ticket, self._agent_ticket):
            return None
        return shared, agent

    def on_news(self, kind: str) -> None:
        """Another process stored a new `kind` ("ticket" or "token") of this account in the shared cache."""
        self._news.add(kind)
        if self._adopting is None or self._adopting.done():
            self._adopting = asyncio.get_running_loop().create_task(self._adopt_news())

    async def _adopt_news(self) -> None:
        """Take what the news names from the shared cache, unless a refresh here is about to land its own."""
        while self._news:
            kind = self._news.pop()
            if kind == "token":
                token = await self._read_shared(self._token_key, AccessToken)
                if token is not None and token.usable(self._clock()):
                    self._token = token
                continue
            ticket = await self._read_shared(self._ticket_key, JsapiTicket)
            agent = await self._read_shared(self._agent_key, JsapiTicket) if self.account.wecom else None
            current = self._ticket
            now = self._clock()
            if ticket is None or not ticket.usable(now) or self._flight is not None:
                continue
            if self.account.wecom and (agent is None or not agent.usable(now)):
                continue
            newer = ticket != current or agent != self._agent_ticket
            if current is None or (newer and ticket.obtained_at >= current.obtained_at):
                self._hold(ticket, agent)
                self._recovered(" (from the fleet)")

    async def _read_shared(self, key: str, kind: type[C]) -> C | None:
        """The credential at `key` in the shared cache; a record this version cannot read counts as none."""
        record = await self._cache.get(key)
        if record is None:
            return None
        try:
            return kind.from_record(record)
        except (KeyError, TypeError, ValueError):
            log.warning("app=%s unreadable %s record in the shared cache; fetching anew", self.account.name, key)
            return None

    async def _new_ticket(self, turn: Turn, new_token: bool, cold: bool) -> Tickets:
        """New tickets from WeChat (a WeCom app's fresh one in the shared cache is kept), with a token
        that is replaced once if WeChat refuses it."""
        token = await self._fresh_token(turn, new=new_token)
        if not self.account.wecom:
            return await self._new_of_kind("jsapi", token, turn, cold), None
        now = self._clock()
        shared = {kind: await self._read_shared(key, JsapiTicket)
                  for kind, key in (("corp", self._ticket_key), ("agent", self._agent_key))}  # fmt: skip
        tickets: dict[TicketKind, JsapiTicket] = {}
        for kind in ("corp", "agent"):
            kept = shared[kind]
            if kept is not None and kept.fresh(now) and not new_token and kept != self._held(kind):
                tickets[kind] = kept
            else:
                tickets[kind] = await self._new_of_kind(kind, token, turn, cold)
                token = self._token or token
        return tickets["corp"], tickets["agent"]

    def _held(self, kind: TicketKind) -> JsapiTicket | None:
        return self._agent_ticket if kind == "agent" else self._ticket

    async def _new_of_kind(self, kind: TicketKind, token: AccessToken, turn: Turn, cold: bool) -> JsapiTicket:
        """A new ticket of `kind`, stored and announced; a refused token is replaced (or read again) once."""
        try:
            ticket = await self._fetch_ticket(kind, token, turn)
        except TokenInvalid as exc:
            # The token died upstream (knocked out, or expired early): replace it and retry once.
            log.warning("app=%s token %s refused by %s (errcode %s); getting another",
                        self.account.name, token.fingerprint, exc.api, exc.errcode)  # fmt: skip
            token = await self._replace_token(token, turn, exc.errcode)
            try:
                ticket = await self._fetch_ticket(kind, token, turn)
            except TokenInvalid as again:
                if self.account.source is not None:
                    raise self._stale(again.errcode) from None
                raise UpstreamUnavailable(
                    f"a new access_token was refused too (errcode {again.errcode})", app_id=self.account.key
                ) from None
        ticket = ticket.scheduled(self._spread(), cold=cold)
        key = self._agent_key if kind == "agent" else self._ticket_key
        await self._cache.set(key, ticket.to_record(), ticket.expires_at - self._clock())
        await self._cache.announce(key)
        log.info("app=%s %s %s refreshed, expires_in=%ds",
                 self.account.name, "jsapi_ticket" if kind == "jsapi" else f"WeCom {kind} ticket", ticket.fingerprint,
                 ticket.expires_in)  # fmt: skip
        return ticket

    async def _fetch_ticket(self, kind: TicketKind, token: AccessToken, turn: Turn) -> JsapiTicket:
        """One ticket call; a WeCom one only once booked against WeCom's hourly limits."""
        account = self.account
        if kind != "jsapi":
            api = TICKET_API[kind]
            wait = await self._hourly.book(self._hourly_scopes(kind), api)
            if wait is not None:
                raise HourlyLimited(
                    f"WeCom allows {WECOM_APP_TICKETS_PER_HOUR} {api} calls an hour per app"
                    f"{f' and {WECOM_CORP_TICKETS_PER_HOUR} per corp' if kind == 'corp' else ''}: the last hour "
                    f"used them; the next is allowed in {wait:.0f}s",
                    app_id=account.key, api=api, retry_after=wait,
                )  # fmt: skip
        return await self._client.fetch_ticket(app_id=account.key, token=token, turn=turn, kind=kind)

    def _hourly_scopes(self, kind: TicketKind) -> tuple[tuple[str, int], ...]:
        """What a WeCom ticket call of `kind` is counted against: the app's limit, and for the corp
        ticket its corp's too."""
        app_limit = (self.account.key, WECOM_APP_TICKETS_PER_HOUR)
        return (app_limit, (self.account.app_id, WECOM_CORP_TICKETS_PER_HOUR)) if kind == "corp" else (app_limit,)

    async def _replace_token(self, refused: AccessToken, turn: Turn, errcode: int) -> AccessToken:
        """Another token after WeChat refused `refused`: a new one, or the external source read again."""
        if self.account.source is None:
            await self._drop_token(refused)
            return await self._fresh_token(turn)
        await asyncio.sleep(self._rules.source_reread_pause)
        token = await self._fresh_token(turn)
        if token.value == refused.value:
            raise self._stale(errcode)
        return token

    def _stale(self, errcode: int) -> TokenSourceStale:
        source = self.account.source
        assert source is not None
        return TokenSourceStale(
            f"token source {source.where} still hands out an access_token WeChat refuses (errcode {errcode})",
            errcode=errcode, app_id=self.account.key,
            fix="the server that owns the token must fetch a new one: its token is dead (or it is another account's)",
        )  # fmt: skip

    async def _fresh_token(self, turn: Turn, *, new: bool = False) -> AccessToken:
        """The fleet's token when fresh, else (or when `new`) a new one; the caller holds the refresh lock.

        The shared copy is read every time: another process may have replaced the token, and a
        classic token kept from before would die after WeChat's overlap. An external source is
        read every time instead: it owns the token, and may have rotated it.
        """
        account = self.account
        if account.source is not None:
            self._token = await self._read_source(account.source, turn)
            return self._token
        shared = None if new else await self._read_shared(self._token_key, AccessToken)
        if shared is not None:
            if shared.fresh(self._clock()):
                self._token = shared
                return shared
        elif not new and not self._cache.shared and self._token is not None and self._token.fresh(self._clock()):
            return self._token
        if account.platform is not None:
            token = await self._rules.platforms[account.platform].authorizer_token(account.app_id, turn)
        elif account.wecom:
            assert account.agent_id is not None
            token = await self._client.fetch_wecom_token(key=account.key, corp_id=account.app_id,
                                                         secret=account.reveal_secret(), turn=turn)  # fmt: skip
        else:
            # force_refresh matters to stable_token only: every classic call issues a new token anyway.
            token = await self._client.fetch_token(app_id=account.app_id, secret=account.reveal_secret(),
                                                   api=account.token_api, force_refresh=new, turn=turn)  # fmt: skip
        await self.adopt_token(token)
        log.info("app=%s access_token %s refreshed (%s), expires_in=%ds", account.name, token.fingerprint,
                 self._token_key.rpartition(":")[2], token.expires_in)  # fmt: skip
        return token

    async def drop_shared(self) -> None:
        """Take this account's credentials out of the shared cache (it is no longer signed for), as far as
        they are still the ones held here."""
        for key, held in ((self._ticket_key, self._ticket), (self._agent_key, self._agent_ticket),
                          (self._token_key, self._token)):  # fmt: skip
            if held is not None:
                await self._cache.delete_if_value(key, held.value)

    async def adopt_token(self, token: AccessToken) -> None:
        """Hold `token` from now on, and give it to the fleet (an authorizer's first token comes with its
        authorization)."""
        await self._cache.set(self._token_key, token.to_record(), token.expires_at - self._clock())
        await self._cache.announce(self._token_key)
        self._token = token

    async def _read_source(self, source: TokenURL | TokenRedisKey, turn: Turn) -> AccessToken:
        """The token the external `source` hands out now."""
        if isinstance(source, TokenURL):
            return await self._client.fetch_source_token(key=self.account.key, source=source, turn=turn)
        try:
            token = await self._read_redis_source(source)
        except TokenSourceFailed:
            self._client.observe(self.account.key, "token_source", "failed")
            raise
        self._client.observe(self.account.key, "token_source", "ok")
        return token

    async def _read_redis_source(self, source: TokenRedisKey) -> AccessToken:
        """The token in `source`'s Redis key, in the shapes `tokens.external_token` accepts."""
        keys = self._rules.source_keys.get(source.redis_url)
        if keys is None:
            raise TokenSourceFailed(f"token source {source.where}: no Redis is open for it", app_id=self.account.key)
        try:
            found = await keys.read(source.key)
        except RawKeyError as exc:
            fix = "check token_redis_url (or JSSDK_CACHE_URL) and that Redis is up"
            raise TokenSourceFailed(f"token source {source.where}: {exc}", app_id=self.account.key, fix=fix) from None
        if found is None:
            raise TokenSourceFailed(f"token source {source.where}: the key does not exist", app_id=self.account.key,
                                    fix="check token_redis_key, and that the token's owner writes it")  # fmt: skip
        text, ttl = found
        try:
            answer = orjson.loads(text) if text.lstrip().startswith("{") else text
            return external_token(answer, now=self._clock(), ttl=ttl)
        except (orjson.JSONDecodeError, ValueError) as exc:
            problem = "it is not valid JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
            fix = 'write {"access_token", "expires_at"} or the token alone with a TTL'
            message = f"token source {source.where}: {problem}"
            raise TokenSourceFailed(message, app_id=self.account.key, fix=fix) from None

    async def _drop_token(self, failed: AccessToken) -> None:
        """Forget `failed` here and in the shared cache, but only if it is still the current one.

        Compare-and-delete: when several processes see the same failure, the first replaces the
        token and the others find the new one, so one failure costs one new token.
        """
        if self._token is not None and self._token.value == failed.value:
            self._token = None
        await self._cache.delete_if_value(self._token_key, failed.value)

    def _record_failure(self, exc: UpstreamError) -> None:
        if failure_class(exc) != "platform":  # its platform's failure, told once for its thousands of authorizers
            self._reported.failed(exc)
        now = self._clock()
        first = self._error is None or type(self._error) is not type(exc) or str(self._error) != str(exc)
        self._error = exc
        self._failures += 1
        # Jitter everywhere: N accounts failing together must not come back together.
        jitter = self._random.uniform
        if isinstance(exc, HourlyLimited):
            wait = exc.retry_after if exc.retry_after is not None else 3600.0
            self._blocked_until = now + wait + jitter(0, RESUME_SPREAD)
        elif isinstance(exc, QuotaExhausted):
            self._blocked_until = next_china_midnight(now) + jitter(0, RESUME_SPREAD)
        elif isinstance(exc, RateLimited):
            self._blocked_until = jitter((now // 60 + 1) * 60, now + 60)  # some time in the next minute
        elif isinstance(exc, UpstreamRejected | TokenSourceStale):
            self._blocked_until = now + backoff(REJECTED_RETRY, self._failures) * jitter(0.75, 1.0)
        else:
            self._blocked_until = now + backoff(UNAVAILABLE_RETRY, self._failures) * jitter(0.5, 1.0)
        exc.retry_after = self._blocked_until - now
        if first:
            ticket = self._ticket
            serving = "still serving the current ticket" if ticket and ticket.usable(now) else "nothing valid to serve"
            log.warning("app=%s refresh failed: %s; %s; next try in %.0fs",
                        self.account.name, exc, serving, self._blocked_until - now)  # fmt: skip

    async def calls_today(self) -> dict[str, int]:
        """Upstream calls per API today (China time) for this account, across the fleet: the APIs it uses."""
        if self._usage is None:
            return {}
        account = self.account
        apis: tuple[str, ...] = WECOM_COUNTED_APIS if account.wecom else COUNTED_APIS
        if account.platform is not None:
            apis = ("api_authorizer_token", "getticket")
        elif account.source is not None:  # no token API; the source's reads instead
            apis = ("token_source", *apis[1:]) if account.wecom else ("token_source", "getticket")
        return await self._usage.today(self._cache, account.key, apis)

    async def ticket_limits_spent(self) -> float | None:
        """A WeCom app whose hourly ticket limits are spent (its own, or its corp's): about the seconds
        until a call may fit again (the next bucket); None when one fits now, and for other accounts."""
        if not self.account.wecom:
            return None
        for kind in ("corp", "agent"):
            if await self._hourly.full(self._hourly_scopes(kind), TICKET_API[kind]):
                now = self._clock()
                return BUCKET - now % BUCKET
        return None

    async def ticket_calls_last_hour(self) -> dict[str, int] | None:
        """A WeCom app's ticket calls in WeCom's hourly window, across the fleet: its own of each ticket API,
        and its corp's corp tickets (`get_jsapi_ticket@corp`); None for other accounts."""
        account = self.account
        if not account.wecom:
            return None
        return {
            TICKET_API["corp"]: await self._hourly.used(account.key, TICKET_API["corp"]),
            TICKET_API["agent"]: await self._hourly.used(account.key, TICKET_API["agent"]),
            f"{TICKET_API['corp']}@corp": await self._hourly.used(account.app_id, TICKET_API["corp"]),
        }

    def next_refresh_delay(self) -> float:
        """Seconds until the background task should look again."""
        now = self._clock()
        ticket = self._ticket
        if ticket is not None and ticket.fresh(now):
            return max(0.05, ticket.refresh_at - now)
        if self._error is not None:
            return max(0.05, self._blocked_until - now)
        return 0.0

    async def keep_fresh(self) -> None:
        """The background refresher: runs until cancelled, refreshing ahead of expiry."""
        loop = asyncio.get_running_loop()
        while True:
            ticket = self._ticket
            if ticket is None or not ticket.fresh(self._clock()):
                with contextlib.suppress(UpstreamError):  # recorded and logged once by _record_failure
                    await self.refresh()
            # asyncio.sleep's own way (a future and a timer), with the future kept for `wake`.
            self._pause = pause = loop.create_future()
            timer = loop.call_later(self.next_refresh_delay(), _end_pause, pause)
            try:
                await pause
            finally:
                timer.cancel()
                self._pause = None

    def wake(self) -> None:
        """Have the background refresher look again now (its schedule changed: a refresh landed elsewhere,
        a quota was reset)."""
        _end_pause(self._pause)

    def quota_reset(self) -> None:
        """WeChat's daily quotas of the account were reset: a refresh held back for a spent quota may run now."""
        if self._error is not None and failure_class(self._error) == "quota":
            self._blocked_until = 0.0
            self.wake()

    def ready(self, now: float) -> bool:
        """True while the ticket in memory may sign."""
        return now < self._usable_until

    def ttls(self, now: float) -> tuple[float | None, float | None]:
        """Seconds until the ticket and the token held here expire (None: none held)."""
        ticket, token = self._ticket, self._token
        return (None if ticket is None else round(ticket.expires_at - now, 1),
                None if token is None else round(token.expires_at - now, 1))  # fmt: skip

    def agent_ttl(self, now: float) -> float | None:
        """Seconds until a WeCom app's agent ticket held here expires (None: none held)."""
        agent = self._agent_ticket
        return None if agent is None else round(agent.expires_at - now, 1)

    def running_tasks(self) -> list[asyncio.Task[Any]]:
        """The refresh and the adoption of news running now, if any (for a clean stop)."""
        return [task for task in (self._flight, self._adopting) if task is not None and not task.done()]

    def status(self) -> AccountStatus:
        now = self._clock()
        ticket, token, agent, error = self._ticket, self._token, self._agent_ticket, self._error
        ticket_ttl, token_ttl = self.ttls(now)
        usable = ticket is not None and ticket.usable(now)
        if usable:
            reason = "ok"
        elif error is not None:
            reason = str(error)
        else:
            reason = "no jsapi_ticket yet"
        return AccountStatus(
            name=self.account.name,
            app_id=self.account.key,
            ready=usable,
            reason=reason,
            ticket_expires_in=ticket_ttl,
            token_expires_in=token_ttl,
            ticket_age=None if ticket is None else round(now - ticket.obtained_at, 1),
            token_age=None if token is None else round(now - token.obtained_at, 1),
            agent_ticket_expires_in=self.agent_ttl(now),
            agent_ticket_age=None if agent is None else round(now - agent.obtained_at, 1),
            last_refresh=self._last_refresh,
            last_error=None if error is None else str(error),
            errcode=getattr(error, "errcode", None),
            fix=getattr(error, "fix", None) or None,
            retry_in=round(self._blocked_until - now, 1) if error is not None and self._blocked_until > now else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """How many accounts may sign now, and (up to a limit) which may not."""

    ready: int
    total: int
    unready: tuple[AccountCredentials, ...]


def _end_pause(pause: asyncio.Future[None] | None) -> None:
    if pause is not None and not pause.done():
        pause.set_result(None)


class CredentialStore:
    """Every account's credentials, and their background refreshers."""

    def __init__(
        self,
        accounts: Iterable[Account],
        client: WeChatClient,
        cache: SharedCache,
        *,
        rules: RefreshRules,
    ) -> None:
        self._hourly = hourly = HourlyLimits(cache, clock=rules.clock, watchers=rules.quota_watchers)
        self._parts = (client, cache, rules)
        self._by_app_id = {a.key: AccountCredentials(a, client, cache, rules, hourly) for a in accounts}
        self._clock = rules.clock
        self._random = rules.rng
        self._starter: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._removed: list[asyncio.Task[Any]] = []  # the refreshes in flight of accounts removed

    def get(self, key: str) -> AccountCredentials | None:
        return self._by_app_id.get(key)

    def authorizer(self, key: str | None) -> Account | None:
        """The platform authorizer whose appId is `key`, if the store holds one (they come and go at run time)."""
        creds = self._by_app_id.get(key) if key else None
        return creds.account if creds is not None and creds.account.platform is not None else None

    async def add(self, account: Account, *, token: AccessToken | None = None) -> AccountCredentials:
        """Hold `account` from now on (an authorizer learned at run time), with `token` when one came with
        it; its refresher starts once the store has started. An account already held is kept as it is."""
        creds = self._by_app_id.get(account.key)
        if creds is None:
            client, cache, rules = self._parts
            creds = self._by_app_id[account.key] = AccountCredentials(account, client, cache, rules, self._hourly)
            if token is not None:
                await creds.adopt_token(token)  # before its refresher starts, which would fetch another
            if self._starter is not None and account.key in self._by_app_id:
                self._tasks[account.key] = asyncio.get_running_loop().create_task(creds.keep_fresh())
        elif token is not None:
            await creds.adopt_token(token)
        return creds

    def remove(self, key: str) -> AccountCredentials | None:
        """Stop holding the account `key` (an authorizer that withdrew): its refresher is cancelled. A
        refresh in flight may land (requests may be waiting on it); `stop` cancels it if it has not."""
        creds = self._by_app_id.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        if creds is not None:
            self._removed = [t for t in self._removed if not t.done()] + creds.running_tasks()
            refresh_recovered(creds.account.name)  # no longer failing here: it is gone
        return creds

    def __getitem__(self, app_id: str) -> AccountCredentials:
        return self._by_app_id[app_id]

    def __iter__(self) -> Iterator[AccountCredentials]:
        return iter(self._by_app_id.values())

    def __len__(self) -> int:
        return len(self._by_app_id)

    def start(self) -> None:
        """One background refresher per account, started a batch per turn of the event loop (so that
        the listener and the first requests are served meanwhile), in random order (so that the
        processes of a fleet starting together work on different accounts first)."""
        self._starter = asyncio.get_running_loop().create_task(self._start_refreshers())

    async def _start_refreshers(self) -> None:
        loop = asyncio.get_running_loop()
        order = list(self._by_app_id.values())
        self._random.shuffle(order)
        for number, creds in enumerate(order, 1):
            key = creds.account.key
            if key in self._by_app_id and key not in self._tasks:  # not removed (nor added) meanwhile
                self._tasks[key] = loop.create_task(creds.keep_fresh())
            if number % START_BATCH == 0:
                await asyncio.sleep(0)

    async def stop(self) -> None:
        """Cancel the refreshers and every refresh in flight, and wait until they have ended."""
        starter: list[asyncio.Task[Any]] = [] if self._starter is None else [self._starter]
        for task in starter:
            task.cancel()
        await asyncio.gather(*starter, return_exceptions=True)
        flights = (task for creds in self for task in creds.running_tasks())
        running: list[asyncio.Task[Any]] = [*self._tasks.values(), *flights, *self._removed]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks = {}

    def on_news(self, key: str) -> None:
        """Another process stored a credential at cache `key`: "<key>:ticket", "<key>:agent-ticket" or
        "<key>:token:<api>" (an account's key may hold a colon itself: corp_id:agent_id)."""
        account, _, api = key.rpartition(":token:")
        kind = "token"
        if not account:
            account, _, kind = key.rpartition(":")
        creds = self._by_app_id.get(account)
        if creds is not None and (api or kind in ("ticket", "agent-ticket")):
            creds.on_news("ticket" if kind == "agent-ticket" else kind)

    def readiness(self, *, limit: int) -> Readiness:
        """Ready and total counts, and the first `limit` accounts that may not sign now."""
        now = self._clock()
        unready: list[AccountCredentials] = []
        ready = 0
        for creds in self._by_app_id.values():
            if creds.ready(now):
                ready += 1
            elif len(unready) < limit:
                unready.append(creds)
        return Readiness(ready=ready, total=len(self._by_app_id), unready=tuple(unready))


async def under_fleet_lock(
    cache: SharedCache,
    scheduler: UpstreamScheduler,
    lock_key: str,
    lease: float,
    turn: Turn,
    shared: Callable[[], Awaitable[R | None]],
    new: Callable[[], Awaitable[R]],
) -> R:
    """What `shared` finds in the fleet's cache, else what `new` obtains while this process holds the
    fleet lock `lock_key` (in an upstream slot, so the lease covers the calls and never a queue wait).

    While another process holds the lock, `shared` is asked again until that process's result
    lands; the lease bounds the wait when that process has died, and meanwhile requests keep
    signing with what is in memory.
    """
    found = await shared()
    if found is not None:
        return found
    async with scheduler.slot(turn):
        owner = secrets.token_hex(8)
        while not await cache.acquire(lock_key, owner, lease):
            await asyncio.sleep(LOCK_POLL)
            found = await shared()
            if found is not None:
                return found
        try:
            found = await shared()
            return found if found is not None else await new()
        finally:
            await cache.release(lock_key, owner)


def backoff(bounds: tuple[float, float], failures: int) -> float:
    first, cap = bounds
    return min(cap, first * 2.0 ** max(0, failures - 1))
