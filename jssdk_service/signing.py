"""The wx.config signature (WECHAT.md §3): pure functions, no I/O, no hidden clock."""

from __future__ import annotations

import hashlib
import secrets


def strip_fragment(url: str) -> str:
    """The URL WeChat verifies: everything before the first `#`, otherwise untouched."""
    cut = url.find("#")
    return url if cut < 0 else url[:cut]


def sign_url(*, ticket: str, nonce: str, timestamp: int, url: str) -> str:
    """sha1 of `jsapi_ticket=..&noncestr=..&timestamp=..&url=..`, values raw, as 40 lowercase hex.

    The fragment is dropped; nothing else is encoded or normalised, because WeChat compares the
    signature against the page URL byte for byte.
    """
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={strip_fragment(url)}"
    return hashlib.sha1(plain.encode("utf-8")).hexdigest()  # noqa: S324 (WeChat's algorithm, not our choice)


class NonceSource:
    """16-character hex nonces from `secrets`, drawn in batches.

    One `os.urandom` system call per request is measurable on the hot path; drawing 4 KiB of
    randomness at a time keeps the nonces unpredictable while paying for the call once in 256.
    """

    __slots__ = ("_batch", "_pos")
    _NONCE_LEN = 16
    _PER_BATCH = 256

    def __init__(self) -> None:
        self._batch = ""
        self._pos = 0

    def __call__(self) -> str:
        if self._pos >= len(self._batch):
            self._batch = secrets.token_hex(self._NONCE_LEN * self._PER_BATCH // 2)
            self._pos = 0
        start = self._pos
        self._pos = start + self._NONCE_LEN
        return self._batch[start : self._pos]
