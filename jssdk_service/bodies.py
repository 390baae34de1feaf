"""What every endpoint of the web layer shares: reading a JSON body, and the CORS preflight answer."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from jssdk_service.errors import InvalidRequest


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; `InvalidRequest` for anything else."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for the POST forms: 204; the endpoint wrapper adds the headers for allowed origins."""
    return web.Response(status=204)
