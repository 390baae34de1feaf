"""How the sandbox answers, as WeChat does: the errmsg of each errcode, with a rid, and JSON bodies."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from aiohttp import web

ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40125: "invalid appsecret",
    40202: "invalid action",
    40203: "invalid check_operator",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41018: "missing component_appid",
    42001: "access_token expired",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    61003: "component is not authorized by this account",
    61005: "component ticket is expired",
    61006: "component ticket is invalid",
    61009: "code is invalid",
    61010: "code is expired",
    61011: "invalid component",
    61023: "refresh_token is invalid",
}


def error(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    """WeChat's error body: the errcode, and its errmsg with a request id as WeChat adds one."""
    text = errmsg or ERRMSG.get(errcode, "error")
    return {"errcode": errcode, "errmsg": f"{text} rid: {secrets.token_hex(4)}-{secrets.token_hex(4)}"}


def answer(errcode: int, errmsg: str) -> web.Response:
    body = {"errcode": errcode, "errmsg": errmsg} if errcode == 0 else error(errcode, errmsg)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty one for anything else (WeChat then names what is missing)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
