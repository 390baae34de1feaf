"""The two credentials WeChat hands out, and when to refresh them. Pure values; no clock inside.

When to refresh is drawn inside a window (`refresh_window`), at positions a `Spread` hands out, so
that N accounts never line their refreshes up in the same second:
- the window ends ahead of expiry by the lesser of 5 minutes and a fifth of the lifetime (a 7200 s
  credential at least 300 s early, a 10 s sandbox credential 2 s early);
- a renewal's window is one such margin wide: the spread the accounts already have is kept, and
  each account makes about one call per lifetime;
- a cold credential (none usable was held: start-up, or after an outage) has a window from a third
  of its lifetime on, since every account got one in the same minute: their first renewals spread
  over most of a lifetime, and stay spread after that.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Self

MAX_REFRESH_MARGIN = 300.0
# A ticket is not used to sign in its last moments: the page still has to call wx.config with it.
MAX_SIGNING_GRACE = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A value WeChat issued at `obtained_at` (epoch seconds) for `expires_in` seconds."""

    value: str = field(repr=False)
    obtained_at: float
    expires_in: float
    refresh_at: float = 0.0
    """When a refresh should start; 0 (not drawn) means the end of the renewal window."""

    def __post_init__(self) -> None:
        if not self.refresh_at:
            object.__setattr__(self, "refresh_at", self.expires_at - refresh_margin(self.expires_in))

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    def refresh_window(self, *, cold: bool) -> tuple[float, float]:
        """The earliest and the latest moment to start this credential's refresh."""
        latest = self.expires_at - refresh_margin(self.expires_in)
        earliest = self.obtained_at + self.expires_in / 3 if cold else latest - refresh_margin(self.expires_in)
        return earliest, latest

    def scheduled(self, position: float, *, cold: bool) -> Self:
        """This credential with its refresh time at `position` (from 0 to 1) inside its window."""
        earliest, latest = self.refresh_window(cold=cold)
        return replace(self, refresh_at=earliest + position * (latest - earliest))

    @property
    def usable_until(self) -> float:
        """The last moment this credential is handed out for use."""
        return self.expires_at - min(MAX_SIGNING_GRACE, self.expires_in / 20)

    def usable(self, now: float) -> bool:
        return now < self.usable_until

    def fresh(self, now: float) -> bool:
        """Usable and not yet due for a refresh."""
        return now < self.refresh_at

    @property
    def fingerprint(self) -> str:
        """A short digest that tells two values apart in logs without revealing either."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:8]

    def to_record(self) -> dict[str, Any]:
        return {"value": self.value, "obtained_at": self.obtained_at, "expires_in": self.expires_in,
                "refresh_at": self.refresh_at}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Self:
        """The credential a record holds; the refresh time drawn by the process that fetched it is kept."""
        return cls(
            value=str(record["value"]),
            obtained_at=float(record["obtained_at"]),
            expires_in=float(record["expires_in"]),
            refresh_at=float(record.get("refresh_at", 0.0)),
        )


class Spread:
    """Positions inside refresh windows for many credentials: random, and evenly spread together.

    Independent uniform draws bunch (among a thousand, some second always gets twice its share);
    this is the golden-ratio sequence from a random start, whose first n positions leave no gap
    wider than about 2.6/n, so refreshes drawn together come out evenly spaced.
    """

    __slots__ = ("_position",)
    _STEP = 0.6180339887498949  # the golden ratio's fractional part

    def __init__(self, rng: random.Random | None = None) -> None:
        self._position = (rng or random.Random()).random()

    def __repr__(self) -> str:
        return "Spread()"

    def __call__(self) -> float:
        self._position = (self._position + self._STEP) % 1.0
        return self._position


Position = Callable[[], float]
"""Where the next refresh goes inside its window, from 0 to 1 (a `Spread`)."""


def refresh_margin(expires_in: float) -> float:
    """How far ahead of expiry a refresh starts at the latest: the lesser of 5 minutes and a fifth of the life."""
    return min(MAX_REFRESH_MARGIN, expires_in / 5)


class AccessToken(Credential):
    """An access_token (a secret: never logged, never in a response)."""

    __slots__ = ()


class JsapiTicket(Credential):
    """A jsapi_ticket: signs wx.config; kept out of responses and logs like the token."""

    __slots__ = ()


# An external source that gives no lifetime (a plain Redis value without a TTL) is taken to hand
# out WeChat's usual two hours; it is read again for every ticket anyway.
DEFAULT_TOKEN_LIFE = 7200.0


def external_token(answer: Any, *, now: float, ttl: float | None = None) -> AccessToken:
    """The access_token an external source handed out at `now`; ValueError (saying what is wrong) if none.

    `answer` is a decoded JSON object, `{"access_token", "expires_in" | "expires_at"}` or WeChat's
    own shape (an `errcode` other than 0 is refused), or a plain string (a Redis value) whose
    lifetime is the key's `ttl`. A JSON record's `expires_in` is capped by the key's `ttl` too.
    """
    if isinstance(answer, str):
        value, life = answer.strip(), ttl or DEFAULT_TOKEN_LIFE
    elif isinstance(answer, dict):
        errcode = answer.get("errcode", 0)
        if errcode not in (0, None):
            raise ValueError(f"it answered errcode {errcode!r} instead of a token")
        token = answer.get("access_token")
        if not isinstance(token, str):
            raise ValueError("its answer has no access_token string")
        value = token
        life = _life(answer, now)
        if ttl is not None:
            life = min(life, ttl)
    else:
        raise ValueError("its answer is neither a JSON object nor a token")
    if not value or len(value) > 2048 or not value.isprintable():
        raise ValueError("its access_token is empty, too long or not printable")
    if life <= 0:
        raise ValueError("its access_token has expired")
    return AccessToken(value=value, obtained_at=now, expires_in=life)


def _life(answer: dict[str, Any], now: float) -> float:
    """Seconds left: from an absolute `expires_at` (epoch seconds), else `expires_in`, else the default."""
    for key in ("expires_at", "expires_in"):
        raw = answer.get(key)
        if raw is None:
            continue
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise ValueError(f"its {key} is not a number")
        return float(raw) - now if key == "expires_at" else float(raw)
    return DEFAULT_TOKEN_LIFE
