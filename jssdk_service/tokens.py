"""The two credentials WeChat hands out, and when to refresh them. Pure values; no clock inside."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Self

# Refresh ahead of expiry by the lesser of 5 minutes and a fifth of the lifetime, so a 7200 s
# credential is renewed 300 s early and a 10 s sandbox credential 2 s early.
MAX_REFRESH_MARGIN = 300.0
# A ticket is not used to sign in its last moments: the page still has to call wx.config with it.
MAX_SIGNING_GRACE = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A value WeChat issued at `obtained_at` (epoch seconds) for `expires_in` seconds."""

    value: str = field(repr=False)
    obtained_at: float
    expires_in: float

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    @property
    def refresh_at(self) -> float:
        """When a refresh should start: ahead of expiry by a margin that scales with the lifetime."""
        return self.expires_at - min(MAX_REFRESH_MARGIN, self.expires_in / 5)

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
        return {"value": self.value, "obtained_at": self.obtained_at, "expires_in": self.expires_in}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Self:
        return cls(
            value=str(record["value"]),
            obtained_at=float(record["obtained_at"]),
            expires_in=float(record["expires_in"]),
        )


class AccessToken(Credential):
    """An access_token (a secret: never logged, never in a response)."""

    __slots__ = ()


class JsapiTicket(Credential):
    """A jsapi_ticket: signs wx.config; kept out of responses and logs like the token."""

    __slots__ = ()
