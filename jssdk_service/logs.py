"""Logging: one JSON object per line (or plain text), each record tagged with its request's id.

A request keeps the `X-Request-Id` it arrives with when that is short and made of safe characters;
otherwise it gets a new one. The id lives in a context variable while the request is served, so
every record written meanwhile (and by tasks the request starts, such as a lazy refresh) carries
it, and the response returns it in `X-Request-Id`.

The access log (`--access-log`, `JSSDK_ACCESS_LOG`) writes one line per request; it is off by
default because the nginx sidecar already logs every request and a log line costs the hot path a
measurable share of its throughput (see bench/README.md).

Records never carry a credential: the code that logs uses fingerprints, and httpx's request lines
(whose query holds the access_token) are silenced in `wechat.py`.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
from aiohttp import web
from multidict import istr

from jssdk_service.clientip import client_ip
from jssdk_service.config import LogFormat

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = istr("X-Request-Id")  # case-folded once, not per request
# What an incoming id may be: short, and safe to echo in a header and a log line.
usable_request_id = re.compile(r"[A-Za-z0-9._:=+-]{1,64}").fullmatch
# New ids: a random prefix per process (workers are spawned, each draws its own) and a counter;
# made entirely in C, as the hot path calls it for every request that brings no id.
new_request_id = map(f"{secrets.token_hex(6)}-{{:x}}".format, itertools.count(1)).__next__


def request_id_for(given: str | None) -> str:
    """The id of a request that came with `given` as its X-Request-Id: that one when usable, else a new one.
    It is also set for the log lines written while the request is served."""
    request_id = given if given is not None and usable_request_id(given) else new_request_id()
    REQUEST_ID.set(request_id)
    return request_id


# Attributes every LogRecord has; anything else on a record came through `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "taskName"}

access = logging.getLogger("jssdk_service.access")


def log_access(request: web.BaseRequest, route: str, status: int, seconds: float) -> None:
    """The access log line of one request: method, route (never the raw URL), status, duration, client."""
    client = client_ip(request) or "-"
    duration_ms = round(seconds * 1000, 3)
    access.info(
        "%s %s %d %.1fms %s",
        request.method,
        route,
        status,
        duration_ms,
        client,
        extra={
            "method": request.method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "client": client,
        },
    )


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message`, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


def configure(*, level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Send every logger's records at `level` and above to `stream` (stderr) in `log_format`."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
